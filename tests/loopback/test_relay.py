"""End-to-end tests of ``python -m geventbev relay`` run as a subprocess.

Backends are plain socket servers in threads of the test process (see
conftest.py); clients are blocking stdlib sockets with timeouts.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import loopback_helpers
import pytest
from loopback_helpers import echo_handler, rss_kib

MIB = 1 << 20
# The relay tests move up to 256 MiB through one connection.
recv_until_eof = functools.partial(loopback_helpers.recv_until_eof, limit=256 * MIB)

#: The INFO line the relay logs when a connection closes; groups: ident,
#: client address, up bytes, down bytes, reason.
CLOSE_LINE = (
    r" INFO \S+: #(\d+) (\S+) closed: up (\d+) bytes, down (\d+) bytes, "
    r"[\d.]+ s \(([^)]*)\)$"
)


def sha256_of_stream(read, size_hint: int = 1 << 16) -> tuple:
    """(byte count, sha256 hex) of everything ``read(n)`` returns until b""."""
    digest = hashlib.sha256()
    count = 0
    while True:
        chunk = read(size_hint)
        if not chunk:
            return count, digest.hexdigest()
        digest.update(chunk)
        count += len(chunk)


def pattern_block(seed: int, size: int = MIB) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def reply_after_eof_handler(conn: socket.socket, backend: Any) -> None:
    """Read until EOF, then answer ``b"<count> <sha256 hex>\\n"`` and close."""
    count, digest = sha256_of_stream(conn.recv)
    conn.sendall(f"{count} {digest}\n".encode())


# -- bulk transfer ------------------------------------------------------------


@pytest.mark.slow
def test_http_download_of_50_mib_through_relay_keeps_sha256(
    http_server, start_relay, tmp_path: Path
) -> None:
    """urllib (and curl, when installed) get the exact bytes via the relay."""
    address, name, expected = http_server
    relay = start_relay(address)
    url = f"http://127.0.0.1:{relay.address[1]}/{name}"

    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        count, digest = sha256_of_stream(response.read)
    assert count == 50 * MIB
    assert digest == expected

    curl = shutil.which("curl")
    if curl is not None:
        target = tmp_path / "curl.bin"
        subprocess.run(
            [curl, "-sS", "--max-time", "60", "-o", str(target), url],
            check=True,
            timeout=90,
        )
        with open(target, "rb") as got:
            count, digest = sha256_of_stream(got.read, 1 << 20)
        assert count == 50 * MIB
        assert digest == expected

    # One close line per download, each with the whole file going down.
    downloads = 2 if curl is not None else 1
    lines = relay.wait_for_log(CLOSE_LINE, count=downloads)
    assert all(int(m.group(4)) > 50 * MIB for m in lines)


# -- half-close ---------------------------------------------------------------


def test_half_close_passes_eof_and_reply_written_after_it(
    start_relay, start_backend
) -> None:
    """The client half-closes; the backend answers only after EOF."""
    backend = start_backend(reply_after_eof_handler)
    relay = start_relay(backend.address)
    payload = pattern_block(seed=7, size=MIB)

    with relay.connect() as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        reply = client.makefile("rb").readline()
        assert reply == f"{MIB} {hashlib.sha256(payload).hexdigest()}\n".encode()
        assert client.recv(100) == b""  # then EOF

    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert (int(line.group(3)), int(line.group(4))) == (MIB, len(reply))
    assert backend.errors == []


def test_backend_eof_lets_client_keep_sending(start_relay, start_backend) -> None:
    """EOF from the backend does not stop the client's direction."""

    def greet_then_count(conn: socket.socket, backend: Any) -> None:
        conn.sendall(b"hello\n")
        conn.shutdown(socket.SHUT_WR)
        backend.progress["got"] = sha256_of_stream(conn.recv)

    backend = start_backend(greet_then_count)
    relay = start_relay(backend.address)
    payload = pattern_block(seed=8, size=256 * 1024)

    with relay.connect() as client:
        assert recv_until_eof(client) == b"hello\n"
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        relay.wait_for_log(CLOSE_LINE)
    expected = (len(payload), hashlib.sha256(payload).hexdigest())
    assert backend.progress["got"] == expected


def test_bulk_echo_both_ways_then_half_close(start_relay, start_backend) -> None:
    """16 MiB up while the echo streams down at the same time, then a
    half-close: every byte comes back, then EOF."""
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address)
    payload = pattern_block(seed=16, size=16 * MIB)

    with relay.connect(timeout=20) as client:

        def upload() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        count, digest = sha256_of_stream(client.recv, 1 << 18)
        uploader.join(timeout=10)
    assert count == len(payload)
    assert digest == hashlib.sha256(payload).hexdigest()
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert (int(line.group(3)), int(line.group(4))) == (len(payload), len(payload))
    assert line.group(5) == "closed by both sides"


# -- backpressure -------------------------------------------------------------


BLAST_BLOCK = pattern_block(seed=64, size=MIB)


def command_handler(conn: socket.socket, backend: Any) -> None:
    """A backend driven by the client's first line.

    ``echo``: echo the rest.  ``blast N``: send N MiB (BLAST_BLOCK
    repeated) as fast as possible, counting them in ``progress["sent"]``.
    ``sink S``: wait S seconds, then read to EOF and answer
    ``b"<count> <sha256 hex>\\n"``.
    """
    stream = conn.makefile("rb")
    command = stream.readline().split()
    if command == [b"echo"]:
        while True:
            data = stream.read1(1 << 16)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)
    elif command[0] == b"blast":
        backend.progress["sent"] = 0
        for _ in range(int(command[1])):
            if backend.stopping:
                return
            conn.sendall(BLAST_BLOCK)
            backend.progress["sent"] += MIB
        conn.shutdown(socket.SHUT_WR)
    elif command[0] == b"sink":
        time.sleep(float(command[1]))
        count, digest = sha256_of_stream(stream.read1)
        conn.sendall(f"{count} {digest}\n".encode())
    else:
        raise AssertionError(f"unknown command {command!r}")


@pytest.mark.parametrize("direction", ["down", "up"])
def test_slow_receiver_does_not_make_relay_buffer_without_bound(
    start_relay, start_backend, direction: str
) -> None:
    """64 MiB pushed at a receiver that reads nothing for 1 s: the relay's
    RSS stays far below that, the sender is held up, and then every byte
    arrives intact."""
    total_mib = 64
    expected = hashlib.sha256(BLAST_BLOCK * total_mib).hexdigest()
    backend = start_backend(command_handler)
    relay = start_relay(backend.address)

    # Warm up (imports, first connection) before taking the baseline.
    with relay.connect() as warm:
        warm.sendall(b"echo\nx")
        warm.shutdown(socket.SHUT_WR)
        assert recv_until_eof(warm) == b"x"
    relay.wait_for_log(CLOSE_LINE)
    baseline = rss_kib(relay.pid)

    with relay.connect(timeout=20) as client:
        if direction == "down":
            client.sendall(b"blast %d\n" % total_mib)
            time.sleep(1.0)
            stalled_rss = rss_kib(relay.pid)
            stalled_sent = backend.progress["sent"]
            count, digest = sha256_of_stream(client.recv, 1 << 18)
        else:
            client.sendall(b"sink 1.5\n")
            sent = [0]

            def upload() -> None:
                for _ in range(total_mib):
                    client.sendall(BLAST_BLOCK)
                    sent[0] += MIB
                client.shutdown(socket.SHUT_WR)

            uploader = threading.Thread(target=upload, daemon=True)
            uploader.start()
            time.sleep(1.0)
            stalled_rss = rss_kib(relay.pid)
            stalled_sent = sent[0]
            reply = recv_until_eof(client)
            uploader.join(timeout=10)
            count_text, digest = reply.decode().split()
            count = int(count_text)

    growth_mib = (stalled_rss - baseline) / 1024
    assert growth_mib < 24, f"relay RSS grew by {growth_mib:.1f} MiB while stalled"
    # The sender was held up too: the rest waited in the kernels.
    assert stalled_sent < total_mib * MIB
    assert count == total_mib * MIB
    assert digest == expected
    assert backend.errors == []


# -- failures -----------------------------------------------------------------


def test_refused_backend_closes_client_and_relay_keeps_serving(
    start_relay, start_backend, unused_port: int
) -> None:
    port = unused_port
    relay = start_relay(("127.0.0.1", port))

    with relay.connect(timeout=5) as client:
        started = time.monotonic()
        try:
            data = client.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
        assert time.monotonic() - started < 3
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert "backend connect failed" in line.group(5)
    assert relay.proc.poll() is None

    start_backend(echo_handler, port=port)
    with relay.connect() as client:
        client.sendall(b"ping")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b"ping"


def test_backend_reset_is_passed_on_to_client(start_relay, start_backend) -> None:
    """A backend that aborts (RST) makes the relay close the client side."""

    def abort(conn: socket.socket, _: Any) -> None:
        assert conn.recv(10) == b"go\n"
        conn.sendall(b"partial")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    backend = start_backend(abort)
    relay = start_relay(backend.address)
    with relay.connect(timeout=5) as client:
        client.sendall(b"go\n")
        received = b""
        try:
            received = recv_until_eof(client)
        except ConnectionResetError:
            pass
        # At most what was sent before the reset, nothing else.
        assert received in (b"", b"partial")
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert line.group(5).startswith("backend error")
    assert backend.errors == []


# -- idle timeout -------------------------------------------------------------


def test_idle_connection_is_closed(start_relay, start_backend) -> None:
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address, "--idle-timeout", "0.5")

    with relay.connect(timeout=5) as client:
        started = time.monotonic()
        try:
            data = client.recv(100)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert data == b""
    assert 0.4 <= elapsed <= 2.0
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert "idle timeout" in line.group(5)


def test_active_echo_connection_is_kept(start_relay, start_backend) -> None:
    """Bytes both ways every 0.2 s for 1.6 s: never idle, never closed."""
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address, "--idle-timeout", "0.5")

    with relay.connect(timeout=5) as client:
        for i in range(8):
            message = b"tick %d\n" % i
            client.sendall(message)
            assert client.recv(100) == message
            time.sleep(0.2)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert line.group(5) == "closed by both sides"
    assert "idle" not in relay.log()


def test_one_way_traffic_keeps_connection_alive(start_relay, start_backend) -> None:
    """Only the client sends (every 0.2 s); the silent backend side must not
    time the connection out while the other direction is busy."""
    backend = start_backend(reply_after_eof_handler)
    relay = start_relay(backend.address, "--idle-timeout", "0.5")

    sent = hashlib.sha256()
    with relay.connect(timeout=5) as client:
        for i in range(8):
            message = b"tick %d\n" % i
            client.sendall(message)
            sent.update(message)
            time.sleep(0.2)
        client.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(client)
    assert reply.split()[1].decode() == sent.hexdigest()
    assert "idle" not in relay.log()


def test_stalled_receiver_counts_as_idle(start_relay, start_backend) -> None:
    """A client that stops reading while data waits for it makes no
    progress: the idle timeout closes the connection."""
    backend = start_backend(command_handler)
    relay = start_relay(backend.address, "--idle-timeout", "0.5")
    with relay.connect(timeout=5) as client:
        client.sendall(b"blast 64\n")
        assert client.recv(1024)  # traffic flowed, then the client stalls
        (line,) = relay.wait_for_log(CLOSE_LINE, timeout=5)
    assert "idle timeout" in line.group(5)
    assert int(line.group(4)) < 64 * MIB


# -- logging ------------------------------------------------------------------


def test_stats_interval_logs_periodic_stats(start_relay, start_backend) -> None:
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address, "--stats-interval", "0.2")

    with relay.connect() as client:
        client.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += client.recv(1000)
        lines = relay.wait_for_log(
            r"stats: 1 active, 1 accepted, up 1000 bytes, down 1000 bytes", timeout=3
        )
        assert lines
    all_stats = relay.wait_for_log(r"INFO \S+: stats: ", count=3, timeout=3)
    assert len(all_stats) >= 3


def _sized_handler(conn: socket.socket, backend: Any) -> None:
    """Read ``SEND <n>\\n`` plus padding until EOF, then send ``n`` bytes."""
    request = recv_until_eof(conn)
    size = int(re.match(rb"SEND (\d+)\n", request).group(1))
    conn.sendall(b"d" * size)


def test_close_log_line_has_byte_counts_per_connection(
    start_relay, start_backend
) -> None:
    """One INFO line per connection, with its own up and down counts."""
    backend = start_backend(_sized_handler)
    relay = start_relay(backend.address)
    expected = {}
    for up_pad, down in ((0, 0), (10_000, 1), (123_457, 300_001)):
        with relay.connect() as client:
            request = b"SEND %d\n" % down + b"u" * up_pad
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            assert len(recv_until_eof(client)) == down
            host, port = client.getsockname()
            expected[f"{host}:{port}"] = (len(request), down)

    relay.wait_for_log(CLOSE_LINE, count=3)
    time.sleep(0.2)  # no extra lines come later
    lines = list(re.finditer(CLOSE_LINE, relay.log(), re.MULTILINE))
    got = {m.group(2): (int(m.group(3)), int(m.group(4))) for m in lines}
    assert got == expected
    assert sorted(int(m.group(1)) for m in lines) == [1, 2, 3]


# -- signals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_signal_exits_zero_with_connections_open(
    start_relay, start_backend, signum: int
) -> None:
    """Two idle connections and one in the middle of a bulk transfer."""
    backend = start_backend(command_handler)
    relay = start_relay(backend.address)
    clients = [relay.connect(timeout=5) for _ in range(3)]
    try:
        for client in clients[:2]:
            client.sendall(b"echo\nhi")
            assert client.recv(10) == b"hi"
        clients[2].sendall(b"blast 64\n")
        assert len(clients[2].recv(1 << 16)) > 0
        relay.proc.send_signal(signum)
        assert relay.proc.wait(timeout=5) == 0
        for client in clients:
            try:
                recv_until_eof(client)
            except ConnectionResetError:
                pass
    finally:
        for client in clients:
            client.close()
    log = relay.log()
    assert "relay stopped: 3 connections" in log
    assert "Traceback" not in log
    assert len(re.findall(CLOSE_LINE, log, re.MULTILINE)) == 3


def test_signal_exits_zero_when_idle(start_relay, unused_port: int) -> None:
    relay = start_relay(("127.0.0.1", unused_port))
    # A refused connection proves the relay's loop is running.
    with relay.connect(timeout=5) as client:
        try:
            assert client.recv(10) == b""
        except ConnectionResetError:
            pass
    relay.wait_for_log(CLOSE_LINE)
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(timeout=5) == 0
    assert "relay stopped: 1 connection, up 0 bytes, down 0 bytes" in relay.log()


#: Test-side instrumentation for the child: print() waits 0.5 s after the
#: banner, which widens the moment between the banner and whatever
#: run_relay does next, so a signal lands there every time.
_SLOW_BANNER = """\
import builtins, time
_print = builtins.print
def _slow_print(*args, **kwargs):
    _print(*args, **kwargs)
    if args and str(args[0]).startswith("relay listening on"):
        time.sleep(0.5)
builtins.print = _slow_print
"""


def test_sigterm_right_after_the_banner_exits_zero(
    start_relay, unused_port: int, tmp_path: Path
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_BANNER)
    relay = start_relay(("127.0.0.1", unused_port), path_prefix=(hook,))
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(timeout=5) == 0


def test_client_reset_closes_backend_side(start_relay, start_backend) -> None:
    """A client that aborts (RST) ends the connection; the backend sees EOF."""
    closed = threading.Event()

    def echo_then_note_eof(conn: socket.socket, backend: Any) -> None:
        echo_handler(conn, backend)
        closed.set()

    backend = start_backend(echo_then_note_eof)
    relay = start_relay(backend.address)
    with relay.connect(timeout=5) as client:
        client.sendall(b"abc")
        assert client.recv(10) == b"abc"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert closed.wait(timeout=5)
    (line,) = relay.wait_for_log(CLOSE_LINE)
    assert line.group(5).startswith("client error")
    assert (int(line.group(3)), int(line.group(4))) == (3, 3)


def test_log_level_warning_silences_close_lines(start_relay, start_backend) -> None:
    """``--log-level`` before the command sets the relay's log level."""
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address, global_args=("--log-level", "WARNING"))
    with relay.connect() as client:
        client.sendall(b"q")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b"q"
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(timeout=5) == 0
    assert relay.log() == ""


# -- addresses ----------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_relay_between_ipv6_loopback_addresses(start_relay, start_backend) -> None:
    """``--listen [::1]:0 --connect [::1]:PORT``."""
    backend = start_backend(echo_handler, host="::1")
    relay = start_relay(backend.address, listen="[::1]:0")
    assert relay.banner.startswith("relay listening on [::1]:")
    assert relay.address[0] == "::1"
    with socket.create_connection(relay.address, timeout=5) as client:
        client.settimeout(5)
        client.sendall(b"six")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b"six"


def test_relay_resolves_backend_host_name(start_relay, start_backend) -> None:
    """``--connect localhost:PORT`` is resolved per connection."""
    backend = start_backend(echo_handler)
    try:
        infos = socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    except socket.gaierror:
        pytest.skip("localhost does not resolve")
    if infos[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    relay = start_relay(("localhost", backend.address[1]))
    with relay.connect(timeout=5) as client:
        client.sendall(b"name")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(client) == b"name"


def test_many_concurrent_connections(start_relay, start_backend) -> None:
    """Twenty clients at once, each with its own payload, all echoed intact."""
    backend = start_backend(echo_handler)
    relay = start_relay(backend.address)
    results: dict = {}

    def client_run(index: int) -> None:
        payload = pattern_block(seed=100 + index, size=64 * 1024)
        with relay.connect(timeout=10) as client:
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            got = b""
            while len(got) < len(payload):
                chunk = client.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            sender.join(timeout=10)
            results[index] = got == payload

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == {i: True for i in range(20)}
    relay.wait_for_log(CLOSE_LINE, count=20)
    assert backend.errors == []


def test_drain_timeout_lets_a_transfer_finish_after_sigterm(
    start_relay, start_backend
) -> None:
    """With --drain-timeout the relay stops accepting on SIGTERM but lets the
    open transfer complete, then exits 0."""
    backend = start_backend(command_handler)
    relay = start_relay(backend.address, "--drain-timeout", "20")
    client = relay.connect(timeout=10)
    try:
        client.sendall(b"blast 32\n")
        first = client.recv(1 << 16)
        assert first
        relay.proc.send_signal(signal.SIGTERM)
        relay.wait_for_log(r"stopping: waiting up to 20\.0 s for 1 open")
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(relay.address, timeout=2).close()
        rest = recv_until_eof(client)
        assert len(first) + len(rest) == 32 * MIB
        client.shutdown(socket.SHUT_WR)  # both directions done: it ends
        assert relay.proc.wait(timeout=10) == 0
    finally:
        client.close()
    log = relay.log()
    assert "Traceback" not in log
    assert re.search(r"closed: up \d+ bytes, down 33554432 bytes", log)


def test_a_second_signal_cuts_the_drain_short(start_relay, start_backend) -> None:
    backend = start_backend(command_handler)
    relay = start_relay(backend.address, "--drain-timeout", "60")
    client = relay.connect(timeout=10)
    try:
        client.sendall(b"echo\nhi")
        assert client.recv(10) == b"hi"  # an idle, open connection
        relay.proc.send_signal(signal.SIGTERM)
        relay.wait_for_log(r"stopping: waiting up to 60\.0 s")
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        client.close()
    assert "relay shutting down" in relay.log()
