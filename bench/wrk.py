"""Closed-loop maximum throughput with ``wrk`` (``apt-get install wrk``), read back as numbers.

A Python load client saturates long before a Starlette server does on the same machine, so the
"how much can it take" runs use wrk, a C client, driven by ``bench/wrk.lua``: either one URL over
and over, or a file of pre-generated unique requests (``write_requests``), each sent once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("wrk.lua")
MARKER = "WRK_JSON "


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int  # answers received (any status)
    duration_s: float
    errors: dict[str, int]  # connect/read/write/timeout failures; "status" = non-2xx/3xx answers
    latency_ms: dict[str, float]  # closed loop: time each answer took, not queueing before the send
    wrapped: int  # passes a thread started again over its share of the request file

    @property
    def ok(self) -> int:
        """2xx/3xx answers."""
        return self.requests - self.errors["status"]

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "ok_answers": self.ok,
            "ok_per_s": round(self.rate, 1),
            "duration_s": round(self.duration_s, 2),
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            "repeated_passes": self.wrapped,
        }


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: apt-get update && apt-get install -y wrk")
    return path


def write_requests(path: Path, requests: Iterable[tuple[str, bytes]]) -> int:
    """Write ``(path?query, body)`` pairs in the script's line format; returns how many."""
    count = 0
    with path.open("wb") as out:
        for target, body in requests:
            if b"\n" in body or b"\t" in body or "\t" in target:
                raise ValueError("a request for wrk.lua may not contain tabs or newlines")
            out.write(target.encode() + b"\t" + body + b"\n")
            count += 1
    return count


async def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    requests_file: Path | None = None,
    timeout: float = 10.0,
) -> WrkResult:
    """Run wrk for ``duration`` seconds against ``url`` (its path is ignored with ``requests_file``)."""
    argv = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(SCRIPT),
        url,
    ]
    if requests_file is not None:
        argv += ["--", str(requests_file), str(threads)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    line = next((line for line in text.splitlines() if line.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise WrkError(f"wrk failed (status {process.returncode}):\n{text[-2000:]}")
    data = json.loads(line.removeprefix(MARKER))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=data["errors"],
        latency_ms={name: round(us / 1000, 2) for name, us in data["latency_us"].items()},
        wrapped=data["wrapped"],
    )
