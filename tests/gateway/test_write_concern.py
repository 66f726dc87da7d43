"""A stored callback is acknowledged only once its write met its write concern (w=majority, j=true)."""

from __future__ import annotations

import json

from tests.gateway.conftest import RunningGateway
from tests.gateway.test_gateway import post_callback
from tests.support.wecom_callbacks import kf_event_xml
from tests.support.write_concern import MissesWriteConcern
from wxkf.group_commit import GroupCommit


async def test_a_missed_write_concern_answers_503_and_the_retry_is_forwarded(gw: RunningGateway) -> None:
    inbox = gw.gateway.inbox
    inbox._writer = GroupCommit(MissesWriteConcern(inbox._collection))  # type: ignore[arg-type]
    plaintext = kf_event_xml(gw.keys.corp_id, "wkAAA", "after-stepdown", create_time=1700000000)

    first = await post_callback(gw, plaintext)
    # the primary stepped down before the write reached a majority: it may be rolled back
    assert first.status_code == 503
    assert gw.gateway.forwarder.backlog == 0  # nothing forwarded on the strength of that write

    retry = await post_callback(gw, plaintext)  # WeCom retries the same callback
    assert retry.status_code == 200
    # the document the failed batch left is found as a duplicate, and still forwarded
    [delivery] = await gw.listener.wait_for(1)
    assert json.loads(delivery["body"])["token"] == "after-stepdown"
    assert await inbox._collection.count_documents({"token": "after-stepdown"}) == 1
