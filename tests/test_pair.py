"""Paired bufferevents: two ends joined in memory.

Ports of libevent's pair scenarios (A2, A4, A5, A8, A15, A19 of
reference/libevent-regress.md, case C06) asserting geventbev's values, and
the promises pair.py makes of its own: callbacks that never nest, watermark
backpressure, unlinking on free, timeouts as pure timers, and the blocking
style and ``BufferEventSocket`` running over a pair.
"""

from __future__ import annotations

import http.client
import sys
import time
from typing import Any

import gevent
import gevent.event
import pytest

import geventbev
from geventbev import (
    EV_READ,
    EV_WRITE,
    Buffer,
    BufferEventError,
    BufferEventSocket,
    Event,
    FlushMode,
    IncompleteReadError,
    Option,
    PairBufferEvent,
    event2,
    filter_new,
    pair_new,
    socket_new,
)

DEFER = Option.DEFER_CALLBACKS
READ_EOF = Event.READING | Event.EOF  # 0x11


def patterned(n: int) -> bytes:
    """``n`` bytes whose value depends on their position."""
    return bytes(i * 7 % 251 for i in range(n))


class Log:
    """Records every callback of one or more bufferevents, by name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def attach(self, bev: Any, name: str, drain: bool = False) -> None:
        """Install all three callbacks on ``bev``; ``drain`` empties the
        input in the read callback (what it removed is not kept)."""

        def readcb(b: Any, ctx: Any) -> None:
            self.calls.append((name, "read", len(b.input)))
            if drain:
                b.read(len(b.input))

        def writecb(b: Any, ctx: Any) -> None:
            self.calls.append((name, "write", len(b.output)))

        def eventcb(b: Any, events: int, ctx: Any) -> None:
            self.calls.append((name, "event", int(events)))

        bev.setcb(readcb, writecb, eventcb)

    def of(self, name: str, kind: str | None = None) -> list:
        return [
            (k, v) if kind is None else v
            for n, k, v in self.calls
            if n == name and (kind is None or k == kind)
        ]


# -- libevent A2, A4, A5: basic flow and flush modes --------------------------


def test_a2_pair_moves_8333_bytes(run_until):
    """A2: no fd, no underlying, each end the other's partner; the read
    callback gets the payload once and its ctx; freeing one end unlinks."""
    bev1, bev2 = pair_new()
    payload = patterned(8333)
    moved = Buffer()
    seen: dict = {"read": 0, "write_empty": 0, "ctx_ok": True, "events": []}

    def readcb(bev: Any, ctx: Any) -> None:
        seen["ctx_ok"] &= ctx is bev2
        if len(bev.input) == len(payload):
            bev.read_buffer(moved)
            bev.disable(EV_READ)
            seen["read"] += 1

    def writecb(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            seen["write_empty"] += 1

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        seen["events"].append(int(what))

    bev1.setcb(None, writecb, eventcb)
    bev2.setcb(readcb, None, eventcb, bev2)
    assert isinstance(bev1, PairBufferEvent)
    assert bev1.fileno() == bev2.fileno() == -1
    assert bev1.get_underlying() is None
    assert bev1.get_partner() is bev2 and bev2.get_partner() is bev1
    assert bev2.getcb() == (readcb, None, eventcb, bev2)
    assert bev1.connected and bev2.connected
    bev2.enable(EV_READ)

    bev1.write(payload)
    # Pair callbacks are always deferred: nothing ran inside write().
    assert seen["read"] == 0 and seen["write_empty"] == 0
    assert run_until(lambda: seen["read"] and seen["write_empty"])
    gevent.sleep(0.02)
    assert bytes(moved) == payload
    assert seen == {"read": 1, "write_empty": 1, "ctx_ok": True, "events": []}

    bev2.free()
    assert bev1.get_partner() is None


@pytest.mark.parametrize("mode", [FlushMode.NORMAL, FlushMode.FLUSH])
def test_a4_flush_after_the_transfer_changes_nothing(run_until, mode):
    """A4: the bytes already moved in write(), so flush has nothing to do
    (returns 0) and the callbacks run exactly as without it."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev1, "bev1")
    log.attach(bev2, "bev2", drain=True)
    bev2.enable(EV_READ)
    bev1.write(patterned(8333))
    assert bev1.flush(EV_WRITE, mode) == 0
    assert run_until(lambda: len(log.calls) >= 2)
    gevent.sleep(0.02)
    assert log.calls == [("bev2", "read", 8333), ("bev1", "write", 0)]


def test_a5_flush_finished_orders_read_eof_then_writer():
    """A5: FINISHED gives the partner EOF|READING; the partner's slot runs
    first (read, then event), then the writer's write callback."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev1, "bev1")
    log.attach(bev2, "bev2", drain=True)
    bev2.enable(EV_READ)
    bev1.write(patterned(8333))
    assert bev1.flush(EV_WRITE, FlushMode.FINISHED) == 0
    assert log.calls == []
    gevent.sleep(0.05)
    assert log.calls == [
        ("bev2", "read", 8333),
        ("bev2", "event", READ_EOF),
        ("bev1", "write", 0),
    ]


# -- libevent A19 and case C06: FINISHED, FLUSH, NORMAL -----------------------


def test_a19_finished_on_idle_pair_gives_exactly_reading_eof():
    """A19: nothing queued; the partner gets one EOF|READING (0x11) and no
    read callback, since no bytes moved (libevent runs one anyway)."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    bev1.enable(EV_WRITE)
    bev2.enable(EV_READ)
    assert bev1.flush(EV_WRITE, FlushMode.FINISHED) == 0
    gevent.sleep(0.05)
    assert log.calls == [("bev2", "event", 0x11)]


def test_finished_leaves_the_partners_directions_alone():
    """As in libevent, the EOF a pair flush gives is only an event: the
    partner keeps reading and receives what is written afterwards."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    bev2.enable(EV_READ)
    bev1.flush(EV_WRITE, FlushMode.FINISHED)
    gevent.sleep(0.02)
    assert log.of("bev2", "event") == [READ_EOF]
    assert bev2.get_enabled() == EV_READ | EV_WRITE
    bev1.write(b"more")
    assert bytes(bev2.input) == b"more"


def test_c06_flush_ignores_the_read_high_watermark():
    """C06: read-high 1000 holds 4000 bytes back; FLUSH moves them all;
    NORMAL then has nothing left and changes nothing."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    bev2.enable(EV_READ)
    bev2.setwatermark(EV_READ, 0, 1000)
    bev1.write(b"c" * 5000)
    assert (len(bev2.input), len(bev1.output)) == (1000, 4000)
    assert bev1.flush(EV_WRITE, FlushMode.FLUSH) == 1
    assert (len(bev2.input), len(bev1.output)) == (5000, 0)
    assert bev1.flush(EV_WRITE, FlushMode.NORMAL) == 0
    assert (len(bev2.input), len(bev1.output)) == (5000, 0)
    gevent.sleep(0.02)
    assert log.of("bev2", "event") == []


def test_flush_normal_also_forces_the_transfer():
    """geventbev departs from libevent on purpose: NORMAL moves what the
    watermark held back, as the book says (libevent: a no-op)."""
    bev1, bev2 = pair_new()
    bev2.enable(EV_READ)
    bev2.setwatermark(EV_READ, 0, 10)
    bev1.write(b"n" * 100)
    assert len(bev1.output) == 90
    assert bev1.flush(EV_WRITE, FlushMode.NORMAL) == 1
    assert (len(bev2.input), len(bev1.output)) == (100, 0)


def test_flush_moves_to_a_partner_that_is_not_reading():
    """A forced transfer skips the enabled check of both ends."""
    bev1, bev2 = pair_new()
    bev1.disable(EV_WRITE)
    bev1.write(b"abc")
    assert bev2.get_enabled() == EV_WRITE  # reading is off by default
    assert bev1.flush(EV_WRITE, FlushMode.FLUSH) == 1
    assert bytes(bev2.input) == b"abc"
    assert len(bev1.output) == 0


def test_flush_read_pulls_from_the_partner():
    bev1, bev2 = pair_new()
    bev2.write(b"pull me")  # bev1 does not read: it stays in bev2
    assert len(bev2.output) == 7
    assert bev1.flush(EV_READ, FlushMode.FLUSH) == 1
    assert bytes(bev1.input) == b"pull me"
    assert len(bev2.output) == 0


def test_flush_read_finished_gives_partner_writing_eof():
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    assert bev1.flush(EV_READ, FlushMode.FINISHED) == 0
    gevent.sleep(0.02)
    assert log.calls == [("bev2", "event", Event.WRITING | Event.EOF)]


@pytest.mark.parametrize("mode", list(FlushMode))
def test_flush_with_nothing_pending_runs_no_read_callback(mode):
    """geventbev departs from libevent on purpose: no read callback when
    no bytes moved."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    bev2.enable(EV_READ)
    assert bev1.flush(EV_READ | EV_WRITE, mode) == 0
    gevent.sleep(0.02)
    assert log.of("bev2", "read") == []


# -- libevent A8: watermarks --------------------------------------------------


def test_a8_watermarks_over_a_pair(run_until):
    """A8: read marks (10, 20) bound every read callback; write-low 100
    gates every write callback; 65000 bytes arrive intact."""
    bev1, bev2 = pair_new()
    assert bev1.getwatermark(EV_READ) == (0, 0)
    assert bev2.getwatermark(EV_WRITE) == (0, 0)
    bev2.setwatermark(EV_READ, 10, 20)
    bev1.setwatermark(EV_WRITE, 100, 2000)
    assert bev2.getwatermark(EV_READ) == (10, 20)
    assert bev1.getwatermark(EV_WRITE) == (100, 2000)
    reads: list = []
    writes: list = []
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        reads.append(len(bev.input))
        received.extend(bev.read(len(bev.input)))

    bev1.setcb(None, lambda bev, ctx: writes.append(len(bev.output)), None)
    bev2.setcb(readcb, None, None)
    bev2.enable(EV_READ)
    payload = patterned(65000)
    bev1.write(payload)
    assert run_until(lambda: len(received) == len(payload) and writes, 5)
    assert bytes(received) == payload
    assert reads and all(10 <= n <= 20 for n in reads)
    assert writes and all(n <= 100 for n in writes)


def test_read_high_stops_delivery_and_draining_resumes_it():
    bev1, bev2 = pair_new()
    bev2.setwatermark(EV_READ, 0, 50)
    bev2.enable(EV_READ)
    payload = patterned(500)
    bev1.write(payload)
    gevent.sleep(0.02)
    assert (len(bev2.input), len(bev1.output)) == (50, 450)
    received = bev2.read(20)
    # The drain itself pulls the next bytes, up to the mark again.
    assert (len(bev2.input), len(bev1.output)) == (50, 430)
    while len(received) < len(payload):
        chunk = bev2.read(len(bev2.input))
        assert chunk
        received += chunk
    assert received == payload
    assert len(bev1.output) == 0


def test_sender_write_low_gates_its_write_callback():
    bev1, bev2 = pair_new()
    writes: list = []
    bev1.setwatermark(EV_WRITE, 100, 0)
    bev1.setcb(None, lambda bev, ctx: writes.append(len(bev.output)), None)
    bev2.setwatermark(EV_READ, 0, 50)
    bev2.enable(EV_READ)
    bev1.write(b"w" * 500)
    gevent.sleep(0.02)
    assert writes == []  # 450 bytes still wait
    received = 0
    for _ in range(100):
        if received >= 500:
            break
        received += len(bev2.read(30))
        gevent.sleep(0.002)
    gevent.sleep(0.02)
    assert received == 500
    assert writes and all(n <= 100 for n in writes)
    assert writes[-1] == 0


# -- bytes both ways, options, enable/disable ---------------------------------


def test_bytes_flow_both_ways():
    bev1, bev2 = pair_new()
    bev1.enable(EV_READ)
    bev2.enable(EV_READ)
    bev1.write(b"to two ")
    bev1.write(bytearray(b"as bytearray "))
    bev1.write(memoryview(b"as memoryview"))
    extra = Buffer()
    extra.add(b" and a buffer")
    bev1.write_buffer(extra)
    bev2.write(b"to one")
    assert bytes(bev2.input) == b"to two as bytearray as memoryview and a buffer"
    assert len(extra) == 0
    assert bytes(bev1.input) == b"to one"


def test_enable_and_disable_hold_and_release_bytes():
    bev1, bev2 = pair_new()
    bev2.enable(EV_READ)
    bev2.disable(EV_READ)
    bev1.write(b"held")
    assert (len(bev1.output), len(bev2.input)) == (4, 0)
    bev2.enable(EV_READ)  # enabling reading pulls
    assert (len(bev1.output), bytes(bev2.input)) == (0, b"held")
    bev1.disable(EV_WRITE)
    bev1.write(b"+more")
    assert len(bev1.output) == 5
    bev1.enable(EV_WRITE)  # enabling writing pushes
    assert bytes(bev2.input) == b"held+more"
    assert bev2.get_enabled() == EV_READ | EV_WRITE


OPTION_SETS = {
    "none": 0,
    "threadsafe": Option.THREADSAFE,
    "defer": DEFER,
    "unlock-defer": Option.UNLOCK_CALLBACKS | DEFER,
    "unlock-alone": Option.UNLOCK_CALLBACKS,  # valid: DEFER is always added
    "close-threadsafe": Option.CLOSE_ON_FREE | Option.THREADSAFE,
}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_options_are_accepted_and_defer_is_always_set(options, run_until):
    bev1, bev2 = pair_new(options)
    for bev in (bev1, bev2):
        assert bev.get_options() == Option(options) | DEFER
    log = Log()
    log.attach(bev1, "bev1", drain=True)
    log.attach(bev2, "bev2", drain=True)
    bev1.enable(EV_READ)
    bev2.enable(EV_READ)
    bev1.write(b"ping")
    bev2.write(b"pong!")
    assert log.calls == []  # deferred, whatever the options said
    assert run_until(lambda: len(log.of("bev1", "read")) and log.of("bev2", "read"))
    assert log.of("bev2", "read") == [4]
    assert log.of("bev1", "read") == [5]


def test_close_on_free_does_not_free_the_partner():
    bev1, bev2 = pair_new(Option.CLOSE_ON_FREE)
    bev1.free()
    assert not bev2.freed
    bev2.write(b"still usable")
    assert len(bev2.output) == 12


@pytest.mark.parametrize(
    ("options", "exc"),
    [
        pytest.param(0x100, ValueError, id="unknown-bit"),
        pytest.param(
            "x",
            TypeError,
            id="str",
        ),
        pytest.param(
            None,
            TypeError,
            id="none",
        ),
        pytest.param(
            1.0,
            TypeError,
            id="float",
        ),
    ],
)
def test_pair_new_rejects_bad_options(options, exc):
    with pytest.raises(exc, match="options"):
        pair_new(options)


def test_pair_new_rejects_a_bad_base():
    with pytest.raises(TypeError, match="base"):
        pair_new(base=3)
    assert event2.bufferevent_pair_new(None, 0x100) is None


# -- callbacks never nest -----------------------------------------------------


def frames_below() -> int:
    """How many frames are under the caller in its greenlet."""
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def test_ten_thousand_ping_pongs_neither_recurse_nor_starve(hub_errors):
    """Each read callback writes back to its partner; the chain is a loop
    in the callback greenlet, so the stack stays flat and a ticker keeps
    its turns."""
    bev1, bev2 = pair_new()
    rounds = 10_000
    state = {"reads": 0}
    depths: set = set()
    done = gevent.event.Event()
    ticks = [0]

    def readcb(bev: Any, ctx: Any) -> None:
        depths.add(frames_below())
        data = bev.read(len(bev.input))
        state["reads"] += 1
        if state["reads"] >= 2 * rounds:
            done.set()
        else:
            bev.write(data)

    def ticker() -> None:
        while not done.is_set():
            ticks[0] += 1
            gevent.sleep(0)

    for bev in (bev1, bev2):
        bev.setcb(readcb, None, None)
        bev.enable(EV_READ)
    glet = gevent.spawn(ticker)
    gevent.sleep(0)
    ticks_before = ticks[0]
    bev1.write(b"x")
    finished = done.wait(10)
    glet.join(1)
    assert finished, f"only {state['reads']} reads"
    assert state["reads"] == 2 * rounds
    assert hub_errors == []  # no RecursionError escaped a callback
    assert max(depths) - min(depths) <= 2, depths
    assert ticks[0] - ticks_before >= 100


# -- freeing one end ----------------------------------------------------------


def test_freeing_one_end_only_unlinks_the_other():
    """No event on the survivor (as in libevent); its writes accumulate,
    reach nobody, and flush reports -1 in every mode."""
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev1, "bev1")
    log.attach(bev2, "bev2")
    bev1.enable(EV_READ)
    bev2.enable(EV_READ)
    bev2.free()
    assert bev1.get_partner() is None
    assert event2.bufferevent_pair_get_partner(bev1) is None
    bev1.write(b"into the void")
    bev1.write(b"!")
    assert len(bev1.output) == 14
    for mode in FlushMode:
        for what in (EV_READ, EV_WRITE, EV_READ | EV_WRITE):
            with pytest.raises(BufferEventError, match="unlinked"):
                bev1.flush(what, mode)
    assert event2.bufferevent_flush(bev1, EV_WRITE, FlushMode.FLUSH) == -1
    gevent.sleep(0.05)
    assert log.calls == []
    assert len(bev1.output) == 14
    assert bev1.get_enabled() == EV_READ | EV_WRITE


def test_freeing_an_end_silences_its_queued_callbacks():
    bev1, bev2 = pair_new()
    log = Log()
    log.attach(bev2, "bev2")
    bev2.enable(EV_READ)
    bev1.write(b"queued a read callback")
    bev1.flush(EV_WRITE, FlushMode.FINISHED)  # and an event
    bev2.free()
    gevent.sleep(0.02)
    assert log.calls == []


def test_freed_end_refuses_operations():
    bev1, bev2 = pair_new()
    bev1.free()
    with pytest.raises(BufferEventError, match="freed"):
        bev1.write(b"x")
    with pytest.raises(BufferEventError, match="freed"):
        bev1.flush(EV_WRITE, FlushMode.FLUSH)
    with pytest.raises(BufferEventError, match="freed"):
        bev1.shutdown_write()
    assert bev1.get_partner() is None


def test_free_an_end_inside_its_partners_read_callback(run_until):
    bev1, bev2 = pair_new()
    seen: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        seen.append(bev.read(100))
        bev.get_partner().free()
        seen.append(bev.get_partner())

    bev2.setcb(readcb, None, lambda *args: seen.append(args))
    log = Log()
    log.attach(bev1, "bev1")
    bev2.enable(EV_READ)
    bev1.write(b"bye")
    assert run_until(lambda: bev1.freed)
    bev2.write(b"after")
    gevent.sleep(0.02)
    assert seen == [b"bye", None]
    assert log.calls == []  # bev1's queued write callback never ran
    assert len(bev2.output) == 5


def test_free_the_reader_inside_the_writers_write_callback(run_until):
    bev1, bev2 = pair_new()
    order: list = []

    def writecb(bev: Any, ctx: Any) -> None:
        order.append("write")
        partner = bev.get_partner()
        if partner is not None:
            partner.free()

    bev1.setcb(None, writecb, lambda *args: order.append(args))
    bev2.setcb(lambda bev, ctx: order.append("read"), None, None)
    bev2.enable(EV_READ)
    bev1.write(b"x")
    assert run_until(lambda: bev2.freed)
    bev1.write(b"y")
    gevent.sleep(0.02)
    assert order == ["read", "write"]
    assert bev1.get_partner() is None
    assert len(bev1.output) == 1


def test_socket_and_filter_bevs_have_no_partner(raw_sockets):
    ours, _ = raw_sockets.pair()
    sock_bev = socket_new(ours)
    assert not hasattr(sock_bev, "get_partner")
    assert event2.bufferevent_pair_get_partner(sock_bev) is None
    end1, end2 = pair_new()
    filt = filter_new(end1, None, None)
    assert not hasattr(filt, "get_partner")
    assert event2.bufferevent_pair_get_partner(filt) is None
    assert event2.bufferevent_pair_get_partner(end1) is end2


# -- timeouts (libevent A15, pair variant) ------------------------------------


def test_a15_pair_timeouts(a15_timeouts):
    """A15: bev1 gets one WRITING|TIMEOUT (0.1 s: the partner does not read)
    and one READING|TIMEOUT (0.15 s); bev2, writing enabled with nothing
    queued and reading disabled, gets no timeout and no callback."""
    bev1, bev2 = pair_new()
    log = a15_timeouts(bev1, bev2)

    assert [entry[0] for entry in log] == ["bev1", "bev1"]
    (_, what1, when1), (_, what2, when2) = log
    assert what1 == Event.WRITING | Event.TIMEOUT
    assert when1 == pytest.approx(0.1, abs=0.1)
    assert what2 == Event.READING | Event.TIMEOUT
    assert when2 == pytest.approx(0.15, abs=0.1)
    assert bev1.get_enabled() == 0
    assert bytes(bev1.output) == b"ABCDEFG"  # unsent bytes are kept
    assert bev2.get_enabled() == EV_WRITE


def test_read_timeout_restarts_on_each_arrival_then_disables_read():
    bev1, bev2 = pair_new()
    events: list = []
    bev2.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    bev2.set_timeouts(read=0.15)
    bev2.enable(EV_READ)
    for _ in range(4):
        gevent.sleep(0.07)
        bev1.write(b"k")
    assert events == []
    gevent.sleep(0.25)
    assert events == [Event.READING | Event.TIMEOUT]
    assert bev2.get_enabled() == EV_WRITE
    assert bytes(bev2.input) == b"kkkk"
    bev1.write(b"held")  # reading is off now: it waits in bev1
    assert len(bev1.output) == 4
    bev2.enable(EV_READ)
    assert bytes(bev2.input) == b"kkkkheld"


@pytest.mark.parametrize("partner_reads", [False, True], ids=["stalled", "reading"])
def test_write_timeout_needs_pending_output(partner_reads):
    bev1, bev2 = pair_new()
    events: list = []
    bev1.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    if partner_reads:
        bev2.enable(EV_READ)
    bev1.set_timeouts(write=0.1)
    bev1.enable(EV_WRITE)
    gevent.sleep(0.15)
    assert events == []  # nothing queued yet: no write timeout
    bev1.write(b"payload")
    gevent.sleep(0.2)
    if partner_reads:
        assert events == []
        assert bev1.get_enabled() == EV_WRITE
    else:
        assert events == [Event.WRITING | Event.TIMEOUT]
        assert bev1.get_enabled() == 0
        assert len(bev1.output) == 7


# -- blocking style -----------------------------------------------------------


def test_blocking_request_response_between_greenlets():
    client, server = pair_new()

    def serve_one() -> bytes:
        name = server.read_line(timeout=2)
        size = int(server.read_exactly(2, timeout=2))
        body = server.read_exactly(size, timeout=2)
        server.write_all(b"hello " + name + b": " + body + b"\r\n", timeout=2)
        rest = server.read_until_eof(timeout=2)
        server.write_all(b"bye " + rest, timeout=2)
        server.shutdown_write()
        return rest

    glet = gevent.spawn(serve_one)
    client.write_all(b"alice\r\n05abcde", timeout=2)
    client.drain(timeout=2)
    assert client.read_line(timeout=2) == b"hello alice: abcde"
    client.write(b"tail")
    client.shutdown_write()
    assert client.read_until_eof(timeout=2) == b"bye tail"
    assert glet.get(timeout=2) == b"tail"
    assert client.read_some(timeout=1) == b""  # EOF stays EOF


def test_write_all_waits_for_the_partner_to_drain():
    writer, reader = pair_new()
    reader.setwatermark(EV_READ, 0, 100)
    reader.enable(EV_READ)
    payload = patterned(3000)
    glet = gevent.spawn(writer.write_all, payload, timeout=2)
    gevent.sleep(0.02)
    assert not glet.ready()  # 2900 bytes wait in the writer's output
    received = b""
    while len(received) < len(payload):
        received += reader.read_some(timeout=1)
    glet.get(timeout=1)
    assert received == payload


def test_eof_after_shutdown_write_comes_after_held_back_bytes():
    writer, reader = pair_new()
    reader.setwatermark(EV_READ, 0, 10)
    events: list = []
    reader.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    reader.enable(EV_READ)
    writer.write(b"q" * 100)
    writer.shutdown_write()
    gevent.sleep(0.02)
    assert events == []  # 90 bytes still wait in the writer
    assert reader.read_until_eof(timeout=1) == b"q" * 100
    gevent.sleep(0.02)
    assert events == [READ_EOF]


def test_read_exactly_sees_eof_from_finished():
    reader, writer = pair_new()

    def read_ten() -> Any:
        # Returned, not raised: a greenlet's exception would go to the hub.
        try:
            return reader.read_exactly(10, timeout=2)
        except IncompleteReadError as exc:
            return exc

    glet = gevent.spawn(read_ten)
    gevent.sleep(0.01)
    writer.write(b"abc")
    writer.flush(EV_WRITE, FlushMode.FINISHED)
    outcome = glet.get(timeout=2)
    assert isinstance(outcome, IncompleteReadError)
    assert outcome.partial == b"abc"


# -- BufferEventSocket over a pair end ----------------------------------------


def test_socket_adapter_recv_and_sendall():
    near, far = pair_new()
    sock = BufferEventSocket(near)
    sock.settimeout(2)
    assert sock.fileno() == -1
    payload = patterned(200_000)

    def echo() -> None:
        while True:
            data = far.read_some(timeout=2)
            if not data:
                far.shutdown_write()
                return
            far.write(data)

    glet = gevent.spawn(echo)
    sender = gevent.spawn(sock.sendall, payload)
    received = bytearray()
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk
        received += chunk
    sender.get(timeout=2)
    assert bytes(received) == payload
    sock.shutdown(1)  # SHUT_WR
    assert sock.recv(10) == b""
    glet.get(timeout=2)
    sock.close()


def test_http_client_over_a_pair():
    """http.client runs unchanged over a pair end wrapped as a socket."""
    near, far = pair_new()

    def server() -> bytes:
        adapter = BufferEventSocket(far)
        adapter.settimeout(2)
        rfile = adapter.makefile("rb")
        request_line = rfile.readline()
        while rfile.readline() not in (b"\r\n", b""):
            pass
        adapter.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        rfile.close()
        adapter.close()
        return request_line

    glet = gevent.spawn(server)
    conn = http.client.HTTPConnection("127.0.0.1", 9, timeout=2)
    conn.auto_open = 0  # never open a real connection
    conn.sock = BufferEventSocket(near)
    conn.sock.settimeout(2)
    conn.request("GET", "/index")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b"hello"
    assert glet.get(timeout=2) == b"GET /index HTTP/1.1\r\n"
    conn.close()
    assert far.freed


# -- found by trying pairs as a new user --------------------------------------


def test_read_some_returns_eof_after_the_partner_said_eof_and_left():
    """EOF wins over "the partner was freed": what a socket reader sees."""
    a, b = pair_new()
    a.enable(EV_READ)
    b.write(b"bye\n")
    b.shutdown_write()
    gevent.sleep(0.01)
    b.free()
    assert a.read_some(timeout=1) == b"bye\n"
    assert a.read_some(timeout=1) == b""


def test_read_some_on_an_end_whose_partner_left_without_eof_raises():
    a, b = pair_new()
    a.enable(EV_READ)
    b.free()
    with pytest.raises(BufferEventError, match="other end of the pair was freed"):
        a.read_some(timeout=1)


def test_socket_adapter_close_hands_everything_over_with_eof():
    """close() on a BufferEventSocket over a pair end acts like a socket's
    close: the partner gets the bytes and EOF, even before it reads, and
    close() does not wait for it."""
    a, b = pair_new()
    sock = geventbev.BufferEventSocket(a)
    sock.sendall(b"request")
    started = time.monotonic()
    sock.close()
    assert time.monotonic() - started < 0.5
    assert b.read_until_eof(timeout=1) == b"request"


def test_socket_adapter_over_an_end_whose_partner_was_freed():
    """recv() gives b"" and send() raises BrokenPipeError, as on a socket
    whose peer has gone."""
    a, b = pair_new()
    sock = geventbev.BufferEventSocket(a)
    b.free()
    assert sock.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        sock.sendall(b"x" * 10)
    sock.close()
