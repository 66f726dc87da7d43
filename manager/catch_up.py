"""After the hub was down: one more delivery of each account's newest callback, for puppets that do not
read ``upPeriod`` (the Node puppet).

While no manager replica runs, WeCom's callbacks fail, and after its few retries WeCom gives up on
them for good: the messages behind them wait in WeCom, and a puppet pulls them only when something
makes it pull. Our puppets follow the hub's up period (:mod:`wxkf.up_period`) and pull without a
token; a Node puppet pulls only on a callback (and on its own once-a-minute poll). So a manager that
starts with no other manager replica alive gives every account that had a callback shortly before
the outage that callback once more, as it came (the original XML and query, or ``{token,
openKfId}``): the puppet pulls from its own cursor with that callback's token, which brings in what
arrived meanwhile.

Only a real callback can do this: a kf callback's sync token is WeCom's, valid 10 minutes, and a
made-up one costs the Node puppet a pull that WeCom refuses (95007), after which it does not pull
without a token. So the catch-up covers accounts whose newest callback is at most
:data:`TOKEN_WINDOW` old (a minute short of the token's life, for the delivery and the pull);
an outage longer than that is caught up by the Node puppet's own poll (docs/compat.md).

"How old" compares the arrival key (the accepting host's wall clock) with this host's clock, so the
replicas' clocks must agree (NTP) to within a minute: a token judged fresh that has expired costs the
puppet one pull answered 95007, nothing more.

Work: one scan of the registered puppets and one indexed query per account (``manager_events`` by
``(account, arrival)``), once per start with no other replica alive, in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from manager.mailbox import EVENTS, Latest, MailboxStore, arrival_key
from manager.puppets import COLLECTION as PUPPETS
from manager.sockets import SOCKET_ENDPOINT
from wxkf.database import Database

log = logging.getLogger(__name__)

TOKEN_WINDOW = 9 * 60.0  # seconds: a callback's sync token lives 10 minutes
AFTER_EVERY_KEY = "~"  # sorts after every arrival key (digits first): the upper end of a range


async def redeliver_recent(
    db: Database, mailboxes: MailboxStore, *, clock: Callable[[], float] = time.time
) -> int:
    """Make each registered HTTP puppet's account due with its newest callback of the last
    :data:`TOKEN_WINDOW` seconds (unless its mailbox holds a newer one); returns how many."""
    since = arrival_key(clock() - TOKEN_WINDOW, "")
    events = db[EVENTS]
    count = 0
    async for puppet in db[PUPPETS].find({"registered": True}, projection={"endpoint": 1}):
        if puppet.get("endpoint") == SOCKET_ENDPOINT:  # ours: it pulls after every proof anyway
            continue
        key = str(puppet["_id"])
        newest = await events.find_one(
            {"account": key, "arrival": {"$gte": since, "$lt": AFTER_EVERY_KEY}},
            projection={"received_at": 0},
            sort=[("arrival", -1)],
        )
        if newest is None:
            continue
        await mailboxes.bump(key, Latest.from_doc(newest), due=True, only_if_newer=True)
        count += 1
    if count:
        log.info("after the outage: %d account(s) get their newest callback again, to catch up", count)
    return count
