"""The manager's intake acknowledges only writes that met their write concern, and a retry after a
failed one is delivered (the embedded server cannot miss a write concern: the error is injected)."""

from __future__ import annotations

import pytest
from pymongo.errors import WriteConcernError

from tests.manager.conftest import add_puppet, make_manager
from tests.support.recorder import Recorder
from tests.support.write_concern import MissesWriteConcern
from wxkf.group_commit import GroupCommit
from wxkf.runtime import Runtime

CORP = "wwconcern"


async def test_a_live_accounts_retry_after_a_missed_write_concern_is_delivered(
    runtime: Runtime, puppet_server: tuple[Recorder, str]
) -> None:
    puppet, url = puppet_server
    manager = make_manager(runtime)
    await manager.start()
    try:
        await add_puppet(manager, CORP, "wkA", url)
        mailboxes = manager.mailboxes
        mailboxes._event_writes = GroupCommit(MissesWriteConcern(mailboxes._events))  # type: ignore[arg-type]
        with pytest.raises(WriteConcernError):  # the route answers 503: nothing acknowledged
            await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1")
        # the retry finds the logged event; nobody owes its delivery, so this intake must
        assert await manager.accept_decrypted(CORP, "wkA", "tok-1", "event-1") is True
        await puppet.wait_for(1, timeout=10)
        assert puppet.tokens() == ["tok-1"]
    finally:
        await manager.stop()
