"""Tests for the high-level layer: connect(), serve() and BufferEventSocket.

Everything runs in this process on gevent, over 127.0.0.1.  The guards in
tests/conftest.py apply: a watchdog bounds each test, and an exception the
hub reports fails the test unless the test asserts on ``hub_errors``.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
import time
from typing import Any, Callable, Iterator, Optional

import gevent
import gevent.event
import gevent.socket
import pytest

import geventbev
from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    BufferEvent,
    BufferEventError,
    BufferEventSocket,
    Server,
    UnsupportedOperation,
    connect,
    serve,
)

MIB = 1 << 20
LOCAL = ("127.0.0.1", 0)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """``start_server(handler, **kwargs)``: a serve() stopped at teardown."""
    servers: list = []

    def start(handler: Callable[[BufferEvent], Any], **kwargs: Any) -> Server:
        server = serve(LOCAL, handler, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


@pytest.fixture
def open_bevs() -> Iterator[list]:
    """A list whose bufferevents are freed at teardown."""
    bevs: list = []
    yield bevs
    for bev in bevs:
        if not bev.freed:
            bev.free()


def echo(bev: BufferEvent) -> None:
    """Echo everything until EOF (a serve() handler)."""
    while True:
        data = bev.read_some(timeout=10)
        if not data:
            return
        bev.write_all(data, timeout=10)


def count_then_reply(bev: BufferEvent) -> None:
    """Read until EOF, then answer ``b"<count> <sha256 hex>\\n"``."""
    data = bev.read_until_eof(timeout=10)
    bev.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- connect() ---------------------------------------------------------------


def test_connect_to_serve_echo(start_server, open_bevs: list) -> None:
    server = start_server(echo)
    bev = connect(server.address, timeout=5)
    open_bevs.append(bev)
    assert bev.get_enabled() == EV_READ | EV_WRITE
    assert bev.getpeername() == server.address
    bev.write_all(b"hello\n", timeout=5)
    assert bev.read_line(EOL.LF, timeout=5) == b"hello"


def test_connect_echo_of_a_large_payload(start_server, open_bevs: list) -> None:
    """4 MiB written while reading: both directions stream at once."""
    server = start_server(echo)
    bev = connect(server.address, timeout=5)
    open_bevs.append(bev)
    payload = random.Random(4).randbytes(4 * MIB)
    writer = gevent.spawn(bev.write_all, payload, 10)
    assert bev.read_exactly(len(payload), timeout=10) == payload
    writer.get(timeout=5)


def test_connect_by_host_name(start_server, open_bevs: list) -> None:
    server = start_server(echo)
    try:
        infos = socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    except socket.gaierror:
        pytest.skip("localhost does not resolve")
    if infos[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    bev = connect(("localhost", server.address[1]), timeout=5)
    open_bevs.append(bev)
    bev.write_all(b"name\n", timeout=5)
    assert bev.read_line(EOL.LF, timeout=5) == b"name"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_connect_refused_raises_with_oserror_cause(host: str) -> None:
    port = closed_port()
    before = open_fds()
    with pytest.raises(BufferEventError, match="refused") as excinfo:
        connect((host, port), timeout=5)
    assert isinstance(excinfo.value.__cause__, ConnectionRefusedError)
    gevent.sleep(0.01)
    assert open_fds() == before


def test_connect_timeout_zero_raises_timeout_and_closes(start_server) -> None:
    server = start_server(echo)
    before = open_fds()
    with pytest.raises(TimeoutError):
        connect(server.address, timeout=0)
    gevent.sleep(0.01)
    assert open_fds() == before


def test_connect_times_out_on_a_full_backlog(full_backlog_address: tuple) -> None:
    """A listener whose accept queue is full drops SYNs: connect must give
    up after ``timeout`` seconds and free its socket."""
    before = open_fds()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connect(full_backlog_address, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0
    gevent.sleep(0.01)
    assert open_fds() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ssl": object()},
        {"server_hostname": "x.test"},
        {"rate_limit": object()},
        {"group": object()},
    ],
    ids=["ssl", "server_hostname", "rate_limit", "group"],
)
def test_connect_refuses_features_not_available_yet(kwargs: dict) -> None:
    before = open_fds()
    with pytest.raises(UnsupportedOperation, match="not supported"):
        connect(("127.0.0.1", closed_port()), timeout=1, **kwargs)
    assert open_fds() == before


# -- serve() -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"ssl": object()}, {"rate_limit": object()}, {"group": object()}],
    ids=["ssl", "rate_limit", "group"],
)
def test_serve_refuses_features_not_available_yet(kwargs: dict) -> None:
    port = closed_port()
    with pytest.raises(UnsupportedOperation, match="not supported"):
        serve(("127.0.0.1", port), echo, **kwargs)
    # Nothing was left listening.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_serve_argument_errors() -> None:
    with pytest.raises(TypeError, match="handler must be callable"):
        serve(LOCAL, "not a handler")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_connections"):
            serve(LOCAL, echo, max_connections=bad)


def test_serve_on_an_address_in_use_raises_oserror(start_server) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        with pytest.raises(OSError, match="in use"):
            serve(holder.getsockname(), echo)


def test_serve_reports_bound_address_and_connection_count(start_server) -> None:
    gate = gevent.event.Event()

    def wait_for_gate(bev: BufferEvent) -> None:
        bev.write_all(b"in\n", timeout=5)
        gate.wait(timeout=10)

    server = start_server(wait_for_gate)
    assert server.address[0] == "127.0.0.1" and server.address[1] > 0
    assert len(server) == 0
    bevs = [connect(server.address, timeout=5) for _ in range(3)]
    try:
        for bev in bevs:
            assert bev.read_line(EOL.LF, timeout=5) == b"in"
        assert len(server) == 3
        gate.set()
        for bev in bevs:
            assert bev.read_some(timeout=5) == b""
        gevent.sleep(0.05)
        assert len(server) == 0
    finally:
        for bev in bevs:
            bev.free()


def test_serve_max_connections_pauses_accepting(start_server) -> None:
    """With two handlers running, a third connection waits in the backlog
    until one of them returns."""
    gates = [gevent.event.Event() for _ in range(3)]
    started: list = []

    def handler(bev: BufferEvent) -> None:
        index = len(started)
        started.append(index)
        bev.write_all(b"handler %d\n" % index, timeout=5)
        gates[index].wait(timeout=10)

    server = start_server(handler, max_connections=2)
    bevs = [connect(server.address, timeout=5) for _ in range(3)]
    try:
        greetings = {}
        for bev in bevs:
            try:
                greetings[bev] = bev.read_line(EOL.LF, timeout=0.5)
            except TimeoutError:
                waiting = bev
        assert sorted(greetings.values()) == [b"handler 0", b"handler 1"]
        assert len(server) == 2
        assert started == [0, 1]

        gates[0].set()
        assert waiting.read_line(EOL.LF, timeout=5) == b"handler 2"
        first = next(b for b, line in greetings.items() if line == b"handler 0")
        assert first.read_some(timeout=5) == b""
        assert len(server) == 2
    finally:
        for gate in gates:
            gate.set()
        for bev in bevs:
            bev.free()


def test_stop_ends_blocked_handlers_within_timeout(start_server) -> None:
    handler_bevs: list = []

    def block_forever(bev: BufferEvent) -> None:
        handler_bevs.append(bev)
        bev.read_some()  # no timeout: only stop() ends this

    server = start_server(block_forever)
    bevs = [connect(server.address, timeout=5) for _ in range(2)]
    try:
        while len(handler_bevs) < 2:
            gevent.sleep(0.01)
        started = time.monotonic()
        server.stop(timeout=0.2)
        assert time.monotonic() - started < 2.0
        assert len(server) == 0
        assert all(bev.freed for bev in handler_bevs)
        for bev in bevs:
            assert bev.read_some(timeout=5) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.address, timeout=2)
    finally:
        for bev in bevs:
            bev.free()


def test_stop_lets_handlers_finish_within_timeout(start_server) -> None:
    def slow_reply(bev: BufferEvent) -> None:
        gevent.sleep(0.2)
        bev.write(b"finished\n")

    server = start_server(slow_reply)
    bev = connect(server.address, timeout=5)
    try:
        gevent.sleep(0.05)
        server.stop(timeout=5)
        assert bev.read_until_eof(timeout=5) == b"finished\n"
    finally:
        bev.free()


def test_stop_with_output_the_client_does_not_read(start_server) -> None:
    """A killed handler's bufferevent is freed by the time stop() returns,
    even when its output cannot drain (the client reads nothing)."""
    handler_bevs: list = []

    def flood_then_block(bev: BufferEvent) -> None:
        handler_bevs.append(bev)
        bev.write(b"x" * (32 * MIB))
        bev.read_some()

    server = start_server(flood_then_block)
    client = socket.create_connection(server.address, timeout=5)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        while not handler_bevs:
            gevent.sleep(0.01)
        started = time.monotonic()
        server.stop(timeout=0.1)
        assert time.monotonic() - started < 3.0
        assert handler_bevs[0].freed
        assert len(server) == 0
    finally:
        client.close()


def test_handler_that_writes_and_returns_loses_nothing(start_server) -> None:
    """What the handler left in the output is sent before the socket closes."""
    payload = random.Random(8).randbytes(8 * MIB)

    def write_and_return(bev: BufferEvent) -> None:
        bev.write(payload)

    server = start_server(write_and_return)
    bev = connect(server.address, timeout=5)
    try:
        gevent.sleep(0.2)  # the handler has long returned
        received = bev.read_until_eof(timeout=10)
    finally:
        bev.free()
    assert len(received) == len(payload)
    assert received == payload


def test_handler_exception_does_not_kill_the_server(
    start_server, hub_errors: list
) -> None:
    """The exception goes to the hub's error handler; that connection
    closes and the next one is served."""

    def picky(bev: BufferEvent) -> None:
        line = bev.read_line(EOL.LF, timeout=5)
        if line == b"boom":
            raise RuntimeError("handler failed on purpose")
        bev.write(b"ok " + line + b"\n")

    server = start_server(picky)
    bad = connect(server.address, timeout=5)
    try:
        bad.write_all(b"boom\n", timeout=5)
        assert bad.read_some(timeout=5) == b""
    finally:
        bad.free()
    assert [str(exc) for _, exc in hub_errors] == ["handler failed on purpose"]
    hub_errors.clear()

    good = connect(server.address, timeout=5)
    try:
        good.write_all(b"fine\n", timeout=5)
        assert good.read_until_eof(timeout=5) == b"ok fine\n"
    finally:
        good.free()


def test_server_is_a_context_manager() -> None:
    with serve(LOCAL, echo) as server:
        address = server.address
        bev = connect(address, timeout=5)
        bev.free()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)


# -- BufferEventSocket ---------------------------------------------------------


@pytest.fixture
def echo_sock(start_server) -> Iterator[BufferEventSocket]:
    """A BufferEventSocket connected to an echo server."""
    server = start_server(echo)
    sock = BufferEventSocket(connect(server.address, timeout=5))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_socket_send_recv_and_recv_into(echo_sock: BufferEventSocket) -> None:
    assert echo_sock.send(b"abc") == 3
    echo_sock.sendall(memoryview(b"defgh"))
    received = b""
    while len(received) < 8:
        received += echo_sock.recv(100)
    assert received == b"abcdefgh"

    echo_sock.sendall(b"0123456789")
    buffer = bytearray(4)
    assert echo_sock.recv_into(buffer) == 4
    assert bytes(buffer) == b"0123"
    buffer = bytearray(20)
    got = 0
    while got < 6:
        got += echo_sock.recv_into(memoryview(buffer)[got:], 6 - got)
    assert bytes(buffer[:6]) == b"456789"


def test_socket_recv_respects_bufsize(echo_sock: BufferEventSocket) -> None:
    echo_sock.sendall(b"x" * 1000)
    gevent.sleep(0.05)
    assert len(echo_sock.recv(10)) == 10


def test_socket_addresses_and_fileno(start_server) -> None:
    server = start_server(echo)
    bev = connect(server.address, timeout=5)
    with BufferEventSocket(bev) as sock:
        assert sock.getpeername() == server.address
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.fileno() == bev.fileno() > 0
    assert bev.freed


def test_socket_settimeout_raises_socket_timeout(echo_sock: BufferEventSocket) -> None:
    echo_sock.settimeout(0.1)
    assert echo_sock.gettimeout() == 0.1
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        echo_sock.recv(10)
    assert 0.05 <= time.monotonic() - started < 2.0
    # The connection still works after a timeout.
    echo_sock.settimeout(5)
    echo_sock.sendall(b"after")
    assert echo_sock.recv(10) == b"after"


def test_socket_setblocking_sets_the_timeout(echo_sock: BufferEventSocket) -> None:
    echo_sock.setblocking(False)
    assert echo_sock.gettimeout() == 0.0
    echo_sock.setblocking(True)
    assert echo_sock.gettimeout() is None


def test_socket_nonblocking_recv_without_data_raises_blocking_io_error(
    echo_sock: BufferEventSocket,
) -> None:
    echo_sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        echo_sock.recv(10)


def test_socket_sendall_times_out_when_peer_does_not_read(start_server) -> None:
    stop_reading = gevent.event.Event()

    def not_reading(bev: BufferEvent) -> None:
        bev.disable(EV_READ)
        stop_reading.wait(timeout=10)

    server = start_server(not_reading)
    with BufferEventSocket(connect(server.address, timeout=5)) as sock:
        sock.settimeout(0.3)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            sock.sendall(b"z" * (64 * MIB))
        assert 0.25 <= time.monotonic() - started < 3.0
        stop_reading.set()  # the server closes; close() below gives up fast


def test_socket_settimeout_rejects_negative(echo_sock: BufferEventSocket) -> None:
    with pytest.raises(ValueError, match="timeout"):
        echo_sock.settimeout(-1)


def test_socket_shutdown_write_sends_eof_and_keeps_reading(start_server) -> None:
    server = start_server(count_then_reply)
    payload = random.Random(1).randbytes(MIB)
    with BufferEventSocket(connect(server.address, timeout=5)) as sock:
        sock.settimeout(5)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("rb")
        expected = f"{MIB} {hashlib.sha256(payload).hexdigest()}\n".encode()
        assert reader.readline() == expected
        assert sock.recv(10) == b""


def test_socket_shutdown_rejects_unknown_how(echo_sock: BufferEventSocket) -> None:
    with pytest.raises(ValueError, match="SHUT_RD, SHUT_WR or SHUT_RDWR"):
        echo_sock.shutdown(7)


def test_socket_close_sends_what_is_queued(start_server) -> None:
    received = gevent.event.AsyncResult()

    def report(bev: BufferEvent) -> None:
        received.set(bev.read_until_eof(timeout=10))

    server = start_server(report)
    payload = random.Random(2).randbytes(2 * MIB)
    sock = BufferEventSocket(connect(server.address, timeout=5))
    sock.bev.write(payload)  # queued, not yet sent
    sock.close()
    assert sock.bev.freed
    assert received.get(timeout=10) == payload


def test_socket_use_after_close_raises_ebadf(echo_sock: BufferEventSocket) -> None:
    echo_sock.close()
    echo_sock.close()  # idempotent
    with pytest.raises(OSError) as excinfo:
        echo_sock.recv(10)
    assert excinfo.value.errno == 9
    with pytest.raises(OSError):
        echo_sock.sendall(b"x")
    assert echo_sock.fileno() == -1


@pytest.mark.parametrize("call", ["getpeername", "getsockname", "makefile"])
def test_socket_other_calls_after_close_raise_oserror(
    echo_sock: BufferEventSocket, call: str
) -> None:
    echo_sock.close()
    with pytest.raises(OSError):
        getattr(echo_sock, call)()


def test_socket_sendall_after_shutdown_write_raises_broken_pipe(
    echo_sock: BufferEventSocket,
) -> None:
    echo_sock.shutdown(socket.SHUT_WR)
    assert echo_sock.recv(10) == b""  # the echo server saw EOF and closed
    with pytest.raises(BrokenPipeError):
        echo_sock.sendall(b"too late")


def test_socket_recv_after_peer_reset_raises_connection_reset() -> None:
    """The transport's OSError itself, as a socket raises it."""
    listener = gevent.socket.socket()
    listener.bind(LOCAL)
    listener.listen(1)

    def accept_and_reset() -> None:
        conn, _ = listener.accept()
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    acceptor = gevent.spawn(accept_and_reset)
    try:
        with BufferEventSocket(connect(listener.getsockname(), timeout=5)) as sock:
            sock.settimeout(5)
            sock.sendall(b"go")
            acceptor.get(timeout=5)
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
    finally:
        acceptor.kill()
        listener.close()


def legacy_line_client(sock: Any, words: list) -> list:
    """Old code: a line protocol over sendall() and makefile() only."""
    reader = sock.makefile("rb")
    answers = []
    for word in words:
        sock.sendall(word + b"\n")
        answers.append(reader.readline().rstrip(b"\n"))
    sock.sendall(b"QUIT\n")
    answers.append(reader.readline())
    reader.close()
    return answers


def legacy_line_server(sock: Any) -> None:
    """Old code: answers each line in upper case until QUIT."""
    reader = sock.makefile("rb")
    for line in reader:
        if line == b"QUIT\n":
            sock.sendall(b"BYE\n")
            return
        sock.sendall(line.upper())


@pytest.mark.parametrize("server_kind", ["legacy on BufferEventSocket", "echo bev"])
def test_legacy_socket_code_runs_unchanged(start_server, server_kind: str) -> None:
    """The same legacy client gives the same answers over a gevent socket
    and over BufferEventSocket."""
    if server_kind == "echo bev":

        def handler(bev: BufferEvent) -> None:
            while True:
                line = bev.read_line(EOL.LF, timeout=5)
                if line is None:
                    return
                bev.write(b"BYE\n" if line == b"QUIT" else line.upper() + b"\n")
                if line == b"QUIT":
                    return
    else:

        def handler(bev: BufferEvent) -> None:
            with BufferEventSocket(bev) as sock:
                sock.settimeout(5)
                legacy_line_server(sock)

    server = start_server(handler)
    words = [b"alpha", b"beta", b"x" * 10000]
    expected = [b"ALPHA", b"BETA", b"X" * 10000, b"BYE\n"]

    plain = gevent.socket.create_connection(server.address, timeout=5)
    try:
        assert legacy_line_client(plain, words) == expected
    finally:
        plain.close()

    with BufferEventSocket(connect(server.address, timeout=5)) as sock:
        sock.settimeout(5)
        assert legacy_line_client(sock, words) == expected


def test_makefile_text_and_write_modes(echo_sock: BufferEventSocket) -> None:
    writer = echo_sock.makefile("wb")
    writer.write(b"one\ntwo\n")
    writer.flush()
    reader = echo_sock.makefile("r")
    assert reader.readline() == "one\n"
    assert reader.readline() == "two\n"


def test_makefile_readline_honours_settimeout(echo_sock: BufferEventSocket) -> None:
    echo_sock.settimeout(0.1)
    reader = echo_sock.makefile("rb")
    result: Optional[BaseException] = None
    with gevent.Timeout(1, False):
        try:
            reader.readline()
        except Exception as exc:  # a socket's file raises socket.timeout
            result = exc
    assert isinstance(result, socket.timeout)


def test_stop_frees_a_filter_the_killed_handler_stacked_on_its_connection():
    made: list = []

    def handler(bev):
        stacked = geventbev.filter_new(
            bev, None, None, free_context=lambda ctx: made.append("freed ctx")
        )
        made.append(stacked)
        stacked.read_some()  # until stop() kills this handler

    server = geventbev.serve(("127.0.0.1", 0), handler)
    client = socket.create_connection(server.address, timeout=5)
    try:
        deadline = time.monotonic() + 5
        while not made and time.monotonic() < deadline:
            gevent.sleep(0.01)
        server.stop(timeout=0.1)
        stacked = made[0]
        assert stacked.freed and stacked.get_underlying().freed
        assert made[1:] == ["freed ctx"]
    finally:
        client.close()
