"""Small helpers the loopback test modules share (plain functions; the
fixtures live in conftest.py).  pytest puts this directory on sys.path,
so test modules import it as ``loopback_helpers``."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def subprocess_env(*path_prefix: Path) -> dict:
    """The environment for ``python -m geventbev``: the repo (after any
    ``path_prefix`` directories) on the path."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    paths = [str(p) for p in path_prefix] + [str(REPO_ROOT)] + ([old] if old else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (by its pid) and reap it; kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def read_line_with_timeout(proc: subprocess.Popen, timeout: float) -> str:
    """The next line ``proc`` prints on stdout ('' if it exits first).

    Bytes read past the line, and on a timeout what was read of the line so
    far, are kept for the next call (callers poll with short timeouts so as
    not to block their hub)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = getattr(proc, "_partial_line", b"")
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc._partial_line = data  # type: ignore[attr-defined]
            raise TimeoutError(f"no line on stdout within {timeout} s: {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode()
        data += chunk
    line, _, rest = data.partition(b"\n")
    proc._partial_line = rest  # type: ignore[attr-defined]  # the next line's
    return line.decode()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
