"""A stored callback is acknowledged only once its write met its write concern (w=majority, j=true)."""

from __future__ import annotations

import json

import pytest
from pymongo.errors import WriteConcernError

from tests.gateway.conftest import RunningGateway, make_gateway
from tests.gateway.test_gateway import opened, post_callback
from tests.support.recorder import Recorder
from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml
from tests.support.write_concern import MissesWriteConcern
from wxkf.group_commit import GroupCommit
from wxkf.runtime import Runtime


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


async def test_a_store_that_failed_on_one_replica_is_forwarded_when_the_retry_went_to_another(
    runtime: Runtime, listener: tuple[Recorder, str], keys: CorpAppKeys
) -> None:
    recorder, url = listener
    # a fast liveness pass on the replica whose write missed its write concern
    first = make_gateway(runtime, url, replica="gw-a", heartbeat_interval=0.05)
    second = make_gateway(runtime, url, replica="gw-b")
    first.inbox._writer = GroupCommit(MissesWriteConcern(first.inbox._collection))  # type: ignore[arg-type]
    await first.start()
    await second.start()
    try:
        await first.registry.add(keys.corp_id, None, keys.token, keys.aes_key)
        await second.registry.reload()
        plaintext = kf_event_xml(keys.corp_id, "wkAAA", "across-replicas", create_time=1700000000)
        with pytest.raises(WriteConcernError):  # WeCom gets a 503 from gw-a...
            await first.accept(await opened(first.registry, keys, plaintext))
        # ...and its retry reaches gw-b, which finds gw-a's document: a duplicate, not its to forward
        assert await second.accept(await opened(second.registry, keys, plaintext)) is False
        # gw-a learns at its next liveness pass that the failed store is on disk, and forwards it
        [delivery] = await recorder.wait_for(1)
        assert json.loads(delivery["body"])["token"] == "across-replicas"
    finally:
        await first.stop()
        await second.stop()
