"""Which local process is on the other end of a TCP connection (Linux ``/proc``), for tests that
must know which of several child processes sent a request.

Every connection over loopback appears twice in ``/proc/net/tcp``: our accepted socket, and the
sender's socket whose *local* port is the peer port we see. That entry names an inode, and the
sending process holds a file descriptor ``socket:[inode]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the socket bound to ``local_port`` and connected to ``remote_port``."""
    for table in _TABLES:
        try:
            with open(table) as lines:
                next(lines)  # header
                for line in lines:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if int(local.rpartition(":")[2], 16) != local_port:
                        continue
                    if int(remote.rpartition(":")[2], 16) == remote_port and inode != "0":
                        return int(inode)
        except FileNotFoundError:
            continue
    return None


def _holds(pid: int, target: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def sender_of(peer_port: int, server_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the client end of a connection from ``peer_port`` to our
    ``server_port``; None if none of them does (or the connection is already gone)."""
    inode = _inode(peer_port, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    return next((pid for pid in pids if _holds(pid, target)), None)
