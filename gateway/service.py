"""The gateway's moving parts wired together: registry, inbox, forwarder, subscriptions, liveness.

``accept`` is the whole durable-intake contract: once it returns, the event is on disk and queued
for forwarding, so the route may answer 200. Everything downstream happens after the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway import metrics
from gateway.forwarder import Forwarder, Sink
from gateway.inbox import DEFAULT_RETENTION, PENDING, REPLICAS, Inbox, new_document
from gateway.intake import CallbackEvent
from gateway.manager_link import MANAGER_TARGET, ManagerIntake
from gateway.registry import AppRegistry
from gateway.subscriptions import TARGET_PREFIX, Subscriptions, SubscriptionSink
from wxkf import retention, up_period
from wxkf.database import Database
from wxkf.delivery import DeliveryClient
from wxkf.endpoints import IPNetwork
from wxkf.retry import RetrySchedule
from wxkf.secretbox import SecretBox
from wxkf.tasks import run_every, stop_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    replica_id: str
    max_body: int = 64 * 1024
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    forward_concurrency: int = 16
    heartbeat_interval: float = 5.0
    replica_timeout: float = 30.0
    registry_reload_interval: float = 30.0
    allowed_networks: tuple[IPNetwork, ...] = ()
    retention: float = DEFAULT_RETENTION
    manager_probe_interval: float = 30.0  # the longest wait between forwards to a failing manager


class Gateway:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        http: httpx.AsyncClient,
        config: GatewayConfig,
        *,
        manager_sink: Sink | None = None,
        manager_intake: ManagerIntake | None = None,
        deliveries: DeliveryClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.db = db
        self.http = http
        # every forward (manager, subscriptions) under the endpoint rules; closed by stop()
        self.deliveries = deliveries or DeliveryClient(config.allowed_networks)
        self.registry = AppRegistry(db, box, clock=clock)
        self.subscriptions = Subscriptions(db, box, clock=clock)
        self.inbox = Inbox(db, config.replica_id, clock=clock, keep_for=config.retention)
        self.manager_sink = manager_sink
        self.manager_intake = manager_intake
        self.forwarder = Forwarder(
            self.inbox,
            self._sink_for,
            schedule=config.schedule,
            concurrency=config.forward_concurrency,
            clock=clock,
            on_result=self._count_result,
            persistent=frozenset({MANAGER_TARGET}),
            persistent_probe_interval=config.manager_probe_interval,
        )
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.registry.ensure_indexes()
        await self.inbox.ensure_indexes()
        await self.registry.reload()
        await self.subscriptions.reload()
        if self.manager_intake is None:  # (an in-process manager begins the up period itself)
            await up_period.begin_unless_others_alive(
                self.db,
                self.db[REPLICAS],
                self.config.replica_id,
                self.config.replica_timeout,
                clock=self._clock,
            )
        await self.inbox.heartbeat()
        recovered = await self.forwarder.recover()
        if recovered:
            log.info("recovered %d unforwarded events from a previous run", recovered)
        self._tasks = [
            asyncio.create_task(
                run_every(self._liveness, self.config.heartbeat_interval, "replica liveness")
            ),
            asyncio.create_task(
                run_every(self._reload, self.config.registry_reload_interval, "registry reload")
            ),
            asyncio.create_task(retention.run_purger(self.inbox.purge_expired, "inbox events")),
        ]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        await self.forwarder.close()
        await self.deliveries.aclose()

    # -- intake -----------------------------------------------------------------------------
    def targets_for(self, event: CallbackEvent) -> list[str]:
        targets = []
        if event.is_kf and self.manager_sink is not None:
            targets.append(MANAGER_TARGET)
        targets.extend(
            s.target for s in self.subscriptions.matching(event.corp_id, event.app, event.event_type)
        )
        return targets

    async def accept(self, event: CallbackEvent) -> bool:
        """Store durably and queue for forwarding. False means a duplicate (WeCom's retry).

        With an in-process manager a kf event is stored by the manager itself and needs no inbox
        document, unless a subscription also wants it.
        """
        targets = self.targets_for(event)
        if event.is_kf and self.manager_intake is not None:
            handed_over = await self.manager_intake(event)
            if not targets:
                return handed_over
        doc = new_document(event, targets, self.inbox.owner, self._clock(), self.config.retention)
        stored = await self.inbox.store(doc)
        if stored:
            self.forwarder.submit(doc)
            metrics.BACKLOG.set(self.forwarder.backlog)
        return stored

    # -- forwarding -------------------------------------------------------------------------
    def _sink_for(self, target: str) -> Sink | None:
        if target == MANAGER_TARGET:
            return self.manager_sink
        if target.startswith(TARGET_PREFIX):
            subscription = self.subscriptions.get(target.removeprefix(TARGET_PREFIX))
            return SubscriptionSink(self.deliveries, subscription) if subscription else None
        return None

    async def replay(self, event_id: str) -> list[str] | None:
        """Forward a dead-lettered event again to the targets that gave up on it; returns the names of
        the event's targets now pending (those, and any still being forwarded), or None if it has none."""
        doc = await self.inbox.replay(event_id)
        if doc is None:
            return None
        self.forwarder.submit(doc)
        metrics.BACKLOG.set(self.forwarder.backlog)
        return [name for name, state in doc["targets"].items() if state["state"] == PENDING]

    async def replay_dead_letters(self, target: str | None, limit: int) -> tuple[int, bool]:
        """Replay the oldest ``limit`` dead letters (those ``target`` gave up on, if given); returns how
        many were replayed and whether more are left."""
        replayed = 0
        after = ""
        while page := await self.inbox.dead_letters(after, 100):
            for dead in page:
                after = dead["key"]
                if target is not None and target not in dead["targets"]:
                    continue
                if replayed == limit:
                    return replayed, True
                if await self.replay(dead["_id"]) is not None:
                    replayed += 1
        return replayed, False

    def _count_result(self, target: str, result: str) -> None:
        kind = MANAGER_TARGET if target == MANAGER_TARGET else "subscription"
        metrics.FORWARDS.labels(kind, result).inc()
        metrics.BACKLOG.set(self.forwarder.backlog)

    # -- liveness and takeover --------------------------------------------------------------
    async def _liveness(self) -> None:
        await self.inbox.heartbeat()
        # stores that failed a while ago but left their document (WeCom's retry may have gone to
        # another replica, which found a duplicate): queue them here, where they are owned
        for doc in await self.inbox.unsure(older_than=self.config.heartbeat_interval):
            log.warning("queueing event %s: its store failed, yet it was stored", doc["_id"])
            self.forwarder.submit(doc)
        dead = await self.inbox.dead_replicas(self.config.replica_timeout)
        if dead:  # their events may be for subscriptions made there since this replica's last reload
            await self.subscriptions.reload()
        for owner in dead:
            taken = await self.forwarder.recover(owner)
            await self.inbox.forget_replica(owner)
            log.warning("took over %d unforwarded events of dead replica %s", taken, owner)

    async def _reload(self) -> None:
        await self.registry.reload()
        await self.subscriptions.reload()
        self.forwarder.prune()  # workers of deleted subscriptions end
