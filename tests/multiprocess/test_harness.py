"""The chaos suite's own instruments: a clock shift that really reaches a child Python, and a puppet
that really flags two deliveries at once and names the processes that made them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from tests.support.recording_puppet import RecordingPuppet
from tests.support.replicas import clock_offset_env
from tests.support.servers import serve_app
from tests.support.wecom_callbacks import CorpAppKeys

POST_ONCE = """
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST",
                                 headers={"content-type": "application/json"})
print(urllib.request.urlopen(request, timeout=30).read().decode())
"""


def test_libfaketime_moves_the_wall_clock_of_a_child_python_and_not_its_monotonic_clock() -> None:
    probe = [sys.executable, "-c", "import time; print(time.time(), time.monotonic())"]
    env = {**os.environ, **clock_offset_env(-5.0)}
    before = time.time()
    printed = subprocess.run(probe, env=env, capture_output=True, check=True).stdout
    shifted, monotonic = map(float, printed.split())
    after = time.time()
    assert before - 5.0 - 1.0 <= shifted <= after - 5.0 + 0.1
    assert abs(monotonic - time.monotonic()) < 5.0  # one clock for asyncio's timers in every process


async def test_the_recording_puppet_flags_two_processes_delivering_for_one_account_at_once() -> None:
    senders: dict[int, str] = {}
    puppet = RecordingPuppet(CorpAppKeys.random(), lambda: senders, hold=2.0)
    async with serve_app(puppet.app()) as url:
        children = []
        for name in ("one", "two"):
            body = json.dumps({"token": f"token-{name}", "openKfId": "wkX"})
            child = subprocess.Popen(  # noqa: ASYNC220 - started at once; awaited through the puppet
                [sys.executable, "-c", POST_ONCE, f"{url}/wkX/callback/decrypted", body],
                stdout=subprocess.PIPE,
            )
            senders[child.pid] = name
            children.append(child)
        try:
            await puppet.wait(lambda: len(puppet.answered("wkX")) == 2, 30.0, "both deliveries answered")
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                await asyncio.to_thread(child.wait)
    assert [{a.sender, b.sender} for a, b in puppet.overlaps] == [{"one", "two"}], puppet.report()
    assert {d.sender for d in puppet.deliveries} == {"one", "two"}
