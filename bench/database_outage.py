"""Database outage: how a real ``wxkf up`` answers WeCom while its embedded database fails (issue 10, 16).

``python -m bench.database_outage [--rate 20] [--phase 15] [--source DIR]``

One ``wxkf up`` process on a fresh data dir with one corp app; a sender posts signed kf callbacks at
``--rate`` per second (each on its own, so a hung answer does not hold back the next). Phases:

1. baseline (``--phase`` seconds);
2. ``kill -9`` of the SecantusDB child, then ``--phase`` seconds;
3. ``SIGSTOP`` of the (new) child for ``--phase`` seconds (a hung database), then ``SIGCONT``
   if it is still there;
4. ``SIGTERM`` of the hub with the database SIGSTOPped again: time to exit.

Per phase: callbacks answered 200 / 503 / other / no answer within 30 s, the slowest answer, and the
time from the fault to the next ``success``. WeCom waits 5 s for an answer. ``--source DIR`` runs the
hub from another checkout (e.g. the code before a change) to compare side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.wecom_callbacks import CorpAppKeys, kf_event_xml, signed_post

ANSWER_TIMEOUT = 30.0
WECOM_WAIT = 5.0


@dataclass
class Phase:
    name: str
    fault_at: float
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, seconds, outcome)

    def line(self) -> str:
        count = {k: sum(1 for *_, o in self.answers if o == k) for k in ("200", "503", "none")}
        other = len(self.answers) - sum(count.values())
        slowest = max((s for _, s, _ in self.answers), default=0.0)
        late = sum(1 for _, s, _ in self.answers if s > WECOM_WAIT)
        ok_after = [sent + s for sent, s, o in self.answers if o == "200" and sent >= self.fault_at]
        back = f"{min(ok_after) - self.fault_at:.1f} s" if ok_after else "never"
        return (
            f"| {self.name} | {len(self.answers)} | {count['200']} | {count['503']} | {other} | "
            f"{count['none']} | {slowest:.2f} s | {late} | {back} |"
        )


async def start_hub(source: Path, data_dir: Path) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    env = {**os.environ, "WXKF_DATA_DIR": str(data_dir), "PORT": "0", "WXKF_LOG_LEVEL": "INFO"}
    for name in ("MONGO_URI", "WXKF_ADMIN_TOKEN", "WXKF_SECRET_KEY"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "up", cwd=source, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while line := (await proc.stderr.readline()).decode():
        lines.append(line)
        if found := re.search(r"Uvicorn running on (http://\S+)", line):
            break
    else:
        raise SystemExit("wxkf up ended:\n" + "".join(lines))

    async def drain() -> None:
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode():
            lines.append(line)

    asyncio.get_running_loop().create_task(drain())
    return proc, found.group(1), lines


async def run(rate: float, phase_seconds: float, source: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        proc, url, log = await start_hub(source, data_dir)
        token = (data_dir / "admin.token").read_text().strip()
        keys = CorpAppKeys.random()
        async with httpx.AsyncClient(base_url=url, timeout=ANSWER_TIMEOUT) as http:
            added = await http.post(
                "/admin/apps",
                json={"corp_id": keys.corp_id, "token": keys.token, "encoding_aes_key": keys.aes_key},
                headers={"authorization": f"Bearer {token}"},
            )
            added.raise_for_status()

            def child() -> int | None:
                found = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                return int(found[0]) if found else None

            async def one(phase: Phase) -> None:
                xml = kf_event_xml(keys.corp_id, "wkBENCH", secrets.token_hex(4))
                query, body = signed_post(keys, xml)
                sent = time.monotonic()
                try:
                    response = await http.post(f"/callback/{keys.corp_id}?{query}", content=body)
                    outcome = str(response.status_code)
                except httpx.HTTPError:
                    outcome = "none"
                phase.answers.append((sent, time.monotonic() - sent, outcome))

            async def send(phase: Phase, seconds: float) -> None:
                tasks = []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    tasks.append(asyncio.create_task(one(phase)))
                    await asyncio.sleep(1 / rate)
                await asyncio.gather(*tasks)

            phases = []
            baseline = Phase("baseline", time.monotonic())
            await send(baseline, phase_seconds)
            phases.append(baseline)

            killed = Phase("kill -9 of the database", time.monotonic())
            first = child()
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await send(killed, phase_seconds)
            phases.append(killed)

            hung_pid = child()
            if hung_pid is not None:  # else it was never restarted
                hung = Phase("SIGSTOP of the database", time.monotonic())
                os.kill(hung_pid, signal.SIGSTOP)
                await send(hung, phase_seconds)
                with suppress(ProcessLookupError):
                    os.kill(hung_pid, signal.SIGCONT)
                phases.append(hung)

        stop_pid = child()
        if stop_pid is not None:
            os.kill(stop_pid, signal.SIGSTOP)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            status = await asyncio.wait_for(proc.wait(), 180)
            stopped = f"exit status {status} after {time.monotonic() - started:.1f} s"
        except TimeoutError:
            proc.kill()
            stopped = "no exit within 180 s (killed)"
        if stop_pid is not None:
            with suppress(ProcessLookupError):
                os.kill(stop_pid, signal.SIGCONT)

    if stop_pid is None:
        print("the killed database was never restarted: no SIGSTOP phase; SIGTERM with it dead")
    print(f"source: {source}, {rate:g} callbacks/s, {phase_seconds:g} s per phase")
    print("| phase | sent | 200 | 503 | other | no answer | slowest | answers > 5 s | success again after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in phases:
        print(phase.line())
    print(f"SIGTERM with the database {'SIGSTOPped' if stop_pid else 'dead'}: {stopped}")
    print("hub log lines about the database:")
    for line in log:
        if "wxkf.database" in line:
            print("  " + line.rstrip()[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--phase", type=float, default=15.0)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.phase, args.source.resolve()))


if __name__ == "__main__":
    main()
