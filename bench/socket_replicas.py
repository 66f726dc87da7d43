"""Callback → delivery latency of a socket puppet whose callbacks reach another manager replica.

``python -m bench.socket_replicas [--samples 30]``: about two minutes.

Two ``wxkf manager`` processes (A and B) share one embedded SecantusDB; the WeCom simulator runs in this
process (registration proofs only) and so does a socket puppet for one account
(:class:`tests.support.socket_puppet.SocketPuppet`, holding each delivery 10 ms), connected to B. Each
sample is one signed callback; its latency is from the moment it is posted to the start of the first
delivery that reaches the puppet after it (each posted at a random point of the managers' one-second
loops). Three paths, side by side in one run:

* ``local``: posted to B, which holds the socket (and the lease);
* ``other, lease at B``: posted to A while B holds the account's lease: A hands the callback over
  through the mailbox and B's sweep (every second) delivers it;
* ``other, lease handed over``: posted to A once every lease was released (idle): A takes the lease,
  finds the socket on B, hands the account over (work into the mailbox, lease released) and B's sweep
  delivers it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from bench.manager_support import machine, percentile, run_benchmark
from simulator import SimConfig, create_app
from simulator.clock import OffsetClock
from simulator.state import SimState
from tests.multiprocess.conftest import make_corp
from tests.support.replicas import Cluster, Manager, Traffic
from tests.support.servers import serve_app
from tests.support.socket_puppet import SocketPuppet, socket_puppet
from wxkf.database import EmbeddedMongo
from wxkf.settings import load_settings

ADMIN = "bench-admin"
IDLE_RELEASE = 1.0
KF = "wkBENCH"


async def sample(traffic: Traffic, puppet: SocketPuppet, via: Manager) -> float:
    """Post one callback to ``via`` at a random point of the managers' one-second loops (sweep, idle
    release); seconds until a delivery started after it."""
    await asyncio.sleep(random.uniform(0.0, 1.0))  # pacing: a random phase, not synchronisation
    started = time.monotonic()
    await traffic.send(KF, via=via)
    await puppet.wait(lambda: any(d.started > started for d in puppet.deliveries), 30.0, "delivered")
    first = min(d.started for d in puppet.deliveries if d.started > started)
    return first - started


async def no_lease_held(mailboxes: Any, timeout: float = 30.0) -> None:
    """Wait until no manager holds the account's lease (its mailbox says so)."""
    async with asyncio.timeout(timeout):
        while True:
            doc = await mailboxes.find_one({})
            if doc is None or not doc.get("lease_owner"):
                return
            await asyncio.sleep(0.05)  # polling another process's state: no event to wait on


def stats(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(1000 * value for value in latencies)
    return {"samples": len(ms), "p50_ms": round(percentile(ms, 50)), "p99_ms": round(percentile(ms, 99))}


async def main(samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wxkf-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedMongo(workdir / "mongo") as uri, AsyncMongoClient[Any](uri) as client:
            state = SimState(clock=OffsetClock(), config=SimConfig(gettoken_rate=None))
            async with (
                serve_app(create_app(state), lifespan="on") as sim,
                httpx.AsyncClient(timeout=30) as http,
            ):
                settings = load_settings(
                    mongo_uri=uri,
                    wxkf_db_name="bench",
                    wxkf_data_dir=workdir / "data",
                    wxkf_secret_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                )
                common = {
                    "wxkf_admin_token": ADMIN,
                    "wecom_api_base": sim + "/cgi-bin",
                    "wxkf_idle_release": str(IDLE_RELEASE),
                    "wxkf_log_level": "WARNING",
                }
                cluster = Cluster(settings, workdir, common)
                try:
                    a, b = cluster.add("A"), cluster.add("B")
                    await cluster.start()
                    _, secret, keys = await make_corp(http, sim, [KF])
                    puppet = socket_puppet(keys, secret, [KF], hold=0.01)
                    await puppet.connect(b)
                    traffic = Traffic(http, keys, [a, b])
                    local = [await sample(traffic, puppet, b) for _ in range(samples)]
                    await sample(traffic, puppet, b)  # B holds the lease
                    lease_at_b = [await sample(traffic, puppet, a) for _ in range(samples)]
                    handed = []
                    for _ in range(samples):
                        await no_lease_held(client[settings.wxkf_db_name]["mailboxes"])
                        handed.append(await sample(traffic, puppet, a))
                    await puppet.disconnect()
                finally:
                    cluster.close()
    return {
        "machine": machine(),
        "local": stats(local),
        "other, lease at B": stats(lease_at_b),
        "other, lease handed over": stats(handed),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    arguments = parser.parse_args()
    run_benchmark(main(arguments.samples), "socket puppet, two manager replicas: callback → delivery")
