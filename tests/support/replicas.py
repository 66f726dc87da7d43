"""Several ``wxkf manager`` processes on one database, and the callback traffic a load balancer sends
them, for multi-replica chaos tests.

:class:`Cluster` starts each manager as a real child process (``python -m hub manager``) with its own
port, replica id, data dir and log file, optionally with its clock shifted (libfaketime), and can
SIGKILL, SIGSTOP, SIGCONT and restart each one. :meth:`Cluster.close` SIGKILLs whatever still runs,
stopped or not, so no test leaves a process behind.

:class:`Traffic` plays WeCom behind a load balancer: it signs ``kf_msg_or_event`` callbacks for
tokens of its own, posts each to one manager of the rotation and, when that one does not answer
``success``, to the next (WeCom retries the same request, the balancer picks another backend), until
one acknowledges it. It remembers what was acknowledged, per account, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.services import ServiceProcess, free_port, service_env
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post
from wxkf.settings import Settings
from wxkf.tasks import finished_within

LIBFAKETIME = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1")
FAKETIME_VARIABLES = ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC")
CALLBACK_TIMEOUT = 3.0  # per attempt; WeCom waits 5 s


async def eventually(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.01) -> None:
    """Poll ``predicate`` (a condition over several processes, with no one event to wait on) until it
    holds; fail after ``timeout`` seconds, naming ``what`` was awaited."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - several processes' state, no one event to await
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def libfaketime() -> str:
    """Path of Debian's libfaketime (package ``faketime``; ``.ci/run`` installs it)."""
    for pattern in LIBFAKETIME:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("libfaketime not found: apt-get install faketime (.ci/run does it when root)")


def clock_offset_env(seconds: float) -> dict[str, str]:
    """Environment that runs a process with its wall clock ``seconds`` off (negative: behind).

    Only the wall clock moves (``time.time()``, ``CLOCK_REALTIME``); the monotonic clock that asyncio's
    timers use is left alone, as on a host whose NTP is simply off by that much."""
    values = (libfaketime(), f"{seconds:+g}s", "1")
    return dict(zip(FAKETIME_VARIABLES, values, strict=True))


@dataclass
class Manager:
    """One manager process slot: a name for reports, a replica id, a port; restartable."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int
    incarnation: int = 0
    service: ServiceProcess | None = None

    @property
    def label(self) -> str:
        """The name, with ``#2``, ``#3``... for later incarnations (restarts) of the slot."""
        return self.name if self.incarnation <= 1 else f"{self.name}#{self.incarnation}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.service is not None and self.service.process is not None, f"{self.name} never started"
        return self.service.process

    @property
    def running(self) -> bool:
        return self.service is not None and self.service.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start (or start again, same replica id and port) and wait until it answers /healthz."""
        assert not self.running, f"{self.label} is still running"
        self.incarnation += 1
        with self.log_path.open("a") as log:
            log.write(f"\n===== start of {self.label} =====\n")
        self.service = ServiceProcess("manager", self.env, self.log_path, self.port)
        await self.service.start(timeout=60.0)

    async def stop(self) -> None:
        """SIGTERM, and wait for the orderly shutdown (SIGKILL after 15 s); the test's own servers
        (the puppet) keep answering meanwhile."""
        assert self.service is not None
        await asyncio.to_thread(self.service.stop)

    def shift_clock(self, seconds: float) -> None:
        """From the next :meth:`start` on, run with the wall clock ``seconds`` off (see
        :func:`clock_offset_env`); 0 puts it right again."""
        for name in FAKETIME_VARIABLES:
            self.env.pop(name, None)
        if seconds:
            self.env |= clock_offset_env(seconds)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and memory but runs nothing (a long GC pause, a
        frozen VM) until :meth:`resume`."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """Manager processes sharing one database (``settings``' server and database name)."""

    settings: Settings
    workdir: Path
    common_env: dict[str, str]
    managers: dict[str, Manager] = field(default_factory=dict)

    def add(self, name: str, *, clock_offset: float = 0.0, **env: str) -> Manager:
        """A manager slot ``name`` (replica id ``mp-<name>``); ``clock_offset``: its wall clock is that
        many seconds off."""
        extra = {**self.common_env, "wxkf_replica_id": f"mp-{name}", **env}
        full = service_env(self.settings, self.workdir / f"data-{name}", **extra)
        manager = Manager(name, full, self.workdir / f"manager-{name}.log", free_port())
        manager.shift_clock(clock_offset)
        self.managers[name] = manager
        return manager

    async def start(self, *names: str) -> None:
        """Start the named managers (default: all) concurrently."""
        await asyncio.gather(*(self.managers[n].start() for n in names or self.managers))

    def __getitem__(self, name: str) -> Manager:
        return self.managers[name]

    def senders(self) -> dict[int, str]:
        """pid -> label of every manager process that exists (paused ones included)."""
        return {m.process.pid: m.label for m in self.managers.values() if m.running}

    def close(self) -> None:
        """SIGKILL every manager still there (a stopped process dies of SIGKILL too)."""
        for manager in self.managers.values():
            if manager.running:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    manager.kill()

    def logs(self) -> dict[str, str]:
        return {name: manager.log() for name, manager in self.managers.items()}


@dataclass(frozen=True)
class Ack:
    account: str
    token: str
    by: str  # the label of the manager that answered ``success``
    sent: float  # time.monotonic() of the first attempt: the message existed from then on
    at: float  # time.monotonic() of the acknowledgement


@dataclass(repr=False)
class Traffic:
    """Signed kf callbacks for ``keys``' corp, spread over a rotation of managers."""

    http: httpx.AsyncClient
    keys: CorpAppKeys
    rotation: list[Manager]
    acked: dict[str, list[str]] = field(default_factory=dict)  # account -> tokens, in order
    acks: list[Ack] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def last_ack(self, account: str) -> Ack:
        """The acknowledgement of ``account``'s newest callback."""
        return next(ack for ack in reversed(self.acks) if ack.account == account)

    def sent(self, account: str) -> int:
        return len(self.acked.get(account, []))

    async def send(self, account: str, via: Manager | None = None, *, deadline: float = 30.0) -> str:
        """One new callback for ``account``, acknowledged by ``via`` (and no other), or by some manager
        of the rotation; returns its token once acknowledged."""
        n = next(self._sequence)
        token = f"tok-{account}-{n}-{secrets.token_hex(3)}"
        query, body = signed_post(self.keys, kf_event_xml(self.keys.corp_id, account, token))
        errors: list[str] = []
        sent = time.monotonic()
        async with asyncio.timeout(deadline):
            while True:
                candidates = [via] if via is not None else self.rotation
                start = n % max(1, len(candidates))
                for manager in candidates[start:] + candidates[:start]:
                    try:
                        answer = await self.http.post(
                            f"{manager.url}/callback/{self.keys.corp_id}?{query}",
                            content=body,
                            timeout=CALLBACK_TIMEOUT,
                        )
                    except httpx.HTTPError as exc:
                        errors.append(f"{manager.label}: {exc!r}")
                        continue
                    if answer.status_code == 200 and answer.text == "success":
                        async with self.changed:
                            self.acked.setdefault(account, []).append(token)
                            self.acks.append(Ack(account, token, manager.label, sent, time.monotonic()))
                            self.changed.notify_all()
                        return token
                    errors.append(f"{manager.label}: {answer.status_code} {answer.text[:200]}")
                if via is not None and len(errors) >= 3:
                    raise AssertionError(f"{via.label} did not acknowledge {token}: {errors}")
                await asyncio.sleep(0.1)  # every backend refused: WeCom's next retry comes later

    @contextlib.asynccontextmanager
    async def running(self, accounts: Iterable[str], interval: float = 0.25) -> AsyncIterator[None]:
        """Each account gets a callback every ``interval`` seconds (sequential per account, like
        WeCom's) while the block runs; a callback nobody acknowledges fails the test at the end."""
        stop = asyncio.Event()

        async def loop(account: str) -> None:
            while not stop.is_set():
                try:
                    await self.send(account)
                except Exception as exc:
                    async with self.changed:
                        self.failures.append(exc)
                        self.changed.notify_all()
                    raise
                await finished_within(stop.wait(), interval)  # pacing: the traffic's rate

        tasks = [asyncio.create_task(loop(account)) for account in accounts]
        try:
            yield
        except BaseException:
            for task in tasks:  # the test failed already: don't wait for callbacks in flight
                task.cancel()
            raise
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.failures:
            raise AssertionError(f"callbacks not acknowledged: {self.failures!r}")

    async def wait_sent(self, counts: Mapping[str, int], timeout: float = 30.0) -> None:
        """Wait until each account has at least ``counts[account]`` acknowledged callbacks."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(
                lambda: self.failures or all(self.sent(a) >= c for a, c in counts.items())
            )
        if self.failures:
            raise AssertionError(f"callbacks not acknowledged: {self.failures!r}")
