"""Adversarial tests: misuse, hostile peers and resource pressure.

Each test either pins behaviour that held up under attack or keeps a
failure the attack found (now fixed) from coming back.  Everything talks to
127.0.0.1 or to AF_UNIX socketpairs only; subprocesses are stopped by pid
in ``finally`` blocks and every blocking call has a timeout.
"""

from __future__ import annotations

import array
import gc
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterator

import gevent
import gevent.event
import gevent.server
import gevent.socket
import pytest
from loopback_helpers import (
    free_port,
    read_line_with_timeout,
    stop_process,
    subprocess_env,
)

from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    Buffer,
    BufferEventError,
    Event,
    EventBase,
    Listener,
    Option,
    get_default_base,
    socket_new,
)

CLOSE = Option.CLOSE_ON_FREE
DEFER = Option.DEFER_CALLBACKS


# -- helpers -----------------------------------------------------------------


def reset(sock: Any) -> None:
    """Close ``sock`` with SO_LINGER 0: the other end gets a TCP RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_fds(pid: str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class _Tcp:
    """A loopback listening socket and the sockets made from it."""

    def __init__(self) -> None:
        self.server = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.address = self.server.getsockname()
        self._socks: list = [self.server]

    def keep(self, sock: Any) -> Any:
        self._socks.append(sock)
        return sock

    def accept(self) -> Any:
        with gevent.Timeout(5):
            peer, _ = self.server.accept()
        peer.settimeout(5.0)
        return self.keep(peer)

    def bev_with_peer(self, options: int = 0) -> tuple:
        """A socket bufferevent on a connected socket and the raw peer."""
        client = self.keep(gevent.socket.create_connection(self.address, timeout=5))
        return socket_new(client, CLOSE | options), self.accept()

    def close_all(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture
def tcp() -> Iterator[_Tcp]:
    sockets = _Tcp()
    yield sockets
    sockets.close_all()


def run_in_own_hub(
    scenario: Callable[[], Any], unstick: Callable[[], None], grace: float = 0.3
) -> tuple:
    """Run ``scenario`` in a thread with its own gevent hub.

    A scenario that freezes its hub cannot freeze the test: after ``grace``
    seconds ``unstick()`` is called from this thread (it should make an fd
    ready in the frozen hub).  Returns ``(outcome, seconds)``: the value or
    the exception of ``scenario`` and how long it ran.
    """
    box: dict = {}

    def target() -> None:
        started = time.monotonic()
        try:
            box["outcome"] = scenario()
        except BaseException as exc:  # reported to the test, not swallowed
            box["outcome"] = exc
        finally:
            box["seconds"] = time.monotonic() - started
            gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(grace)
    if thread.is_alive():
        unstick()
        thread.join(5.0)
    assert not thread.is_alive(), "the scenario's hub stayed frozen"
    return box["outcome"], box["seconds"]


# -- regressions: each of these once broke the library ----------------------


@pytest.mark.parametrize("method", ["read_some", "read_line", "read_exactly"])
def test_nan_timeout_is_rejected_not_a_frozen_hub(method):
    ours, theirs = socket.socketpair()

    def scenario() -> Any:
        bev = socket_new(ours, CLOSE)
        try:
            # If the hub still ran timers this would fire after 0.2 s.
            with gevent.Timeout(0.2, TimeoutError("gevent.Timeout fired")):
                if method == "read_exactly":
                    return bev.read_exactly(1, timeout=float("nan"))
                return getattr(bev, method)(timeout=float("nan"))
        finally:
            bev.free()

    try:
        outcome, _ = run_in_own_hub(scenario, lambda: theirs.send(b"x\n"))
    finally:
        theirs.close()
    assert isinstance(outcome, ValueError), outcome
    assert "timeout" in str(outcome)


def test_loopexit_nan_is_rejected():
    def scenario() -> Any:
        base = EventBase()
        try:
            base.loopexit(float("nan"))
            return "accepted"
        finally:
            base.free()

    outcome, _ = run_in_own_hub(scenario, lambda: None)
    assert isinstance(outcome, ValueError), outcome
    assert "delay" in str(outcome)


def test_loopexit_bad_type_names_the_argument():
    with pytest.raises((TypeError, ValueError), match="delay"):
        get_default_base().loopexit("soon")  # type: ignore[arg-type]


def test_concurrent_dispatch_does_not_strand_the_first():
    base = get_default_base()
    listener = Listener(lambda *args: None, ("127.0.0.1", 0))
    results: dict = {}

    def run(name: str) -> None:
        try:
            results[name] = base.dispatch()
        except RuntimeError as exc:
            results[name] = exc

    first = gevent.spawn(run, "first")
    gevent.sleep(0.01)
    second = gevent.spawn(run, "second")
    gevent.sleep(0.01)
    base.loopbreak()
    gevent.joinall([first, second], timeout=0.3)
    listener.free()
    gevent.joinall([first, second], timeout=0.3)
    try:
        assert second.dead
        assert first.dead, "the first dispatch() is stranded"
        assert results["first"] == 0
    finally:
        first.kill(block=False)
        second.kill(block=False)
        base._got_break = False


def test_raising_input_buffer_callback_does_not_kill_reading(
    make_bev_with_peer, hub_errors
):
    bev, peer = make_bev_with_peer()

    def boom(buf: Any, info: Any, ctx: Any) -> None:
        if info.n_added:
            raise RuntimeError("boom in input callback")

    handle = bev.input.add_cb(boom)
    bev.enable(EV_READ)
    try:
        peer.sendall(b"one")
        assert bev.read_some(timeout=0.5) == b"one"
        bev.input.remove_cb(handle)
        peer.sendall(b"two")
        assert bev.read_some(timeout=0.5) == b"two"
        assert hub_errors, "the callback's exception was not reported"
    finally:
        hub_errors.clear()
        bev.free()


def test_raising_output_buffer_callback_does_not_kill_writing(
    make_bev_with_peer, hub_errors
):
    bev, peer = make_bev_with_peer()
    failed: list = []

    def boom_once(buf: Any, info: Any, ctx: Any) -> None:
        if info.n_deleted and not failed:
            failed.append(True)
            raise RuntimeError("boom in output callback")

    bev.output.add_cb(boom_once)
    payload = bytes(range(256)) * 2048  # 512 KiB: more than one send
    got = bytearray()

    def drain_peer() -> None:
        while len(got) < len(payload):
            data = peer.recv(65536)
            if not data:
                return
            got.extend(data)

    reader = gevent.spawn(drain_peer)
    try:
        bev.write(payload)
        reader.join(timeout=0.5)
        assert failed and hub_errors, "the callback never raised"
        assert bytes(got) == payload
    finally:
        reader.kill()
        hub_errors.clear()
        bev.free()


@pytest.mark.parametrize("state", ["connected", "resolving"])
def test_connect_hostname_on_a_busy_bev_raises_at_the_call(tcp, state, run_until):
    if state == "connected":
        bev, _ = tcp.bev_with_peer()
    else:
        bev = socket_new(None, CLOSE)
        bev.connect_hostname("127.0.0.1", tcp.address[1])
    events: list = []
    bev.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    try:
        with pytest.raises(BufferEventError, match="connect"):
            bev.connect_hostname("127.0.0.1", tcp.address[1])
    finally:
        gevent.sleep(0.1)
        bev.free()
    assert not [what for what in events if what & Event.ERROR]


def test_without_close_on_free_a_blocking_socket_stays_blocking():
    ours, theirs = socket.socketpair()
    try:
        assert ours.getblocking()
        bev = socket_new(ours)
        bev.free()
        timer = threading.Timer(0.1, theirs.send, (b"late",))
        timer.start()
        try:
            # A blocking socket waits for the byte that comes 0.1 s later.
            assert ours.recv(10) == b"late"
        finally:
            timer.join(2)
    finally:
        ours.close()
        theirs.close()


def test_dropping_an_unfreed_bev_never_closes_the_users_socket():
    ours, theirs = socket.socketpair()
    fd = ours.fileno()
    inode = os.fstat(fd).st_ino
    still_ours = False
    try:
        bev = socket_new(ours)
        bev.enable(EV_READ)
        theirs.close()
        bev.write(b"x" * 100000)  # the writer fails too, so both greenlets end
        gevent.sleep(0.05)
        gone = weakref.ref(bev)
        del bev
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for _ in range(3):
                gc.collect()
                gevent.sleep(0.01)
        assert gone() is None
        try:
            still_ours = os.fstat(fd).st_ino == inode
        except OSError:
            still_ours = False
        assert still_ours, "the user's descriptor was closed by the collector"
    finally:
        if still_ours:
            ours.close()
        else:
            ours.detach()  # never close a number that may now be someone else's


def test_write_all_survives_the_write_timeout(make_bev_with_peer):
    bev, peer = make_bev_with_peer()
    bev.set_timeouts(write=0.1)
    payload = b"w" * (1 << 20)
    got = bytearray()

    def slow_peer() -> None:
        gevent.sleep(0.3)
        while len(got) < len(payload):
            data = peer.recv(65536)
            if not data:
                return
            got.extend(data)

    reader = gevent.spawn(slow_peer)
    started = time.monotonic()
    try:
        try:
            bev.write_all(payload, timeout=1.2)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - started
        # Either outcome is fine: the bufferevent's own timeout ends the call
        # (~0.1 s) or the data goes once the peer reads (~0.3 s).  Waiting
        # for write_all's own 1.2 s is the bug.
        assert elapsed < 0.9, f"write_all hung for {elapsed:.2f} s"
    finally:
        reader.kill()
        bev.free()


def test_raising_accept_callback_does_not_send_into_a_recycled_fd(hub_errors):
    wrapped: list = []

    def on_accept(listener: Any, sock: Any, address: Any, ctx: Any) -> None:
        wrapped.append(socket_new(sock, CLOSE))
        raise RuntimeError("user bug after wrapping the socket")

    listener = Listener(on_accept, ("127.0.0.1", 0))
    client = gevent.socket.create_connection(listener.getsockname(), timeout=2)
    victims: list = []
    try:
        deadline = time.monotonic() + 2
        while not wrapped and time.monotonic() < deadline:
            gevent.sleep(0.01)
        bev = wrapped[0]
        stale = bev.fileno()
        # Open unrelated sockets until one gets the same descriptor number.
        for _ in range(50):
            pair = socket.socketpair()
            victims.extend(pair)
            if stale in (pair[0].fileno(), pair[1].fileno()):
                break
        bev.write(b"meant for the first client")
        gevent.sleep(0.05)
        leaked = b""
        for sock in victims:
            sock.setblocking(False)
            try:
                leaked += sock.recv(100)
            except BlockingIOError:
                pass
        assert leaked == b"", "bytes reached an unrelated socket"
    finally:
        hub_errors.clear()
        for sock in victims:
            sock.close()
        for bev in wrapped:
            bev.free()
        client.close()
        listener.free()


@pytest.mark.parametrize("direction", ["write_all-in-readcb", "read_some-in-writecb"])
def test_cross_direction_blocking_inside_io_callbacks(
    make_bev_with_peer, hub_errors, direction
):
    bev, peer = make_bev_with_peer()
    outcome: list = []
    sender = None

    def echo_with_backpressure(bev: Any, ctx: Any) -> None:
        data = bev.read(1 << 20)
        try:
            bev.write_all(data * 1000, timeout=2)
            outcome.append("sent")
        except BufferEventError as exc:
            outcome.append(exc)

    def read_reply(bev: Any, ctx: Any) -> None:
        try:
            outcome.append(bev.read_some(timeout=1))
        except BufferEventError as exc:
            outcome.append(exc)

    try:
        if direction == "write_all-in-readcb":
            bev.setcb(echo_with_backpressure, None, None)
            bev.enable(EV_READ)
            peer.sendall(b"ping")
            got = 0
            while got < 4000:
                got += len(peer.recv(65536))
            expected = "sent"
        else:
            bev.setcb(None, read_reply, None)
            sender = gevent.spawn_later(0.05, peer.sendall, b"reply")
            bev.write(b"request")
            expected = b"reply"
        deadline = time.monotonic() + 2
        while not outcome and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert outcome == [expected]
    finally:
        if sender is not None:
            sender.kill()
        hub_errors.clear()
        bev.free()


@pytest.fixture
def refusing_unix_path() -> Iterator[str]:
    """An AF_UNIX path bound but not listening: connect is refused at once."""
    folder = tempfile.mkdtemp(prefix="geventbev-adv-")
    path = os.path.join(folder, "refuses")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    try:
        yield path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


@pytest.mark.parametrize("via", ["timeout-callback", "deferred-readcb"])
def test_blocking_in_a_deferred_callback_does_not_deadlock(
    make_bev_with_peer, refusing_unix_path, via
):
    """A refusal reported through the deferred queue must not strand a
    wait_connected running inside a deferred callback (fixed in ad9ef3b)."""
    bev, peer = make_bev_with_peer(DEFER if via == "deferred-readcb" else 0)
    outcome: list = []

    def connect_and_wait(*args: Any) -> None:
        other = socket_new(None, CLOSE)
        other.connect(refusing_unix_path)
        started = time.monotonic()
        try:
            other.wait_connected(timeout=0.5)
        except (BufferEventError, TimeoutError) as exc:
            outcome.append((type(exc), time.monotonic() - started))
        finally:
            other.free()

    if via == "timeout-callback":
        bev.setcb(None, None, connect_and_wait)
        bev.set_timeouts(read=0.05)
        bev.enable(EV_READ)
    else:
        bev.setcb(connect_and_wait, None, None)
        bev.enable(EV_READ)
        peer.sendall(b"go")
    deadline = time.monotonic() + 2
    while not outcome and time.monotonic() < deadline:
        gevent.sleep(0.01)
    bev.free()
    assert outcome and outcome[0][0] is BufferEventError, outcome


def test_a_blocking_timeout_callback_does_not_delay_other_timeouts(
    make_bev_with_peer,
):
    slow, _ = make_bev_with_peer()
    other, _ = make_bev_with_peer()
    fired: list = []
    started = time.monotonic()
    slow.setcb(None, None, lambda *args: gevent.sleep(0.6))
    other.setcb(None, None, lambda *args: fired.append(time.monotonic() - started))
    slow.set_timeouts(read=0.05)
    other.set_timeouts(read=0.15)
    slow.enable(EV_READ)
    other.enable(EV_READ)
    deadline = time.monotonic() + 2
    while not fired and time.monotonic() < deadline:
        gevent.sleep(0.01)
    slow.free()
    other.free()
    assert fired and fired[0] < 0.5, f"the 0.15 s timeout came at {fired}"


# -- free() from inside callbacks (held up) ----------------------------------

FREE_POINTS = ["connected", "read", "write", "eof", "reset", "timeout", "refused"]


@pytest.mark.parametrize("options", [0, DEFER], ids=["plain", "defer"])
@pytest.mark.parametrize("point", FREE_POINTS)
def test_free_from_inside_each_callback(tcp, point, options, run_until):
    """Freeing inside any callback stops everything; nothing runs after it."""
    bev = socket_new(None, CLOSE | options)
    seen: list = []
    after_free: list = []
    wanted = {
        "connected": Event.CONNECTED,
        "eof": Event.EOF,
        "reset": Event.ERROR,
        "timeout": Event.TIMEOUT,
        "refused": Event.ERROR,
    }

    def note(kind: Any, bev: Any) -> None:
        if bev.freed:
            after_free.append(kind)
        seen.append(kind)

    def readcb(bev: Any, ctx: Any) -> None:
        note("read", bev)
        if point == "read":
            bev.free()

    def writecb(bev: Any, ctx: Any) -> None:
        note("write", bev)
        if point == "write":
            bev.free()

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        note(int(what), bev)
        if point in wanted and what & wanted[point]:
            bev.free()

    bev.setcb(readcb, writecb, eventcb)
    bev.enable(EV_READ | EV_WRITE)
    if point == "refused":
        bev.connect(("127.0.0.1", free_port()))
    else:
        bev.connect(tcp.address)
        peer = tcp.accept()
        if point == "write":
            bev.write(b"x" * 100)
        elif point == "read":
            peer.sendall(b"hello")
        elif point == "eof":
            peer.close()
        elif point == "reset":
            bev.write(b"first")
            assert peer.recv(5) == b"first"
            reset(peer)
            gevent.sleep(0.05)
            if not bev.freed:
                bev.write(b"after the reset")
        elif point == "timeout":
            bev.set_timeouts(read=0.05)
    assert run_until(lambda: bev.freed, timeout=2.0), seen
    gevent.sleep(0.05)
    assert bev.fileno() == -1
    assert not after_free
    with pytest.raises(BufferEventError, match="freed"):
        bev.write(b"late")


def test_free_from_another_greenlet_while_the_readcb_blocks(tcp, hub_errors):
    """The blocked callback is ended, the socket closes, the hub stays quiet."""
    bev, peer = tcp.bev_with_peer()
    entered = gevent.event.Event()

    def readcb(bev: Any, ctx: Any) -> None:
        entered.set()
        gevent.sleep(5)

    bev.setcb(readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(b"x")
    assert entered.wait(2)
    bev.free()
    assert peer.recv(10) == b""
    gevent.sleep(0.05)
    assert not hub_errors


@pytest.mark.parametrize("ending", ["free", "eof", "reset"])
def test_fifty_blocked_readers_all_wake(tcp, ending):
    bev, peer = tcp.bev_with_peer()
    bev.wait_connected(timeout=1)
    outcomes: list = []

    def reader() -> None:
        try:
            outcomes.append(bev.read_some(timeout=3))
        except BufferEventError as exc:
            outcomes.append(type(exc))

    readers = [gevent.spawn(reader) for _ in range(50)]
    gevent.sleep(0.02)
    if ending == "free":
        bev.free()
    elif ending == "eof":
        peer.close()
    else:
        reset(peer)
    gevent.joinall(readers, timeout=2)
    bev.free()
    assert all(glet.dead for glet in readers)
    expected = b"" if ending == "eof" else BufferEventError
    assert outcomes == [expected] * 50


def test_free_during_connect_and_lookup_leaks_nothing(tcp):
    # Warm up the resolver: its thread pool keeps a descriptor for good.
    warm = socket_new(None, CLOSE)
    warm.connect_hostname("127.0.0.1", tcp.address[1])
    warm.wait_connected(timeout=2)
    warm.free()
    tcp.accept().close()
    gevent.sleep(0.05)
    before = open_fds()
    for i in range(300):
        bev = socket_new(None, CLOSE)
        if i % 2:
            bev.connect(tcp.address)
        else:
            bev.connect_hostname("127.0.0.1", tcp.address[1])
        if i % 3 == 0:
            gevent.sleep(0)
        bev.free()
    gevent.sleep(0.2)
    # Connections that reached the listen queue are accepted and closed.
    tcp.server.setblocking(False)
    while True:
        try:
            conn, _ = tcp.server.accept()
        except OSError:
            break
        conn.close()
    assert open_fds() <= before


# -- user callbacks that misbehave (held up) ---------------------------------


def test_raising_callbacks_of_every_kind_leave_the_bev_working(tcp, hub_errors):
    bev, peer = tcp.bev_with_peer()
    got = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        got.extend(bev.read(1 << 20))
        raise RuntimeError("read")

    def writecb(bev: Any, ctx: Any) -> None:
        raise RuntimeError("write")

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        if what & Event.TIMEOUT:
            bev.enable(EV_READ)
        raise RuntimeError("event")

    bev.setcb(readcb, writecb, eventcb)
    bev.set_timeouts(read=0.05)
    bev.enable(EV_READ | EV_WRITE)
    for i in range(5):
        peer.sendall(b"%d" % i)
        bev.write(b"%d" % i)
        gevent.sleep(0.07)  # long enough for a read timeout now and then
    try:
        assert bytes(got) == b"01234"
        assert peer.recv(10) == b"01234"
        kinds = {str(exc) for _, exc in hub_errors}
        assert kinds == {"read", "write", "event"}
        assert all(ctx is bev for ctx, _ in hub_errors)
    finally:
        hub_errors.clear()
        bev.free()


def test_a_blocking_readcb_stalls_only_its_own_connection(tcp):
    sleepy, sleepy_peer = tcp.bev_with_peer()
    busy, busy_peer = tcp.bev_with_peer()
    sleepy.setcb(lambda bev, ctx: gevent.sleep(0.5), None, None)
    busy.setcb(lambda bev, ctx: bev.write(bev.read(100)), None, None)
    sleepy.enable(EV_READ)
    busy.enable(EV_READ)
    sleepy_peer.sendall(b"z")
    gevent.sleep(0.01)
    started = time.monotonic()
    for i in range(20):
        busy_peer.sendall(b"%02d" % i)
        assert busy_peer.recv(2) == b"%02d" % i
    assert time.monotonic() - started < 0.4
    sleepy.free()
    busy.free()


def test_changing_state_from_inside_callbacks(tcp, run_until):
    """setcb, setwatermark, set_timeouts, disable and enable inside callbacks."""
    bev, peer = tcp.bev_with_peer()
    log: list = []

    def second_readcb(bev: Any, ctx: Any) -> None:
        log.append(("second", bev.read(100)))

    def first_readcb(bev: Any, ctx: Any) -> None:
        log.append(("first", bev.read(100)))
        bev.setwatermark(EV_READ, 0, 1)
        bev.set_timeouts(read=0.05)
        bev.disable(EV_READ)
        bev.setcb(second_readcb, None, eventcb)

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        log.append(("event", int(what)))
        if what & Event.TIMEOUT:
            bev.set_timeouts()
            bev.setwatermark(EV_READ, 0, 0)
            bev.enable(EV_READ)

    bev.setcb(first_readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(b"one")
    assert run_until(lambda: log)
    peer.sendall(b"two")
    gevent.sleep(0.1)
    # Reading is off: no timeout counts, nothing is read.
    assert log == [("first", b"one")]
    bev.enable(EV_READ)
    assert run_until(lambda: len(log) >= 3)
    # The high watermark of 1 hands the bytes over one at a time.
    assert log[1:3] == [("second", b"t"), ("second", b"w")]
    assert run_until(lambda: ("event", int(Event.READING | Event.TIMEOUT)) in log)
    peer.sendall(b"three")
    assert run_until(lambda: log[-1] == ("second", b"three"))
    bev.free()


# -- hostile peers (held up) -------------------------------------------------


def test_reset_after_data_keeps_the_data_readable(tcp):
    bev, peer = tcp.bev_with_peer()
    bev.enable(EV_READ)
    peer.sendall(b"before the reset")
    gevent.sleep(0.05)
    reset(peer)
    gevent.sleep(0.05)
    assert bev.read_exactly(6, timeout=1) == b"before"
    assert bev.read_some(timeout=1) == b" the reset"
    with pytest.raises(BufferEventError) as info:
        bev.read_some(timeout=1)
    assert isinstance(info.value.__cause__, OSError)
    bev.free()


def test_half_closed_peer_still_receives(tcp):
    bev, peer = tcp.bev_with_peer()
    peer.sendall(b"request\n")
    peer.shutdown(socket.SHUT_WR)
    assert bev.read_line(EOL.LF, timeout=1) == b"request"
    assert bev.read_some(timeout=1) == b""
    bev.write_all(b"answer after EOF", timeout=1)
    bev.free()
    data = b""
    while True:
        piece = peer.recv(100)
        if not piece:
            break
        data += piece
    assert data == b"answer after EOF"


def test_one_byte_segments_and_read_high_watermark_one(tcp):
    bev, peer = tcp.bev_with_peer()
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bev.setwatermark(EV_READ, 0, 1)
    seen_max: list = [0]
    bev.input.add_cb(
        lambda buf, info, ctx: seen_max.__setitem__(0, max(seen_max[0], len(buf)))
    )
    message = bytes(range(200))

    def dribble() -> None:
        for byte in message:
            peer.sendall(bytes([byte]))
            gevent.sleep(0)

    sender = gevent.spawn(dribble)
    assert bev.read_exactly(200, timeout=3) == message
    sender.join(timeout=1)
    assert seen_max[0] <= 1


def test_burst_stays_within_the_read_high_watermark(tcp):
    bev, peer = tcp.bev_with_peer()
    bev.setwatermark(EV_READ, 0, 4096)
    seen_max: list = [0]
    bev.input.add_cb(
        lambda buf, info, ctx: seen_max.__setitem__(0, max(seen_max[0], len(buf)))
    )
    payload = os.urandom(1 << 20)
    sender = gevent.spawn(peer.sendall, payload)
    got = bytearray()
    while len(got) < len(payload):
        got.extend(bev.read_exactly(min(3000, len(payload) - len(got)), timeout=2))
    sender.join(timeout=1)
    assert bytes(got) == payload
    assert 0 < seen_max[0] <= 4096
    bev.free()


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "array"])
def test_mutating_the_source_after_write_changes_nothing(make_bev_with_peer, kind):
    bev, peer = make_bev_with_peer()
    bev.disable(EV_WRITE)  # keep the bytes queued while we mutate
    raw = bytearray(b"original")
    if kind == "bytearray":
        source: Any = raw
    elif kind == "memoryview":
        source = memoryview(raw)
    else:
        source = array.array("B", raw)
    bev.write(source)
    bev.write(b"")
    memoryview(source)[0:8] = b"MUTATED!"
    bev.enable(EV_WRITE)
    assert peer.recv(100) == b"original"
    bev.free()


def test_write_after_error_is_refused_by_the_blocking_style(tcp, run_until):
    bev, peer = tcp.bev_with_peer()
    events: list = []
    bev.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    bev.enable(EV_READ)
    reset(peer)
    assert run_until(lambda: events)
    assert events[0] & Event.ERROR
    with pytest.raises(BufferEventError, match="failed"):
        bev.write_all(b"into the void", timeout=1)
    bev.free()


# -- resources (held up) -----------------------------------------------------


@pytest.fixture
def echo_listener() -> Iterator[tuple]:
    """A Listener running a bufferevent echo server; yields its address."""
    conns: list = []

    def on_accept(listener: Any, sock: Any, address: Any, ctx: Any) -> None:
        bev = socket_new(sock, CLOSE)
        conns.append(bev)
        bev.setcb(
            lambda bev, ctx: bev.write(bev.read(1 << 16)),
            None,
            lambda bev, what, ctx: bev.free(),
        )
        bev.enable(EV_READ)

    listener = Listener(on_accept, ("127.0.0.1", 0), backlog=256)
    yield listener.getsockname()
    listener.free()
    for bev in conns:
        bev.free()


def test_2000_connect_echo_free_cycles_leak_no_fd(echo_listener):
    gevent.sleep(0.05)
    before = open_fds()
    for i in range(2000):
        bev = socket_new(None, CLOSE)
        bev.connect(echo_listener)
        message = b"ping %d" % i
        bev.write(message)
        assert bev.read_exactly(len(message), timeout=2) == message
        bev.free()
    gevent.sleep(0.1)
    assert open_fds() <= before


def test_without_close_on_free_the_gevent_socket_stays_usable(echo_listener):
    gevent.sleep(0.05)
    before = open_fds()
    for _ in range(300):
        sock = gevent.socket.create_connection(echo_listener, timeout=2)
        bev = socket_new(sock)
        bev.write(b"a")
        assert bev.read_exactly(1, timeout=2) == b"a"
        bev.free()
        sock.sendall(b"b")
        assert sock.recv(1) == b"b"
        sock.close()
    gevent.sleep(0.1)
    assert open_fds() <= before


_EMFILE_CHILD = r"""
import os, resource, sys
import gevent
from geventbev import Listener
held = []
listener = Listener(lambda l, sock, addr, ctx: held.append(sock), ("127.0.0.1", 0))
limit = len(os.listdir("/proc/self/fd")) + 4
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
print(listener.getsockname()[1], flush=True)
watcher = gevent.get_hub().loop.io(0, 1)
gevent.get_hub().wait(watcher)          # the parent says: release
os.read(0, 10)
print("held", len(held), flush=True)
for sock in held:
    sock.close()
del held[:]
gevent.sleep(0.3)
print("after", len(held), flush=True)
gevent.get_hub().wait(watcher)
"""


def test_listener_recovers_from_emfile_without_spinning():
    proc = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    clients: list = []
    try:
        port = int(read_line_with_timeout(proc, 15))
        for _ in range(12):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(0.2)
        ticks = cpu_ticks(proc.pid)
        time.sleep(0.5)
        # A spinning accept loop would burn ~50 ticks in half a second.
        assert cpu_ticks(proc.pid) - ticks < 15
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        held = int(read_line_with_timeout(proc, 5).split()[1])
        assert 0 < held < 12
        after = int(read_line_with_timeout(proc, 5).split()[1])
        # It accepted again once descriptors were free.
        assert after > 0
    finally:
        for sock in clients:
            sock.close()
        stop_process(proc)


# -- the relay under load (held up) ------------------------------------------


@pytest.fixture
def relay_to_echo() -> Iterator[tuple]:
    """``python -m geventbev relay`` in front of an in-process echo server;
    yields ``(relay address, relay Popen)``."""

    def echo(sock: Any, address: Any) -> None:
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    backend = gevent.server.StreamServer(("127.0.0.1", 0), echo, backlog=2048)
    backend.start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geventbev",
            "--log-level",
            "WARNING",
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            f"127.0.0.1:{backend.address[1]}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    try:
        banner = ""
        # The relay prints its banner from its own process: wait without
        # blocking our hub, which runs the backend.
        deadline = time.monotonic() + 15
        while not banner and time.monotonic() < deadline:
            try:
                banner = read_line_with_timeout(proc, 0.05)
            except TimeoutError:
                gevent.sleep(0.05)
        match = re.match(r"relay listening on [^:]+:(\d+) ", banner)
        assert match, banner
        yield ("127.0.0.1", int(match.group(1))), proc
    finally:
        stop_process(proc)
        backend.stop(timeout=1)


def _wait_fds(pid: int, at_most: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while open_fds(str(pid)) > at_most and time.monotonic() < deadline:
        gevent.sleep(0.05)
    return open_fds(str(pid))


def test_relay_1000_concurrent_then_churn(relay_to_echo):
    address, proc = relay_to_echo
    gevent.sleep(0.1)
    idle_fds = open_fds(str(proc.pid))

    def talk(i: int) -> bool:
        with gevent.socket.create_connection(address, timeout=10) as sock:
            sock.settimeout(10)
            message = b"%05d" % i * 40
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                piece = sock.recv(65536)
                if not piece:
                    break
                got += piece
            return got == message

    talkers = [gevent.spawn(talk, i) for i in range(1000)]
    gevent.joinall(talkers, timeout=15)
    assert sum(1 for glet in talkers if glet.value) == 1000
    assert _wait_fds(proc.pid, idle_fds, 5) <= idle_fds

    # Clients that close at once, reset at once, or send and reset.
    for i in range(600):
        sock = gevent.socket.create_connection(address, timeout=5)
        if i % 3 == 2:
            sock.sendall(b"x" * 1000)
        if i % 3:
            reset(sock)
        else:
            sock.close()
        if i % 50 == 49:
            _wait_fds(proc.pid, idle_fds + 20, 2)
    assert _wait_fds(proc.pid, idle_fds, 5) <= idle_fds
    ticks = cpu_ticks(proc.pid)
    gevent.sleep(0.5)
    assert cpu_ticks(proc.pid) - ticks < 10  # idle, not spinning
    with gevent.socket.create_connection(address, timeout=5) as sock:
        sock.settimeout(5)
        sock.sendall(b"still serving")
        assert sock.recv(100) == b"still serving"
    assert proc.poll() is None


# -- EventBase and Buffer misuse (held up) -----------------------------------


def test_dispatch_from_the_hub_is_refused(hub_errors):
    hub = gevent.get_hub()
    hub.loop.run_callback(get_default_base().dispatch)
    gevent.sleep(0.01)
    try:
        assert [type(exc) for _, exc in hub_errors] == [RuntimeError]
        assert "hub" in str(hub_errors[0][1])
    finally:
        hub_errors.clear()


def test_loopexit_negative_is_refused():
    with pytest.raises(ValueError, match="delay"):
        get_default_base().loopexit(-1)


@pytest.mark.parametrize(
    "operation",
    [
        lambda bev, other: other.add_buffer(bev.output),
        lambda bev, other: bev.output.remove_buffer(other, 2),
        lambda bev, other: bev.output.readln(),
        lambda bev, other: bev.output.prepend_buffer(other),
        lambda bev, other: bev.input.add_buffer(other),
        lambda bev, other: bev.input.reserve_space(4),
        lambda bev, other: bev.input.add_printf("%d", 5),
    ],
    ids=[
        "output-as-source",
        "output-remove-buffer",
        "output-readln",
        "output-prepend-buffer",
        "input-add-buffer",
        "input-reserve-space",
        "input-add-printf",
    ],
)
def test_frozen_ends_refuse_user_changes(make_bev_with_peer, operation, run_until):
    bev, peer = make_bev_with_peer()
    bev.enable(EV_READ)
    peer.sendall(b"in\n")
    assert run_until(lambda: len(bev.input) == 3)
    bev.disable(EV_WRITE)
    bev.write(b"out\n")
    other = Buffer()
    other.add(b"zz")
    before = bytes(bev.input), bytes(bev.output), bytes(other)
    with pytest.raises(BufferEventError, match="frozen"):
        operation(bev, other)
    assert (bytes(bev.input), bytes(bev.output), bytes(other)) == before
    bev.free()


def test_socket_new_rejects_a_regular_file(tmp_path):
    with open(tmp_path / "file", "wb") as handle:
        with pytest.raises(ValueError, match="socket"):
            socket_new(handle.fileno())
        assert handle.write(b"still mine") == 10
