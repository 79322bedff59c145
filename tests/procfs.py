"""Finding processes through /proc (Linux): which process holds the client end of a socket."""

from __future__ import annotations

import os
from pathlib import Path


def socket_owner(peer_port: int, candidates: list[int]) -> int | None:
    """The pid among `candidates` holding the client end of a connection from `peer_port`."""
    inodes = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else ():
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == peer_port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
        except OSError:
            continue
    return None
