"""Over the socket, a puppet SIGKILLed mid-burst and a hub SIGKILLed and restarted lose nothing and
answer nothing twice (the issue's crash test, on the WebSocket transport, through a real ``wxkf up``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator import SimConfig
from tests.puppets.conftest import SIM_CONFIG, Corp, PuppetProcess, wait_until
from tests.support.services import ServiceProcess

CUSTOMERS = ("wmBOB", "wmCAROL", "wmDAVE")


@pytest.fixture
def sim_config() -> SimConfig:
    return SIM_CONFIG.model_copy(update={"send_limit": 1000})  # two replies per message, bursts


def read(journal: Path) -> list[list[str]]:
    return [line.split(" ", 4) for line in journal.read_text().splitlines()] if journal.exists() else []


async def test_puppet_and_hub_killed_over_the_socket_lose_nothing_and_answer_nothing_twice(
    corp: Corp,
    hub: ServiceProcess,
    socket_puppet: Callable[..., PuppetProcess],
    puppet_env: dict[str, str],
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    puppet_env["PUPPET_TEST_JOURNAL"] = str(journal)
    await corp.set_callback(f"{hub.url}/callback/{corp.corpid}")
    puppet = socket_puppet(hub, [corp], "tests.puppets.bots:slow")
    await puppet.start()

    async def proven(times: int) -> bool:
        return puppet.log().count("over the manager's socket") >= times

    await wait_until(lambda: proven(1), what="the proof over the socket")
    burst = [f"m{n}" for n in range(12)]
    for n, text in enumerate(burst):
        await corp.says(text, CUSTOMERS[n % 3])

    async def mid_handling() -> bool:
        lines = read(journal)
        starts = [line for line in lines if line[0] == "start"]
        ended = {line[1] for line in lines if line[0] == "end"}
        return len(starts) >= 4 and any(line[1] not in ended for line in starts)

    await wait_until(mid_handling, what="handlers running")
    puppet.kill()
    # the hub accepts these and finds no socket: the account goes offline, its mailbox waits
    while_puppet_down = [f"late{n}" for n in range(3)]
    for n, text in enumerate(while_puppet_down):
        await corp.says(text, CUSTOMERS[n % 3])
    await puppet.start()
    await wait_until(lambda: proven(2), what="the restarted puppet's proof")
    hub.kill()
    # WeCom's retries all fail while the hub is down: these callbacks are lost for good
    while_hub_down = [f"dark{n}" for n in range(3)]
    for n, text in enumerate(while_hub_down):
        await corp.says(text, CUSTOMERS[n % 3], wait=True)
    await hub.start()
    await wait_until(lambda: proven(3), timeout=60, what="the proof after the hub's restart")
    everything = burst + while_puppet_down + while_hub_down

    async def all_ended() -> bool:
        return {line[-1] for line in read(journal) if line[0] == "end"} >= set(everything)

    await wait_until(all_ended, timeout=60, what="every message handled")
    starts = [line for line in read(journal) if line[0] == "start"]
    per_msgid = Counter(line[1] for line in starts)
    redelivered = {line[1] for line in starts if line[2] == "1"}
    assert redelivered, "the kill should have cut a handler off"
    assert len(redelivered) <= len(CUSTOMERS)  # at most the one running per customer
    for line in starts:
        assert per_msgid[line[1]] == 1 or line[1] in redelivered
    for n, customer in enumerate(CUSTOMERS):
        mine = [text for i, text in enumerate(everything) if i % 3 == n]
        expected = [reply for text in mine for reply in (f"got: {text}", f"done: {text}")]
        assert await corp.received(customer) == expected  # each reply once, in order
