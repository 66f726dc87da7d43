"""Where a process spends its CPU, from ``py-spy record --gil --format raw`` (``pip install py-spy``).

``--gil`` keeps only samples of the thread holding the GIL, i.e. Python code running, so the idle
waits of a server (``epoll``, a thread blocked in ``recv``) do not show up as "hot". Time in C code
that releases the GIL (an ``fsync``, a ``send``) is therefore not in these numbers: compare the
sample count with the process's CPU seconds to see how much that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Profile:
    samples: int
    own: Counter[str]  # samples whose innermost frame is this function
    inclusive: Counter[str]  # samples with this function anywhere on the stack
    by_file: Counter[str]  # own samples per source file

    @classmethod
    def parse(cls, text: str) -> Profile:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        by_file: Counter[str] = Counter()
        total = 0
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
            by_file[frames[-1].rpartition("(")[2].rstrip(")")] += count
        return cls(total, own, inclusive, by_file)

    def summary(self, top: int = 15) -> dict[str, list[str]]:
        """The top entries of each view, as "percent  function (file)" lines."""

        def lines(counter: Counter[str], skip_above: float = 1.0) -> list[str]:
            out = []
            most = max(counter.values(), default=0)
            for name, count in counter.most_common():
                share = count / self.samples if self.samples else 0.0
                if count > skip_above * most:  # the entry points (nearly) every sample passes through
                    continue
                out.append(f"{100 * share:5.1f}%  {name}")
                if len(out) == top:
                    break
            return out

        return {
            "own_time": lines(self.own),
            "inclusive_time": lines(self.inclusive, skip_above=0.95),
            "own_time_by_file": lines(self.by_file),
        }


async def record(pid: int, seconds: float, output: Path, rate: int = 250) -> Profile | None:
    """Sample ``pid`` for ``seconds`` without pausing it; None if py-spy is missing or not allowed."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return None
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(rate), "--gil", "--nonblocking", "--format", "raw", "--output", str(output)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await process.wait()
    return load(output) if process.returncode == 0 else None


def load(output: Path) -> Profile | None:
    """A profile py-spy wrote, None if it wrote none."""
    if not output.exists():
        return None
    return Profile.parse(output.read_text(errors="replace"))


def _busy_and_total_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which is already counted in user
    return total - idle, total


@contextlib.contextmanager
def machine_cpu() -> Iterator[dict[str, float]]:
    """Busy CPU of the whole machine inside the block, in percent of one core (200 = two cores busy).

    Filled in on exit. Compared with the processes we measure, it shows what else ran (wrk, the
    kernel's network stack, anything else on the machine).
    """
    busy_before, total_before = _busy_and_total_ticks()
    out: dict[str, float] = {}
    yield out
    busy_after, total_after = _busy_and_total_ticks()
    cores = os.cpu_count() or 1
    elapsed = total_after - total_before
    out["machine_busy"] = round(100 * cores * (busy_after - busy_before) / elapsed, 1) if elapsed else 0.0
