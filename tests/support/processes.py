"""Waiting on processes that are not our children (a grandchild whose parent we killed)."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress


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
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``pid`` SIGSTOPped (alive, answering nothing: a hung process) for the block, then SIGCONTed."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
