"""The one code path from every service to MongoDB.

With ``MONGO_URI`` unset, :func:`open_database` starts an embedded SecantusDB (a MongoDB wire-protocol
server on WiredTiger, from the ``SecantusDB`` package) as a child process on a data dir, so a single
``wxkf`` process runs with no database to install. With ``MONGO_URI`` set, it connects there instead;
nothing else in the code base knows the difference.

The embedded server always runs with ``--sync-on-commit``: without it an acknowledged write is lost when
the machine (or the server, on SIGKILL) dies, and every acknowledgement we give WeCom rests on a write.
That costs throughput, measured on a laptop:

- single ``insert_one``: ~1,300/s; ``insert_many`` of 100 documents: ~19,000 documents/s — batch writes;
- ``_id`` lookups: ~1,500/s; a find on an unindexed field scans the collection — index what you query.

It also runs ``--standalone``: as a single-node replica set (its default) it copies every written
document into an oplog, which only change streams read and nothing here uses (~0.1 ms of its CPU per
insert, docs/benchmarks.md).

SecantusDB (0.7.0b3) also turns some queries into collection scans that MongoDB would answer from an
index, so the hot paths avoid them (measured over 10,000 documents, docs/benchmarks.md):

- ``find_one_and_update``, even by ``_id``: 88 ms instead of 2 ms — update by id, then read;
- a filter with ``$or`` or ``$expr``: 90–110 ms — two point updates, or read and compare in Python;
- a one-sided range (``{"$lte": x}``) scans every null entry first: 280 ms — use :func:`up_to`;
- ``{"_id": {"$in": keys}}`` costs time in proportion to ``len(keys)`` squared (1,000 keys: 4.6 s,
  5,000: 62 s; in lists of 100: 0.8 s and 3.2 s) — use :func:`chunks`.

Only one process may own a data dir: :class:`EmbeddedMongo` holds an exclusive lock on
``<data_dir>/wxkf.lock`` while it runs and refuses to start (:class:`DataDirLocked`) otherwise.

The database is a failure domain of its own (docs/architecture.md, "The database as a failure domain"):
every operation has a deadline (``WXKF_DB_TIMEOUT``, :func:`client_options`), so a dead or hung server
costs a caller seconds, not minutes; and :func:`open_database` supervises the embedded server
(:class:`EmbeddedMongo` with ``supervise=True``), restarting it when it exits or stops serving reads, and
resolving :attr:`DatabaseState.failure` when it cannot come back, so the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import fcntl
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from wxkf.retry import parse_delays
from wxkf.settings import Settings
from wxkf.tasks import finished_within, stop_tasks

Document = dict[str, Any]
Database = AsyncDatabase[Document]
Collection = AsyncCollection[Document]

_D = TypeVar("_D", bound=Any)
_T = TypeVar("_T")

SERVER_SCRIPT = "secantusd-py"
LOCK_FILE = "wxkf.lock"
LOG_FILE = "secantusd.log"
CONFIG_FILE = "secantusd.toml"

_LISTENING = re.compile(r"secantus listening on ([0-9.]+):(\d+)")
_DURABLE = WriteConcern(w="majority", j=True)

# How long the driver waits for a usable server (a primary, for writes) before an operation fails. A
# replica set elects a new primary in about 2 s after a clean step-down, but 10-12 s after a crash
# (electionTimeoutMillis); WeCom waits 5 s for our answer, so waiting out a crash is not possible and a
# quick 503 (WeCom retries) is the better answer. 2 s covers a clean step-down and leaves time to answer.
SERVER_SELECTION_TIMEOUT = 2.0
# A TCP connection to a healthy server on a LAN takes milliseconds; the driver's default is 20 s.
CONNECT_TIMEOUT = 2.0
# How often the driver checks each server when all is well (default 10 s): /healthz reads its view.
HEARTBEAT_INTERVAL = 2.0

# The embedded server's supervision: the waits before each restart attempt in a row (about 20 s in all;
# then the process gives up and exits non-zero), how often it is probed, how long a probe may take, how
# long it may fail probes before it is restarted, and how long it must then run before a new failure
# counts as a new incident rather than the same one. (WXKF_DB_RESTART_DELAYS sets the first for `connect`.)
RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 4.0, 8.0)
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
UNRESPONSIVE_AFTER = 10.0
STABLE_AFTER = 60.0
PROBE_DB = "wxkf_probe"

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """The database could not be started or reached; the message says why."""


class DataDirLocked(DatabaseError):
    """Another process already runs an embedded server on this data dir."""


def up_to(limit: float | datetime | str, *, inclusive: bool = True) -> dict[str, Any]:
    """A range query ``<= limit`` (or ``< limit``) with an explicit lower end of the same type.

    SecantusDB scans a one-sided ``{"$lte": x}`` from the very start of the index, through every
    document whose field is null or missing (mailboxes not due, puppets not being probed, pending
    inbox events): 280 ms instead of 1 ms per query over 10,000 such documents. With both ends it seeks
    straight to the range, as MongoDB does either way.
    """
    lowest: float | datetime | str
    if isinstance(limit, datetime):
        lowest = datetime.min.replace(tzinfo=UTC)
    elif isinstance(limit, str):
        lowest = ""
    else:
        lowest = -math.inf
    return {"$gte": lowest, "$lte" if inclusive else "$lt": limit}


def chunks(items: Sequence[_T], size: int = 100) -> Iterator[Sequence[_T]]:
    """``items`` in slices of ``size``, for ``$in`` lists (see the module docstring)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def durable(collection: AsyncCollection[_D]) -> AsyncCollection[_D]:
    """``collection`` with a write concern that waits for the journal.

    Use it for every write that backs an acknowledgement to someone else (a 200 to WeCom, a
    ``code: 0`` to a puppet): the write must survive a crash the moment we answer.
    """
    return collection.with_options(write_concern=_DURABLE)


def client_options(settings: Settings) -> dict[str, Any]:
    """The driver's timeouts, unless ``MONGO_URI`` sets them itself (its query string wins).

    ``timeoutMS`` (``WXKF_DB_TIMEOUT``) bounds each operation as a whole: server selection, the wait
    for a pooled connection, the network round trips and (as ``maxTimeMS``) the server's own work. It
    is per operation: iterating a cursor gives each batch its own deadline, but ``to_list()`` is one
    operation under one deadline, so iterate a large result instead.
    """
    wanted = {
        "timeoutMS": int(settings.wxkf_db_timeout * 1000),
        "serverSelectionTimeoutMS": int(min(SERVER_SELECTION_TIMEOUT, settings.wxkf_db_timeout) * 1000),
        "connectTimeoutMS": int(CONNECT_TIMEOUT * 1000),
        "heartbeatFrequencyMS": int(HEARTBEAT_INTERVAL * 1000),
    }
    given = {name.lower() for name, _ in parse_qsl(urlsplit(settings.mongo_uri or "").query)}
    return {name: value for name, value in wanted.items() if name.lower() not in given}


@dataclass
class DatabaseState:
    """What this process knows about its database without asking it (for ``/healthz``), and the
    client to ask it with (for ``/readyz``)."""

    client: AsyncMongoClient[Document]
    embedded: EmbeddedMongo | None = None
    failure: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def known_problem(self) -> str | None:
        """What the embedded server's supervisor knows to be wrong (it gave up, or is restarting a
        server that exited or fails reads), else None. A line without secrets or addresses: it is
        shown to unauthenticated callers."""
        if self.failure.done():
            return self.failure.result()
        if self.embedded is not None:
            return self.embedded.problem
        return None

    def problem(self) -> str | None:
        """:meth:`known_problem`, else whether the driver's last look (heartbeats, failed operations)
        found no server to write to."""
        known = self.known_problem()
        if known is None and not self.client.topology_description.has_writable_server():
            return "no writable database server seen by the driver"
        return known


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[tuple[Database, DatabaseState]]:
    """Yield the ``WXKF_DB_NAME`` database and its :class:`DatabaseState`, starting a supervised
    embedded server first if ``MONGO_URI`` is unset.

    The server is pinged before this yields, so a wrong URI fails at start, not on the first request.
    Datetimes come back timezone-aware (UTC).
    """
    async with AsyncExitStack() as stack:
        uri = settings.mongo_uri
        embedded = None
        if uri is None:
            delays = parse_delays(settings.wxkf_db_restart_delays)
            embedded = EmbeddedMongo(settings.wxkf_data_dir, supervise=True, restart_delays=delays)
            uri = await stack.enter_async_context(embedded)
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, tz_aware=True, **client_options(settings))
        stack.push_async_callback(client.close)
        try:
            await client.admin.command("ping")
        except PyMongoError as exc:
            raise DatabaseError(f"MONGO_URI: cannot reach the server: {exc}") from None
        state = DatabaseState(client, embedded)
        if embedded is not None:
            embedded.failure = state.failure
        yield client[settings.wxkf_db_name], state


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """:func:`connect`, for callers that need only the database."""
    async with connect(settings) as (db, _):
        yield db


class EmbeddedMongo:
    """A SecantusDB child process serving ``data_dir/db`` on a free 127.0.0.1 port.

    ``async with EmbeddedMongo(path) as uri:`` yields a ``mongodb://`` URI. The server's output goes to
    ``data_dir/secantusd.log`` (the previous run's is kept as ``.1``); start-up errors quote its tail.
    Operators may tune the server (``cache_size`` ...) in ``data_dir/secantusd.toml``; our flags win.

    With ``supervise=True`` a task watches the child: when it exits, or fails every read probe for
    ``unresponsive_after`` seconds (hung, stopped, or its storage engine panicked, e.g. on a full disk:
    it then fails every operation until restarted), it is killed and started again on the same port
    (so clients reconnect by themselves) after each of ``restart_delays`` in turn. :attr:`problem` says
    what is wrong meanwhile. When every attempt has failed, :attr:`failure` is resolved with the
    reason and supervision ends; the owner is expected to exit non-zero.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        supervise: bool = False,
        restart_delays: Sequence[float] = RESTART_DELAYS,
        probe_interval: float = PROBE_INTERVAL,
        unresponsive_after: float = UNRESPONSIVE_AFTER,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.supervise = supervise
        self.restart_delays = tuple(restart_delays)
        self.probe_interval = probe_interval
        self.unresponsive_after = unresponsive_after
        self.uri: str | None = None
        self.problem: str | None = None
        self.failure: asyncio.Future[str] | None = None
        self._port: int | None = None
        self._lock_fd: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    async def __aenter__(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = _lock_data_dir(self.data_dir / LOCK_FILE)
        try:
            self.uri = await self._start()
        except BaseException:
            await self._stop()
            raise
        if self.supervise:
            self.failure = self.failure or asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.create_task(self._supervise(), name="embedded database supervisor")
        return self.uri

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _start(self, port: int = 0) -> str:
        """Start the server (on ``port``; 0: a free one) and wait until it answers a ping."""
        config = self.data_dir / CONFIG_FILE
        if not config.exists():
            # Passing --config turns off the server's search of ./ ~/.secantus /etc for one.
            config.write_text("# SecantusDB settings for this data dir; wxkf's flags override them.\n")
        if port == 0 and self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(LOG_FILE + ".1"))
        argv = [
            _server_executable(),
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--storage-path", str(self.data_dir / "db"),
            "--sync-on-commit",
            "--standalone",
        ]  # fmt: skip
        # A restart appends to the log (the crash it follows stays readable) and looks for its own
        # "listening" line after what was there.
        with self.log_path.open("ab") as log_file:
            log_start = log_file.tell()
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                # Own session (so its own process group): a terminal's Ctrl-C reaches only us, and we stop
                # the server in order. Not process_group=0, which uvloop's subprocess_exec does not take.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        self._port = await self._wait_for_port(log_start)
        # No retryable writes: SecantusDB keeps every retryable write's reply for 30 min and rescans
        # that map on each write (11 ms per insert past 10,000 of them; docs/benchmarks.md). Over
        # loopback to our own child a retry buys little; every caller handles a failed write anyway.
        uri = f"mongodb://127.0.0.1:{self._port}/?directConnection=true&retryWrites=false"
        await self._wait_for_ping(uri)
        return uri

    async def _wait_for_port(self, log_start: int) -> int:
        """Poll the log for the "listening" line: with ``--port 0`` it is the only way to learn the port."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            match = _LISTENING.search(_read_from(self.log_path, log_start))
            if match:
                return int(match.group(2))
            if self._process.returncode is not None:
                raise self._failure(f"exited with status {self._process.returncode}")
            if time.monotonic() > deadline:
                raise self._failure(f"did not report its port within {self.start_timeout:g}s")
            await _exited(self._process, 0.05)

    async def _wait_for_ping(self, uri: str) -> None:
        timeout_ms = int(self.start_timeout * 1000)
        client: AsyncMongoClient[Document] = AsyncMongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
        try:
            await client.admin.command("ping")
        except PyMongoError as exc:
            raise self._failure(f"does not answer ping at {uri}: {exc}") from None
        finally:
            await client.close()

    def _failure(self, what: str) -> DatabaseError:
        tail = _tail(self.log_path)
        return DatabaseError(f"embedded SecantusDB in {self.data_dir} {what}; end of {LOG_FILE}:\n{tail}")

    # -- supervision ---------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Watch the child; restart it after each failure; give up (resolving :attr:`failure`) when a
        failure outlasts every restart attempt. Restarts count as one incident until the server has
        run ``STABLE_AFTER`` seconds."""
        assert self.failure is not None and self._port is not None
        attempts = 0
        up_since = time.monotonic()
        while True:
            reason = await self._watch()
            if time.monotonic() - up_since > STABLE_AFTER:
                attempts = 0
            last_line = _tail(self.log_path, 1)
            log.error(
                "embedded SecantusDB (pid %s) %s; restarting it (%s ends: %s)",
                self.pid,
                reason,
                self.log_path,
                last_line,
            )
            await self._kill()
            while True:
                if attempts == len(self.restart_delays):
                    message = f"embedded database could not be restarted ({attempts} attempts): {reason}"
                    self.problem = message
                    log.critical("%s; giving up (see %s)", message, self.log_path)
                    self.failure.set_result(message)
                    return
                delay = self.restart_delays[attempts]
                attempts += 1
                self.problem = f"embedded database {reason}; restart {attempts} of {len(self.restart_delays)}"
                await asyncio.sleep(delay)
                try:
                    await self._start(self._port)
                except DatabaseError as exc:
                    await self._kill()
                    reason = f"failed to restart: {str(exc).splitlines()[0]}"
                    log.error("restart %d of %d %s", attempts, len(self.restart_delays), reason)
                    continue
                break
            self.problem = None
            up_since = time.monotonic()
            log.warning(
                "embedded SecantusDB is back (pid %s, port %s, restart %d)", self.pid, self._port, attempts
            )

    async def _watch(self) -> str:
        """Return why the server needs a restart: it exited, or failed every probe for too long.

        The probe is a read, not a ping: after a storage panic the server still answers pings.
        """
        process = self._process
        assert process is not None and self.uri is not None
        timeout_ms = int(PROBE_TIMEOUT * 1000)
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            self.uri, timeoutMS=timeout_ms, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
        )
        answered = time.monotonic()
        try:
            while True:
                if await _exited(process, self.probe_interval):
                    return f"exited ({_describe_status(process.returncode)})"
                try:
                    await client[PROBE_DB].probe.find_one({"_id": "probe"})
                except PyMongoError as exc:
                    silent = time.monotonic() - answered
                    self.problem = f"embedded database failing reads for {silent:.0f}s"
                    if silent >= self.unresponsive_after:
                        return f"failed every read for {silent:.0f}s (last: {str(exc).splitlines()[0][:200]})"
                else:
                    answered = time.monotonic()
                    self.problem = None
        finally:
            await client.close()

    async def _kill(self) -> None:
        """SIGKILL the child (a hung or panicked server may not stop on SIGTERM) and reap it."""
        process = self._process
        if process is not None and process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _stop(self) -> None:
        """End supervision; SIGTERM (the server closes WiredTiger cleanly), SIGKILL after
        ``stop_timeout``; then unlock."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await stop_tasks([supervisor])  # PyMongo may absorb one cancellation (wxkf.tasks)
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                with suppress(ProcessLookupError):
                    process.terminate()
                if not await _exited(process, 0.1):
                    await self._wake_accept_loop()
                if not await _exited(process, self.stop_timeout):
                    log.warning("embedded SecantusDB did not stop within %gs; killing it", self.stop_timeout)
                    with suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        finally:
            self.uri = self._port = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None

    async def _wake_accept_loop(self) -> None:
        """Connect once, so the server's stop takes ~0.1 s instead of 2.

        Its accept thread blocks in ``accept()``, which closing the listening socket does not interrupt on
        Linux, and its stop waits 2 s for that thread. A connection returns ``accept()``; the thread then
        sees the stop flag. If we came too early, the stop is just slower.
        """
        if self._port is None:
            return
        with suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", self._port)
            writer.close()


def _describe_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"status {returncode}"


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")


async def _exited(process: asyncio.subprocess.Process, within: float) -> bool:
    """Wait up to ``within`` seconds for ``process`` to end; whether it did."""
    return await finished_within(process.wait(), within)


def _lock_data_dir(path: Path) -> int:
    """Take the data dir's exclusive lock and write our pid into it; the open fd is the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirLocked(
            f"data dir {path.parent} is in use by another wxkf process (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _server_executable() -> str:
    """``secantusd-py`` from our own environment (a venv need not be on PATH), else from PATH."""
    beside = Path(sys.executable).parent / SERVER_SCRIPT
    if beside.exists():
        return str(beside)
    found = shutil.which(SERVER_SCRIPT)
    if found is None:
        raise DatabaseError(f"{SERVER_SCRIPT} is not beside {sys.executable} nor on PATH; install SecantusDB")
    return found


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when we die, so a killed wxkf leaves no server behind.

    SIGKILL, not SIGTERM: SecantusDB's SIGTERM handler can deadlock on its own stop event when a signal
    arrives while it is waiting (seen once: an orphaned server stuck in ``Event.set`` inside its handler,
    for half an hour), and with its journal synced on commit a SIGKILL loses nothing acknowledged
    (``tests/infra/test_database.py``). Our parent is gone uncleanly anyway when this fires.

    Best effort: the signal follows the *thread* that started the child, and other systems have no such call.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl  # loaded before fork: the child only calls it
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
