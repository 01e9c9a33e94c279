"""End-to-end tests of a compressed tunnel made of two relay subprocesses.

    client -> relay A (--compress-connect) -> counter -> relay B
           (--compress-listen) -> backend

"counter" is a third, plain relay between A and B: its close lines count
the bytes that really crossed the compressed link, independently of what
A and B report about themselves.  Backends are the thread servers of
conftest.py or ``python -m http.server``; clients are blocking sockets
with timeouts.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
from loopback_helpers import echo_handler, recv_until_eof, rss_kib

MIB = 1 << 20

#: A close line; groups: ident, client, up, down, seconds, reason.
CLOSE_LINE = (
    r" INFO \S+: #(\d+) (\S+) closed: up (\d+) bytes, down (\d+) bytes, "
    r"([\d.]+) s \(([^)]*)\)"
)
#: The clause a compressing relay adds; groups: side, wire up, wire down.
WIRE_CLAUSE = (
    r"; zlib link to (\w+): wire up (\d+) bytes, down (\d+) bytes, "
    r"[\d.]+% of payload$"
)

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor "
    "whiskey xray yankee zulu request reply status ok error retry timeout "
    "connect buffer event filter pair socket relay stream window header"
).split()


def text_blocks(total_mib: int, seed: int = 50) -> Iterator[bytes]:
    """``total_mib`` MiB of numbered lines of words and numbers, 1 MiB at a
    time: compressible like a log file, and the same for the same seed.
    Every line carries its own number, so no two MiB are equal."""
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        + f" {rng.randint(0, 99999)}"
        for _ in range(4096)
    ]
    number = 0
    for i in range(total_mib):
        parts = []
        size = 0
        j = 0
        while size < MIB:
            line = f"{number:09d} {lines[(j * 7 + i * 131) % len(lines)]}\n"
            parts.append(line)
            size += len(line)
            j += 1
            number += 1
        yield "".join(parts).encode()[:MIB]


TEXT_MIB = next(text_blocks(1, seed=7))


class Close(NamedTuple):
    """One parsed close line."""

    client: str
    up: int
    down: int
    reason: str
    side: str = ""
    wire_up: int = 0
    wire_down: int = 0


def closes(relay: Any, count: int = 1, timeout: float = 10.0) -> list:
    """Wait for ``count`` close lines of ``relay``; return them parsed."""
    found = relay.wait_for_log(CLOSE_LINE, count=count, timeout=timeout)
    parsed = []
    log = relay.log()
    for match in found:
        end = log.find("\n", match.end())
        rest = log[match.end() : end if end >= 0 else len(log)]
        wire = re.match(WIRE_CLAUSE, rest)
        extra = (wire.group(1), int(wire.group(2)), int(wire.group(3))) if wire else ()
        parsed.append(
            Close(
                match.group(2),
                int(match.group(3)),
                int(match.group(4)),
                match.group(6),
                *extra,
            )
        )
    return parsed


class Tunnel(NamedTuple):
    entry: Any  # relay A: clients connect here
    counter: Any  # the plain relay between A and B
    exit: Any  # relay B, in front of the backend


@pytest.fixture
def start_tunnel(start_relay) -> Any:
    """``start_tunnel(backend_address, *args) -> Tunnel`` (module
    docstring); ``args`` go to both compressing relays."""

    def start(backend: tuple, *args: str) -> Tunnel:
        exit_relay = start_relay(backend, "--compress-listen", *args)
        counter = start_relay(exit_relay.address)
        entry = start_relay(counter.address, "--compress-connect", *args)
        assert entry.banner.endswith("(zlib on the backend side)")
        assert exit_relay.banner.endswith("(zlib on the client side)")
        return Tunnel(entry, counter, exit_relay)

    return start


def reply_after_eof_handler(conn: socket.socket, backend: Any) -> None:
    """Read until EOF, then answer ``b"<count> <sha256 hex>\\n"`` and close."""
    digest = hashlib.sha256()
    count = 0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        digest.update(chunk)
        count += len(chunk)
    conn.sendall(f"{count} {digest.hexdigest()}\n".encode())


# -- bulk: 50 MiB of text over HTTP -----------------------------------------


@pytest.fixture
def text_http_server(tmp_path: Path) -> Iterator[tuple]:
    """``python -m http.server`` serving 50 MiB of text-like lines.

    Yields ``((host, port), file name, sha256 hex, size)``."""
    root = tmp_path / "www"
    root.mkdir()
    digest = hashlib.sha256()
    size = 0
    with open(root / "log.txt", "wb") as out:
        for block in text_blocks(50):
            out.write(block)
            digest.update(block)
            size += len(block)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=str(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        yield ("127.0.0.1", port), "log.txt", digest.hexdigest(), size
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.slow
def test_50_mib_of_text_through_the_tunnel_keeps_sha256_and_shrinks_on_the_wire(
    text_http_server, start_tunnel
) -> None:
    address, name, expected, size = text_http_server
    tunnel = start_tunnel(address)
    url = f"http://127.0.0.1:{tunnel.entry.address[1]}/{name}"

    started = time.monotonic()
    digest = hashlib.sha256()
    count = 0
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        while True:
            chunk = response.read(1 << 18)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
    seconds = time.monotonic() - started
    assert count == size == 50 * MIB
    assert digest.hexdigest() == expected

    (entry,) = closes(tunnel.entry)
    (middle,) = closes(tunnel.counter)
    (exit_,) = closes(tunnel.exit)
    # Payload: the same on both ends of the tunnel (file plus headers).
    assert entry.down == exit_.down
    assert size < entry.down < size + 4096
    # What crossed the link, counted by the plain relay in the middle ...
    assert middle.down < 0.35 * size, f"{middle.down} bytes on the wire"
    # ... is what the compressing relays report as their wire bytes.
    assert (entry.side, exit_.side) == ("backend", "client")
    assert (entry.wire_up, entry.wire_down) == (middle.up, middle.down)
    assert (exit_.wire_up, exit_.wire_down) == (middle.up, middle.down)
    print(
        f"\n50 MiB of text through the zlib tunnel in {seconds:.2f} s: "
        f"{middle.down} bytes on the wire down ({100 * middle.down / size:.1f}% "
        f"of {size}, saving {100 * (1 - middle.down / size):.1f}%); "
        f"request {entry.up} bytes -> {middle.up} on the wire"
    )


# -- half-close -------------------------------------------------------------


def test_client_half_close_passes_through_the_tunnel(
    start_tunnel, start_backend
) -> None:
    """The client sends 1 MiB and half-closes; the backend answers only
    after its EOF, which needs the zlib trailer to have crossed the link."""
    backend = start_backend(reply_after_eof_handler)
    tunnel = start_tunnel(backend.address)
    payload = TEXT_MIB

    with tunnel.entry.connect() as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(client)
    assert reply == f"{MIB} {hashlib.sha256(payload).hexdigest()}\n".encode()
    for relay in tunnel:
        (line,) = closes(relay)
        assert line.reason == "closed by both sides"
    (exit_,) = closes(tunnel.exit)
    assert (exit_.up, exit_.down) == (MIB, len(reply))
    assert backend.errors == []


def test_backend_half_close_lets_the_client_keep_sending(
    start_tunnel, start_backend
) -> None:
    """EOF from the backend crosses the tunnel first; then the client's
    direction still carries 256 KiB and its own EOF."""
    got: dict = {}

    def greet_then_hash(conn: socket.socket, backend: Any) -> None:
        conn.sendall(b"hello\n")
        conn.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        count = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
        got["hash"] = (count, digest.hexdigest())

    backend = start_backend(greet_then_hash)
    tunnel = start_tunnel(backend.address)
    payload = TEXT_MIB[: 256 * 1024]
    with tunnel.entry.connect() as client:
        assert recv_until_eof(client) == b"hello\n"
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        for relay in tunnel:
            (line,) = closes(relay)
            assert line.reason == "closed by both sides"
    assert got["hash"] == (len(payload), hashlib.sha256(payload).hexdigest())
    assert backend.errors == []


def test_bulk_echo_both_ways_then_half_close(start_tunnel, start_backend) -> None:
    """8 MiB (half text, half random bytes zlib cannot shrink) up while the
    echo streams down at the same time, then a half-close: every byte
    comes back, then EOF, with backpressure on all four compressors."""
    backend = start_backend(echo_handler)
    tunnel = start_tunnel(backend.address)
    payload = b"".join(
        TEXT_MIB if i % 2 else random.Random(i).randbytes(MIB) for i in range(8)
    )
    with tunnel.entry.connect(timeout=20) as client:
        uploader = threading.Thread(
            target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)),
            daemon=True,
        )
        uploader.start()
        digest = hashlib.sha256()
        count = 0
        while True:
            chunk = client.recv(1 << 18)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)
        uploader.join(timeout=10)
    assert count == len(payload)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    for relay in tunnel:
        (line,) = closes(relay)
        assert line.reason == "closed by both sides"
        assert (line.up, line.down) != (0, 0)
    (middle,) = closes(tunnel.counter)
    # Random halves do not shrink (a little growth), text ones do.
    assert len(payload) * 0.5 < middle.up < len(payload) * 0.7


# -- interactive traffic ----------------------------------------------------


def test_small_requests_are_answered_without_waiting_for_more(
    start_tunnel, start_backend
) -> None:
    """A line-at-a-time exchange: each line is echoed through both
    compressors before the next is sent (nothing stays inside zlib)."""
    backend = start_backend(echo_handler)
    tunnel = start_tunnel(backend.address)
    with tunnel.entry.connect(timeout=5) as client:
        started = time.monotonic()
        for i in range(30):
            line = b"request %d\n" % i
            client.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = client.recv(100)
                assert chunk, "EOF in the middle of an exchange"
                got += chunk
            assert got == line
        elapsed = time.monotonic() - started
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b""
    # Generous: a stall would show as a 5 s socket timeout per line.
    assert elapsed < 5.0


def test_idle_timeout_closes_a_quiet_tunnel_connection(
    start_tunnel, start_backend
) -> None:
    """--idle-timeout works on the zlib side as on a plain socket."""
    backend = start_backend(echo_handler)
    tunnel = start_tunnel(backend.address, "--idle-timeout", "0.5")
    with tunnel.entry.connect(timeout=5) as client:
        client.sendall(b"once")
        assert client.recv(10) == b"once"
        started = time.monotonic()
        try:
            data = recv_until_eof(client)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert data == b""
    assert 0.4 <= elapsed <= 3.0
    reasons = [closes(relay)[0].reason for relay in (tunnel.entry, tunnel.exit)]
    assert any(reason.startswith("idle timeout") for reason in reasons), reasons


def test_client_reset_at_the_entry_closes_the_exit_side_too(
    start_tunnel, start_backend
) -> None:
    """A cut tunnel is not a half-close: relay B sees the zlib stream stop
    without its end marker, reports it, and closes the backend connection
    instead of waiting for a reply nobody can receive."""
    closed = []

    def echo_then_note(conn: socket.socket, backend: Any) -> None:
        try:
            echo_handler(conn, backend)
        except OSError:
            pass
        closed.append(True)

    backend = start_backend(echo_then_note)
    tunnel = start_tunnel(backend.address)
    with tunnel.entry.connect(timeout=5) as client:
        client.sendall(b"abc")
        assert client.recv(10) == b"abc"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    (entry,) = closes(tunnel.entry)
    assert entry.reason.startswith("client error")
    (exit_,) = closes(tunnel.exit)
    assert exit_.reason.startswith(
        "client error: zlib: the peer closed in the middle of the stream"
    )
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert closed
    assert backend.errors == []


# -- garbage ----------------------------------------------------------------


def test_garbage_to_a_compress_listen_relay_closes_only_that_connection(
    start_tunnel, start_backend
) -> None:
    backend = start_backend(echo_handler)
    tunnel = start_tunnel(backend.address)

    with tunnel.exit.connect(timeout=5) as intruder:
        intruder.sendall(b"GET / HTTP/1.0\r\nHost: example\r\n\r\n")
        started = time.monotonic()
        try:
            data = recv_until_eof(intruder)
        except ConnectionResetError:
            data = b""
        assert data == b""
        assert time.monotonic() - started < 3
    (line,) = closes(tunnel.exit)
    assert line.reason.startswith("client error: zlib: corrupt stream from the peer")
    assert tunnel.exit.proc.poll() is None
    assert "Traceback" not in tunnel.exit.log()

    # The next (proper) connection is served.
    with tunnel.entry.connect() as client:
        client.sendall(b"after the garbage")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b"after the garbage"
    assert closes(tunnel.exit, count=2)[1].reason == "closed by both sides"


# -- backpressure -----------------------------------------------------------


def test_slow_receiver_bounds_both_relays_memory(start_tunnel, start_backend) -> None:
    """64 MiB of text pushed at a client that reads nothing for 1 s: neither
    compressing relay buffers it (RSS), the backend is held up, and then
    every byte arrives intact."""
    total_mib = 64
    progress = {"sent": 0}

    def blast(conn: socket.socket, backend: Any) -> None:
        if conn.recv(6) == b"warm\n":
            conn.sendall(b"ok")
            return
        for _ in range(total_mib):
            if backend.stopping:
                return
            conn.sendall(TEXT_MIB)
            progress["sent"] += MIB
        conn.shutdown(socket.SHUT_WR)

    backend = start_backend(blast)
    tunnel = start_tunnel(backend.address)

    # Warm up (first connection, first zlib streams) before the baseline.
    with tunnel.entry.connect() as warm:
        warm.sendall(b"warm\n")
        assert recv_until_eof(warm) == b"ok"
    closes(tunnel.entry)
    baseline = {r.pid: rss_kib(r.pid) for r in (tunnel.entry, tunnel.exit)}

    with tunnel.entry.connect(timeout=20) as client:
        client.sendall(b"blast\n")
        time.sleep(1.0)
        stalled = {r.pid: rss_kib(r.pid) for r in (tunnel.entry, tunnel.exit)}
        stalled_sent = progress["sent"]
        digest = hashlib.sha256()
        count = 0
        while True:
            chunk = client.recv(1 << 18)
            if not chunk:
                break
            digest.update(chunk)
            count += len(chunk)

    for pid, before in baseline.items():
        growth = (stalled[pid] - before) / 1024
        assert growth < 24, f"relay {pid} grew by {growth:.1f} MiB while stalled"
    # Text compresses about 4:1, so the kernels hold four times as much
    # payload as for plain bytes; still the backend was held up.
    assert stalled_sent < total_mib * MIB
    assert count == total_mib * MIB
    assert digest.hexdigest() == hashlib.sha256(TEXT_MIB * total_mib).hexdigest()
    assert backend.errors == []
