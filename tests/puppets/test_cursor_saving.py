"""Storing the sync cursor: behind the pull, after the items it covers, at most once per interval."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from puppets.pulling import Page, Puller


class Records:
    """The store's part the puller uses, in memory; ``events`` tells the order of writes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.saved: list[str] = []

    async def cursor(self, account: str) -> str | None:
        return None

    async def save_cursor(self, account: str, cursor: str) -> None:
        self.events.append(("cursor", cursor))
        self.saved.append(cursor)

    async def record(self, account: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        self.events.append(("record", [item["msgid"] for item in items]))
        return list(items)


def numbered_pages() -> Any:
    count = 0

    async def fetch(cursor: str | None, token: str | None) -> Page:
        nonlocal count
        count += 1
        return Page([{"msgid": f"m{count}"}], next_cursor=f"c{count}")

    return fetch


async def test_cursor_writes_are_spaced_and_flush_stores_the_newest() -> None:
    records = Records()
    delivered: list[str] = []
    puller = Puller(
        "wwcorp/wk",
        numbered_pages(),
        records,
        lambda items: delivered.extend(item["msgid"] for item in items),
        cursor_interval=3600.0,
    )
    task = asyncio.create_task(puller.run())
    try:
        await asyncio.wait_for(puller.caught_up.wait(), 10)  # the start-up pull: c1
        for token in ("t2", "t3"):  # two callbacks, one pull each
            puller.caught_up.clear()
            puller.callback(token)
            await asyncio.wait_for(puller.caught_up.wait(), 10)
        assert delivered == ["m1", "m2", "m3"]
        assert records.saved == ["c1"]  # c2 and c3 wait for the interval: one write, not one a pull
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await puller.flush()
    assert records.saved == ["c1", "c3"]  # the newest at once, c2 never
    # every cursor stored after the items it covers were recorded
    recorded = {msgid for kind, value in records.events if kind == "record" for msgid in value}
    for index, (kind, value) in enumerate(records.events):
        if kind == "cursor":
            covered = {f"m{n}" for n in range(1, int(value[1:]) + 1)}
            earlier = {m for k, v in records.events[:index] if k == "record" for m in v}
            assert covered <= earlier <= recorded
