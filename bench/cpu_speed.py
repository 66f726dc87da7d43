"""How fast this machine's CPU is right now: a fixed piece of pure-Python work, timed twice a second.

``python -m bench.cpu_speed`` prints ``<monotonic ns> <CPU ms the work took>`` per sample until it is
terminated. The benchmarks run it beside the hub to tell the host's slow phases from the hub's own
behaviour: on the 2-vCPU machine of docs/benchmarks.md the same work takes ~1.0-1.2 ms of CPU for a
while and then ~2-3 ms (another tenant of the host, presumably), in stretches of tens of seconds,
even with nothing else running in the guest. Process CPU time is used, not wall time, so the probe does
not count the time it waits for a core behind the hub. It costs about 1 % of one core.
"""

from __future__ import annotations

import signal
import sys
import time

INTERVAL = 0.5
ITERATIONS = 20_000


def work() -> int:
    total = 0
    for i in range(ITERATIONS):
        total += i * i
    return total


def sample() -> float:
    """CPU milliseconds one fixed piece of work takes now."""
    started = time.thread_time_ns()
    work()
    return (time.thread_time_ns() - started) / 1e6


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        print(time.monotonic_ns(), round(sample(), 3), flush=True)
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
