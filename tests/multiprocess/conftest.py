"""Two (or more) real ``wxkf manager`` processes on one SecantusDB, the WeCom simulator for registration
proofs, and one recording puppet host for every account.

Teardown SIGKILLs every manager whatever happened (paused ones too), and a failed test's report
carries the end of each manager's log.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.support.recording_puppet import RecordingPuppet
from tests.support.replicas import Cluster, Manager, Traffic
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys, new_aes_key
from wxkf.database import Database
from wxkf.settings import Settings

ADMIN = "multiprocess-admin"
REPLICA_TIMEOUT = 3  # seconds of silence before a replica is taken over
ACCOUNTS = 6
LOG_TAIL = 150  # lines of each manager's log in a failed test's report
MAILBOXES = "mailboxes"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    cluster: Cluster | None = getattr(item, "wxkf_cluster", None)
    if cluster is None or not report.failed:
        return
    for name, text in cluster.logs().items():
        lines = text.splitlines()[-LOG_TAIL:]
        report.sections.append((f"manager {name}: last {len(lines)} log lines", "\n".join(lines)))


@dataclass(repr=False)
class World:
    """A corp of ``ACCOUNTS`` kf accounts in the simulator, the managers, and the puppet host."""

    http: httpx.AsyncClient
    db: Database
    corp_id: str
    secret: str
    keys: CorpAppKeys
    accounts: list[str]
    cluster: Cluster
    puppet: RecordingPuppet
    puppet_url: str

    async def add_app(self, via: Manager) -> None:
        """Tell the hub the corp app's callback keys through ``via``'s admin API (registration would
        too, but a callback may come first)."""
        answer = await self.http.post(
            f"{via.url}/admin/apps",
            headers={"authorization": f"Bearer {ADMIN}"},
            json={
                "corp_id": self.corp_id,
                "token": self.keys.token,
                "encoding_aes_key": self.keys.aes_key,
                "secret": self.secret,
            },
        )
        assert answer.status_code in (200, 201), answer.text

    async def register(self, kf: str, via: Manager) -> None:
        """Register ``kf``'s puppet through ``via``'s compat API (proved against the simulator)."""
        body = {
            "kfId": kf,
            "kfName": "",
            "endpoint": f"{self.puppet_url}/{kf}",
            "corpId": self.corp_id,
            "corpSecret": self.secret,
            "token": self.keys.token,
            "encodingAESKey": self.keys.aes_key,
        }
        answer = await self.http.post(f"{via.url}/puppetWxkfManager/register", json=body)
        assert answer.status_code == 200 and answer.json()["code"] == 0, answer.text

    async def register_all(self, *via: Manager) -> None:
        """Every account, spread over ``via`` in turn."""
        for n, kf in enumerate(self.accounts):
            await self.register(kf, via[n % len(via)])

    def traffic(self, *rotation: Manager) -> Traffic:
        return Traffic(self.http, self.keys, list(rotation))

    async def nothing_lost(
        self, traffic: Traffic, timeout: float = 30.0, puppet: RecordingPuppet | None = None
    ) -> None:
        """Wait until every account has had a delivery that reached its puppet (``puppet``, default
        the world's) after the account's newest callback was sent.

        That is what "nothing lost" means to a puppet: on any delivery it pulls everything new with
        ``kf/sync_msg``, and WeCom sends a callback only once its message is there to pull, so a pull
        that starts after the newest callback was sent finds every message. (Not after it was
        acknowledged: the manager may deliver before its answer reaches us.) The token it carries
        must be one of the account's (a pull needs one, at most 10 minutes old, and every token here
        is seconds old); it need not be the newest one.
        """
        puppet = puppet or self.puppet

        def missing() -> dict[str, str]:
            return {
                kf: f"{newest.token} (acknowledged by {newest.by})"
                for kf, tokens in traffic.acked.items()
                if (newest := traffic.last_ack(kf))
                and not any(
                    d.account == kf and d.started > newest.sent and d.token in tokens
                    for d in puppet.deliveries
                )
            }

        try:
            await puppet.wait(lambda: not missing(), timeout, "a delivery after every newest callback")
        except AssertionError as exc:
            details = [await self.describe(kf, traffic, puppet) for kf in missing()]
            raise AssertionError("\n".join([str(exc), *details])) from None

    async def describe(self, kf: str, traffic: Traffic, puppet: RecordingPuppet | None = None) -> str:
        """What the test saw of account ``kf``, and its mailbox as stored (for a failure's report)."""
        puppet = puppet or self.puppet
        origin = puppet.origin
        acks = [
            f"{a.token} sent {a.sent - origin:.2f}, acknowledged by {a.by} at {a.at - origin:.2f}"
            for a in traffic.acks
            if a.account == kf
        ]
        deliveries = [d.describe(origin) for d in puppet.deliveries if d.account == kf]
        mailbox = await self.db[MAILBOXES].find_one(
            {"_id": f"{self.corp_id}/{kf}"}, projection={"latest.body": 0, "latest.query": 0}
        )
        return (
            f"{kf}: no delivery after its newest callback\n  last acks: {acks[-3:]}\n"
            f"  last deliveries: {deliveries[-3:]}\n  mailbox: {mailbox}"
        )

    async def held_leases(self) -> list[str]:
        """Accounts whose mailbox still names a lease holder."""
        return [
            f"{doc['_id']} held by {doc['lease_owner']}"
            async for doc in self.db[MAILBOXES].find({"lease_owner": {"$nin": [None, ""]}})
            if float(doc.get("lease_until", 0.0)) > 0
        ]

    async def no_lease_held(self, timeout: float) -> None:
        """Wait until no account is leased (everything idle has been released)."""
        held = await self.held_leases()
        try:
            async with asyncio.timeout(timeout):
                while held:
                    await asyncio.sleep(0.2)  # polling the database: no event to wait on
                    held = await self.held_leases()
        except TimeoutError:
            raise AssertionError(f"leases still held after {timeout} s of quiet: {held}") from None


@pytest.fixture
async def simulator() -> AsyncIterator[str]:
    state = SimState(clock=OffsetClock(), config=SimConfig(gettoken_rate=None))
    async with serve_app(create_app(state), lifespan="on") as url:
        yield url


async def make_corp(
    http: httpx.AsyncClient, sim_url: str, accounts: list[str]
) -> tuple[str, str, CorpAppKeys]:
    corp_id = "ww" + secrets.token_hex(8)
    secret, token, aes_key = "s-" + secrets.token_hex(16), secrets.token_hex(8), new_aes_key()
    spec = {
        "corpid": corp_id,
        "apps": [
            {"name": "kf", "agentid": 1000002, "secret": secret, "token": token, "encoding_aes_key": aes_key}
        ],
        "accounts": [{"open_kfid": kf, "name": kf} for kf in accounts],
    }
    created = await http.post(f"{sim_url}/sim/corps", json=spec)
    assert created.status_code == 201, created.text
    return corp_id, secret, CorpAppKeys(corp_id, token, aes_key)


@pytest.fixture
async def world(
    request: pytest.FixtureRequest,
    settings: Settings,
    simulator: str,
    db: Database,
    tmp_path: Path,
) -> AsyncIterator[World]:
    common = {
        "wxkf_admin_token": ADMIN,
        "wxkf_replica_timeout": str(REPLICA_TIMEOUT),
        "wecom_api_base": simulator + "/cgi-bin",
        "wxkf_allowed_networks": "127.0.0.0/8",
        "wxkf_log_level": "INFO",
    }
    cluster = Cluster(settings, tmp_path, common)
    request.node.wxkf_cluster = cluster
    accounts = [f"wk{n:02d}" for n in range(ACCOUNTS)]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            corp_id, secret, keys = await make_corp(http, simulator, accounts)
            puppet = RecordingPuppet(keys, cluster.senders)
            async with serve_app(puppet.app(), graceful=0.5) as puppet_url:
                yield World(http, db, corp_id, secret, keys, accounts, cluster, puppet, puppet_url)
    finally:
        cluster.close()
