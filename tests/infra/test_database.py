"""The embedded SecantusDB: start, lock, durability, clean exit, and the open_database entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from tests.support.processes import is_running, wait_for_exit
from wxkf.database import (
    Database,
    DatabaseError,
    DataDirLocked,
    Document,
    EmbeddedMongo,
    durable,
    open_database,
    up_to,
)
from wxkf.settings import Settings, load_settings

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
