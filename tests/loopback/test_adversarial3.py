"""Third adversarial pass: the socket adapter's send/sendall, connect() on a
socket given unconnected, the relay's --drain-timeout, fairness across many
busy connections, and set_timeouts against blocking reads.

Tests that found a failure (now fixed) keep it from coming back; the
others pin behaviour that held up.  Everything talks to 127.0.0.1
or AF_UNIX sockets only; child processes are stopped by pid and every
blocking call has a timeout.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from array import array
from typing import Any, Iterator

import gevent
import gevent.socket
import pytest
from loopback_helpers import recv_until_eof

from geventbev import (
    EV_READ,
    EV_WRITE,
    BufferEventError,
    BufferEventSocket,
    Event,
    IncompleteReadError,
    Option,
    connect,
    socket_new,
)
from geventbev.highlevel import SEND_BUFFER

CLOSE = Option.CLOSE_ON_FREE


# -- helpers -----------------------------------------------------------------


def adapter(raw_sockets: Any, timeout: float = 2.0) -> tuple:
    """A BufferEventSocket on one end of a socketpair, and the raw peer."""
    ours, peer = raw_sockets.pair()
    peer.settimeout(3)
    bev = socket_new(ours, CLOSE)
    bev.enable(EV_READ)
    sock = BufferEventSocket(bev)
    sock.settimeout(timeout)
    return sock, peer


def read_for(peer: Any, seconds: float, want: int = -1) -> bytes:
    """What ``peer`` receives within ``seconds``, until EOF or ``want`` bytes."""
    got = bytearray()
    deadline = time.monotonic() + seconds
    peer.settimeout(0.05)
    while time.monotonic() < deadline and len(got) != want:
        try:
            data = peer.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        got += data
    return bytes(got)


class _Echo:
    """A loopback gevent listener (TCP or AF_UNIX) echoing every byte."""

    def __init__(self, family: int, path: str = "") -> None:
        self.server = gevent.socket.socket(family, socket.SOCK_STREAM)
        self.server.bind(path or ("127.0.0.1", 0))
        self.server.listen(8)
        self.address = self.server.getsockname()
        self._conns: list = []
        self._acceptor = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            conn, _ = self.server.accept()
            conn.settimeout(5)
            self._conns.append(conn)
            gevent.spawn(self._echo, conn)

    @staticmethod
    def _echo(conn: Any) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._acceptor.kill()
        for conn in self._conns:
            conn.close()
        self.server.close()


@pytest.fixture(params=["tcp", "unix"])
def echo(request: Any, tmp_path: Any) -> Iterator[_Echo]:
    if request.param == "tcp":
        server = _Echo(socket.AF_INET)
    else:
        server = _Echo(socket.AF_UNIX, str(tmp_path / "echo.sock"))
    yield server
    server.close()


def fresh_socket(echo: _Echo) -> socket.socket:
    """An unconnected socket of the echo server's family (TCP ones bound to
    a source address first)."""
    if isinstance(echo.address, str):
        return socket.socket(socket.AF_UNIX)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- connect() on a socket given unconnected ------------------------------------


def test_connect_right_after_socket_new_uses_the_given_socket(echo):
    own = fresh_socket(echo)
    local = own.getsockname()
    bev = socket_new(own, CLOSE)
    try:
        bev.connect(echo.address)
        bev.wait_connected(timeout=2)
        assert bev.getsockname() == local
        bev.write(b"ping")
        assert bev.read_exactly(4, timeout=2) == b"ping"
    finally:
        bev.free()


def test_connect_after_a_hub_turn_uses_the_given_socket(echo):
    own = fresh_socket(echo)
    bev = socket_new(own, CLOSE)
    try:
        gevent.sleep(0.01)  # e.g. the caller resolved a name meanwhile
        bev.connect(echo.address)
        bev.wait_connected(timeout=2)
        bev.write(b"ping")
        assert bev.read_exactly(4, timeout=2) == b"ping"
    finally:
        bev.free()


def test_reading_enabled_before_connect_on_a_given_socket(echo):
    own = fresh_socket(echo)
    bev = socket_new(own, CLOSE)
    events: list = []
    bev.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    try:
        bev.enable(EV_READ)
        gevent.sleep(0.01)
        bev.connect(echo.address)
        bev.wait_connected(timeout=2)
        bev.write(b"ping")
        assert bev.read_exactly(4, timeout=2) == b"ping"
        assert not [e for e in events if e & Event.ERROR]
    finally:
        bev.free()


@pytest.mark.parametrize("kind", ["tcp", "unix-pair"])
def test_connect_on_an_already_connected_socket_is_refused(raw_sockets, kind):
    """Also after the reader started; the connection keeps working."""
    if kind == "tcp":
        server = _Echo(socket.AF_INET)
        ours = socket.create_connection(server.address, timeout=2)
        target: Any = server.address
    else:
        server = None
        ours, peer = raw_sockets.pair()
        target = "/nonexistent/geventbev-test.sock"
    bev = socket_new(ours, CLOSE)
    try:
        for _ in range(2):
            with pytest.raises(BufferEventError, match="already connected"):
                bev.connect(target)
            gevent.sleep(0.01)
        if server is not None:
            bev.write(b"still here")
            assert bev.read_exactly(10, timeout=2) == b"still here"
        else:
            peer.settimeout(2)
            bev.write(b"still here")
            assert read_for(peer, 2, want=10) == b"still here"
    finally:
        bev.free()
        if server is not None:
            server.close()


# -- BufferEventSocket.send / sendall --------------------------------------------


@pytest.mark.parametrize("bad", [5, [65, 66]], ids=["int", "list"])
def test_send_refuses_what_is_not_bytes_like(raw_sockets, bad):
    sock, peer = adapter(raw_sockets)
    try:
        with pytest.raises(TypeError):
            sock.send(bad)
        with pytest.raises(TypeError):
            sock.sendall(bad)
        assert len(sock.bev.output) == 0
    finally:
        sock.bev.free()


def test_sendall_timeout_bounds_the_whole_call(raw_sockets):
    sock, peer = adapter(raw_sockets, timeout=0.3)

    def slow_reader() -> None:
        # About 650 kB/s: every piece gets room well within 0.3 s.
        try:
            for _ in range(200):
                gevent.sleep(0.05)
                if not peer.recv(65536):
                    return
        except OSError:
            return

    reader = gevent.spawn(slow_reader)
    began = time.monotonic()
    try:
        with pytest.raises(socket.timeout):
            sock.sendall(b"s" * (8 * SEND_BUFFER))
        assert time.monotonic() - began < 0.6
    finally:
        reader.kill()
        sock.bev.free()


def test_send_after_a_write_timeout_still_sends(raw_sockets):
    ours, peer = raw_sockets.pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bev = socket_new(ours, CLOSE)
    bev.set_timeouts(write=0.05)
    sock = BufferEventSocket(bev)
    sock.settimeout(2)
    payload = os.urandom(100000)
    try:
        sock.sendall(payload)
        gevent.sleep(0.2)  # the peer reads nothing: the write timeout fires
        assert bev.get_enabled() & EV_WRITE == 0
        assert 0 < len(bev.output) < SEND_BUFFER
        sock.sendall(b"END")
        got = read_for(peer, 0.6, want=len(payload) + 3)
        assert got == payload + b"END"
    finally:
        bev.free()


def test_a_send_waiting_during_shutdown_wr_sends_nothing(raw_sockets):
    """A send still waiting for room when another greenlet shuts the write
    side down raises BrokenPipeError and queues nothing."""
    sock, peer = adapter(raw_sockets)
    try:
        sock.settimeout(0.0)  # fill the kernel buffer and then the output
        sent = 0
        for _ in range(1000):
            try:
                sent += sock.send(b"z" * 65536)
            except BlockingIOError:
                gevent.sleep(0.05)  # let the writer hand what it can over
                if len(sock.bev.output) >= SEND_BUFFER:
                    break
        sock.settimeout(None)

        def late() -> Any:
            try:
                return sock.send(b"late")
            except OSError as exc:
                return exc

        waiting = gevent.spawn(late)
        gevent.sleep(0.02)
        assert not waiting.dead  # it is waiting for room
        sock.shutdown(socket.SHUT_WR)
        got = read_for(peer, 2)
        outcome = waiting.get(timeout=2)
        assert isinstance(outcome, BrokenPipeError)
        assert got == b"z" * sent
    finally:
        sock.bev.free()


def test_send_after_shut_wr_raises_and_the_peer_reads_eof(raw_sockets):
    sock, peer = adapter(raw_sockets)
    try:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        with pytest.raises(BrokenPipeError):
            sock.send(b"more")
        with pytest.raises(BrokenPipeError):
            sock.sendall(b"more")
        assert read_for(peer, 2) == b"last words"
        peer.sendall(b"reply")  # the other direction still works
        assert sock.recv(10) == b"reply"
    finally:
        sock.bev.free()


def test_concurrent_senders_interleave_whole_sends(raw_sockets):
    """Three greenlets send numbered messages (some larger than SEND_BUFFER)
    while the output is full: every message arrives whole, once, in order
    per sender."""
    sock, peer = adapter(raw_sockets, timeout=5)
    sizes = {b"A": 100000, b"B": 70001, b"C": SEND_BUFFER + 4321}

    def sender(tag: bytes, count: int) -> None:
        size = sizes[tag]
        for i in range(count):
            sock.send(struct.pack("!cII", tag, i, size) + tag * (size - 9))

    total = sum(sizes.values()) * 12
    got = bytearray()

    def reader() -> None:
        got.extend(read_for(peer, 5, want=total))

    drain = gevent.spawn(reader)
    senders = [gevent.spawn(sender, tag, 12) for tag in sizes]
    try:
        gevent.joinall(senders, timeout=5, raise_error=True)
        drain.join(timeout=5)
        assert len(got) == total
        seen = dict.fromkeys(sizes, 0)
        offset = 0
        while offset < len(got):
            tag, i, size = struct.unpack_from("!cII", got, offset)
            assert i == seen[tag] and size == sizes[tag]
            assert got[offset + 9 : offset + size] == tag * (size - 9)
            seen[tag] += 1
            offset += size
        assert seen == dict.fromkeys(sizes, 12)
    finally:
        for glet in [drain, *senders]:
            glet.kill()
        sock.bev.free()


def test_mutating_the_source_after_send_changes_nothing(raw_sockets):
    sock, peer = adapter(raw_sockets)
    got = bytearray()
    big_size = SEND_BUFFER * 2 + 7
    want_size = 100 + big_size + 12
    reader = gevent.spawn(lambda: got.extend(read_for(peer, 3, want=want_size)))
    try:
        source = bytearray(b"a" * 1000)
        assert sock.send(memoryview(source)[100:200]) == 100
        big = bytearray(b"b" * big_size)
        sock.sendall(big)  # queued in pieces as the peer reads
        source[:] = b"X" * 1000
        big[:] = b"Y" * len(big)
        words = array("i", [1, 2, 3])
        assert sock.send(words) == 3 * words.itemsize  # bytes, not items
        words[0] = 99
        reader.join(timeout=4)
        want = b"a" * 100 + b"b" * big_size + array("i", [1, 2, 3]).tobytes()
        assert len(want) == want_size
        assert bytes(got) == want
    finally:
        reader.kill()
        sock.bev.free()


def test_nonblocking_send_on_a_full_output_queues_nothing(raw_sockets):
    sock, peer = adapter(raw_sockets)
    try:
        huge = os.urandom(3 << 20)
        assert sock.send(huge) == len(huge)  # an empty output takes it whole
        sock.setblocking(False)
        before = len(sock.bev.output)
        assert before >= SEND_BUFFER
        with pytest.raises(BlockingIOError):
            sock.send(b"more")
        with pytest.raises(BlockingIOError):
            sock.sendall(b"more")
        assert len(sock.bev.output) <= before
        assert read_for(peer, 3, want=len(huge)) == huge
    finally:
        sock.bev.free()


@pytest.mark.parametrize("how", ["tcp-reset", "unix-close"])
def test_peer_reset_mid_sendall_raises_promptly(raw_sockets, how):
    if how == "tcp-reset":
        server = gevent.socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        bev = connect(server.getsockname(), timeout=2)
        peer, _ = server.accept()
        server.close()
        peer.settimeout(2)
        sock = BufferEventSocket(bev)
        sock.settimeout(3)
    else:
        sock, peer = adapter(raw_sockets, timeout=3)

    def reset() -> None:
        peer.recv(65536)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()

    resetter = gevent.spawn(reset)
    began = time.monotonic()
    try:
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"r" * (40 * SEND_BUFFER))
        assert time.monotonic() - began < 2
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.send(b"again")
    finally:
        resetter.kill()
        sock.bev.free()


# -- set_timeouts against blocking reads with a read high watermark -------------


@pytest.mark.parametrize("seed", range(4))
def test_mixed_blocking_reads_lose_nothing_to_timeouts(raw_sockets, seed):
    """Random trickle, random read calls and a small read-high watermark,
    with set_timeouts and per-call timeouts firing: the bytes read are the
    bytes sent, in order."""
    rnd = random.Random(seed)
    ours, peer = raw_sockets.pair()
    bev = socket_new(ours, CLOSE)
    bev.setwatermark(EV_READ, 0, rnd.choice([1, 7, 4096]))
    bev.set_timeouts(read=0.02)
    data = os.urandom(40000)

    def sender() -> None:
        offset = 0
        while offset < len(data):
            n = rnd.randint(1, 9000)
            peer.sendall(data[offset : offset + n])
            offset += n
            gevent.sleep(rnd.choice([0, 0.001, 0.03]))
        peer.shutdown(socket.SHUT_WR)

    task = gevent.spawn(sender)
    got = bytearray()
    timeouts = 0
    try:
        for _ in range(400):
            if len(got) >= len(data):
                break
            choice = rnd.choice(["exactly", "some", "eof"])
            try:
                if choice == "exactly":
                    n = min(rnd.randint(1, 20000), len(data) - len(got))
                    got += bev.read_exactly(n, timeout=rnd.choice([None, 0.01]))
                elif choice == "some":
                    chunk = bev.read_some(rnd.randint(1, 5000), timeout=0.5)
                    if not chunk:
                        break
                    got += chunk
                else:
                    got += bev.read_until_eof(timeout=rnd.choice([None, 0.05]))
            except TimeoutError:
                timeouts += 1
            except IncompleteReadError as exc:
                got += exc.partial
                break
        assert bytes(got) == data
    finally:
        task.kill()
        bev.free()


# -- fairness across many busy connections --------------------------------------

_MULTI_BLASTER = r"""
import selectors, socket, sys, time
mode = sys.argv[1]
socks = [socket.socket(fileno=int(fd)) for fd in sys.argv[2:]]
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_WRITE if mode == "send" else selectors.EVENT_READ)
chunk = b"b" * 65536
end = time.monotonic() + 4
while time.monotonic() < end and sel.get_map():
    for key, _ in sel.select(0.2):
        try:
            if mode == "send":
                key.fileobj.send(chunk)
            elif not key.fileobj.recv(1 << 20):
                sel.unregister(key.fileobj)
        except BlockingIOError:
            pass
        except OSError:
            sel.unregister(key.fileobj)
"""


@pytest.mark.parametrize("direction", ["reading", "writing"])
def test_twelve_busy_connections_share_fairly(raw_sockets, direction):
    """One child process keeps twelve connections saturated: over 0.6 s
    each moves a fair share (within 3x of the busiest), a spawn_later timer
    and a 20 ms ticker stay on time (within 0.1 s)."""
    count = 12
    ours: list = []
    theirs: list = []
    for _ in range(count):
        a, b = socket.socketpair()
        raw_sockets.add(a)
        ours.append(a)
        theirs.append(b)
    mode = "send" if direction == "reading" else "recv"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _MULTI_BLASTER,
            mode,
            *(str(b.fileno()) for b in theirs),
        ],
        pass_fds=[b.fileno() for b in theirs],
    )
    for b in theirs:
        b.close()
    moved = [0] * count
    bevs: list = []
    try:
        for i, sock in enumerate(ours):
            bev = socket_new(sock, CLOSE)
            bevs.append(bev)
            if direction == "reading":

                def readcb(bev: Any, ctx: Any, i: int = i) -> None:
                    moved[i] += len(bev.input)
                    bev.input.drain(len(bev.input))

                bev.setcb(readcb, None, None)
                bev.enable(EV_READ)
            else:
                block = b"w" * (1 << 18)

                def writecb(
                    bev: Any, ctx: Any, i: int = i, block: bytes = block
                ) -> None:
                    moved[i] += len(block)
                    bev.write(block)

                bev.setwatermark(EV_WRITE, 1 << 18, 0)
                bev.setcb(None, writecb, None)
                bev.write(block * 2)
        deadline = time.monotonic() + 5
        while min(moved) == 0 and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert min(moved) > 0, moved
        moved[:] = [0] * count

        lateness: list = []
        began = time.monotonic()
        timer = gevent.spawn_later(
            0.3, lambda: lateness.append(time.monotonic() - began - 0.3)
        )

        def ticker() -> None:
            for _ in range(25):
                start = time.monotonic()
                gevent.sleep(0.02)
                lateness.append(time.monotonic() - start - 0.02)

        ticking = gevent.spawn(ticker)
        gevent.sleep(0.6)
        shares = list(moved)
        ticking.join(timeout=3)
        timer.join(timeout=1)
        assert timer.dead and len(lateness) == 26
        assert max(lateness) < 0.1, lateness
        assert sum(shares) > count << 20  # really busy: over 1 MB each on average
        assert min(shares) * 3 > max(shares), shares
    finally:
        for bev in bevs:
            bev.free()
        if child.poll() is None:
            child.kill()
        child.wait(timeout=5)


# -- the relay's --drain-timeout --------------------------------------------------


def echo_backend(conn: socket.socket, backend: Any) -> None:
    """Echo until EOF, then half-close."""
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = sock.recv(n - len(got))
        if not data:
            break
        got += data
    return bytes(got)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_drain_lets_several_echo_transfers_finish(start_relay, start_backend, signum):
    """Four connections with bytes moving both ways; after the signal each
    still sends and gets its echo, then ends; the relay exits 0 cleanly."""
    backend = start_backend(echo_backend)
    relay = start_relay(backend.address, "--drain-timeout", "20")
    clients = [relay.connect(timeout=5) for _ in range(4)]
    try:
        firsts = [os.urandom(100000) for _ in clients]
        for client, data in zip(clients, firsts):
            client.sendall(data)
        for client, data in zip(clients, firsts):
            assert recv_exactly(client, len(data)) == data
        relay.proc.send_signal(signum)
        relay.wait_for_log(r"stopping: waiting up to 20\.0 s for 4 open")
        for i, client in enumerate(clients):
            rest = os.urandom(150000 + i)
            client.sendall(rest)
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == rest
        assert relay.proc.wait(timeout=10) == 0
    finally:
        for client in clients:
            client.close()
    log = relay.log()
    assert "Traceback" not in log
    assert len(re.findall(r"closed: up 2500\d\d bytes, down 2500\d\d bytes", log)) == 4
    assert re.search(r"relay stopped: 4 connections, up 1000006 bytes", log)
    assert backend.errors == []


@pytest.mark.parametrize(
    "first, second",
    [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
    ids=["int-then-term", "term-then-int"],
)
def test_a_second_signal_of_the_other_kind_ends_the_drain(
    start_relay, start_backend, first, second
):
    backend = start_backend(echo_backend)
    relay = start_relay(backend.address, "--drain-timeout", "60")
    clients = [relay.connect(timeout=5) for _ in range(3)]
    try:
        for client in clients:
            client.sendall(b"hi")
            assert recv_exactly(client, 2) == b"hi"
        relay.proc.send_signal(first)
        relay.wait_for_log(r"stopping: waiting up to 60\.0 s for 3 open")
        began = time.monotonic()
        relay.proc.send_signal(second)
        assert relay.proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 5
        for client in clients:
            assert recv_until_eof(client) == b""
    finally:
        for client in clients:
            client.close()
    log = relay.log()
    assert "Traceback" not in log
    assert log.count("relay shutting down") == 3


def test_the_drain_deadline_closes_idle_connections(start_relay, start_backend):
    backend = start_backend(echo_backend)
    relay = start_relay(backend.address, "--drain-timeout", "0.5")
    clients = [relay.connect(timeout=5) for _ in range(2)]
    try:
        for client in clients:
            client.sendall(b"x")
            assert recv_exactly(client, 1) == b"x"
        began = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(timeout=10) == 0
        assert 0.4 < time.monotonic() - began < 5
        for client in clients:
            assert recv_until_eof(client) == b""
    finally:
        for client in clients:
            client.close()
    assert "Traceback" not in relay.log()
