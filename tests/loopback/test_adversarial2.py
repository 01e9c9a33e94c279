"""Second adversarial pass: timeouts in the hub, fd ownership, fairness,
the socket adapter, freed buffers and the relay's timers.

Each test either pins behaviour that held up under attack or keeps a
failure the attack found (now fixed) from coming back.  Everything talks to
127.0.0.1 or to AF_UNIX socketpairs only; child processes are stopped by
pid in ``finally`` blocks and every blocking call has a timeout.
"""

from __future__ import annotations

import errno
import gc
import http.client
import http.server
import os
import socket
import subprocess
import sys
import time
import warnings
import weakref
import wsgiref.simple_server
from typing import Any, Iterator

import gevent
import gevent.socket
import pytest
from loopback_helpers import free_port

from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    BufferEventError,
    BufferEventSocket,
    Event,
    Option,
    connect,
    event2,
    serve,
    socket_new,
)
from geventbev.relay import Relay

CLOSE = Option.CLOSE_ON_FREE
DEFER = Option.DEFER_CALLBACKS


# -- helpers -----------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.005)
    return True


def collect_for(sock: Any, seconds: float) -> bytes:
    """Everything ``sock`` receives within ``seconds`` (or until EOF)."""
    got = bytearray()
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not data:
            break
        got += data
    return bytes(got)


class _Listening:
    """A loopback gevent listener whose connections are answered by a
    greenlet: optionally a greeting first, then an echo of every byte."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.server = gevent.socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.address = self.server.getsockname()
        self._greeting = greeting
        self._conns: list = []
        self._acceptor = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            conn, _ = self.server.accept()
            conn.settimeout(5)
            self._conns.append(conn)
            gevent.spawn(self._echo, conn)

    def _echo(self, conn: Any) -> None:
        try:
            if self._greeting:
                conn.sendall(self._greeting)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._acceptor.kill()
        for conn in self._conns:
            conn.close()
        self.server.close()


@pytest.fixture
def echo_server() -> Iterator[_Listening]:
    listening = _Listening()
    yield listening
    listening.close()


def adapter_pair(raw_sockets: Any, timeout: float = 1.0) -> tuple:
    """A BufferEventSocket on one end of a socketpair and the raw peer."""
    a, b = raw_sockets.pair()
    b.settimeout(3)
    bev = socket_new(a, CLOSE)
    bev.enable(EV_READ)
    sock = BufferEventSocket(bev)
    sock.settimeout(timeout)
    return sock, b


# -- fixed bugs: blocking calls inside the writer greenlet's callbacks -----------


def test_request_reply_inside_the_write_callback(echo_server):
    bev = connect(echo_server.address, timeout=2)
    replies: list = []

    def writecb(bev: Any, ctx: Any) -> None:
        if replies:
            return
        replies.append("asked")
        bev.write(b"question\n")
        try:
            replies.append(bev.read_line(EOL.LF, timeout=0.5))
        except (TimeoutError, BufferEventError) as exc:
            replies.append(exc)

    bev.setcb(None, writecb, None)
    # Enabling EV_WRITE on an idle connection runs the write callback once,
    # in the writer greenlet.
    bev.disable(EV_WRITE)
    bev.enable(EV_WRITE)
    assert wait_for(lambda: len(replies) == 2, timeout=2)
    bev.free()
    assert replies[1] == b"question"


@pytest.mark.parametrize(
    "call",
    ["read_some", "read_exactly", "read_line", "read_until_eof", "write_all", "drain"],
)
def test_waiting_on_ones_own_direction_is_refused_at_once(make_bev_with_peer, call):
    """Inside the reader's (writer's) callback a wait for input (output)
    of the same bufferevent raises instead of hanging."""
    bev, peer = make_bev_with_peer()
    outcome: list = []

    def attempt(bev: Any, *rest: Any) -> None:
        if outcome:
            return
        started = time.monotonic()
        try:
            if call == "read_some":
                bev.read(100)  # nothing left: read_some would have to wait
                bev.read_some(timeout=2)
            elif call == "read_exactly":
                bev.read_exactly(100, timeout=2)
            elif call == "read_line":
                bev.read_line(EOL.LF, timeout=2)
            elif call == "read_until_eof":
                bev.read_until_eof(timeout=2)
            elif call == "write_all":
                bev.write_all(b"y" * (4 << 20), timeout=2)
            else:
                bev.write(b"z" * (4 << 20))
                bev.drain(timeout=2)
            outcome.append("returned")
        except BufferEventError as exc:
            outcome.append((str(exc), time.monotonic() - started))

    if call.startswith("read"):
        bev.setcb(attempt, None, None)
        bev.enable(EV_READ)
        peer.sendall(b"partial")
    else:
        bev.setcb(None, attempt, None)
        bev.write(b"kick")
    assert wait_for(lambda: outcome, timeout=3)
    bev.free()
    message, seconds = outcome[0]
    assert "cannot wait" in message
    assert seconds < 0.5


# -- fixed bugs: timers --------------------------------------------------------------


@pytest.mark.parametrize("options", [0, DEFER], ids=["plain", "defer"])
def test_nothing_follows_the_error_of_a_failed_connect(options):
    bev = socket_new(None, CLOSE | options)
    events: list = []
    bev.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    bev.set_timeouts(read=0.05, write=0.05)
    bev.enable(EV_READ | EV_WRITE)
    bev.write(b"queued before the connect")
    bev.connect(("127.0.0.1", free_port()))
    assert wait_for(lambda: events, timeout=2)
    gevent.sleep(0.2)
    bev.free()
    assert events == [int(Event.ERROR)]


# -- fixed bugs: BufferEventSocket ---------------------------------------------------


@pytest.mark.parametrize("via", ["send", "makefile"])
def test_a_send_that_would_block_sends_nothing_twice(raw_sockets, via):
    sock, peer = adapter_pair(raw_sockets)
    sock.setblocking(False)
    payload = b"".join(b"%07d\n" % i for i in range(100000))  # 800 kB
    got = bytearray()

    def drain_peer() -> None:
        gevent.sleep(0.05)
        got.extend(collect_for(peer, 0.6))

    reader = gevent.spawn(drain_peer)
    try:
        if via == "send":
            accepted = 0
            for _ in range(50):
                try:
                    accepted += sock.send(payload[accepted:])
                except BlockingIOError:
                    gevent.sleep(0.01)
                if accepted == len(payload):
                    break
        else:
            writer = sock.makefile("wb")
            try:
                writer.write(payload)
            except BlockingIOError:
                pass
            for _ in range(50):
                try:
                    writer.flush()
                    break
                except BlockingIOError:
                    gevent.sleep(0.01)
        reader.join(timeout=2)
        assert len(got) == len(payload)
        assert bytes(got) == payload
    finally:
        reader.kill()
        sock.bev.free()


def test_recv_into_a_too_small_buffer_loses_nothing(raw_sockets):
    sock, peer = adapter_pair(raw_sockets, timeout=0.3)
    peer.sendall(b"0123456789")
    assert wait_for(lambda: len(sock.bev.input) == 10)
    with pytest.raises(ValueError):
        sock.recv_into(bytearray(4), 10)
    assert sock.recv(100) == b"0123456789"


def test_negative_recv_sizes_are_refused(raw_sockets):
    sock, peer = adapter_pair(raw_sockets, timeout=0.3)
    peer.sendall(b"abc")
    assert wait_for(lambda: len(sock.bev.input) == 3)
    with pytest.raises(ValueError, match="negative"):
        sock.recv(-1)
    with pytest.raises(ValueError, match="negative"):
        sock.recv_into(bytearray(8), -1)
    assert sock.recv(10) == b"abc"


def test_makefile_without_r_or_w_reads_as_a_socket_does(raw_sockets):
    sock, peer = adapter_pair(raw_sockets)
    with socket.socket() as plain:
        with plain.makefile("b") as reference:
            assert reference.readable()
    peer.sendall(b"line\n")
    reader = sock.makefile("b")
    try:
        assert reader.readable()
        assert reader.readline() == b"line\n"
    finally:
        reader.close()
        sock.close()


# -- fixed bugs: file descriptors and buffers ----------------------------------------


def test_collecting_an_unfreed_bev_restores_blocking_mode():
    ours, theirs = socket.socketpair()
    try:
        assert os.get_blocking(ours.fileno())
        bev = socket_new(ours)
        bev.enable(EV_READ)
        theirs.close()
        bev.write(b"x" * 100000)  # reader sees EOF, writer fails: both end
        io_greenlets = (bev._reader, bev._writer)
        gevent.joinall(io_greenlets, timeout=2)
        assert all(glet.dead for glet in io_greenlets)
        gone = weakref.ref(bev)
        del bev, io_greenlets
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for _ in range(3):
                gc.collect()
                gevent.sleep(0.01)
        assert gone() is None
        assert os.fstat(ours.fileno())  # still the caller's, still open
        assert os.get_blocking(ours.fileno())
    finally:
        ours.close()
        theirs.close()


def test_freeing_a_bufferevents_own_buffer_is_refused(make_bev_with_peer, hub_errors):
    bev, peer = make_bev_with_peer()
    bev.enable(EV_READ)
    try:
        with pytest.raises(BufferEventError):
            bev.input.free()
    finally:
        peer.sendall(b"still delivered")
        gevent.sleep(0.05)
        errors = list(hub_errors)
        hub_errors.clear()
    assert not errors
    assert bev.read_some(timeout=1) == b"still delivered"


# -- held up: timeouts changed in the hub ----------------------------------------


@pytest.mark.parametrize("options", [0, DEFER], ids=["plain", "defer"])
def test_timeout_callback_rearms_with_new_values(make_bev_with_peer, options):
    """set_timeouts and enable from the TIMEOUT callback: each new, longer
    timeout fires once, after its own interval."""
    bev, peer = make_bev_with_peer(options)
    fired: list = []
    started = time.monotonic()

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        fired.append((int(what), time.monotonic() - started))
        if len(fired) < 3:
            bev.set_timeouts(read=0.03 * (len(fired) + 1))
            bev.enable(EV_READ)

    bev.setcb(None, None, eventcb)
    bev.set_timeouts(read=0.03)
    bev.enable(EV_READ)
    assert wait_for(lambda: len(fired) == 3, timeout=2)
    gevent.sleep(0.1)
    assert [what for what, _ in fired] == [int(Event.READING | Event.TIMEOUT)] * 3
    times = [at for _, at in fired]
    assert 0.025 < times[0] < times[1] < times[2] < 1.0
    assert times[2] - times[1] > 0.08  # the third interval was 0.09 s
    assert bev.get_enabled() == EV_WRITE


def test_deferred_read_comes_before_the_merged_timeouts(make_bev_with_peer):
    """With DEFER_CALLBACKS and the callback greenlet busy, data and both
    timeouts queue up: one read callback, then one event call with
    READING|WRITING|TIMEOUT."""
    busy, busy_peer = make_bev_with_peer(DEFER)
    busy.setcb(lambda bev, ctx: gevent.sleep(0.25), None, None)
    busy.enable(EV_READ)
    bev, peer = make_bev_with_peer(DEFER)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    calls: list = []
    bev.setcb(
        lambda bev, ctx: calls.append(("read", bev.read(100))),
        lambda bev, ctx: calls.append(("write", len(bev.output))),
        lambda bev, what, ctx: calls.append(("event", int(what))),
    )
    bev.enable(EV_READ)
    busy_peer.sendall(b"occupy the callback greenlet")
    gevent.sleep(0.02)
    peer.sendall(b"data")
    bev.set_timeouts(read=0.08, write=0.1)
    bev.write(b"w" * (2 << 20))  # the peer never reads: output stays
    assert wait_for(lambda: len(calls) >= 2, timeout=2)
    gevent.sleep(0.05)
    timeouts = int(Event.READING | Event.WRITING | Event.TIMEOUT)
    assert calls == [("read", b"data"), ("event", timeouts)]
    assert bev.get_enabled() == 0


@pytest.mark.parametrize("method", ["read_exactly", "read_until_eof", "read_line"])
def test_blocking_reads_lose_nothing_to_set_timeouts(make_bev_with_peer, method):
    """A read timeout ends the blocking call; calling again gets every byte,
    also with a read high watermark far below the request."""
    bev, peer = make_bev_with_peer()
    if method != "read_line":
        bev.setwatermark(EV_READ, 0, 4096)
    bev.set_timeouts(read=0.06)
    data = os.urandom(150000).replace(b"\n", b"-") + b"\n"

    def sender() -> None:
        peer.sendall(data[:50000])
        gevent.sleep(0.2)
        peer.sendall(data[50000:])
        if method == "read_until_eof":
            peer.shutdown(socket.SHUT_WR)

    task = gevent.spawn(sender)
    timeouts = 0
    got = None
    for _ in range(20):
        try:
            if method == "read_exactly":
                got = bev.read_exactly(len(data), timeout=3)
            elif method == "read_until_eof":
                got = bev.read_until_eof(timeout=3)
            else:
                got = bev.read_line(EOL.LF, limit=1 << 20, timeout=3)
            break
        except TimeoutError as exc:
            assert "read timeout" in str(exc)
            timeouts += 1
    task.join(timeout=2)
    assert timeouts >= 1
    assert got == (data[:-1] if method == "read_line" else data)


def test_write_all_and_drain_lose_nothing_to_set_timeouts(make_bev_with_peer):
    bev, peer = make_bev_with_peer()
    bev.set_timeouts(write=0.06)
    payload = os.urandom(1 << 20)
    got = bytearray()

    def stalling_reader() -> None:
        while len(got) < 100000:
            got.extend(peer.recv(65536))
        gevent.sleep(0.2)
        while len(got) < len(payload):
            data = peer.recv(65536)
            if not data:
                return
            got.extend(data)

    task = gevent.spawn(stalling_reader)
    with pytest.raises(TimeoutError, match="write timeout"):
        bev.write_all(payload, timeout=3)
    assert bev.get_enabled() & EV_WRITE == 0
    for _ in range(20):
        try:
            bev.drain(timeout=3)
            break
        except TimeoutError:
            continue
    task.join(timeout=2)
    assert bytes(got) == payload


def test_no_timeout_after_eof_or_free(make_bev_with_peer):
    """EOF at the instant the read timeout is due, and free() between the
    hub's expiry and the callback greenlet: EOF alone, then silence."""
    bev, peer = make_bev_with_peer()
    events: list = []
    bev.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    bev.set_timeouts(read=0.05)
    bev.enable(EV_READ)
    closer = gevent.spawn_later(0.05, peer.close)
    gevent.sleep(0.2)
    closer.join(timeout=1)
    assert events in (
        [int(Event.READING | Event.EOF)],
        [int(Event.READING | Event.TIMEOUT)],
    )

    other, _ = make_bev_with_peer()
    late: list = []
    other.setcb(None, None, lambda bev, what, ctx: late.append(int(what)))
    other.set_timeouts(read=0.03)
    other.enable(EV_READ)
    # Free from the hub right after the timer, before the callback greenlet.
    hub = gevent.get_hub()
    timer = hub.loop.timer(0.035)
    timer.start(other.free)
    gevent.sleep(0.15)
    timer.close()
    assert other.freed
    assert late in ([], [int(Event.READING | Event.TIMEOUT)])


# -- held up: fairness -----------------------------------------------------------

_BLASTER = r"""
import socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2])
chunk = b"b" * 65536
try:
    if sys.argv[3] == "send":
        while time.monotonic() < end:
            s.sendall(chunk)
    else:
        s.settimeout(0.2)
        while time.monotonic() < end:
            if not s.recv(1 << 20):
                break
except OSError:
    pass
"""


@pytest.mark.parametrize("direction", ["reading", "writing"])
def test_busy_connections_starve_nobody(raw_sockets, direction):
    """Three connections moving bytes as fast as child processes allow: a
    ready greenlet, a timer and a ping-pong on a fourth connection keep
    getting turns (gaps under 0.1 s; they measure about 5 ms)."""
    children: list = []
    bevs: list = []
    moved = [0]
    try:
        for _ in range(3):
            ours, theirs = socket.socketpair()
            raw_sockets.add(ours)
            mode = "send" if direction == "reading" else "recv"
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BLASTER, str(theirs.fileno()), "5", mode],
                    pass_fds=[theirs.fileno()],
                )
            )
            theirs.close()
            bev = socket_new(ours, CLOSE)
            bevs.append(bev)
            if direction == "reading":

                def readcb(bev: Any, ctx: Any) -> None:
                    moved[0] += len(bev.input)
                    bev.input.drain(len(bev.input))

                bev.setcb(readcb, None, None)
                # Small reads: the kernel never runs dry between two of them,
                # so only the give-way rule lets anyone else run.
                bev.set_max_single_read(4096)
                bev.enable(EV_READ)
            else:
                block = b"w" * (1 << 20)

                def writecb(bev: Any, ctx: Any, block: bytes = block) -> None:
                    moved[0] += len(block)
                    bev.write(block)

                bev.set_max_single_write(4096)
                bev.setwatermark(EV_WRITE, 1 << 20, 0)
                bev.setcb(None, writecb, None)
                bev.write(block * 2)
        ping, pong = raw_sockets.pair()
        pong.settimeout(2)
        echo = socket_new(ping, CLOSE)
        echo.setcb(lambda bev, ctx: bev.write(bev.read(100)), None, None)
        echo.enable(EV_READ)
        # Children start at their own pace: measure once bytes flow.
        assert wait_for(lambda: moved[0] > 4 << 20, timeout=5)
        moved[0] = 0

        stop = time.monotonic() + 0.6
        gaps: list = []
        lateness: list = []
        round_trips: list = []

        def spinner() -> None:
            last = time.monotonic()
            while time.monotonic() < stop:
                gevent.sleep(0)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        def ticker() -> None:
            while time.monotonic() < stop:
                began = time.monotonic()
                gevent.sleep(0.01)
                lateness.append(time.monotonic() - began - 0.01)

        def pinger() -> None:
            while time.monotonic() < stop:
                began = time.monotonic()
                pong.sendall(b"p")
                assert pong.recv(1) == b"p"
                round_trips.append(time.monotonic() - began)
                gevent.sleep(0.005)

        workers = [gevent.spawn(f) for f in (spinner, ticker, pinger)]
        gevent.joinall(workers, timeout=5, raise_error=True)
        assert moved[0] > 8 << 20, moved  # the connections really were busy
        assert max(gaps) < 0.1
        assert max(lateness) < 0.1
        assert len(round_trips) > 20 and max(round_trips) < 0.1
    finally:
        for bev in bevs:
            bev.free()
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=5)


# -- held up: descriptors --------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["stdlib", "gevent", "fd"], ids=["stdlib", "gevent", "raw-fd"]
)
@pytest.mark.parametrize("options", [0, CLOSE], ids=["keep", "close-on-free"])
def test_fd_ownership_over_many_cycles(echo_server, kind, options):
    """free() closes the socket only with CLOSE_ON_FREE, otherwise hands it
    back usable and in its old blocking mode; no descriptor leaks."""
    gevent.sleep(0.02)
    before = open_fds()
    for i in range(60):
        if kind == "gevent":
            sock: Any = gevent.socket.create_connection(echo_server.address, timeout=2)
        else:
            sock = socket.create_connection(echo_server.address, timeout=2)
            sock.settimeout(None)  # a blocking socket, as most callers have
        arg: Any = sock.detach() if kind == "fd" else sock
        bev = socket_new(arg, options)
        bev.write(b"%d" % i)
        assert bev.read_exactly(len(b"%d" % i), timeout=2) == b"%d" % i
        bev.free()
        fd = arg if kind == "fd" else sock.fileno()
        if options & CLOSE:
            if kind == "fd":
                with pytest.raises(OSError):
                    os.fstat(fd)
            else:
                assert fd == -1
            continue
        if kind == "fd":
            assert os.get_blocking(fd)
            os.close(fd)
        else:
            if kind == "stdlib":
                assert sock.getblocking() and os.get_blocking(fd)
            # Still connected and ours (a gevent wrapper: a blocking stdlib
            # recv here would stop the echo server's greenlet).
            again = gevent.socket.socket(fileno=sock.detach())
            again.settimeout(2)
            again.sendall(b"back")
            assert again.recv(4) == b"back"
            again.close()
    gevent.sleep(0.05)
    assert open_fds() <= before


@pytest.mark.parametrize("outcome", ["connected", "refused", "no-such-path"])
def test_sockets_made_by_connect_are_closed_without_close_on_free(
    echo_server, outcome, tmp_path
):
    gevent.sleep(0.02)
    before = open_fds()
    for _ in range(60):
        bev = socket_new(None, 0)
        if outcome == "connected":
            bev.connect(echo_server.address)
            bev.wait_connected(timeout=2)
        elif outcome == "refused":
            bev.connect(("127.0.0.1", free_port()))
            with pytest.raises(BufferEventError):
                bev.wait_connected(timeout=2)
        else:
            with pytest.raises(BufferEventError, match="failed"):
                bev.connect(str(tmp_path / "nobody-listens-here"))
        bev.free()
    gevent.sleep(0.05)
    assert open_fds() <= before


# -- held up: the socket adapter ---------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.path.encode() * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))[::-1]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _AdapterConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = BufferEventSocket(connect((self.host, self.port), timeout=5))
        self.sock.settimeout(self.timeout)


def test_stdlib_http_client_and_server_over_the_adapter():
    """http.server's handler and http.client, both on BufferEventSocket:
    keep-alive requests, a POST body, then wsgiref's handler."""

    def handler(bev: Any) -> None:
        with BufferEventSocket(bev) as sock:
            sock.settimeout(5)
            _Handler(sock, ("127.0.0.1", 0), object())

    def app(environ: dict, start_response: Any) -> list:
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Length", str(len(body) + 3))])
        return [b"ok:", body]

    def wsgi_handler(bev: Any) -> None:
        wsgi = wsgiref.simple_server.WSGIServer.__new__(
            wsgiref.simple_server.WSGIServer
        )
        wsgi.base_environ = {"SERVER_NAME": "t", "SERVER_PORT": "0"}
        wsgi.application = app

        class Quiet(wsgiref.simple_server.WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        with BufferEventSocket(bev) as sock:
            sock.settimeout(5)
            Quiet(sock, ("127.0.0.1", 0), wsgi)

    server = serve(("127.0.0.1", 0), handler)
    wsgi_server = serve(("127.0.0.1", 0), wsgi_handler)
    try:
        conn = _AdapterConnection("127.0.0.1", server.address[1], timeout=5)
        for path in ("/a", "/bb", "/ccc"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == path.encode() * 1000
        body = bytes(range(256)) * 400
        conn.request("POST", "/echo", body=body)
        response = conn.getresponse()
        assert response.read() == body[::-1]
        conn.close()

        conn = _AdapterConnection("127.0.0.1", wsgi_server.address[1], timeout=5)
        conn.request("POST", "/", body=b"hello wsgi")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok:hello wsgi")
        conn.close()
        assert wait_for(lambda: len(server) == 0 and len(wsgi_server) == 0)
    finally:
        server.stop(timeout=1)
        wsgi_server.stop(timeout=1)


def test_adapter_files_behave_like_socket_files(raw_sockets):
    """Text readline, a timeout that poisons the file, non-blocking reads
    returning None, and close() waiting for the last open file: the same
    outcomes as a real socket's makefile()."""
    outcomes: dict = {}
    for label in ("socket", "adapter"):
        if label == "socket":
            sock, peer = raw_sockets.pair()
            peer.settimeout(3)
        else:
            sock, peer = adapter_pair(raw_sockets)
        sock.settimeout(0.1)
        text = sock.makefile("r", encoding="utf-8", newline="")
        peer.sendall("héllo\r\nwor".encode())
        seen: list = [text.readline()]
        for _ in range(2):
            try:
                seen.append(text.readline())
            except OSError as exc:  # socket.timeout, then "timed out object"
                seen.append((type(exc).__name__, "timed out" in str(exc)))
        text.close()
        sock.setblocking(False)
        binary = sock.makefile("rb")
        seen.append(binary.read(5))
        sock.close()
        peer.sendall(b"after close\n")
        gevent.sleep(0.05)  # the adapter's reader greenlet takes it in
        seen.append(binary.readline())
        binary.close()
        outcomes[label] = seen
    assert outcomes["adapter"] == outcomes["socket"]
    assert outcomes["socket"][0] == "héllo\r\n"
    assert sock.bev.freed  # the adapter closed once its last file did


def test_adapter_close_waits_for_every_file_and_wakes_a_blocked_recv(raw_sockets):
    sock, peer = adapter_pair(raw_sockets, timeout=2)
    outcome: list = []

    def blocked_recv() -> None:
        try:
            outcome.append(sock.recv(10))
        except OSError as exc:
            outcome.append(exc.errno)

    reader = gevent.spawn(blocked_recv)
    gevent.sleep(0.02)
    sock.close()
    reader.join(timeout=1)
    assert outcome == [errno.EBADF]

    sock, peer = adapter_pair(raw_sockets, timeout=2)
    first, second = sock.makefile("rb"), sock.makefile("wb")
    sock.close()
    second.write(b"written after close()\n")
    first.close()
    assert not sock.bev.freed
    second.close()  # the last file: flushes, then the connection ends
    assert sock.bev.freed
    assert peer.makefile("rb").read() == b"written after close()\n"


# -- held up: freed buffers and the relay's connect timeout ---------------------


def test_event2_on_a_freed_buffer_returns_c_failures():
    buf = event2.evbuffer_new()
    assert event2.evbuffer_add(buf, b"abc", 3) == 0
    assert event2.evbuffer_free(buf) is None
    assert event2.evbuffer_get_length(buf) == -1
    assert event2.evbuffer_add(buf, b"x", 1) == -1
    assert event2.evbuffer_remove(buf, 1) is None
    assert event2.evbuffer_drain(buf, 1) == -1
    assert event2.evbuffer_pullup(buf, -1) is None
    assert event2.evbuffer_readln(buf, EOL.LF) is None
    assert event2.evbuffer_search(buf, b"a", None) == -1
    other = event2.evbuffer_new()
    event2.evbuffer_add(other, b"kept", 4)
    assert event2.evbuffer_add_buffer(other, buf) == -1
    assert event2.evbuffer_add_buffer(buf, other) == -1
    assert event2.evbuffer_get_length(other) == 4
    assert event2.evbuffer_free(buf) is None  # twice is harmless
    with pytest.raises(BufferEventError, match="freed"):
        len(buf)


def test_relay_connect_timeout_closes_a_client_whose_backend_never_accepts(
    full_backlog_address,
):
    closed: list = []
    relay = Relay(
        ("127.0.0.1", 0),
        full_backlog_address,
        connect_timeout=0.3,
        on_close=closed.append,
    )
    client = gevent.socket.create_connection(relay.address, timeout=3)
    try:
        client.sendall(b"nobody will read this")
        started = time.monotonic()
        assert client.recv(10) == b""
        assert 0.25 < time.monotonic() - started < 2.0
        assert wait_for(lambda: closed)
        assert "connect timed out" in closed[0].reason
        assert not relay.connections
    finally:
        client.close()
        relay.close()
