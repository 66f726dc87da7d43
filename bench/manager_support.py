"""What the manager benchmarks share: the processes they run, callbacks as WeCom sends them, and stats.

Each benchmark runs the hub as users do, ``python -m hub up`` in embedded mode (a fresh
``WXKF_DATA_DIR``, no ``MONGO_URI``), with the WeCom simulator (``python -m simulator --seed``) as
WeCom's API and a fleet of fast puppets (:mod:`bench.manager_puppet`), each in its own process so
that their CPU is not charged to the hub. The benchmark process itself plays WeCom's callback side:
it POSTs signed, encrypted ``kf_msg_or_event`` callbacks to ``/callback/{corpId}`` with aiohttp.

Every callback carries a distinct ``nonce`` (its sequence number) in its query string; the manager
forwards the original query to the puppet, so the puppet identifies each delivery without decrypting.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import aiohttp

from hub.cli import fast_event_loop
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, new_aes_key
from wecom.xml import callback_body
from wxkf.database import _die_with_parent

ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(8)
AGENT_ID = 1000002
REGISTER = "/puppetWxkfManager/register"
HEARTBEAT = "/puppetWxkfManager/heartbeat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# -- the corp the simulator is seeded with -------------------------------------------------------
@dataclass(frozen=True)
class Corp:
    keys: CorpAppKeys
    secret: str
    accounts: tuple[str, ...]

    @classmethod
    def random(cls, accounts: int) -> Corp:
        keys = CorpAppKeys("wwbench" + secrets.token_hex(5), secrets.token_hex(8), new_aes_key())
        return cls(keys, "bench-" + secrets.token_hex(16), tuple(f"wkbench{i:05d}" for i in range(accounts)))

    @property
    def corp_id(self) -> str:
        return self.keys.corp_id

    def seed(self) -> dict[str, Any]:
        """A simulator seed: this corp, one app managing every account; no gettoken rate limit."""
        return {
            "config": {"gettoken_rate": None},
            "corps": [
                {
                    "corpid": self.corp_id,
                    "apps": [
                        {
                            "name": "kf",
                            "agentid": AGENT_ID,
                            "secret": self.secret,
                            "token": self.keys.token,
                            "encoding_aes_key": self.keys.aes_key,
                        }
                    ],
                    "accounts": [{"open_kfid": kf, "name": f"bench {kf}"} for kf in self.accounts],
                }
            ],
        }

    def register_body(self, kf: str, endpoint: str) -> dict[str, str]:
        """The Node puppet's register request."""
        return {
            "kfId": kf,
            "kfName": "",
            "endpoint": endpoint,
            "corpId": self.corp_id,
            "corpSecret": self.secret,
            "token": self.keys.token,
            "encodingAESKey": self.keys.aes_key,
        }

    def callback(self, kf: str, nonce: str, token: str) -> tuple[str, bytes]:
        """``(query, body)`` of WeCom's encrypted callback telling that ``kf`` has news (``token``)."""
        ts = str(int(time.time()))
        encrypt, signature = self.keys.crypt.seal(kf_event_xml(self.corp_id, kf, token), ts, nonce)
        query = urlencode({"msg_signature": signature, "timestamp": ts, "nonce": nonce})
        return query, callback_body(self.corp_id, encrypt, AGENT_ID).encode()


# -- child processes ------------------------------------------------------------------------------
@dataclass
class Child:
    """A child process whose output goes to ``log``; stopped with SIGTERM (then SIGKILL)."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                env={**clean_environ(), **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent(),  # SIGTERM to the child if the benchmark dies
            )

    async def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Poll ``url`` until it answers 200: the only readiness signal across a process boundary."""
        assert self.process is not None
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early; see {self.log}:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def clean_environ() -> dict[str, str]:
    """Our environment minus any hub settings, so each child gets exactly what we give it."""
    hub_vars = ("MONGO_URI", "WXKF_", "WECOM_API_BASE", "MANAGER_ENDPOINT", "HOST", "PORT")
    return {k: v for k, v in os.environ.items() if not k.startswith(hub_vars)}


@dataclass
class Stack:
    """Simulator, hub and puppet fleet of one benchmark run."""

    workdir: Path
    corp: Corp
    sim: Child
    hub: Child
    puppets: Child
    puppet_ports: list[int]
    sim_url: str
    hub_url: str

    def puppet_endpoint(self, index: int) -> str:
        """Puppet ``index``'s base URL: its own port while there are ports enough, else a path."""
        port = self.puppet_ports[index % len(self.puppet_ports)]
        if len(self.puppet_ports) >= len(self.corp.accounts):
            return f"http://127.0.0.1:{port}"
        return f"http://127.0.0.1:{port}/p{index}"

    async def start_puppets(self) -> None:
        """Start the fleet: on any free ports the first time, on the same ones again after a stop
        (the registrations point there)."""
        report = self.workdir / "puppet_ports.json"
        report.unlink(missing_ok=True)
        ports = ",".join(map(str, self.puppet_ports))
        self.puppets.argv = [*self.puppets.argv[:3], "--ports", ports, "--report", str(report)]
        self.puppets.start()
        async with asyncio.timeout(60):
            while not report.exists():
                if self.puppets.process is not None and self.puppets.process.poll() is not None:
                    raise RuntimeError(
                        f"the puppet fleet exited; see {self.puppets.log}:\n{self.puppets.tail()}"
                    )
                await asyncio.sleep(0.05)
        self.puppet_ports = json.loads(report.read_text())
        await self.puppets.wait_http(f"http://127.0.0.1:{self.puppet_ports[0]}/_records?since=999999999")

    def stop_puppets(self) -> None:
        self.puppets.stop()

    def db_pid(self) -> int | None:
        """The embedded SecantusDB server: the hub's child process."""
        kids = children(self.hub.pid)
        return kids[0] if kids else None


@contextlib.asynccontextmanager
async def stack(
    accounts: int,
    puppet_ports: int,
    *,
    start_puppets: bool = True,
    keep: bool = False,
    hub_env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """Start simulator and hub (and the puppets unless told not to); stop all of them on exit.
    ``hub_env`` adds to the hub's environment (settings, or ``PYTHONPATH`` to run another tree)."""
    workdir = Path(tempfile.mkdtemp(prefix="wxkf-bench-manager-"))
    corp = Corp.random(accounts)
    seed = workdir / "seed.json"
    seed.write_text(json.dumps(corp.seed()))
    sim_port, hub_port = free_ports(2)
    ports = [0] * puppet_ports  # bound by the fleet itself (start_puppets)
    python = sys.executable
    sim = Child(
        "simulator",
        [python, "-m", "simulator", "--port", str(sim_port), "--seed", str(seed)],
        workdir / "simulator.log",
    )
    hub = Child(
        "hub",
        [python, "-m", "hub", "up"],
        workdir / "hub.log",
        env={
            "WXKF_DATA_DIR": str(workdir / "data"),
            "WXKF_ADMIN_TOKEN": ADMIN_TOKEN,
            "WECOM_API_BASE": f"http://127.0.0.1:{sim_port}/cgi-bin",
            "HOST": "127.0.0.1",
            "PORT": str(hub_port),
            **(hub_env or {}),
        },
    )
    puppets = Child(
        "puppets",
        [python, "-m", "bench.manager_puppet"],  # ports: start_puppets
        workdir / "puppets.log",
    )
    run = Stack(
        workdir,
        corp,
        sim,
        hub,
        puppets,
        ports,
        f"http://127.0.0.1:{sim_port}",
        f"http://127.0.0.1:{hub_port}",
    )
    try:
        sim.start()
        hub.start()
        await sim.wait_http(run.sim_url + "/sim/config")
        await hub.wait_http(run.hub_url + "/healthz")
        await run.start_puppets()  # also learns the fleet's ports, which registration needs
        if not start_puppets:
            run.stop_puppets()
        yield run
    finally:
        for child in (puppets, hub, sim):
            child.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


# -- talking to the hub and the puppets -----------------------------------------------------------
def session(limit: int = 0) -> aiohttp.ClientSession:
    """An aiohttp client for load: no connection cap unless asked, nothing shared with the hub."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def register_all(
    http: aiohttp.ClientSession, run: Stack, concurrency: int = 50
) -> tuple[list[str], float]:
    """Register every account through the compat route; returns the webhook secrets and the seconds."""
    secrets_by_index: list[str] = [""] * len(run.corp.accounts)
    queue = iter(enumerate(run.corp.accounts))

    async def worker() -> None:
        for index, kf in queue:
            body = run.corp.register_body(kf, run.puppet_endpoint(index))
            async with http.post(run.hub_url + REGISTER, json=body) as response:
                answer = await response.json()
            if answer.get("code") != 0:
                raise RuntimeError(f"registration of {kf} refused: {answer}")
            secrets_by_index[index] = answer["webhookSecret"]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return secrets_by_index, time.perf_counter() - started


async def post_callback(http: aiohttp.ClientSession, run: Stack, query: str, body: bytes) -> int:
    url = f"{run.hub_url}/callback/{run.corp.corp_id}?{query}"
    async with http.post(url, data=body, headers={"content-type": "text/xml"}) as response:
        await response.read()
        return response.status


@dataclass(frozen=True, slots=True)
class Delivery:
    received_ns: int
    method: str
    path: str
    nonce: str | None


class PuppetRecords:
    """Reads the puppet fleet's record of deliveries incrementally."""

    def __init__(self, run: Stack) -> None:
        self.url = f"http://127.0.0.1:{run.puppet_ports[0]}/_records"
        self.deliveries: list[Delivery] = []
        self._next = 0

    async def fetch(self, http: aiohttp.ClientSession) -> list[Delivery]:
        """New records since the last fetch (also kept in ``deliveries``)."""
        async with http.get(self.url, params={"since": str(self._next)}) as response:
            data = await response.json()
        new = []
        for received_ns, method, path, query in data["records"]:
            nonce = parse_qs(query).get("nonce", [None])[0]
            new.append(Delivery(received_ns, method, path, nonce))
        self.deliveries.extend(new)
        self._next = data["next"]
        return new

    def restart(self) -> None:
        """The puppet process was restarted: its record starts again at 0."""
        self._next = 0


# -- measurements -------------------------------------------------------------------------------
def slowest_seconds(
    timings: Iterable[tuple[int, int]], origin_ns: int, top: int = 5
) -> list[dict[str, float]]:
    """The ``top`` one-second windows (by planned send time, from ``origin_ns``) with the slowest answer,
    from ``(planned_ns, answered_ns)`` pairs: shows whether a tail is spread out or one stall (a database
    checkpoint, a TTL sweep) that a few seconds explain, and whether stalls recur at a fixed interval."""
    worst: dict[int, float] = {}
    for planned_ns, answered_ns in timings:
        second = (planned_ns - origin_ns) // 1_000_000_000
        worst[second] = max(worst.get(second, 0.0), (answered_ns - planned_ns) / 1e6)
    ranked = sorted(worst.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"second": second, "max_ms": round(ms, 1)} for second, ms in ranked]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation), ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and friends of ``pid``, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm") or name.startswith("Rss"):
            out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_usage(pids: dict[str, int | None]) -> Iterator[dict[str, float]]:
    """CPU seconds each named process used inside the block (filled in on exit)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    used: dict[str, float] = {}
    yield used
    for name, pid in pids.items():
        used[name] = cpu_seconds(pid) - before[name]


SLOW_FACTOR = 1.4  # the probe's work taking this many times its fastest: the host runs us slow


@dataclass(slots=True)
class SpeedSamples:
    """``(monotonic ns, CPU ms of bench.cpu_speed's fixed work)`` pairs read from the probe's output."""

    path: Path
    samples: list[tuple[int, float]] = field(default_factory=list)

    def read(self) -> SpeedSamples:
        """Everything the probe wrote so far (it writes whole lines and flushes each)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.samples = [(int(ns), float(ms)) for ns, ms in (line.split() for line in lines if " " in line)]
        return self

    def fastest(self) -> float:
        """The machine's fast speed: the quickest sample of the whole benchmark, not of one rate, so
        that a rate run entirely in a slow phase is still seen as slow."""
        return min((ms for _, ms in self.samples), default=float("nan"))

    def between(self, start_ns: int, end_ns: int) -> list[float]:
        return [ms for ns, ms in self.samples if start_ns <= ns <= end_ns]

    def summary(self, start_ns: int, end_ns: int) -> dict[str, float | None]:
        """The probe's figures between two monotonic times (reads the probe's output first)."""
        works = sorted(self.read().between(start_ns, end_ns))
        threshold = self.slow_threshold()
        slow = sum(1 for ms in works if ms > threshold)
        return {
            "fastest_of_the_benchmark": self.fastest(),
            "fastest": works[0] if works else None,
            "p50": round(percentile(works, 50), 2) if works else None,
            "slowest": works[-1] if works else None,
            "slow_sample_share": round(slow / len(works), 3) if works else None,
        }

    def slow_threshold(self) -> float:
        """Work that took longer than this was done while the host ran the machine slow."""
        return SLOW_FACTOR * self.fastest()

    def slow_at(self, ns: int) -> bool:
        """Was the machine slow at the sample nearest ``ns``?"""
        if not self.samples:
            return False
        i = bisect.bisect_left(self.samples, (ns, 0.0))
        nearest = min(self.samples[max(0, i - 1) : i + 1], key=lambda sample: abs(sample[0] - ns))
        return nearest[1] > self.slow_threshold()


@contextlib.contextmanager
def cpu_speed(workdir: Path) -> Iterator[SpeedSamples]:
    """Run ``bench.cpu_speed`` beside the block: how fast the host let this machine run meanwhile."""
    found = SpeedSamples(workdir / "cpu_speed.txt")
    with found.path.open("wb") as sink:
        probe = subprocess.Popen(
            [sys.executable, "-m", "bench.cpu_speed"], stdout=sink, preexec_fn=_die_with_parent()
        )
    try:
        yield found
    finally:
        probe.terminate()
        probe.wait(10)
        found.read()


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    return {
        "cpu": f"{os.cpu_count()} x {model}",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run_benchmark(main: Coroutine[Any, Any, dict[str, Any]], title: str) -> None:
    """Run ``main`` and print its report; SIGTERM unwinds like Ctrl-C, so children are stopped.

    On the hub's event loop (uvloop where installed): the load generator stands in for WeCom, whose
    CPU is not on the hub's machine in production, so it should take as little of this one as it can.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
        print_report(title, runner.run(main))


def print_report(title: str, report: dict[str, Any]) -> None:
    print(f"== {title}")
    print(json.dumps(report, indent=2, ensure_ascii=False), flush=True)
