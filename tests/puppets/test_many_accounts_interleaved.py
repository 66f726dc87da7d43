"""Twenty accounts in one ``wxkf puppet`` process with interleaved traffic: every message reaches the
handler of its own account and customer once, every reply comes from the account the customer wrote
to, and one customer's slow handler holds up no one else (not even that customer at another account).

The slow handler waits for an event that only a later message (``release``) sets, so "everyone else
was answered while it was still running" is an ordering fact, not a timing guess.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

from puppets import Bot, TextMessage
from tests.puppets.conftest import Corp, PuppetProcess, wait_until
from tests.support.services import free_port

ACCOUNTS = [f"wkACC{index:02d}" for index in range(20)]
CUSTOMERS = [f"wmCUST{index}" for index in range(10)]
ROUNDS = 3

bot = Bot()
released = asyncio.Event()


def journal(line: str) -> None:
    with Path(os.environ["PUPPET_TEST_JOURNAL"]).open("a") as file:
        file.write(line + "\n")


@bot.on_text
async def answer(message: TextMessage) -> None:
    """Echo with the account and customer the puppet handed the message for; ``hold`` waits for
    ``release``, from anyone at any account."""
    journal(f"start {message.open_kfid} {message.customer} {message.text}")
    if message.text == "release":
        released.set()
    elif message.text == "hold":
        await released.wait()
    await message.reply(f"{message.open_kfid} {message.customer}: {message.text}")
    journal(f"end {message.open_kfid} {message.customer} {message.text}")


def pairs() -> list[tuple[str, str]]:
    """Each account hears from two customers; each customer writes to four accounts."""
    return [
        (kf, CUSTOMERS[(index + shift) % len(CUSTOMERS)])
        for index, kf in enumerate(ACCOUNTS)
        for shift in (0, 1)
    ]


async def test_twenty_accounts_interleaved_no_cross_talk_and_a_slow_customer_delays_no_one_else(
    corp: Corp, puppet_env: dict[str, str], tmp_path: Path
) -> None:
    for kf in ACCOUNTS:
        added = await corp.http.post(corp.control("/accounts"), json={"open_kfid": kf, "name": f"Desk {kf}"})
        assert added.is_success, added.text
    port = free_port()
    config = tmp_path / "puppets.toml"
    config.write_text(corp.config_toml(port).replace(f'accounts = ["{corp.kf}"]', f"accounts = {ACCOUNTS}"))
    journal_path = tmp_path / "journal"
    puppet = PuppetProcess(
        ["--bot", f"{__name__}:bot", "--config", str(config)],
        {**puppet_env, "PUPPET_TEST_JOURNAL": str(journal_path)},
        tmp_path / "puppet.log",
        port,
    )

    async def says(kf: str, customer: str, text: str) -> None:
        response = await corp.http.post(
            corp.control(f"/accounts/{kf}/messages"),
            json={"external_userid": customer, "msgtype": "text", "text": {"content": text}},
        )
        assert response.is_success, response.text

    async def received(kf: str, customer: str) -> list[str]:
        response = await corp.http.get(
            corp.control(f"/customers/{customer}/received"), params={"open_kfid": kf}
        )
        assert response.is_success, response.text
        return [item["text"]["content"] for item in response.json()["messages"]]

    def lines() -> list[str]:
        return journal_path.read_text().splitlines() if journal_path.exists() else []

    try:
        await puppet.start()
        assert "(20 account(s))" in puppet.log()
        await corp.set_callback(puppet.url + "/callback")
        slow_kf, other_kf = ACCOUNTS[0], ACCOUNTS[1]
        await says(slow_kf, "wmSLOW", "hold")
        await wait_until(lambda: _true(f"start {slow_kf} wmSLOW hold" in lines()), what="the slow handler")
        await says(slow_kf, "wmSLOW", "after hold")  # queued behind its own customer's slow handler
        await says(other_kf, "wmSLOW", "elsewhere")  # the same customer at another account is not
        for round_ in range(ROUNDS):
            await asyncio.gather(
                *(says(kf, customer, f"m{round_} {kf} {customer}") for kf, customer in pairs())
            )

        expected = {
            (kf, customer): [f"{kf} {customer}: m{round_} {kf} {customer}" for round_ in range(ROUNDS)]
            for kf, customer in pairs()
        }
        expected[(other_kf, "wmSLOW")] = [f"{other_kf} wmSLOW: elsewhere"]

        async def everyone_answered() -> bool:
            answers = await asyncio.gather(*(received(kf, customer) for kf, customer in expected))
            return all(len(got) >= len(want) for got, want in zip(answers, expected.values(), strict=True))

        await wait_until(everyone_answered, timeout=90, what="every other customer's replies")
        for (kf, customer), want in expected.items():
            assert await received(kf, customer) == want, (kf, customer)  # right account, in order, once
        # ... all while the slow handler was still running and its customer's next message waited
        assert f"end {slow_kf} wmSLOW hold" not in lines()
        assert f"start {slow_kf} wmSLOW after hold" not in lines()
        assert await received(slow_kf, "wmSLOW") == []

        await says(ACCOUNTS[7], CUSTOMERS[3], "release")

        async def slow_answered() -> list[str] | None:
            got = await received(slow_kf, "wmSLOW")
            return got if len(got) >= 2 else None

        assert await wait_until(slow_answered, what="the slow customer's replies") == [
            f"{slow_kf} wmSLOW: hold",
            f"{slow_kf} wmSLOW: after hold",
        ]
        # every message reached the handler of its own account and customer, exactly once
        starts = Counter(line.removeprefix("start ") for line in lines() if line.startswith("start "))
        assert all(count == 1 for count in starts.values()), starts.most_common(3)
        for entry in starts:
            kf, customer, text = entry.split(" ", 2)
            if text.startswith("m"):
                assert text.split(" ")[1:] == [kf, customer], entry
        assert len(starts) == len(pairs()) * ROUNDS + 4
    finally:
        puppet.stop()


async def _true(value: bool) -> bool:
    return value
