"""Socket bufferevents over real loopback connections (127.0.0.1, ::1, AF_UNIX
paths): connecting, connect failures, resets, timeouts and watermarks on TCP,
and the Listener.

Ported scenarios: libevent regress A12-A14 (connect, connect failure) and
cases C01, C02 (steps 1-4) and C05 from shared/cases/CASES.md.  Nothing here
talks to any host but this one.
"""

from __future__ import annotations

import errno
import gc
import resource
import socket
import struct
import time
from typing import Any, Callable, Iterator, Optional

import gevent
import gevent.socket
import pytest

from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    BufferEventError,
    Event,
    Listener,
    Option,
    SocketBufferEvent,
    socket_new,
)

DEFER = Option.DEFER_CALLBACKS
CLOSE = Option.CLOSE_ON_FREE
MESSAGE = (
    b"Now is the time for all good events to signal for the good of their protocol\0"
)


def has_ipv6_loopback() -> bool:
    """True when ::1 can be bound on this machine."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)


# -- fixtures ----------------------------------------------------------------------


class _TcpSockets:
    """Loopback sockets made for one test, closed at teardown."""

    def __init__(self) -> None:
        self._socks: list = []

    def keep(self, sock: Any) -> Any:
        self._socks.append(sock)
        return sock

    def listener(self, host: str = "127.0.0.1", bufsize: Optional[int] = None) -> Any:
        """A listening gevent socket on ``host``, port chosen by the kernel.

        ``bufsize`` sets SO_RCVBUF before listen, so accepted sockets get a
        small receive window and a peer that does not read fills up fast.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.keep(gevent.socket.socket(family, socket.SOCK_STREAM))
        if bufsize:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        sock.bind((host, 0))
        sock.listen(16)
        return sock

    def free_port(self) -> int:
        """A 127.0.0.1 port nothing listens on (bound, read, closed again)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def close_all(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture
def tcp() -> Iterator[_TcpSockets]:
    sockets = _TcpSockets()
    yield sockets
    sockets.close_all()


@pytest.fixture
def make_tcp_bev_with_peer(
    tcp: _TcpSockets,
) -> Callable[..., tuple[SocketBufferEvent, Any]]:
    """``make_tcp_bev_with_peer(options=0, bufsize=None, host="127.0.0.1")``:
    a socket bufferevent on a connected loopback TCP socket and the raw
    gevent socket accepted at the other end (its calls time out after 5 s).
    ``bufsize`` shrinks SO_SNDBUF on our side and SO_RCVBUF on the peer's."""

    def make(
        options: int = 0, bufsize: Optional[int] = None, host: str = "127.0.0.1"
    ) -> tuple[SocketBufferEvent, Any]:
        server = tcp.listener(host, bufsize)
        client = tcp.keep(gevent.socket.socket(server.family, socket.SOCK_STREAM))
        if bufsize:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        client.settimeout(5.0)
        client.connect(server.getsockname())
        peer, _ = server.accept()
        tcp.keep(peer)
        peer.settimeout(5.0)
        return socket_new(client, CLOSE | options), peer

    return make


def reset_by_peer(peer: Any) -> None:
    """Close ``peer`` with SO_LINGER 0, so the other end gets a TCP RST."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- connect (libevent A12) --------------------------------------------------------

CONNECT_VARIANTS = [
    pytest.param(0, id="plain"),
    pytest.param(DEFER, id="defer"),
    pytest.param(Option.THREADSAFE, id="lock"),
    pytest.param(DEFER | Option.THREADSAFE, id="lock-defer"),
    pytest.param(
        DEFER | Option.THREADSAFE | Option.UNLOCK_CALLBACKS, id="unlocked-cbs"
    ),
]


@pytest.mark.parametrize("options", CONNECT_VARIANTS)
def test_two_clients_connect_and_read_the_string(options, run_until):
    """A12: the server writes the 77-byte string and frees itself from its
    write callback; each client enables reading on CONNECTED and reads the
    whole string at EOF."""
    server_bevs: list = []

    def server_writecb(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            bev.free()

    def accept(listener: Any, sock: Any, address: Any, ctx: Any) -> None:
        bev = socket_new(sock, CLOSE | options)
        bev.setcb(None, server_writecb, None)
        bev.write(MESSAGE)
        server_bevs.append(bev)

    listener = Listener(accept, ("127.0.0.1", 0))
    address = listener.getsockname()
    strings: list = []
    logs: list = []

    def eventcb(bev: Any, events: int, ctx: list) -> None:
        ctx.append(("event", int(events)))
        if events & Event.CONNECTED:
            bev.enable(EV_READ)
        if events & Event.EOF:
            strings.append(bev.read(len(bev.input)))

    def readcb(bev: Any, ctx: list) -> None:
        ctx.append(("read", len(bev.input)))

    for _ in range(2):
        log: list = []
        logs.append(log)
        bev = socket_new(None, CLOSE | options)
        bev.setcb(readcb, None, eventcb, log)
        assert bev.connect(address) is None
    assert run_until(lambda: len(strings) == 2, 5)
    gevent.sleep(0.05)

    assert strings == [MESSAGE, MESSAGE]
    assert len(MESSAGE) == 77
    assert len(server_bevs) == 2 and all(bev.freed for bev in server_bevs)
    for log in logs:
        assert log[0] == ("event", Event.CONNECTED)
        assert log[-1] == ("event", Event.READING | Event.EOF)
        assert not any(kind == "event" and v & Event.ERROR for kind, v in log)
    assert sum(kind == "read" for log in logs for kind, _ in log) >= 2
    listener.free()


# -- connect failures (libevent A13, A14; case C01) ---------------------------------


def test_connect_refused(tcp):
    """C01 / A13 / A14, for a closed port and a bound but not listening one,
    with and without DEFER_CALLBACKS (all four at once, to share the quiet
    period): one ERROR event (no CONNECTED) carrying ECONNREFUSED, never a
    read or write callback, the queued bytes kept."""
    holder = tcp.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    holder.bind(("127.0.0.1", 0))
    ports = {"closed": tcp.free_port(), "bound": holder.getsockname()[1]}
    variants = [(target, options) for target in ports for options in (0, DEFER)]
    calls: dict = {variant: [] for variant in variants}

    def eventcb(bev: Any, events: int, log: list) -> None:
        error = bev.get_error()
        log.append(("event", int(events), getattr(error, "errno", None)))

    bevs = []
    for target, options in variants:
        bev = socket_new(None, CLOSE | options)
        bev.setcb(
            lambda bev, log: log.append(("read",)),
            lambda bev, log: log.append(("write",)),
            eventcb,
            calls[target, options],
        )
        bev.enable(EV_READ | EV_WRITE)
        bev.write(b"hello")
        assert bev.connect(("127.0.0.1", ports[target])) is None
        bevs.append(bev)
    # Even an immediate refusal is reported later, never inside connect().
    assert all(log == [] for log in calls.values())
    deadline = time.monotonic() + 1.0
    while not all(calls.values()) and time.monotonic() < deadline:
        gevent.sleep(0.005)
    gevent.sleep(0.5)  # nothing else may follow

    for variant, log in calls.items():
        assert log == [("event", Event.ERROR, errno.ECONNREFUSED)], variant
    assert all(len(bev.output) == 5 for bev in bevs)


def test_connect_to_listener_sends_queued_data(tcp, record):
    """C01, listening variant: exactly one CONNECTED, then the listener
    receives what was queued before connecting."""
    server = tcp.listener()
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.enable(EV_READ | EV_WRITE)
    bev.write(b"hello")
    bev.connect(server.getsockname())
    peer, _ = server.accept()
    tcp.keep(peer)
    peer.settimeout(2)
    received = b""
    while len(received) < 5:
        chunk = peer.recv(100)
        assert chunk
        received += chunk
    assert received == b"hello"
    gevent.sleep(0.5)
    assert rec.events == [Event.CONNECTED]
    assert rec.reads == []
    assert rec.writes == [0]  # the output emptied once


def test_wait_connected_raises_on_refusal(tcp):
    bev = socket_new(None, CLOSE)
    bev.connect(("127.0.0.1", tcp.free_port()))
    with pytest.raises(BufferEventError) as info:
        bev.wait_connected(timeout=2)
    assert info.value.events & Event.ERROR
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert info.value.__cause__.errno == errno.ECONNREFUSED


def test_connect_twice_raises(tcp):
    server = tcp.listener()
    bev = socket_new(None, CLOSE)
    bev.connect(server.getsockname())
    with pytest.raises(BufferEventError, match="already"):
        bev.connect(server.getsockname())
    bev.wait_connected(timeout=2)
    with pytest.raises(BufferEventError, match="already"):
        bev.connect(server.getsockname())


def test_connect_hostname_localhost(tcp, record, run_until):
    infos = socket.getaddrinfo("localhost", None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    first = infos[0][4][0]
    server = tcp.listener(first)
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.connect_hostname("localhost", server.getsockname()[1])
    peer, _ = server.accept()
    tcp.keep(peer)
    assert run_until(lambda: rec.events)
    assert rec.events == [Event.CONNECTED]
    assert bev.get_dns_error() == 0
    bev.write(b"by name")
    peer.settimeout(2)
    assert peer.recv(100) == b"by name"


def test_connect_hostname_ipv4_only(tcp, record, run_until):
    server = tcp.listener("127.0.0.1")
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.connect_hostname("localhost", server.getsockname()[1], socket.AF_INET)
    assert run_until(lambda: rec.events)
    assert rec.events == [Event.CONNECTED]
    assert bev.getpeername() == server.getsockname()


def test_connect_hostname_lookup_failure(monkeypatch, record, run_until):
    """A failed lookup is one ERROR event and get_dns_error() has the code.

    The resolver is replaced so no query leaves this machine.
    """

    def failing_getaddrinfo(*args: Any, **kwargs: Any) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(gevent.socket, "getaddrinfo", failing_getaddrinfo)
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.enable(EV_READ | EV_WRITE)
    bev.connect_hostname("no-such-host.invalid", 80)
    assert run_until(lambda: rec.events)
    gevent.sleep(0.05)
    assert rec.calls == [("event", Event.ERROR)]
    assert bev.get_dns_error() == socket.EAI_NONAME
    assert isinstance(bev.get_error(), socket.gaierror)


# -- address families --------------------------------------------------------------


def echo_once(bev: Any, peer: Any) -> None:
    bev.write(b"ping")
    peer.settimeout(2)
    assert peer.recv(100) == b"ping"
    peer.sendall(b"pong")
    assert bev.read_exactly(4, timeout=2) == b"pong"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["ipv4", "ipv6"]
)
def test_socket_new_and_connect_over_tcp(host, record, run_until):
    accepted: list = []
    listener = Listener(lambda lst, sock, addr, ctx: accepted.append(sock), (host, 0))
    address = listener.getsockname()
    assert address[0] == host and address[1] != 0
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.connect(address)
    assert run_until(lambda: rec.events and accepted)
    assert rec.events == [Event.CONNECTED]
    peer = accepted[0]
    try:
        assert bev.getpeername()[:2] == address[:2]
        assert bev.getsockname()[:2] == peer.getpeername()[:2]
        assert bev.fileno() >= 0
        echo_once(bev, peer)
    finally:
        peer.close()
    listener.free()


def test_socket_new_and_connect_over_unix_path(tmp_path, record, run_until):
    path = str(tmp_path / "bev.sock")
    accepted: list = []
    listener = Listener(lambda lst, sock, addr, ctx: accepted.append(sock), path)
    assert listener.getsockname() == path
    bev = socket_new(None, CLOSE)
    rec = record(bev)
    bev.connect(path)
    assert run_until(lambda: rec.events and accepted)
    assert rec.events == [Event.CONNECTED]
    peer = accepted[0]
    try:
        echo_once(bev, peer)
    finally:
        peer.close()
    listener.free()


# -- Listener ----------------------------------------------------------------------


def test_listener_disable_queues_and_enable_accepts(run_until):
    accepted: list = []
    listener = Listener(
        lambda lst, sock, addr, ctx: accepted.append((sock, ctx)),
        ("127.0.0.1", 0),
        ctx="the ctx",
    )
    listener.disable()
    client = socket_new(None, CLOSE)
    client.connect(listener.getsockname())
    client.wait_connected(timeout=2)  # the kernel backlog completes it
    gevent.sleep(0.2)
    assert accepted == []
    listener.enable()
    assert run_until(lambda: accepted)
    sock, ctx = accepted[0]
    assert ctx == "the ctx"
    sock.close()
    listener.free()


def test_listener_free_closes_the_port(tcp):
    listener = Listener(lambda *args: None, ("127.0.0.1", 0))
    address = listener.getsockname()
    listener.free()
    listener.free()  # twice is harmless
    assert listener.freed
    assert listener.fileno() == -1
    with pytest.raises(BufferEventError, match="freed"):
        listener.getsockname()
    with pytest.raises(BufferEventError, match="freed"):
        listener.enable()
    with pytest.raises(BufferEventError, match="freed"):
        listener.disable()
    probe = tcp.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    assert probe.connect_ex(address) == errno.ECONNREFUSED


def test_listener_context_manager_frees():
    with Listener(lambda *args: None, ("127.0.0.1", 0)) as listener:
        assert not listener.freed
    assert listener.freed


def test_listener_callback_exception_keeps_accepting(hub_errors, run_until):
    """The failure is reported and accepting goes on.  The listener does not
    close the socket itself (the callback may have handed it on); once
    nothing references it, it is closed."""
    calls: list = []

    def accept(listener: Any, sock: Any, address: Any, ctx: Any) -> None:
        calls.append(address)
        if len(calls) == 1:
            raise RuntimeError("accept callback failed")
        sock.close()

    listener = Listener(accept, ("127.0.0.1", 0))
    first = socket_new(None, CLOSE)
    first.connect(listener.getsockname())
    second = socket_new(None, CLOSE)
    second.connect(listener.getsockname())
    assert run_until(lambda: len(calls) == 2)
    assert second.read_some(timeout=2) == b""
    assert [type(exc) for _, exc in hub_errors] == [RuntimeError]
    hub_errors.clear()  # the traceback held the first socket
    gc.collect()
    assert first.read_some(timeout=2) == b""
    listener.free()


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        pytest.param((None, ("127.0.0.1", 0)), {}, TypeError, "cb", id="cb"),
        pytest.param(
            (print, ("127.0.0.1", 0)),
            {"backlog": 0},
            ValueError,
            "backlog",
            id="backlog",
        ),
        pytest.param((print, 5), {}, TypeError, "address", id="address"),
    ],
)
def test_listener_bad_argument(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Listener(*args, **kwargs)


# -- errors while connected --------------------------------------------------------


def test_peer_reset_reaches_the_event_callback(
    make_tcp_bev_with_peer, record, run_until
):
    bev, peer = make_tcp_bev_with_peer()
    rec = record(bev)
    bev.enable(EV_READ)
    peer.sendall(b"before the reset")
    assert run_until(lambda: len(bev.input) == 16)
    reset_by_peer(peer)
    assert run_until(lambda: rec.events)
    assert rec.events == [Event.READING | Event.ERROR]
    assert isinstance(bev.get_error(), ConnectionResetError)
    assert bev.read(100) == b"before the reset"  # input survives the error
    assert not bev.get_enabled() & EV_READ


def test_blocking_read_after_peer_reset(make_tcp_bev_with_peer, run_until):
    """BufferEventError with .events and the OSError as __cause__; bytes
    received before the reset are still readable first."""
    bev, peer = make_tcp_bev_with_peer()
    bev.enable(EV_READ)
    peer.sendall(b"kept")
    assert run_until(lambda: len(bev.input) == 4)
    reset_by_peer(peer)
    with pytest.raises(BufferEventError) as info:
        bev.read_exactly(100, timeout=2)
    assert info.value.events == Event.READING | Event.ERROR
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert bev.read_some(timeout=1) == b"kept"
    with pytest.raises(BufferEventError) as again:
        bev.read_some(timeout=1)
    assert isinstance(again.value.__cause__, ConnectionResetError)


# -- case C02: timeouts --------------------------------------------------------------


def test_timeouts_case_c02(make_tcp_bev_with_peer):
    """C02 steps 1-4 (step 5 needs filter bufferevents)."""
    bev, peer = make_tcp_bev_with_peer(bufsize=65536)
    events: list = []
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        received.extend(bev.read(len(bev.input)))

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        events.append((int(what), time.monotonic()))

    bev.setcb(readcb, None, eventcb)

    # (1) silence: one read timeout at 0.3 s, then reading is off.
    start = time.monotonic()
    bev.enable(EV_READ | EV_WRITE)
    bev.set_timeouts(read=0.3, write=0.3)
    gevent.sleep(1.0)
    assert [what for what, _ in events] == [Event.READING | Event.TIMEOUT]
    assert events[0][1] - start == pytest.approx(0.3, abs=0.1)
    assert bev.get_enabled() == EV_WRITE

    # (2) one byte every 0.2 s keeps restarting the read timer.
    events.clear()
    bev.enable(EV_READ)
    for _ in range(5):
        gevent.sleep(0.2)
        peer.sendall(b"t")
    gevent.sleep(0.05)
    assert events == []
    assert received == b"ttttt"

    # (3) cleared timeouts never fire.
    bev.set_timeouts(None, None)
    bev.enable(EV_READ)
    gevent.sleep(1.0)
    assert events == []

    # (4) a peer that stops reading: one write timeout once the kernel
    # buffers are full; the unsent bytes stay in the output.
    bev.set_timeouts(write=0.3)
    total = 8 << 20
    bev.write(b"w" * total)
    last, full_at = None, None
    while full_at is None and time.monotonic() - start < 10:
        gevent.sleep(0.005)
        if len(bev.output) == last:
            full_at = time.monotonic()
        last = len(bev.output)
    deadline = time.monotonic() + 1.5
    while not events and time.monotonic() < deadline:
        gevent.sleep(0.005)
    gevent.sleep(0.1)
    assert [what for what, _ in events] == [Event.WRITING | Event.TIMEOUT]
    assert events[0][1] - full_at == pytest.approx(0.3, abs=0.15)
    assert bev.get_enabled() == EV_READ
    assert 0 < len(bev.output) < total


# -- case C05: a line longer than the read high watermark ------------------------------


def test_long_line_and_read_high_watermark_case_c05(make_tcp_bev_with_peer, run_until):
    bev, peer = make_tcp_bev_with_peer()
    seen: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        seen.append((len(bev.input), bev.input.readln(EOL.LF)))

    bev.setcb(readcb, None, None)
    bev.setwatermark(EV_READ, 0, 1024)
    bev.enable(EV_READ)
    peer.sendall(b"x" * 4999 + b"\n")
    assert run_until(lambda: seen)

    # Stalled at the mark: no further reads, callbacks or CPU.
    cpu_before = cpu_seconds()
    gevent.sleep(0.5)
    cpu_used = cpu_seconds() - cpu_before
    assert seen == [(1024, None)]
    assert len(bev.input) == 1024
    assert cpu_used < 0.25, f"{cpu_used:.3f} s of CPU while stalled"

    # Raising the mark resumes at once, with no new data from the peer.
    bev.setwatermark(EV_READ, 0, 8192)
    assert run_until(lambda: seen[-1][1] is not None)
    assert seen[-1][1] == b"x" * 4999
    assert len(bev.input) == 0
    assert all(line is None for _, line in seen[:-1])
