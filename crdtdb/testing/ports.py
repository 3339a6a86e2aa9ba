"""Free tcp ports on loopback, for tests and demos that start several listening processes."""

from __future__ import annotations

import socket


def free_tcp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports nothing listens on right now (all held open until all are
    chosen, so they differ; another process may still take one before it is used)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)  # (closed below even if the bind fails)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
