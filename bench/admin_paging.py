"""What one page of ``GET /admin/accounts/{corp_id}/{open_kfid}/events`` costs on the embedded server.

``python -m bench.admin_paging [--events 10000] [--limit 100]``: one account with ``--events`` logged
events next to another account with as many, in a fresh embedded SecantusDB; the page query of
:meth:`manager.mailbox.MailboxStore.events` timed from the first event, the middle and near the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from manager.mailbox import DECRYPTED, EVENTS, Latest, MailboxStore, account_key, arrival_key
from wxkf.database import EmbeddedMongo

START = 1_800_000_000.0


def event(open_kfid: str, n: int) -> dict[str, Any]:
    event_id = f"{open_kfid}-{n:07d}"
    latest = Latest(event_id, arrival_key(START + n, event_id), DECRYPTED, token="t")
    key = account_key("wwbench", open_kfid)
    return {"_id": event_id, "account": key, "corp_id": "wwbench", "open_kfid": open_kfid, **latest.to_doc()}


async def run(events: int, limit: int, repeat: int = 5) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with EmbeddedMongo(Path(data_dir)) as uri:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
            store = MailboxStore(client["bench"], owner="bench")
            await store.ensure_indexes()
            for open_kfid in ("wkPaged", "wkOther"):
                for start in range(0, events, 1000):
                    batch = [event(open_kfid, n) for n in range(start, min(start + 1000, events))]
                    await client["bench"][EVENTS].insert_many(batch)
            key = account_key("wwbench", "wkPaged")
            print(f"{events} events of one account (and {events} of another), pages of {limit}")
            for label, position in (
                ("first page", 0),
                ("from the middle", events // 2),
                ("near the end", events - 2 * limit),
            ):
                after = "" if position == 0 else event("wkPaged", position - 1)["arrival"]
                started = time.perf_counter()
                for _ in range(repeat):
                    page = await store.events(key, after, limit)
                elapsed = (time.perf_counter() - started) / repeat
                remaining = events - position
                print(
                    f"  {label:16s} {remaining:7d} after the cursor: {elapsed * 1000:7.1f} ms ({len(page)})"
                )
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.events, args.limit))


if __name__ == "__main__":
    main()
