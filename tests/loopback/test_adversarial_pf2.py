"""Second adversarial pass on filters and pairs, aimed at the compressed
relay tunnel, the zlib filters, and filters used through ``serve`` and the
blocking and socket-like APIs.

The first group pins the faults this pass found (fixed since); the second
pins attacks that held.  Relays run as
subprocesses (``start_relay`` from conftest.py) and are stopped by pid;
everything talks to 127.0.0.1 only, and every blocking call has a timeout.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import signal
import socket
import struct
import threading
import time
import weakref
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import gevent
import gevent.socket
import pytest
from loopback_helpers import echo_handler, recv_until_eof, rss_kib

from geventbev import (
    EV_READ,
    EV_WRITE,
    BufferEventError,
    BufferEventSocket,
    Event,
    FlushMode,
    Option,
    connect,
    filter_new,
    pair_new,
    serve,
    socket_new,
)
from geventbev.compress import CompressionError, zlib_filter_new

MIB = 1 << 20
CLOSE = Option.CLOSE_ON_FREE


# -- helpers -----------------------------------------------------------------


class Tunnel(NamedTuple):
    entry: Any  # relay A (--compress-connect): clients connect here
    exit: Any  # relay B (--compress-listen), in front of the backend


@pytest.fixture
def start_tunnel(start_relay: Callable[..., Any]) -> Callable[..., Tunnel]:
    """``start_tunnel(backend_address, *args) -> Tunnel``: two relays joined
    by a zlib link; ``args`` go to both."""

    def start(backend: tuple, *args: str) -> Tunnel:
        exit_relay = start_relay(backend, "--compress-listen", *args)
        entry = start_relay(exit_relay.address, "--compress-connect", *args)
        return Tunnel(entry, exit_relay)

    return start


@pytest.fixture
def greenlets() -> Iterator[list]:
    """Greenlets a test spawns; killed at teardown so none outlives it."""
    spawned: list = []
    yield spawned
    gevent.killall(spawned, timeout=2)


def hold_without_reading(conn: socket.socket, backend: Any) -> None:
    """A backend that accepts and never reads (a stalled receiver)."""
    while not backend.stopping:
        time.sleep(0.05)


def zlib_stream(data: bytes) -> bytes:
    """``data`` as one complete zlib stream, as a --compress-connect relay
    would send it."""
    compressor = zlib.compressobj()
    return compressor.compress(data) + compressor.flush()


def tcp_socket_pair() -> tuple:
    """Two connected loopback TCP gevent sockets (client, server side)."""
    listener = gevent.socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = gevent.socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    finally:
        listener.close()
    server.settimeout(5)
    client.settimeout(5)
    return client, server


# -- faults found --------------------------------------------------------------


def test_zlib_bomb_to_a_compress_listen_relay_is_bounded_by_backpressure(
    start_relay: Callable[..., Any], start_backend: Callable[..., Any]
) -> None:
    """Two clients stream zlib-compressed zeros (1000:1) at a relay whose
    backend never reads: the relay may hold about pause_above (1 MiB) per
    connection, not what a few compressed KiB inflate to."""
    backend = start_backend(hold_without_reading)
    relay = start_relay(backend.address, "--compress-listen")
    compressor = zlib.compressobj(9)
    zeros = bytes(16 * MIB)
    head = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # After the first block the window is all zeros, so every later 16 MiB
    # compresses to the same bytes: the stream can go on forever.
    body = compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
    time.sleep(0.2)
    baseline = rss_kib(relay.pid) / 1024
    clients = []
    try:
        for _ in range(2):
            sock = relay.connect(timeout=5)
            sock.sendall(head)
            sock.setblocking(False)
            clients.append([sock, 0])
        peak = baseline
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            for entry in clients:
                sock, offset = entry
                try:
                    sent = sock.send(body[offset:])
                except BlockingIOError:
                    continue
                entry[1] = (offset + sent) % len(body)
            peak = max(peak, rss_kib(relay.pid) / 1024)
            time.sleep(0.002)
    finally:
        for sock, _ in clients:
            sock.close()
    assert peak - baseline < 32, f"relay grew by {peak - baseline:.0f} MiB"


def test_sigterm_with_drain_timeout_delivers_the_compressed_tail(
    start_relay: Callable[..., Any], start_backend: Callable[..., Any]
) -> None:
    """A zlib client downloads 16 MiB through a --compress-listen relay
    that gets SIGTERM (with --drain-timeout) in the middle: the transfer
    finishes, every byte and the end of the stream arrive."""
    payload = random.Random(16).randbytes(16 * MIB)

    def send_payload(conn: socket.socket, backend: Any) -> None:
        assert conn.recv(2) == b"go"
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    backend = start_backend(send_payload)
    relay = start_relay(backend.address, "--compress-listen", "--drain-timeout", "10")
    sock = socket.socket()
    # A small receive buffer keeps the relay's socket output full, so the
    # tail is still in the relay when the connection is over.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    try:
        sock.connect(relay.address)
        sock.sendall(zlib_stream(b"go"))
        sock.shutdown(socket.SHUT_WR)
        inflater = zlib.decompressobj()
        parts = []
        wire = 0
        signalled = False
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            parts.append(inflater.decompress(chunk))
            wire += len(chunk)
            if not signalled and wire > MIB:
                relay.proc.send_signal(signal.SIGTERM)
                signalled = True
            # A reader slower than the relay keeps its socket full to the end.
            time.sleep(0.005)
    finally:
        sock.close()
    data = b"".join(parts)
    assert signalled
    assert relay.proc.wait(timeout=5) == 0
    assert len(data) == len(payload), f"{len(payload) - len(data)} bytes lost"
    assert data == payload
    assert inflater.eof, "the zlib stream never ended"


def _write_and_return(bev: Any) -> None:
    wrapped = filter_new(bev, None, None)
    wrapped.write(b"hello\n")


def _zlib_write_shutdown_and_return(bev: Any) -> None:
    wrapped = zlib_filter_new(bev)
    wrapped.write_all(b"hello\n", timeout=2)
    wrapped.shutdown_write()


@pytest.mark.parametrize(
    "handler",
    [_write_and_return, _zlib_write_shutdown_and_return],
    ids=["pass-through-write", "zlib-shutdown-write"],
)
def test_serve_handler_output_through_its_own_filter_is_delivered(
    handler: Callable[[Any], None],
) -> None:
    """A handler wraps its connection in a filter, writes and returns:
    the client gets the bytes (and, for zlib, the end of the stream), as
    it would had the handler written to the connection itself."""
    server = serve(("127.0.0.1", 0), handler)
    try:
        sock = gevent.socket.create_connection(server.address, timeout=5)
        sock.settimeout(5)
        with sock:
            raw = recv_until_eof(sock)
    finally:
        server.stop(timeout=2)
    if handler is _write_and_return:
        assert raw == b"hello\n"
    else:
        inflater = zlib.decompressobj()
        assert inflater.decompress(raw) == b"hello\n"
        assert inflater.eof, "the zlib trailer was never sent"


def _pair_end(bev: Any) -> Any:
    return bev


def _pass_through(bev: Any) -> Any:
    return filter_new(bev, None, None)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(_pair_end, id="pair-end"),
        pytest.param(_pass_through, id="filter"),
        pytest.param(zlib_filter_new, id="zlib"),
    ],
)
def test_write_timeout_does_not_fire_while_bytes_keep_flowing(
    wrap: Callable[[Any], Any], greenlets: list
) -> None:
    """A writer outpaces a reader that takes 4 KiB every 20 ms (about
    200 KB/s, progress 25 times per timeout): a 0.5 s write timeout must
    not fire, whatever layer the writer writes to."""
    writer_end, reader_end = pair_new()
    reader_end.setwatermark(EV_READ, 0, 4096)
    top = wrap(writer_end)
    events: list = []
    top.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    top.set_timeouts(write=0.5)
    rng = random.Random(5)

    def keep_writing() -> None:
        # Fresh random bytes, so zlib cannot shrink them; the writer keeps
        # about 1 MiB queued, as the relay's pause_above does.
        while True:
            if len(top.output) < MIB:
                top.write(rng.randbytes(16 * 1024))
            gevent.sleep(0.01)

    greenlets.append(gevent.spawn(keep_writing))
    received = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not events:
        received += len(reader_end.read_some(4096, timeout=1))
        gevent.sleep(0.02)
    assert received > 100 * 1024  # the reader really made progress
    timeouts = [e for e in events if e & Event.TIMEOUT]
    assert not timeouts, f"write timeout while the reader got {received} bytes"


def test_a_freed_zlib_filter_releases_its_state_without_the_cyclic_gc() -> None:
    """Freeing a zlib filter (and its pair end) and dropping the last
    reference releases it at once, as freeing a socket in CPython does."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        refs = []
        for _ in range(20):
            writer_end, reader_end = pair_new()
            wrapped = zlib_filter_new(writer_end, CLOSE)
            wrapped.write(random.Random(1).randbytes(64 * 1024))
            gevent.sleep(0)
            refs.append(weakref.ref(wrapped))
            wrapped.free()
            reader_end.free()
            del wrapped, writer_end, reader_end
        for _ in range(5):
            gevent.sleep(0.01)
        alive = sum(ref() is not None for ref in refs)
    finally:
        if was_enabled:
            gc.enable()
    assert alive == 0, f"{alive} of 20 freed zlib filters still alive"


# -- attacks that held ---------------------------------------------------------


def test_fifty_parallel_tunnel_connections_keep_every_byte(
    start_tunnel: Callable[..., Tunnel], start_backend: Callable[..., Any]
) -> None:
    """50 clients at once, each with its own size (0..768 KiB), half text,
    half random: the backend sees each upload intact (sha256) and each
    client gets its own download back intact."""

    def hash_then_answer(conn: socket.socket, backend: Any) -> None:
        reader = conn.makefile("rb")
        size = int(reader.readline())
        data = reader.read(size)
        conn.sendall(hashlib.sha256(data).hexdigest().encode() + b"\n")
        conn.sendall(random.Random(size).randbytes(size))
        conn.shutdown(socket.SHUT_WR)

    backend = start_backend(hash_then_answer)
    tunnel = start_tunnel(backend.address)
    results: dict = {}

    def client(i: int) -> None:
        rng = random.Random(i)
        size = rng.randint(0, 768 * 1024)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = (b"line %d of a text upload\n" % i * (size // 20 + 1))[:size]
        try:
            with tunnel.entry.connect(timeout=15) as sock:
                sock.sendall(b"%d\n" % size + data)
                reply = recv_until_eof(sock)
            line, _, rest = reply.partition(b"\n")
            results[i] = line.decode() == hashlib.sha256(
                data
            ).hexdigest() and rest == random.Random(size).randbytes(size)
        except Exception as exc:  # reported through results
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == {i: True for i in range(50)}
    assert backend.errors == []
    for relay in tunnel:
        assert "Traceback" not in relay.log()


def test_interactive_lines_stay_fast_around_a_bulk_transfer(
    start_tunnel: Callable[..., Tunnel], start_backend: Callable[..., Any]
) -> None:
    """Line echoes through the tunnel, before and after 2 MiB of random
    bytes on the same connection, each come back in well under 0.5 s."""
    backend = start_backend(echo_handler)
    tunnel = start_tunnel(backend.address)
    bulk = random.Random(2).randbytes(2 * MIB)
    worst = 0.0
    with tunnel.entry.connect(timeout=5) as sock:

        def round_trip(line: bytes) -> None:
            nonlocal worst
            started = time.monotonic()
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = sock.recv(256)
                assert chunk, "EOF in the middle of an exchange"
                got += chunk
            worst = max(worst, time.monotonic() - started)
            assert got == line

        for i in range(20):
            round_trip(b"ping %d\n" % i)
        sock.sendall(bulk)
        echoed = b""
        while len(echoed) < len(bulk):
            chunk = sock.recv(1 << 16)
            assert chunk
            echoed += chunk
        assert echoed == bulk
        for i in range(20):
            round_trip(b"pong %d\n" % i)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
    assert worst < 0.5


def test_truncated_stream_passes_on_what_decoded_and_names_zlib(
    start_relay: Callable[..., Any], start_backend: Callable[..., Any]
) -> None:
    """A zlib client sends 300 KiB (sync-flushed), then half a block and
    EOF: the backend gets the 300 KiB intact, the relay names the cut."""
    got: dict = {}

    def collect(conn: socket.socket, backend: Any) -> None:
        got["data"] = recv_until_eof(conn)

    backend = start_backend(collect)
    relay = start_relay(backend.address, "--compress-listen")
    payload = random.Random(3).randbytes(300 * 1024)
    compressor = zlib.compressobj()
    decodable = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    cut = compressor.compress(random.Random(4).randbytes(64 * 1024))
    with relay.connect(timeout=5) as sock:
        sock.sendall(decodable + cut[: len(cut) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
    relay.wait_for_log(r"closed in the middle of the stream")
    deadline = time.monotonic() + 5
    while "data" not in got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got["data"][: len(payload)] == payload
    assert relay.proc.poll() is None
    assert "Traceback" not in relay.log()


def test_backend_reset_mid_download_ends_both_relays_cleanly(
    start_tunnel: Callable[..., Tunnel], start_backend: Callable[..., Any]
) -> None:
    """The backend sends 1 MiB and resets: the entry relay reports the
    zlib stream cut short, the exit relay the reset; both keep serving."""

    def send_then_reset(conn: socket.socket, backend: Any) -> None:
        if conn.recv(1) == b"e":
            echo_handler(conn, backend)
            return
        conn.sendall(random.Random(1).randbytes(MIB))
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    backend = start_backend(send_then_reset)
    tunnel = start_tunnel(backend.address)
    with tunnel.entry.connect(timeout=5) as sock:
        sock.sendall(b"d")
        try:
            data = recv_until_eof(sock)
        except ConnectionResetError:
            data = b""
    assert data == random.Random(1).randbytes(MIB)[: len(data)]
    tunnel.exit.wait_for_log(r"backend error: .*reset")
    tunnel.entry.wait_for_log(r"backend error: zlib: the peer closed in the middle")
    with tunnel.entry.connect(timeout=5) as sock:
        sock.sendall(b"e" + b"still here")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"still here"
    for relay in tunnel:
        assert "Traceback" not in relay.log()


def test_idle_timeout_spares_a_tunnel_with_steady_traffic(
    start_tunnel: Callable[..., Tunnel], start_backend: Callable[..., Any]
) -> None:
    """With --idle-timeout 0.3 a 1.2 s upload of small pieces (nothing
    comes back until the end) is not taken for idle on either relay."""

    def count_then_answer(conn: socket.socket, backend: Any) -> None:
        total = len(recv_until_eof(conn))
        conn.sendall(b"%d" % total)
        conn.shutdown(socket.SHUT_WR)

    backend = start_backend(count_then_answer)
    tunnel = start_tunnel(backend.address, "--idle-timeout", "0.3")
    sent = 0
    with tunnel.entry.connect(timeout=5) as sock:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            sock.sendall(os.urandom(4096))
            sent += 4096
            time.sleep(0.01)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"%d" % sent
    for relay in tunnel:
        assert "idle timeout" not in relay.log()


def test_zlib_bomb_through_a_pair_respects_a_tiny_read_high_watermark(
    greenlets: list,
) -> None:
    """32 MiB of zeros (about 32 KiB compressed) into a zlib filter whose
    read high watermark is 4 KiB: the input never holds more than that,
    the pair end below it no more than the 16 KiB read-ahead, and every
    byte arrives."""
    writer_end, reader_end = pair_new()
    sender = zlib_filter_new(writer_end)
    receiver = zlib_filter_new(reader_end)
    receiver.setwatermark(EV_READ, 0, 4096)
    size = 32 * MIB

    def write() -> None:
        sender.write_all(bytes(size), timeout=10)
        sender.shutdown_write()

    greenlets.append(gevent.spawn(write))
    total = biggest = below = 0
    while True:
        below = max(below, len(reader_end.input))
        chunk = receiver.read_some(1 << 16, timeout=5)
        if not chunk:
            break
        assert not chunk.strip(b"\0")
        total += len(chunk)
        biggest = max(biggest, len(chunk))
    assert total == size
    assert biggest <= 4096
    assert below <= 16 * 1024


def test_socket_adapter_over_zlib_over_a_connected_socket(
    greenlets: list,
) -> None:
    """connect() + zlib filter + BufferEventSocket against a peer that
    speaks zlib with the stdlib: sendall, shutdown(SHUT_WR), makefile
    readline/read and close all behave as on a socket."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    payload = random.Random(9).randbytes(3 * MIB)
    seen: dict = {}

    def peer() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        inflater = zlib.decompressobj()
        digest = hashlib.sha256()
        count = 0
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            plain = inflater.decompress(chunk)
            digest.update(plain)
            count += len(plain)
        seen["upload"] = (count, digest.digest(), inflater.eof)
        conn.sendall(zlib_stream(b"first line\nsecond line\n" + payload))
        conn.close()

    greenlets.append(gevent.spawn(peer))
    try:
        bev = connect(listener.getsockname(), timeout=5)
        sock = BufferEventSocket(zlib_filter_new(bev, CLOSE))
        sock.settimeout(5)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("rb")
        assert reader.readline() == b"first line\n"
        assert reader.readline() == b"second line\n"
        assert reader.read() == payload
        reader.close()
        sock.close()
        assert sock.bev.freed
    finally:
        listener.close()
    assert seen["upload"] == (len(payload), hashlib.sha256(payload).digest(), True)


def test_deferred_filter_stack_over_a_socket_round_trips(greenlets: list) -> None:
    """DEFER_CALLBACKS everywhere: a pass-through filter over a zlib filter
    over a TCP socket, against a peer that inflates, echoes deflated and
    finishes its stream at EOF: 3 MiB come back intact, then EOF."""
    client, server = tcp_socket_pair()
    opts = CLOSE | Option.DEFER_CALLBACKS
    under = socket_new(client, opts)
    top = filter_new(zlib_filter_new(under, opts), None, None, opts)
    payload = random.Random(7).randbytes(3 * MIB)

    def echo_peer() -> bool:
        inflater = zlib.decompressobj()
        deflater = zlib.compressobj()
        while True:
            chunk = server.recv(1 << 16)
            if not chunk:
                break
            plain = inflater.decompress(chunk)
            server.sendall(deflater.compress(plain) + deflater.flush(zlib.Z_SYNC_FLUSH))
        server.sendall(deflater.flush())
        server.shutdown(socket.SHUT_WR)
        return inflater.eof

    peer = gevent.spawn(echo_peer)
    greenlets.append(peer)

    def upload() -> None:
        top.write_all(payload, timeout=10)
        top.shutdown_write()

    greenlets.append(gevent.spawn(upload))
    try:
        assert top.read_until_eof(timeout=10) == payload
        assert peer.get(timeout=5) is True
    finally:
        top.free()
        server.close()


def test_finished_flush_inside_a_write_callback_then_writing_names_zlib() -> None:
    """flush(EV_WRITE, FINISHED) from a zlib filter's write callback ends
    its stream; bytes written after that fail with an error that names
    zlib (as ``__cause__`` of the blocking call), and the peer read a
    complete stream first."""
    writer_end, reader_end = pair_new()
    sender = zlib_filter_new(writer_end)
    receiver = zlib_filter_new(reader_end)
    events: list = []

    def finish_once(bev: Any, ctx: Any) -> None:
        if not events:
            events.append("finished")
            bev.flush(EV_WRITE, FlushMode.FINISHED)

    sender.setcb(None, finish_once, lambda bev, what, ctx: events.append(int(what)))
    sender.enable(EV_WRITE)
    sender.write(b"a" * 10000)
    assert receiver.read_until_eof(timeout=3) == b"a" * 10000
    sender.write(b"late")
    with pytest.raises(BufferEventError) as info:
        sender.drain(timeout=3)
    assert isinstance(info.value.__cause__, CompressionError)
    assert "zlib: 4 bytes written after the stream was finished" in str(info.value)
    assert int(Event.ERROR | Event.WRITING) in events


def test_one_byte_reads_below_a_zlib_filter_lose_nothing() -> None:
    """set_max_single_read(7) on the socket under a zlib filter: 200 KB
    of random bytes still inflate intact, then EOF."""
    client, server = tcp_socket_pair()
    under = socket_new(client, CLOSE)
    under.set_max_single_read(7)
    top = zlib_filter_new(under, CLOSE)
    payload = random.Random(11).randbytes(200_000)
    try:
        server.sendall(zlib_stream(payload))
        server.shutdown(socket.SHUT_WR)
        assert top.read_until_eof(timeout=10) == payload
    finally:
        top.free()
        server.close()
