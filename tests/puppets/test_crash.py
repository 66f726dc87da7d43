"""A puppet SIGKILLed in the middle of a burst loses nothing and answers nothing twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator import SimConfig
from tests.puppets.conftest import SIM_CONFIG, Corp, PuppetProcess, wait_until

CUSTOMERS = ("wmBOB", "wmCAROL", "wmDAVE")


@pytest.fixture
def sim_config() -> SimConfig:
    return SIM_CONFIG.model_copy(update={"send_limit": 1000})  # two replies per message, bursts


def read(journal: Path) -> list[list[str]]:
    return [line.split(" ", 4) for line in journal.read_text().splitlines()] if journal.exists() else []


async def test_a_puppet_killed_mid_burst_and_restarted_loses_nothing_and_answers_nothing_twice(
    corp: Corp, make_puppet: Callable[..., PuppetProcess], puppet_env: dict[str, str], tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    puppet_env["PUPPET_TEST_JOURNAL"] = str(journal)
    puppet = make_puppet("tests.puppets.bots:slow")
    await puppet.start()
    await corp.set_callback(puppet.url + "/callback")
    texts = [f"m{n}" for n in range(12)]
    for n, text in enumerate(texts):
        await corp.says(text, CUSTOMERS[n % 3])

    async def mid_handling() -> bool:
        lines = read(journal)
        starts = [line for line in lines if line[0] == "start"]
        ended = {line[1] for line in lines if line[0] == "end"}
        return len(starts) >= 4 and any(line[1] not in ended for line in starts)

    await wait_until(mid_handling, what="handlers running")
    puppet.kill()
    late = [f"late{n}" for n in range(3)]
    for n, text in enumerate(late):  # while it is down: WeCom's callbacks fail and are given up
        await corp.says(text, CUSTOMERS[n % 3])
    await puppet.start()

    everything = texts + late

    async def all_ended() -> bool:
        return {line[-1] for line in read(journal) if line[0] == "end"} >= set(everything)

    await wait_until(all_ended, timeout=60, what="every message handled")
    lines = read(journal)
    starts = [line for line in lines if line[0] == "start"]
    per_msgid = Counter(line[1] for line in starts)
    redelivered = {line[1] for line in starts if line[2] == "1"}
    assert redelivered, "the kill should have cut a handler off"
    assert len(redelivered) <= len(CUSTOMERS)  # at most the one running per customer
    for line in starts:
        assert per_msgid[line[1]] == 1 or line[1] in redelivered
    assert all(count <= 2 for count in per_msgid.values())
    for n, customer in enumerate(CUSTOMERS):
        mine = [text for i, text in enumerate(texts) if i % 3 == n] + [
            t for i, t in enumerate(late) if i % 3 == n
        ]
        expected = [reply for text in mine for reply in (f"got: {text}", f"done: {text}")]
        assert await corp.received(customer) == expected  # each reply once, in order


async def test_sigterm_lets_the_running_handler_finish_before_the_puppet_exits(
    corp: Corp, make_puppet: Callable[..., PuppetProcess], puppet_env: dict[str, str], tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    puppet_env.update(PUPPET_TEST_JOURNAL=str(journal), PUPPET_TEST_WORK="1.0")
    puppet = make_puppet("tests.puppets.bots:slow")
    await puppet.start()
    await corp.set_callback(puppet.url + "/callback")
    await corp.says("finish me")

    async def started() -> bool:
        return any(line[0] == "start" for line in read(journal))

    await wait_until(started, what="the handler to start")
    assert await puppet.terminate() == 0
    assert [line[0] for line in read(journal)] == ["start", "end"]
    assert await corp.received() == ["got: finish me", "done: finish me"]
    await puppet.start()  # nothing left over: the message is not handed to the bot again
    await corp.says("next")
    await corp.wait_received(4)
    assert [line[-1] for line in read(journal) if line[0] == "start"] == ["finish me", "next"]
