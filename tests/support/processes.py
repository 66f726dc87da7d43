"""Waiting on processes that are not our children (a grandchild whose parent we killed)."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie counts), False if it still runs after ``timeout`` seconds.

    A pidfd becomes readable when its process exits, so this waits on the kernel, not on a sleep loop.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def is_running(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        state = _state(Path(f"/proc/{pid}/stat"))
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


def _state(stat: Path) -> str:
    """The state letter of a ``/proc/.../stat`` file (R, S, T, Z...)."""
    try:
        return stat.read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        if stat.parent.parent.name == "task":
            return "T"  # a thread that ended meanwhile does not hold the process running
        raise


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``pid`` SIGSTOPped (alive, answering nothing: a hung process) for the block, then SIGCONTed.

    The block starts once every thread of ``pid`` is stopped: the signal takes effect asynchronously.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10.0
    while not all(_state(stat) == "T" for stat in Path(f"/proc/{pid}/task").glob("*/stat")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop")
        time.sleep(0.001)  # the poll's interval; the threads' state is what is waited for
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
