"""A puppet that WeCom calls directly (no hub), SIGKILLed in the middle of a burst, loses nothing and
answers nothing twice; SIGTERM lets the running handler finish. The 200-item chaos test through a hub
is ``test_chaos.py``."""

from __future__ import annotations

from pathlib import Path

from tests.support.crash import (
    assert_answered_once,
    assert_handled_once_in_order,
    crash_rig,
    hang,
    message,
    mixed,
)
from wxkf.settings import Settings

CUSTOMERS = ("wmBOB", "wmCAROL", "wmDAVE")


async def test_a_puppet_killed_mid_burst_and_restarted_loses_nothing_and_answers_nothing_twice(
    tmp_path: Path, settings: Settings
) -> None:
    async with crash_rig(tmp_path, settings, "direct", customers=CUSTOMERS) as rig:
        burst = mixed(15, rig.customers)
        burst[7] = (burst[7][0], hang())
        hung = (await rig.write_all(burst))[7]["msgid"]
        await rig.until(lambda journal: hung in journal.started(), "the hang to start")
        rig.kill_puppet()
        # while it is down: WeCom's callbacks fail and are given up; the restart catches up
        await rig.write_all(mixed(6, rig.customers, start=15))
        await rig.start_puppet()
        await rig.all_handled()
        assert_handled_once_in_order(rig, hung=[hung])
        await assert_answered_once(rig)


async def test_sigterm_lets_the_running_handler_finish_before_the_puppet_exits(
    tmp_path: Path, settings: Settings
) -> None:
    async with crash_rig(tmp_path, settings, "direct", work=1.0) as rig:
        first = (await rig.write("wmBOB", message("text", "TextMessage", content="finish me")))["msgid"]
        await rig.until(lambda journal: first in journal.started(), "the handler to start")
        assert await rig.puppet.terminate() == 0
        assert [line["at"] for line in rig.journal.lines()] == ["start", "end"]
        assert await rig.corp.received("wmBOB") == [f"got: {first}", f"done: {first}"]
        await rig.start_puppet()  # nothing left over: the message is not handed to the bot again
        await rig.write("wmBOB", message("text", "TextMessage", content="next"))
        await rig.all_handled()
        assert_handled_once_in_order(rig)
        await assert_answered_once(rig)
