"""The hub's *up period*: an identifier that changes only when the hub may have missed callbacks.

WeCom retries a failed callback a few times, then gives up on it for good. While at least one replica
of the intake (a gateway, or a manager: ``wxkf up`` runs both) is alive, every callback reaches one of
them and is stored; once none is, callbacks may be lost. So a replica that starts while no *other*
replica of its kind has been seen within the replica timeout begins a new up period (a fresh random
id in the ``hub_up_period`` document); one that starts beside a live one keeps the current period, so
restarting one replica among several makes no puppet pull.

The manager hands the current id out in its registration and heartbeat answers (``upPeriod``); a
puppet that sees it change pulls without a token (:mod:`puppets.manager_link`), which brings in the
messages behind the callbacks that were lost while the hub was down.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from wxkf.database import Database, durable

log = logging.getLogger(__name__)

COLLECTION = "hub_up_period"
CURRENT = "current"


async def others_alive(
    replicas: AsyncCollection[Any], own_id: str, timeout: float, *, clock: Callable[[], float] = time.time
) -> bool:
    """Whether a replica other than ``own_id`` in ``replicas`` was seen within ``timeout`` s (its
    liveness document's ``seen_at``)."""
    recent = {"seen_at": {"$gt": clock() - timeout, "$lte": math.inf}, "_id": {"$ne": own_id}}
    return await replicas.find_one(recent, projection={"_id": 1}) is not None


async def begin_unless_others_alive(
    db: Database,
    replicas: AsyncCollection[Any],
    own_id: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.time,
) -> str:
    """At a replica's start, before it writes its own liveness: begin a new up period if no other
    replica is alive (callbacks may have been lost meanwhile); return the current one."""
    if await others_alive(replicas, own_id, timeout, clock=clock):
        return await current(db) or await begin(db, clock=clock)
    return await begin(db, clock=clock)


async def begin(db: Database, *, clock: Callable[[], float] = time.time) -> str:
    period = secrets.token_hex(8)
    await durable(db[COLLECTION]).replace_one({"_id": CURRENT}, {"id": period, "since": clock()}, upsert=True)
    log.info("a new up period begins (%s): puppets catch up on what the hub may have missed", period)
    return period


async def current(db: Database) -> str | None:
    doc = await db[COLLECTION].find_one({"_id": CURRENT})
    return str(doc["id"]) if doc else None
