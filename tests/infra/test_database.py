"""The embedded SecantusDB: start, lock, durability, clean exit, supervision (restart after a crash, a
hang or a storage panic; giving up), operation deadlines, and the open_database entry point.

Every failure is real: the child is SIGKILLed or SIGSTOPped through its pid, and the panic comes from a
full tmpfs (mounted for the test; this needs root, as CI runs)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pymongo
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from tests.support.processes import is_running, stopped, wait_for_exit
from wxkf.database import (
    Database,
    DatabaseError,
    DataDirLocked,
    Document,
    EmbeddedMongo,
    client_options,
    connect,
    durable,
    open_database,
    up_to,
)
from wxkf.settings import Settings, load_settings
from wxkf.tasks import stop_tasks

EXIT_TIMEOUT = 30.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def test_session_server_round_trip(db: Database) -> None:
    await durable(db.items).insert_one({"_id": "a", "n": 1})
    assert await db.items.find_one({"_id": "a"}) == {"_id": "a", "n": 1}


def test_durable_waits_for_the_journal(db: Database) -> None:
    concern = durable(db.items).write_concern
    assert concern.document == {"w": "majority", "j": True}
    assert db.items.write_concern.document == {}  # the original collection is unchanged


async def test_up_to_matches_what_a_one_sided_range_matches(db: Database) -> None:
    """Both ends of the range are explicit (for SecantusDB's index scans) without changing the answer."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    await db.ranges.create_index("at")
    await db.ranges.insert_many(
        [
            {"_id": "null", "at": None},
            {"_id": "missing"},
            {"_id": "negative", "at": -5.0},
            {"_id": "zero", "at": 0},
            {"_id": "limit", "at": 10.0},
            {"_id": "above", "at": 10.5},
            {"_id": "early", "at": datetime(1970, 1, 1, tzinfo=UTC)},
            {"_id": "date-limit", "at": when},
            {"_id": "text", "at": "9"},
        ]
    )

    async def ids(query: dict[str, object]) -> set[str]:
        return {doc["_id"] async for doc in db.ranges.find({"at": query})}

    assert await ids(up_to(10.0)) == await ids({"$lte": 10.0}) == {"negative", "zero", "limit"}
    assert await ids(up_to(10.0, inclusive=False)) == {"negative", "zero"}
    assert await ids(up_to(when)) == {"early", "date-limit"}
    assert await ids(up_to(when, inclusive=False)) == await ids({"$lt": when}) == {"early"}


async def test_second_instance_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    async with EmbeddedMongo(tmp_path):
        with pytest.raises(DataDirLocked) as refused:
            async with EmbeddedMongo(tmp_path):
                pass
    assert str(tmp_path) in str(refused.value)
    assert f"pid {os.getpid()}" in str(refused.value)


async def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    async with EmbeddedMongo(tmp_path) as uri, _client(uri) as client:
        await durable(client.wxkf.items).insert_one({"_id": "kept"})
    async with EmbeddedMongo(tmp_path) as uri, _client(uri) as client:
        assert await client.wxkf.items.find_one({"_id": "kept"}) == {"_id": "kept"}


async def test_acknowledged_write_survives_sigkill_of_the_server(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    async with mongo as uri, _client(uri) as client:
        await durable(client.wxkf.items).insert_one({"_id": "acked"})
        assert mongo.pid is not None
        os.kill(mongo.pid, signal.SIGKILL)
    async with EmbeddedMongo(tmp_path) as uri, _client(uri) as client:
        assert await client.wxkf.items.find_one({"_id": "acked"}) == {"_id": "acked"}


async def test_server_stops_on_exit(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)
    async with mongo:
        pid = mongo.pid
        assert pid is not None and is_running(pid)
    assert not is_running(pid)
    assert mongo.pid is None


async def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL leaves the parent no chance to clean up; PR_SET_PDEATHSIG stops the server anyway."""
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from wxkf.database import EmbeddedMongo

        async def main():
            mongo = EmbeddedMongo(pathlib.Path({str(tmp_path)!r}))
            async with mongo:
                print(mongo.pid, flush=True)
                await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=PROJECT_ROOT
    )
    try:
        assert parent.stdout is not None
        server_pid = int(await asyncio.wait_for(parent.stdout.readline(), EXIT_TIMEOUT))
        assert is_running(server_pid)
    finally:
        parent.kill()
        await parent.wait()
    assert await asyncio.to_thread(wait_for_exit, server_pid, EXIT_TIMEOUT)
    async with EmbeddedMongo(tmp_path):  # the data dir is free again
        pass


async def test_start_failure_quotes_the_server_log(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("not a directory")
    with pytest.raises(DatabaseError) as failed:
        async with EmbeddedMongo(tmp_path):
            pass
    assert "exited with status" in str(failed.value)
    assert "FileExistsError" in str(failed.value)
    async with EmbeddedMongo(tmp_path / "other"):  # the failed start released what it held
        pass


async def test_open_database_starts_embedded_server_without_mongo_uri(tmp_path: Path) -> None:
    settings = load_settings(mongo_uri=None, wxkf_data_dir=tmp_path, wxkf_db_name="hub")
    async with open_database(settings) as db:
        assert db.name == "hub"
        await durable(db.items).insert_one({"_id": 1})
        with pytest.raises(DataDirLocked):
            async with open_database(settings):
                pass
    async with open_database(settings) as db:
        assert await db.items.find_one({"_id": 1}) == {"_id": 1}


async def test_open_database_uses_mongo_uri(settings: Settings, db: Database) -> None:
    await db.items.insert_one({"_id": "seen"})
    async with open_database(settings) as opened:
        assert opened.name == db.name
        assert await opened.items.find_one({"_id": "seen"}) == {"_id": "seen"}
    assert not (settings.wxkf_data_dir / "wxkf.lock").exists()  # no embedded server was started


async def test_open_database_unreachable_uri_fails_at_start() -> None:
    settings = load_settings(mongo_uri="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")
    with pytest.raises(DatabaseError, match="MONGO_URI: cannot reach"):
        async with open_database(settings):
            pass


def _client(uri: str) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(uri)


# -- supervision -----------------------------------------------------------------------------------

QUICK_RESTARTS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
RECOVERY_TIMEOUT = 60.0


def supervised(data_dir: Path, **options: object) -> EmbeddedMongo:
    return EmbeddedMongo(
        data_dir,
        supervise=True,
        restart_delays=options.pop("restart_delays", QUICK_RESTARTS),  # type: ignore[arg-type]
        probe_interval=0.2,
        unresponsive_after=options.pop("unresponsive_after", 1.0),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def write_when_back(uri: str, doc: Document) -> None:
    """A durable write, waiting (in the driver's server selection, bounded) until the server takes it."""
    async with _client(uri) as client:
        with pymongo.timeout(RECOVERY_TIMEOUT):
            await durable(client.wxkf.items).insert_one(doc)


async def test_supervised_server_is_restarted_on_its_port_after_sigkill(tmp_path: Path) -> None:
    mongo = supervised(tmp_path)
    async with mongo as uri:
        await write_when_back(uri, {"_id": "before"})
        first = mongo.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await write_when_back(uri, {"_id": "after"})  # the same URI: same port, clients reconnect
        assert mongo.pid != first
        async with _client(uri) as client:
            assert await client.wxkf.items.count_documents({}) == 2  # nothing acknowledged was lost
        assert mongo.failure is not None and not mongo.failure.done()


async def test_hung_server_is_killed_and_restarted(tmp_path: Path) -> None:
    """SIGSTOP: the process lives but answers nothing; after ``unresponsive_after`` it is replaced."""
    mongo = supervised(tmp_path)
    async with mongo as uri:
        hung = mongo.pid
        assert hung is not None
        with stopped(hung):
            await write_when_back(uri, {"_id": "after the hang"})
            assert await asyncio.to_thread(wait_for_exit, hung, EXIT_TIMEOUT)
        assert mongo.pid != hung


async def test_supervisor_gives_up_when_the_server_cannot_start_again(tmp_path: Path) -> None:
    mongo = supervised(tmp_path, restart_delays=(0.05, 0.05, 0.05))
    async with mongo:
        assert mongo.pid is not None and mongo.failure is not None
        (tmp_path / "db").rename(tmp_path / "db.moved")
        (tmp_path / "db").write_text("not a directory")  # every restart now exits at once
        os.kill(mongo.pid, signal.SIGKILL)
        reason = await asyncio.wait_for(asyncio.shield(mongo.failure), RECOVERY_TIMEOUT)
    assert reason.startswith("embedded database could not be restarted (3 attempts)")
    assert "failed to restart" in reason
    assert mongo.problem == reason


@contextmanager
def small_tmpfs(path: Path, size: str = "64m") -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); a full disk cannot be made otherwise")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem holding ``path`` until ``leave`` bytes remain; returns the filler file."""
    free = os.statvfs(path)
    filler = path / "filler"
    with filler.open("wb") as out:
        remaining = free.f_bavail * free.f_frsize - leave
        block = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= out.write(block[: min(len(block), remaining)])
    return filler


async def test_server_recovers_from_a_storage_panic_once_space_is_freed(tmp_path: Path) -> None:
    """A full disk makes WiredTiger panic (WT_PANIC): the server lives on but fails every operation,
    even reads, until restarted. The supervisor's read probe sees it and restarts it; once there is
    space again, writes succeed with no manual restart."""
    with small_tmpfs(tmp_path / "fs") as fs:
        mongo = supervised(fs / "data", unresponsive_after=2.0, restart_delays=(0.2,) * 60)
        async with mongo as uri, _client(uri) as client:
            items = durable(client.wxkf.items)
            await items.insert_one({"_id": "before"})
            panicked = mongo.pid
            filler = fill(fs, leave=200_000)
            with pytest.raises(PyMongoError), pymongo.timeout(RECOVERY_TIMEOUT):
                for _ in range(1000):
                    await items.insert_many([{"pad": "x" * 1000} for _ in range(100)])
            with pytest.raises(PyMongoError):
                await client.wxkf.items.find_one({"_id": "before"})  # reads fail too: a panic
            filler.unlink()
            await write_when_back_retrying(uri, {"_id": "after"})
            assert mongo.pid != panicked
            assert await client.wxkf.items.find_one({"_id": "before"}) == {"_id": "before"}


async def write_when_back_retrying(uri: str, doc: Document) -> None:
    """Like :func:`write_when_back`, but a panicked server refuses writes at once instead of being
    unreachable: retry on its refusals, until the supervisor has replaced it (bounded)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    async with _client(uri) as client:
        while True:
            try:
                with pymongo.timeout(RECOVERY_TIMEOUT):
                    await durable(client.wxkf.items).insert_one(doc)
                return
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # a pause between refused writes, not a wait for an event


# -- operation deadlines ---------------------------------------------------------------------------


async def test_operations_fail_within_their_deadline_when_the_server_hangs(tmp_path: Path) -> None:
    """A stopped server used to hold every operation forever (no socket timeout); now each fails after
    ``WXKF_DB_TIMEOUT`` with the driver's timeout error, so a caller can answer 503 in time."""
    settings = load_settings(mongo_uri=None, wxkf_data_dir=tmp_path, wxkf_db_timeout=1.0)
    async with connect(settings) as (db, state):
        assert state.embedded is not None and state.embedded.pid is not None
        await durable(db.items).insert_one({"_id": "ok"})
        with stopped(state.embedded.pid):
            async with asyncio.timeout(EXIT_TIMEOUT):
                with pytest.raises(PyMongoError, match="timed out"):
                    await durable(db.items).insert_one({"_id": "hung"})
                with pytest.raises(PyMongoError, match="timed out"):
                    await db.items.find_one({"_id": "ok"})


async def test_stopping_ends_a_supervisor_that_absorbs_a_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyMongo on Python 3.11 can absorb the cancellation of the supervisor's probe (its lock waits on
    ``asyncio.wait_for``, which returns a result that arrives with the cancel); the stop then waited on
    the supervisor forever (a 300 s hang in CI). Now it cancels again until the supervisor has ended,
    and the server is stopped."""
    absorbed = 0
    probing = asyncio.Event()

    async def probe_absorbing_one_cancellation(self: EmbeddedMongo) -> str:
        nonlocal absorbed
        probing.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if absorbed:
                    raise
                absorbed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    monkeypatch.setattr(EmbeddedMongo, "_watch", probe_absorbing_one_cancellation)
    mongo = EmbeddedMongo(tmp_path, supervise=True)
    await mongo.__aenter__()
    pid = mongo.pid
    assert pid is not None
    await probing.wait()
    stopping = asyncio.create_task(mongo.__aexit__(None, None, None))
    finished, _ = await asyncio.wait({stopping}, timeout=EXIT_TIMEOUT)
    if not finished:  # leave no server behind: a second cancel lets the old stop go on
        await stop_tasks([stopping])
    assert finished, "the stop waited on a supervisor that had absorbed its cancellation"
    assert absorbed == 1
    assert not is_running(pid)


def test_client_options_bound_every_operation_unless_the_uri_sets_its_own() -> None:
    options = client_options(load_settings(mongo_uri=None, wxkf_db_timeout=3.0))
    assert options["timeoutMS"] == 3000
    assert options["serverSelectionTimeoutMS"] == 2000
    assert options["connectTimeoutMS"] == 2000
    uri = "mongodb://db:27017/?replicaSet=rs0&timeoutMS=8000&ServerSelectionTimeoutMS=9000"
    given = client_options(load_settings(mongo_uri=uri, wxkf_db_timeout=3.0))
    assert "timeoutMS" not in given and "serverSelectionTimeoutMS" not in given
    assert given["connectTimeoutMS"] == 2000
    assert (
        client_options(load_settings(mongo_uri=None, wxkf_db_timeout=0.5))["serverSelectionTimeoutMS"] == 500
    )
