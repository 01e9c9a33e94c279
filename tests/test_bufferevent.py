"""The BufferEvent contract, on socket bufferevents over AF_UNIX socketpairs.

Scenarios ported from libevent's bufferevent regression tests (catalogue
section A and G of reference/libevent-regress.md) plus geventbev's own
promises: deferred-callback order, callbacks that never nest, no starvation,
argument checking and behaviour after free.  Nothing here needs TCP; see
tests/loopback/ for that.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import gevent
import gevent.event
import pytest

from geventbev import (
    EV_READ,
    EV_SSIZE_MAX,
    EV_WRITE,
    LIBEVENT_MAX_SINGLE_DEFAULT,
    MAX_SINGLE_READ_DEFAULT,
    MAX_SINGLE_WRITE_DEFAULT,
    Buffer,
    BufferEventError,
    Event,
    FlushMode,
    Option,
    Trigger,
    socket_new,
)

DEFER = Option.DEFER_CALLBACKS
CLOSE = Option.CLOSE_ON_FREE


def stack_depth() -> int:
    """Frames between the caller and the bottom of its greenlet."""
    frame = sys._getframe(1)
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


# -- basic flow (libevent A1, A3) ----------------------------------------------


@pytest.mark.parametrize(
    "flush_mode", [None, FlushMode.NORMAL, FlushMode.FLUSH, FlushMode.FINISHED]
)
def test_transfer_8333_bytes(raw_sockets, run_until, flush_mode):
    """A1/A3: 8333 patterned bytes cross; flush on a socket is a no-op."""
    sock1, sock2 = raw_sockets.pair()
    bev1, bev2 = socket_new(sock1, CLOSE), socket_new(sock2, CLOSE)
    payload = bytes(i % 256 for i in range(8333))
    moved = Buffer()
    counts = {"read_done": 0, "write_empty": 0}
    events: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        if len(bev.input) == len(payload):
            bev.read_buffer(moved)
            bev.disable(EV_READ)
            counts["read_done"] += 1

    def writecb(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            counts["write_empty"] += 1

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        events.append(what)

    bev1.setcb(None, writecb, eventcb)
    bev2.setcb(readcb, None, eventcb)
    assert bev1.fileno() == sock1.fileno()
    assert bev1.get_underlying() is None
    assert bev1.getcb() == (None, writecb, eventcb, None)
    assert bev1.get_enabled() == EV_WRITE == 0x04
    bev2.enable(EV_READ)
    assert bev2.get_enabled() == EV_READ | EV_WRITE == 0x06

    bev1.write(payload)
    if flush_mode is not None:
        assert bev1.flush(EV_WRITE, flush_mode) == 0
    assert run_until(lambda: counts["read_done"] and counts["write_empty"])
    gevent.sleep(0.05)

    assert bytes(moved) == payload
    assert counts == {"read_done": 1, "write_empty": 1}  # libevent's count of 2
    assert events == []
    assert bev2.get_enabled() == EV_WRITE


def test_input_end_and_output_front_are_frozen(bev_pair):
    """The user may only remove from input and only append to output."""
    bev, _ = bev_pair
    assert bev.get_input() is bev.input
    assert bev.get_output() is bev.output
    with pytest.raises(BufferEventError):
        bev.input.add(b"x")
    assert len(bev.input) == 0
    bev.disable(EV_WRITE)
    bev.output.add(b"abc")  # appending is allowed
    with pytest.raises(BufferEventError):
        bev.output.drain(1)
    assert len(bev.output) == 3


# -- watermarks (libevent A7) ------------------------------------------------------


def test_watermarks_65000_bytes(bev_pair, run_until):
    """A7: read marks (10, 20) bound every read callback; write-low 100 gates
    every write callback."""
    bev1, bev2 = bev_pair
    assert bev1.getwatermark(EV_READ) == (0, 0)
    assert bev2.getwatermark(EV_WRITE) == (0, 0)
    bev2.setwatermark(EV_READ, 10, 20)
    bev1.setwatermark(EV_WRITE, 100, 2000)
    assert bev2.getwatermark(EV_READ) == (10, 20)
    assert bev1.getwatermark(EV_WRITE) == (100, 2000)
    with pytest.raises(ValueError, match="what"):
        bev1.getwatermark(EV_READ | EV_WRITE)

    read_lengths: list = []
    write_lengths: list = []
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        read_lengths.append(len(bev.input))
        received.extend(bev.read(len(bev.input)))

    def writecb(bev: Any, ctx: Any) -> None:
        write_lengths.append(len(bev.output))

    bev1.setcb(None, writecb, None)
    bev2.setcb(readcb, None, None)
    bev2.enable(EV_READ)
    payload = bytes(i * 7 % 251 for i in range(65000))
    bev1.write(payload)
    assert run_until(lambda: len(received) == len(payload) and write_lengths, 5)

    assert bytes(received) == payload
    assert read_lengths and all(10 <= n <= 20 for n in read_lengths)
    assert write_lengths and all(n <= 100 for n in write_lengths)


def test_read_high_watermark_pauses_and_resumes(bev_with_peer, run_until, record):
    """Reading stops at the high mark and resumes once the user drains,
    without any new socket data."""
    bev, peer = bev_with_peer
    rec = record(bev)
    bev.setwatermark(EV_READ, 0, 100)
    bev.enable(EV_READ)
    peer.sendall(b"a" * 1000)
    assert run_until(lambda: len(bev.input) == 100)
    gevent.sleep(0.1)
    assert len(bev.input) == 100
    assert rec.reads and max(rec.reads) == 100

    received = bytearray()
    while len(received) < 1000:
        assert run_until(lambda: len(bev.input) > 0)
        received += bev.read(len(bev.input))
    assert bytes(received) == b"a" * 1000
    assert max(rec.reads) <= 100


def test_setting_watermarks_never_runs_a_callback(bev_with_peer, run_until, record):
    bev, peer = bev_with_peer
    rec = record(bev)
    bev.setwatermark(EV_READ, 10, 0)
    bev.enable(EV_READ)
    peer.sendall(b"12345")
    assert run_until(lambda: len(bev.input) == 5)
    gevent.sleep(0.05)
    assert rec.reads == []
    bev.setwatermark(EV_READ, 0, 0)
    gevent.sleep(0.05)
    assert rec.reads == []
    peer.sendall(b"6")
    assert run_until(lambda: rec.reads == [6])


# -- timeouts (libevent A15, adapted by case C02) ----------------------------------


def test_timeouts_on_a_silent_peer(make_bev_with_peer):
    """A15 on a peer that never speaks nor reads: one READING|TIMEOUT at
    0.15 s, one WRITING|TIMEOUT 0.1 s after the kernel buffer filled; an idle
    bev with only EV_WRITE enabled and nothing queued never times out."""
    bev1, _peer1 = make_bev_with_peer()
    bev2, _peer2 = make_bev_with_peer()
    log: list = []

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        log.append((ctx, int(what), time.monotonic()))

    def datacb(name: str) -> Any:
        return lambda bev, ctx: log.append((ctx, name, time.monotonic()))

    bev1.setcb(datacb("read"), datacb("write"), eventcb, "bev1")
    bev2.setcb(datacb("read"), datacb("write"), eventcb, "bev2")

    start = time.monotonic()
    bev1.set_timeouts(read=0.15, write=0.1)
    bev1.enable(EV_READ | EV_WRITE)
    bev1.write(b"x" * (8 << 20))  # far more than the socket buffers hold
    # When did the kernel stop taking bytes?  Until then the write timer
    # keeps restarting.
    last, full_at = None, None
    while full_at is None and time.monotonic() - start < 1.0:
        gevent.sleep(0.002)
        if len(bev1.output) == last:
            full_at = time.monotonic()
        last = len(bev1.output)
    assert full_at is not None

    bev2.disable(EV_READ)
    bev2.set_timeouts(read=0.1, write=0.2)
    bev2.enable(EV_WRITE)
    gevent.sleep(0.5)

    bev1_log = [entry for entry in log if entry[0] == "bev1"]
    kinds = sorted(what for _, what, _ in bev1_log)
    assert kinds == [Event.READING | Event.TIMEOUT, Event.WRITING | Event.TIMEOUT]
    for _, what, when in bev1_log:
        if what & Event.READING:
            assert when - start == pytest.approx(0.15, abs=0.1)
        else:
            assert when - full_at == pytest.approx(0.1, abs=0.1)
    assert bev1.get_enabled() == 0
    assert len(bev1.output) > 0  # unsent bytes are kept

    # bev2: one write callback for enabling EV_WRITE on an idle connection,
    # and nothing else: no read timeout (reading is off), no write timeout
    # (nothing to write).
    assert [what for ctx, what, _ in log if ctx == "bev2"] == ["write"]


def test_read_timeout_restarts_on_each_arrival(bev_with_peer, record):
    bev, peer = bev_with_peer
    rec = record(bev, drain=True)
    bev.set_timeouts(read=0.2)
    bev.enable(EV_READ)
    for _ in range(5):
        gevent.sleep(0.1)
        peer.sendall(b"x")
    gevent.sleep(0.1)
    assert rec.events == []
    assert bytes(rec.received) == b"xxxxx"
    gevent.sleep(0.2)
    assert rec.events == [Event.READING | Event.TIMEOUT]
    assert bev.get_enabled() == EV_WRITE


# -- trigger / trigger_event (libevent A16) -----------------------------------------


@pytest.mark.parametrize(
    ("bev_options", "trigger_options"),
    [
        (0, 0),
        (DEFER, 0),
        (0, Trigger.DEFER_CALLBACKS),
        (DEFER, Trigger.DEFER_CALLBACKS),
    ],
    ids=["plain", "defer", "postpone", "defer-postpone"],
)
def test_trigger_respects_read_low_unless_told_not_to(
    make_bev_with_peer, run_until, bev_options, trigger_options
):
    """A16: with read-low = len + 1 a plain trigger does not run the read
    callback; IGNORE_WATERMARKS does, synchronously unless deferred; the
    event callback gets trigger_event's events unchanged."""
    bev, peer = make_bev_with_peer(bev_options)
    deferred = bool((bev_options | trigger_options) & DEFER)
    triggered = Event.READING | Event.EOF | Event.TIMEOUT
    log: list = []

    def second_readcb(bev: Any, ctx: Any) -> None:
        log.append("second read")
        bev.trigger_event(triggered, trigger_options)

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        log.append(("event", int(what)))

    def first_readcb(bev: Any, ctx: Any) -> None:
        log.append("first read")
        bev.setcb(second_readcb, None, eventcb)
        bev.setwatermark(EV_READ, len(bev.input) + 1, 0)
        bev.trigger(EV_READ, trigger_options)
        log.append("plain trigger returned")
        bev.trigger(EV_READ, trigger_options | Trigger.IGNORE_WATERMARKS)
        log.append("ignoring trigger returned")

    bev.setcb(first_readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(b"hello")
    assert run_until(lambda: len(log) >= 5)
    gevent.sleep(0.05)

    if deferred:
        assert log == [
            "first read",
            "plain trigger returned",
            "ignoring trigger returned",
            "second read",
            ("event", triggered),
        ]
    else:
        assert log == [
            "first read",
            "plain trigger returned",
            "second read",
            ("event", triggered),
            "ignoring trigger returned",
        ]


def test_trigger_ignores_enabled_directions(bev_pair, record):
    bev, _ = bev_pair
    rec = record(bev)
    bev.disable(EV_READ | EV_WRITE)
    bev.trigger(EV_READ)
    bev.trigger(EV_WRITE)
    assert rec.calls == [("read", 0), ("write", 0)]


def test_trigger_write_respects_write_low(bev_pair, record):
    bev, _ = bev_pair
    rec = record(bev)
    bev.disable(EV_WRITE)
    bev.write(b"abc")  # stays queued: writing is off
    bev.trigger(EV_WRITE)
    assert rec.writes == []
    bev.trigger(EV_WRITE, Trigger.IGNORE_WATERMARKS)
    assert rec.writes == [3]
    bev.setwatermark(EV_WRITE, 3, 0)
    bev.trigger(EV_WRITE)
    assert rec.writes == [3, 3]


def test_trigger_event_passes_all_bits(bev_pair, record):
    bev, _ = bev_pair
    rec = record(bev)
    bev.trigger_event(~0)
    assert rec.events == [-1]


def test_deferred_trigger_event_keeps_every_bit(make_bev_pair, run_until, record):
    """Deferred: CONNECTED alone first, then every other bit in one call."""
    bev, _ = make_bev_pair(DEFER)
    rec = record(bev)
    bev.trigger_event(~0)
    assert rec.events == []
    assert run_until(lambda: len(rec.events) >= 2)
    assert rec.events == [Event.CONNECTED, ~0 & ~0x80]


# -- deferred callbacks ---------------------------------------------------------------


def test_deferred_callbacks_run_in_libevent_order(make_bev_pair, run_until, record):
    """CONNECTED, then read, then write, then the other events OR-ed into one
    call, whatever order they were scheduled in."""
    bev, _ = make_bev_pair(DEFER)
    rec = record(bev)
    bev.trigger_event(Event.READING | Event.EOF)
    bev.trigger(EV_WRITE, Trigger.IGNORE_WATERMARKS)
    bev.trigger(EV_READ, Trigger.IGNORE_WATERMARKS)
    bev.trigger_event(Event.CONNECTED)
    bev.trigger_event(Event.WRITING | Event.TIMEOUT)
    assert rec.calls == []  # nothing runs inside the scheduling code
    assert run_until(lambda: len(rec.calls) >= 4)
    gevent.sleep(0.05)
    merged = Event.READING | Event.EOF | Event.WRITING | Event.TIMEOUT
    assert rec.calls == [
        ("event", Event.CONNECTED),
        ("read", 0),
        ("write", 0),
        ("event", merged),
    ]


def test_deferred_data_arrives_before_eof(make_bev_with_peer, run_until, record):
    bev, peer = make_bev_with_peer(DEFER)
    rec = record(bev, drain=True)
    bev.enable(EV_READ)
    peer.sendall(b"last words")
    peer.close()
    assert run_until(lambda: rec.events)
    gevent.sleep(0.05)
    assert bytes(rec.received) == b"last words"
    assert rec.events == [Event.READING | Event.EOF]
    assert rec.calls[-1] == ("event", Event.READING | Event.EOF)
    assert bev.get_enabled() == EV_WRITE


def test_free_silences_queued_callbacks(make_bev_pair, record):
    bev, _ = make_bev_pair(DEFER)
    rec = record(bev)
    bev.trigger(EV_READ | EV_WRITE, Trigger.IGNORE_WATERMARKS)
    bev.trigger_event(Event.EOF)
    bev.free()
    gevent.sleep(0.05)
    assert rec.calls == []


# -- callbacks do not nest or starve -------------------------------------------------


@pytest.mark.parametrize("options", [0, DEFER], ids=["immediate", "deferred"])
def test_ping_pong_keeps_the_stack_flat(make_bev_pair, options):
    """10,000 round trips where each read callback answers the other end."""
    bev1, bev2 = make_bev_pair(options)
    rounds = 10_000
    depths: set = set()
    received = [0]
    done = gevent.event.Event()

    def readcb(bev: Any, ctx: Any) -> None:
        depths.add(stack_depth())
        data = bev.read(len(bev.input))
        received[0] += len(data)
        if received[0] >= 2 * rounds:
            done.set()
        else:
            bev.write(data)

    for bev in (bev1, bev2):
        bev.setcb(readcb, None, None)
        bev.enable(EV_READ)
    bev1.write(b"x")
    assert done.wait(20)
    assert received[0] == 2 * rounds
    assert max(depths) - min(depths) <= 2, depths


class Ticker:
    """A greenlet counting its turns with ``gevent.sleep(0)``; ``max_gap`` is
    the longest wait between two turns, in seconds."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._stop = False
        self._glet = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop:
            self.ticks += 1
            gevent.sleep(0)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def stop(self) -> None:
        self._stop = True
        self._glet.join(1)


def test_ping_pong_does_not_starve_other_greenlets(bev_pair):
    bev1, bev2 = bev_pair
    round_trips = [0]

    def readcb(bev: Any, ctx: Any) -> None:
        data = bev.read(len(bev.input))
        if bev is bev1:
            round_trips[0] += 1
        bev.write(data)

    for bev in (bev1, bev2):
        bev.setcb(readcb, None, None)
        bev.enable(EV_READ)
    ticker = Ticker()
    bev1.write(b"x")
    gevent.sleep(0.5)
    ticker.stop()
    # A gevent.sleep(0) loop makes each hub iteration last a switch
    # interval, so few round trips fit; what matters is that both advance.
    assert ticker.ticks >= 100
    assert ticker.max_gap < 0.1
    assert round_trips[0] >= 5


#: Run in a child process: send to the inherited socket (fd in argv[1]) as
#: fast as possible, for at most 10 seconds or until the socket breaks.
BLASTER = """
import socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
chunk = b"b" * 65536
end = time.monotonic() + 10
try:
    while time.monotonic() < end:
        sock.sendall(chunk)
except OSError:
    pass
"""


@pytest.mark.parametrize("max_single_read", [0, 1024], ids=["default", "1024"])
def test_blasting_peer_does_not_starve_other_greenlets(raw_sockets, max_single_read):
    """A peer that always has data: a child process sending flat out, so
    every read could take its whole budget."""
    ours, theirs = socket.socketpair()
    raw_sockets.add(ours)
    raw_sockets.add(theirs)
    bev = socket_new(ours)
    bev.set_max_single_read(max_single_read)
    received = [0]

    def readcb(bev: Any, ctx: Any) -> None:
        received[0] += len(bev.read(len(bev.input)))

    bev.setcb(readcb, None, None)
    bev.enable(EV_READ)
    child = subprocess.Popen(
        [sys.executable, "-c", BLASTER, str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    try:
        theirs.close()
        deadline = time.monotonic() + 5
        while not received[0] and time.monotonic() < deadline:
            gevent.sleep(0.01)  # wait for the child to start sending
        assert received[0], "the blasting child never sent anything"
        ticker = Ticker()
        gevent.sleep(0.3)
        ticker.stop()
        got_while_ticking = received[0]
    finally:
        bev.free()
        child.kill()
        child.wait(5)
    assert ticker.ticks >= 100
    assert ticker.max_gap < 0.05, f"the ticker waited {ticker.max_gap:.3f} s"
    assert got_while_ticking >= 1 << 20


# -- callbacks and free --------------------------------------------------------------


def test_callback_exception_goes_to_hub_and_bev_goes_on(
    bev_with_peer, run_until, hub_errors
):
    bev, peer = bev_with_peer
    seen: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        seen.append(bev.read(100))
        if len(seen) == 1:
            raise RuntimeError("boom in readcb")

    bev.setcb(readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(b"one")
    assert run_until(lambda: hub_errors)
    peer.sendall(b"two")
    assert run_until(lambda: len(seen) == 2)
    assert seen == [b"one", b"two"]
    assert len(hub_errors) == 1
    context, exc = hub_errors[0]
    assert context is bev
    assert isinstance(exc, RuntimeError) and str(exc) == "boom in readcb"
    hub_errors.clear()


def test_free_from_own_read_callback(bev_with_peer, run_until):
    bev, peer = bev_with_peer
    calls: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        calls.append(bev.read(100))
        bev.free()

    bev.setcb(readcb, None, lambda *args: calls.append(args))
    bev.enable(EV_READ)
    peer.sendall(b"bye")
    assert run_until(lambda: bev.freed)
    assert peer.recv(10) == b""  # CLOSE_ON_FREE closed our end
    gevent.sleep(0.05)
    assert calls == [b"bye"]


def test_close_on_free_closes_the_socket(raw_sockets):
    ours, theirs = raw_sockets.pair()
    bev = socket_new(ours, CLOSE)
    bev.free()
    assert ours.fileno() == -1
    assert theirs.recv(10) == b""


def test_without_close_on_free_the_socket_survives(raw_sockets):
    ours, theirs = raw_sockets.pair()
    bev = socket_new(ours)
    bev.write(b"via bev")
    assert theirs.recv(100) == b"via bev"
    bev.free()
    assert bev.fileno() == -1
    ours.sendall(b"still open")
    assert theirs.recv(100) == b"still open"


def test_free_twice_is_harmless(bev_pair):
    bev, _ = bev_pair
    bev.free()
    bev.free()
    assert bev.freed


def test_context_manager_frees(raw_sockets):
    ours, theirs = raw_sockets.pair()
    with socket_new(ours, CLOSE) as bev:
        assert not bev.freed
    assert bev.freed
    assert theirs.recv(10) == b""


FREED_OPERATIONS = {
    "write": lambda bev: bev.write(b"x"),
    "write_buffer": lambda bev: bev.write_buffer(Buffer()),
    "read": lambda bev: bev.read(1),
    "read_buffer": lambda bev: bev.read_buffer(Buffer()),
    "enable": lambda bev: bev.enable(EV_READ),
    "disable": lambda bev: bev.disable(EV_READ),
    "setcb": lambda bev: bev.setcb(None, None, None),
    "setwatermark": lambda bev: bev.setwatermark(EV_READ, 0, 0),
    "set_timeouts": lambda bev: bev.set_timeouts(1.0, 1.0),
    "flush": lambda bev: bev.flush(EV_WRITE, FlushMode.FLUSH),
    "trigger": lambda bev: bev.trigger(EV_READ),
    "trigger_event": lambda bev: bev.trigger_event(Event.EOF),
    "connect": lambda bev: bev.connect(("127.0.0.1", 9)),
    "connect_hostname": lambda bev: bev.connect_hostname("localhost", 9),
    "shutdown_write": lambda bev: bev.shutdown_write(),
    "getpeername": lambda bev: bev.getpeername(),
    "set_max_single_read": lambda bev: bev.set_max_single_read(100),
    "set_max_single_write": lambda bev: bev.set_max_single_write(100),
}
_FREED_BUGS: dict = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=_FREED_BUGS[name])]
            if name in _FREED_BUGS
            else [],
        )
        for name in FREED_OPERATIONS
    ],
)
def test_operation_on_freed_bev_raises(bev_pair, name):
    bev, _ = bev_pair
    bev.free()
    with pytest.raises(BufferEventError, match="freed"):
        FREED_OPERATIONS[name](bev)


# -- sizes and options (catalogue section G) ------------------------------------------


def test_max_single_read_and_write_default_to_64k(bev_pair):
    """geventbev's default is 64 KiB (libevent: 16 KiB; see constants.py for
    the measurement behind the departure), and libevent's value can be set."""
    bev, _ = bev_pair
    assert bev.get_max_single_read() == MAX_SINGLE_READ_DEFAULT == 65536
    assert bev.get_max_single_write() == MAX_SINGLE_WRITE_DEFAULT == 65536
    bev.set_max_single_read(LIBEVENT_MAX_SINGLE_DEFAULT)
    assert bev.get_max_single_read() == 16384


def test_max_single_zero_or_huge_restores_the_default(bev_pair):
    bev, _ = bev_pair
    defaults = (bev.get_max_single_read(), bev.get_max_single_write())
    bev.set_max_single_read(100)
    bev.set_max_single_write(200)
    assert (bev.get_max_single_read(), bev.get_max_single_write()) == (100, 200)
    bev.set_max_single_read(0)
    bev.set_max_single_write(0)
    assert (bev.get_max_single_read(), bev.get_max_single_write()) == defaults
    bev.set_max_single_read(100)
    bev.set_max_single_read(EV_SSIZE_MAX + 1)
    bev.set_max_single_write(EV_SSIZE_MAX + 1)
    assert (bev.get_max_single_read(), bev.get_max_single_write()) == defaults
    bev.set_max_single_read(EV_SSIZE_MAX)
    assert bev.get_max_single_read() == EV_SSIZE_MAX


def test_max_single_read_caps_each_read(bev_with_peer, run_until, record):
    bev, peer = bev_with_peer
    rec = record(bev, drain=True)
    bev.set_max_single_read(100)
    bev.enable(EV_READ)
    peer.sendall(b"m" * 1000)
    assert run_until(lambda: len(rec.received) == 1000)
    assert len(rec.reads) >= 10
    assert max(rec.reads) <= 100


@pytest.mark.parametrize("options", [0, DEFER], ids=["immediate", "deferred"])
def test_enable_write_on_idle_connection_gives_one_write_callback(
    make_bev_pair, record, options
):
    bev, _ = make_bev_pair(options)
    rec = record(bev)
    gevent.sleep(0.05)
    assert rec.calls == []
    bev.enable(EV_WRITE)
    gevent.sleep(0.1)
    assert rec.calls == [("write", 0)]


def test_unlock_callbacks_requires_defer_callbacks(raw_sockets):
    ours, _ = raw_sockets.pair()
    with pytest.raises(ValueError, match="UNLOCK_CALLBACKS"):
        socket_new(ours, Option.UNLOCK_CALLBACKS)
    bev = socket_new(ours, Option.UNLOCK_CALLBACKS | DEFER)
    assert bev.get_options() == Option.UNLOCK_CALLBACKS | DEFER


# -- libevent A21: read with a frozen input front ---------------------------------


def test_read_with_frozen_input_front_loses_nothing(bev_with_peer, run_until):
    """A21: after freezing the input's front, read raises instead of libevent's
    silent 0, and the byte is still there once unfrozen."""
    bev, peer = bev_with_peer
    log: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        log.append(len(bev.input))
        log.append(bev.read(8))
        bev.input.freeze(True)
        try:
            with pytest.raises(BufferEventError, match="frozen"):
                bev.read(1)
            log.append(len(bev.input))
        finally:
            bev.input.unfreeze(True)
        log.append(bev.read(1))

    bev.setcb(readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(b"test data")
    assert run_until(lambda: len(log) == 4)
    assert log == [9, b"test dat", 1, b"a"]


def test_eof_reports_reading_eof_and_disables_read(bev_with_peer, run_until, record):
    bev, peer = bev_with_peer
    rec = record(bev, drain=True)
    bev.enable(EV_READ)
    peer.sendall(b"data")
    peer.shutdown(socket.SHUT_WR)
    assert run_until(lambda: rec.events)
    gevent.sleep(0.05)
    assert rec.received == b"data"
    assert rec.events == [0x11]
    assert bev.get_enabled() == EV_WRITE
    # Writing still works after the peer's half-close.
    bev.write(b"reply")
    assert peer.recv(10) == b"reply"


def test_write_to_a_closed_peer_reports_writing_error(bev_with_peer, run_until, record):
    bev, peer = bev_with_peer
    rec = record(bev)
    peer.close()
    bev.write(b"0123456789")
    assert run_until(lambda: rec.events)
    gevent.sleep(0.05)
    assert rec.calls == [("event", Event.WRITING | Event.ERROR)]
    assert isinstance(bev.get_error(), BrokenPipeError)
    assert not bev.get_enabled() & EV_WRITE
    assert len(bev.output) == 10  # unsent bytes are kept


def test_write_never_runs_a_callback_inline(bev_pair, run_until, record):
    """Callbacks cannot nest through write(): the write callback comes later,
    from the loop, even when the bytes left at once."""
    bev, other = bev_pair
    rec = record(bev)
    bev.write(b"now")
    assert rec.calls == []
    assert run_until(lambda: rec.writes == [0])
    assert other.read_exactly(3, timeout=1) == b"now"


# -- bad arguments --------------------------------------------------------------------


def case(name: str, exc: type, match: str, call: Any, bug: str = "") -> Any:
    """One bad call: ``call(bev)`` must raise ``exc`` matching ``match``;
    ``bug`` marks a known library bug (strict xfail)."""
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(exc, match, call, id=name, marks=marks)


R, W = EV_READ, EV_WRITE

BAD_CALLS = [
    case("wm-low", ValueError, "low", lambda b: b.setwatermark(R, -1, 0)),
    case("wm-high", ValueError, "high", lambda b: b.setwatermark(R, 0, -1)),
    case("wm-what-0", ValueError, "what", lambda b: b.setwatermark(0, 0, 0)),
    case("wm-what-8", ValueError, "what", lambda b: b.setwatermark(8, 0, 0)),
    case("wm-what-str", TypeError, "what", lambda b: b.setwatermark("r", 0, 0)),
    case("wm-low-str", TypeError, "low", lambda b: b.setwatermark(R, "1", 0)),
    case("wm-low-float", TypeError, "low", lambda b: b.setwatermark(R, 1.5, 0)),
    case("getwm-both", ValueError, "what", lambda b: b.getwatermark(R | W)),
    case("enable-0", ValueError, "what", lambda b: b.enable(0)),
    case("enable-8", ValueError, "what", lambda b: b.enable(8)),
    case("enable-str", TypeError, "what", lambda b: b.enable("read")),
    case("enable-none", TypeError, "what", lambda b: b.enable(None)),
    case("disable-0x10", ValueError, "what", lambda b: b.disable(0x10)),
    case("disable-str", TypeError, "what", lambda b: b.disable("read")),
    case("timeouts-read-neg", ValueError, "read", lambda b: b.set_timeouts(-1)),
    case("timeouts-write-neg", ValueError, "write", lambda b: b.set_timeouts(0, -0.5)),
    case("timeouts-read-str", TypeError, "read", lambda b: b.set_timeouts("1")),
    case("timeouts-nan", ValueError, "read", lambda b: b.set_timeouts(float("nan"))),
    case("timeouts-bool", TypeError, "write", lambda b: b.set_timeouts(None, True)),
    case("trigger-what-8", ValueError, "what", lambda b: b.trigger(8)),
    case("trigger-what-str", TypeError, "what", lambda b: b.trigger("r")),
    case("trigger-options-1", ValueError, "options", lambda b: b.trigger(R, 1)),
    case(
        "trigger-options-high",
        ValueError,
        "options",
        lambda b: b.trigger(R, 1 << 17),
    ),
    case("trigger-options-str", ValueError, "options", lambda b: b.trigger(R, "x")),
    case("trigger_event-str", TypeError, "events", lambda b: b.trigger_event("eof")),
    case(
        "trigger_event-options",
        ValueError,
        "options",
        lambda b: b.trigger_event(Event.EOF, 1),
    ),
    case("flush-what-8", ValueError, "what", lambda b: b.flush(8)),
    case("flush-what-str", TypeError, "what", lambda b: b.flush("w")),
    case("flush-mode-7", ValueError, "mode", lambda b: b.flush(W, 7)),
    case("flush-mode-str", ValueError, "mode", lambda b: b.flush(W, "x")),
    case("max_read-neg", ValueError, "n", lambda b: b.set_max_single_read(-1)),
    case("max_read-str", TypeError, "n", lambda b: b.set_max_single_read("1")),
    case("max_write-neg", ValueError, "n", lambda b: b.set_max_single_write(-1)),
    case("max_write-float", TypeError, "n", lambda b: b.set_max_single_write(1.0)),
    case("read-neg", ValueError, "n", lambda b: b.read(-1)),
    case("read-str", TypeError, "n", lambda b: b.read("1")),
    case("read-none", TypeError, "n", lambda b: b.read(None)),
    case("write-str", TypeError, "data", lambda b: b.write("text")),
    case("write-int", TypeError, "data", lambda b: b.write(5)),
    case("write-none", TypeError, "data", lambda b: b.write(None)),
    case("write_buffer-bytes", TypeError, "buf", lambda b: b.write_buffer(b"x")),
    case("read_buffer-bytes", TypeError, "buf", lambda b: b.read_buffer(b"x")),
    case("setcb-readcb", TypeError, "readcb", lambda b: b.setcb(1, None, None)),
    case("setcb-writecb", TypeError, "writecb", lambda b: b.setcb(None, "x", None)),
    case("setcb-eventcb", TypeError, "eventcb", lambda b: b.setcb(None, None, 3)),
]


@pytest.mark.parametrize(("exc", "match", "call"), BAD_CALLS)
def test_bad_argument(bev_pair, exc, match, call):
    bev, _ = bev_pair
    with pytest.raises(exc, match=match):
        call(bev)
    assert not bev.freed


def test_bad_argument_changes_nothing(bev_pair):
    bev, _ = bev_pair
    bev.setwatermark(EV_READ, 5, 50)
    with pytest.raises(ValueError):
        bev.setwatermark(EV_READ, 1, -1)
    assert bev.getwatermark(EV_READ) == (5, 50)
    with pytest.raises(ValueError):
        bev.enable(0)
    assert bev.get_enabled() == EV_WRITE


@pytest.mark.parametrize(
    ("exc", "match", "call"),
    [
        case(
            "options-unknown",
            ValueError,
            "options",
            lambda: socket_new(None, 0x100),
        ),
        case("options-str", TypeError, "options", lambda: socket_new(None, "x")),
        case(
            "unlock-without-defer",
            ValueError,
            "UNLOCK_CALLBACKS",
            lambda: socket_new(None, Option.UNLOCK_CALLBACKS),
        ),
        case("sock-str", TypeError, "sock", lambda: socket_new("x")),
        case("sock-float", TypeError, "sock", lambda: socket_new(1.5)),
        case("sock-negative", ValueError, "sock", lambda: socket_new(-5)),
        case("base-int", TypeError, "base", lambda: socket_new(None, base=3)),
    ],
)
def test_socket_new_bad_argument(exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_socket_new_rejects_datagram_and_closed_sockets():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="sock"):
            socket_new(udp)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError, match="sock"):
        socket_new(closed)


@pytest.mark.parametrize(
    ("exc", "match", "call"),
    [
        case("int", TypeError, "address", lambda b: b.connect(5)),
        case("short-tuple", TypeError, "address", lambda b: b.connect(("127.0.0.1",))),
        case(
            "port-70000",
            ValueError,
            "port",
            lambda b: b.connect(("127.0.0.1", 70000)),
        ),
        case(
            "port-negative",
            ValueError,
            "port",
            lambda b: b.connect(("127.0.0.1", -1)),
        ),
        case(
            "port-0",
            ValueError,
            "port",
            lambda b: b.connect(("127.0.0.1", 0)),
        ),
        case(
            "port-str",
            TypeError,
            "port",
            lambda b: b.connect(("127.0.0.1", "80")),
        ),
    ],
)
def test_connect_bad_address(exc, match, call):
    bev = socket_new()
    with pytest.raises(exc, match=match):
        call(bev)
    assert bev.fileno() == -1  # no half-made socket is left behind


@pytest.mark.parametrize(
    ("exc", "match", "call"),
    [
        case(
            "port-0", ValueError, "port", lambda b: b.connect_hostname("localhost", 0)
        ),
        case(
            "port-70000",
            ValueError,
            "port",
            lambda b: b.connect_hostname("localhost", 70000),
        ),
        case(
            "port-str",
            ValueError,
            "port",
            lambda b: b.connect_hostname("localhost", "80"),
        ),
        case(
            "family-unix",
            ValueError,
            "family",
            lambda b: b.connect_hostname("localhost", 80, socket.AF_UNIX),
        ),
        case(
            "family-bogus",
            ValueError,
            "family",
            lambda b: b.connect_hostname("localhost", 80, 12345),
        ),
        case("host-int", TypeError, "host", lambda b: b.connect_hostname(5, 80)),
        case("host-empty", TypeError, "host", lambda b: b.connect_hostname("", 80)),
    ],
)
def test_connect_hostname_bad_argument(exc, match, call, record):
    bev = socket_new()
    rec = record(bev)
    with pytest.raises(exc, match=match):
        call(bev)
    gevent.sleep(0.02)
    assert rec.calls == []  # no lookup was started
