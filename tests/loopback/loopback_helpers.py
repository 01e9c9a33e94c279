"""Small helpers the loopback test modules share (plain functions; the
fixtures live in conftest.py).  pytest puts this directory on sys.path,
so test modules import it as ``loopback_helpers``."""

from __future__ import annotations

import socket
from typing import Any

MIB = 1 << 20


def recv_until_eof(sock: Any, limit: int = 64 * MIB) -> bytes:
    """Everything ``sock`` receives until the peer's EOF; fails the test if
    more than ``limit`` bytes come (the socket's timeout bounds each wait)."""
    parts = []
    total = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        assert total <= limit, "peer sent more than expected"


def echo_handler(conn: socket.socket, backend: Any) -> None:
    """A backend handler: send back everything received; half-close after
    the client's EOF."""
    while True:
        data = conn.recv(1 << 16)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS in /proc/{pid}/status")
