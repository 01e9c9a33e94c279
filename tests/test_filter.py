"""Filtering bufferevents: a transformation layered on another bufferevent.

Ports of libevent's filter scenarios (A9, A10, A11, A15, A20 of
reference/libevent-regress.md, and C1 from regress_zlib.c) asserting
geventbev's values, plus what filter.py promises of its own: filter
failures reported as ERROR events (libevent stays silent), the input filter
run with FINISHED before EOF reaches the user, backpressure onto the
underlying, lingering CLOSE_ON_FREE and argument checking.  Underlyings are
pair ends or socket bufferevents on AF_UNIX socketpairs.
"""

from __future__ import annotations

import socket
import time
import zlib
from typing import Any, Callable

import gevent
import pytest

from geventbev import (
    EV_READ,
    EV_WRITE,
    Buffer,
    BufferEventError,
    Event,
    FilterBufferEvent,
    FilterResult,
    FlushMode,
    Option,
    event2,
    filter_new,
    pair_new,
)

CLOSE = Option.CLOSE_ON_FREE
OK, NEED_MORE, ERROR = FilterResult.OK, FilterResult.NEED_MORE, FilterResult.ERROR
READ_EOF = Event.READING | Event.EOF
READ_ERROR = Event.READING | Event.ERROR
WRITE_ERROR = Event.WRITING | Event.ERROR


def patterned(n: int) -> bytes:
    """``n`` bytes whose value depends on their position."""
    return bytes(i % 256 for i in range(n))


@pytest.fixture(params=["pair", "socketpair"])
def underlyings(request, make_bev_pair) -> tuple:
    """Two connected bufferevents to put filters on: the two ends of a pair,
    or socket bufferevents on an AF_UNIX socketpair."""
    if request.param == "pair":
        return pair_new()
    return make_bev_pair()


# -- filter functions used below ----------------------------------------------


def add_x_before_each_byte(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    data = src.remove(len(src))
    if not data:
        return NEED_MORE
    doubled = bytearray(2 * len(data))
    doubled[0::2] = b"x" * len(data)
    doubled[1::2] = data
    dst.add(bytes(doubled))
    return OK


def drop_every_x(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    whole = len(src) // 2 * 2
    if not whole:
        return NEED_MORE
    data = src.remove(whole)
    assert data[0::2] == b"x" * (whole // 2)
    dst.add(data[1::2])
    return OK


def whole_groups_of_four(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    """Moves whole 4-byte groups; at FINISHED, the partial tail too."""
    ctx.append(mode)
    n = len(src) if mode is FlushMode.FINISHED else len(src) // 4 * 4
    if not n:
        return NEED_MORE
    src.remove_buffer(dst, n)
    return OK


def zlib_deflate(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    out = ctx.compress(src.remove(len(src)))
    if mode is FlushMode.FLUSH:
        out += ctx.flush(zlib.Z_SYNC_FLUSH)
    elif mode is FlushMode.FINISHED:
        out += ctx.flush(zlib.Z_FINISH)
    if not out:
        return NEED_MORE
    dst.add(out)
    return OK


def zlib_inflate(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    out = ctx.decompress(src.remove(len(src)))
    if mode is FlushMode.FINISHED:
        out += ctx.flush()
    if not out:
        return NEED_MORE
    dst.add(out)
    return OK


def counting(fn: Callable[..., Any], counts: dict, key: str) -> Callable[..., Any]:
    """``fn``, counting its calls in ``counts[key]``."""

    def wrapper(*args: Any) -> Any:
        counts[key] = counts.get(key, 0) + 1
        return fn(*args)

    return wrapper


def recv_until_eof(sock: Any, limit: int = 1 << 22) -> bytes:
    """Everything a raw (timeout-bearing) socket receives until EOF."""
    data = bytearray()
    while len(data) <= limit:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("no EOF within the limit")


# -- libevent A9, A10: a byte-doubling filter pair ----------------------------


def test_a9_a10_filters_double_and_undouble_8333_bytes(underlyings, run_until):
    """A9 (socketpair) / A10 (pair): the reader gets exactly the 8333 bytes;
    the writer's write callback sees an empty output once; no events; the
    output filter runs once; fileno is the underlying's."""
    base1, base2 = underlyings
    counts: dict = {}
    bev1 = filter_new(
        base1, None, counting(add_x_before_each_byte, counts, "out"), CLOSE
    )
    bev2 = filter_new(base2, counting(drop_every_x, counts, "in"), None, CLOSE)
    assert isinstance(bev1, FilterBufferEvent)
    assert bev1.get_underlying() is base1
    assert bev1.fileno() == base1.fileno()
    assert bev2.fileno() == base2.fileno()
    received = Buffer()
    seen: dict = {"write_empty": 0, "events": []}

    def readcb(bev: Any, ctx: Any) -> None:
        bev.read_buffer(received)

    def writecb(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            seen["write_empty"] += 1

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        seen["events"].append(int(what))

    bev1.setcb(None, writecb, eventcb)
    bev2.setcb(readcb, None, eventcb)
    bev2.enable(EV_READ)
    payload = patterned(8333)
    bev1.write(payload)
    assert run_until(lambda: len(received) == len(payload) and seen["write_empty"])
    gevent.sleep(0.05)
    assert bytes(received) == payload
    assert seen == {"write_empty": 1, "events": []}
    assert counts["out"] == 1


def test_a11_output_filter_appending_to_its_own_bev_does_not_recurse(
    underlyings, run_until
):
    """A11: a write to the filter from inside its output filter does not
    re-enter it; the later call's ERROR reaches the event callback as
    ERROR|WRITING (geventbev departs on purpose: libevent stays silent)."""
    base1, base2 = underlyings
    state: dict = {"calls": 0, "reentered": False}
    holder: dict = {}

    def output_filter(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        state["calls"] += 1
        if state["calls"] > 1:
            return ERROR
        add_x_before_each_byte(src, dst, limit, mode, ctx)
        before = state["calls"]
        holder["bev"].write(b"-")
        state["reentered"] = state["calls"] != before
        return OK

    bev1 = filter_new(base1, None, output_filter, CLOSE)
    holder["bev"] = bev1
    bev2 = filter_new(base2, drop_every_x, None, CLOSE)
    events: list = []
    received = bytearray()
    bev1.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    bev2.setcb(
        lambda bev, ctx: received.extend(bev.read(len(bev.input))),
        None,
        lambda bev, what, ctx: events.append(("bev2", int(what))),
    )
    bev2.enable(EV_READ)
    payload = patterned(8333)
    bev1.write(payload)
    assert run_until(lambda: len(received) == len(payload) and events)
    gevent.sleep(0.05)
    assert state == {"calls": 2, "reentered": False}
    assert events == [WRITE_ERROR]
    assert isinstance(bev1.get_error(), BufferEventError)
    assert "output filter" in str(bev1.get_error())
    assert bytes(received) == payload  # the "-" never went out
    assert bytes(bev1.output) == b"-"


# -- libevent A15: timeouts on filters ----------------------------------------


@pytest.mark.parametrize("kind", ["filter-over-pair", "filter-over-socketpair"])
def test_a15_filter_timeouts(make_bev_pair, kind, a15_timeouts):
    """A15 on pass-through filters: bev1 gets one READING|TIMEOUT at 0.15 s
    and, as its output emptied into the underlying, one write callback.
    geventbev departs on purpose (case C02): no WRITING|TIMEOUT while a
    filter's output is empty, on bev1 or bev2 (libevent: one each)."""
    base1, base2 = pair_new() if kind == "filter-over-pair" else make_bev_pair()
    bev1 = filter_new(base1, None, None, CLOSE)
    bev2 = filter_new(base2, None, None, CLOSE)
    log = a15_timeouts(bev1, bev2)

    assert [(ctx, what) for ctx, what, _ in log] == [
        ("bev1", "write"),
        ("bev1", Event.READING | Event.TIMEOUT),
    ]
    assert log[0][2] < 0.1
    assert log[1][2] == pytest.approx(0.15, abs=0.1)
    assert bev1.get_enabled() == EV_WRITE
    assert bev2.get_enabled() == EV_WRITE


# -- libevent A20: data stuck under a full filter -----------------------------


def test_a20_bytes_left_under_a_full_filter_are_not_stranded(run_until):
    """A20: the input filter adds a 20-byte header once, so 20 bytes stay in
    the underlying when the filter's input reaches its high mark of 4096;
    draining the filter brings them up: 4116 bytes in all."""
    end0, end1 = pair_new(CLOSE | Option.DEFER_CALLBACKS)
    end0.setwatermark(EV_READ, 0, 4096)
    end1.setwatermark(EV_READ, 0, 4096)
    state = {"header_sent": False, "short_moves": 0}

    def add_header_once(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        want = len(src)
        if not state["header_sent"]:
            dst.add(b"H" * 20)
            state["header_sent"] = True
            if limit >= 0:
                limit -= 20
        if limit >= 0:
            want = min(want, limit)
        if src.remove_buffer(dst, want) != want:
            state["short_moves"] += 1
        return OK

    bev = filter_new(end1, add_header_once, None, CLOSE)
    bev.setwatermark(EV_READ, 0, 4096)
    received = bytearray()
    bev.setcb(lambda b, ctx: received.extend(b.read(len(b.input))), None, None)
    bev.enable(EV_READ | EV_WRITE)
    end0.write(patterned(4096))
    assert run_until(lambda: len(received) >= 4116)
    gevent.sleep(0.02)
    assert len(received) == 4116
    assert bytes(received) == b"H" * 20 + patterned(4096)
    assert state["short_moves"] == 0


# -- libevent C1: zlib --------------------------------------------------------


def test_c1_zlib_filters_over_a_socketpair(make_bev_pair, run_until):
    """C1: deflate on the way out, inflate on the way in; 8333 bytes
    written in two calls then flushed with FINISHED; no events; each
    context is released through free_context exactly once."""
    base1, base2 = make_bev_pair()
    counts: dict = {}
    released: list = []
    deflater, inflater = zlib.compressobj(), zlib.decompressobj()
    bev1 = filter_new(
        base1,
        None,
        counting(zlib_deflate, counts, "out"),
        CLOSE,
        released.append,
        deflater,
    )
    bev2 = filter_new(
        base2,
        counting(zlib_inflate, counts, "in"),
        None,
        CLOSE,
        released.append,
        inflater,
    )
    payload = patterned(8333)
    moved = Buffer()
    seen: dict = {"write_empty": 0, "events": []}

    def readcb(bev: Any, ctx: Any) -> None:
        if len(bev.input) >= len(payload):
            bev.read_buffer(moved)

    def writecb(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            seen["write_empty"] += 1

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        seen["events"].append(int(what))

    bev1.setcb(None, writecb, eventcb)
    bev2.setcb(readcb, None, eventcb)
    bev2.enable(EV_READ)
    bev1.write(payload[:1800])
    bev1.write(payload[1800:])
    assert bev1.flush(EV_WRITE, FlushMode.FINISHED) == 1
    assert run_until(lambda: len(moved) == len(payload) and seen["write_empty"])
    gevent.sleep(0.05)
    assert bytes(moved) == payload
    assert counts["in"] >= 1 and counts["out"] >= 1
    assert seen["events"] == []
    assert inflater.eof  # the whole stream, trailer included, arrived
    assert released == []
    bev1.free()
    bev2.free()
    bev1.free()
    assert released == [deflater, inflater]


# -- pass-through, dst_limit, results -----------------------------------------


def test_none_filters_pass_bytes_through_both_ways():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    end0.enable(EV_READ)
    bev.enable(EV_READ)
    bev.write(b"down")
    end0.write(b"up")
    gevent.sleep(0.02)
    assert bytes(end0.input) == b"down"
    assert bytes(bev.input) == b"up"


def test_input_filter_gets_room_below_read_high_in_normal_mode():
    end0, end1 = pair_new()
    calls: list = []

    def record(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        calls.append((limit, mode))
        if not len(src):
            return NEED_MORE
        src.remove_buffer(dst, len(src) if limit < 0 else limit)
        return OK

    bev = filter_new(end1, record, None)
    bev.enable(EV_READ)
    end0.write(b"a" * 10)
    gevent.sleep(0.02)
    assert calls and {limit for limit, _ in calls} == {-1}
    calls.clear()
    bev.setwatermark(EV_READ, 0, 100)
    end0.write(b"b" * 30)
    gevent.sleep(0.02)
    assert calls[0] == (100 - 10, FlushMode.NORMAL)
    calls.clear()
    end0.write(b"c" * 10)
    gevent.sleep(0.02)
    assert calls[0] == (100 - 40, FlushMode.NORMAL)
    assert all(mode is FlushMode.NORMAL for _, mode in calls)
    assert len(bev.input) == 50


def test_output_filter_gets_room_below_the_underlyings_write_high():
    end0, end1 = pair_new()  # end0 does not read: bytes stay in end1
    limits: list = []

    def by_300(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        limits.append(limit)
        step = 300 if limit < 0 else min(300, limit)
        src.remove_buffer(dst, step)
        return OK

    bev = filter_new(end1, None, by_300)
    bev.write(b"w" * 1000)
    gevent.sleep(0.02)
    assert limits == [-1, -1, -1, -1]
    assert len(end1.output) == 1000
    limits.clear()

    end1.setwatermark(EV_WRITE, 0, 1500)
    bev.write(b"v" * 2000)
    gevent.sleep(0.02)
    assert limits == [500, 200]
    assert (len(end1.output), len(bev.output)) == (1500, 1500)
    end0.enable(EV_READ)  # the pair drains: the filter goes on by itself
    received = b""
    while len(received) < 3000:
        received += end0.read_some(timeout=1)
    assert received == b"w" * 1000 + b"v" * 2000


def test_need_more_holds_a_partial_unit_until_more_arrives():
    end0, end1 = pair_new()
    modes: list = []
    bev = filter_new(end1, whole_groups_of_four, None, 0, None, modes)
    bev.enable(EV_READ)
    end0.write(b"abcdef")
    gevent.sleep(0.02)
    assert bytes(bev.input) == b"abcd"
    assert bytes(end1.input) == b"ef"
    end0.write(b"gh")
    gevent.sleep(0.02)
    assert bytes(bev.input) == b"abcdefgh"
    assert set(modes) == {FlushMode.NORMAL}


BAD_RESULTS = [None, "ok", 7, True, 0.0, -1]


@pytest.mark.parametrize("value", BAD_RESULTS, ids=repr)
def test_input_filter_returning_a_non_result_is_an_error(value, hub_errors):
    """ERROR|READING with a TypeError naming the value; what was filtered
    before stays readable; a blocking read then raises with it as cause."""
    end0, end1 = pair_new()
    calls = [0]

    def first_ok_then_bad(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            src.remove_buffer(dst, len(src))
            return OK
        return value

    bev = filter_new(end1, first_ok_then_bad, None)
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    bev.enable(EV_READ)
    end0.write(b"first")
    gevent.sleep(0.02)
    end0.write(b"second")
    gevent.sleep(0.02)
    assert events == [READ_ERROR]
    error = bev.get_error()
    assert isinstance(error, TypeError)
    assert "input filter" in str(error)
    assert f"returned {value!r}" in str(error)
    assert "FilterResult" in str(error)
    assert bev.read_some(timeout=1) == b"first"
    with pytest.raises(BufferEventError) as info:
        bev.read_some(timeout=1)
    assert info.value.__cause__ is error
    assert info.value.events == READ_ERROR
    assert hub_errors == []


@pytest.mark.parametrize("value", BAD_RESULTS, ids=repr)
def test_output_filter_returning_a_non_result_is_an_error(value, hub_errors):
    end0, end1 = pair_new()
    end0.enable(EV_READ)
    calls = [0]

    def first_ok_then_bad(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            src.remove_buffer(dst, len(src))
            return OK
        return value

    bev = filter_new(end1, None, first_ok_then_bad)
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    bev.write(b"first")
    gevent.sleep(0.02)
    bev.write(b"second")
    gevent.sleep(0.02)
    assert events == [WRITE_ERROR]
    error = bev.get_error()
    assert isinstance(error, TypeError)
    assert "output filter" in str(error) and f"returned {value!r}" in str(error)
    assert bytes(end0.input) == b"first"
    with pytest.raises(BufferEventError) as info:
        bev.write_all(b"third", timeout=1)
    assert info.value.__cause__ is error
    assert hub_errors == []


class FilterBoom(Exception):
    """Raised by a test filter."""


@pytest.mark.parametrize("how", ["returns-error", "raises"])
@pytest.mark.parametrize("direction", ["input", "output"])
def test_failing_filter_reports_error_with_its_cause(direction, how, hub_errors):
    """geventbev departs from libevent on purpose: ERROR or an exception
    from a filter reaches the event callback (libevent stays silent)."""
    end0, end1 = pair_new()
    end0.enable(EV_READ)
    boom = FilterBoom("broken stream")

    def failing(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        if how == "raises":
            raise boom
        return ERROR

    if direction == "input":
        bev = filter_new(end1, failing, None)
        expected_events = READ_ERROR
    else:
        bev = filter_new(end1, None, failing)
        expected_events = WRITE_ERROR
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    bev.enable(EV_READ)
    if direction == "input":
        end0.write(b"data")
    else:
        bev.write(b"data")
    gevent.sleep(0.02)
    assert events == [expected_events]
    error = bev.get_error()
    if how == "raises":
        assert error is boom
    else:
        assert isinstance(error, BufferEventError)
        assert f"{direction} filter failed" in str(error)
    blocking = bev.read_some if direction == "input" else bev.drain
    with pytest.raises(BufferEventError) as info:
        blocking(timeout=1)
    assert info.value.__cause__ is error
    assert hub_errors == []  # reported as an event, not to the hub


def test_failed_input_side_stops_reading_the_underlying():
    end0, end1 = pair_new()
    bev = filter_new(end1, lambda *args: ERROR, None)
    bev.enable(EV_READ)
    end0.write(b"one")
    gevent.sleep(0.02)
    assert bev.get_error() is not None
    end0.write(b"two")
    gevent.sleep(0.02)
    assert bytes(end0.output) == b"two"  # the pair end no longer takes bytes


def test_zlib_garbage_gives_read_error_and_the_hub_stays_healthy(hub_errors):
    end0, end1 = pair_new()
    bev = filter_new(end1, zlib_inflate, None, CLOSE, None, zlib.decompressobj())
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    bev.enable(EV_READ)
    end0.write(b"this is not a zlib stream at all")
    gevent.sleep(0.02)
    end0.write(b"nor is this")
    gevent.sleep(0.02)
    assert events == [READ_ERROR]
    assert isinstance(bev.get_error(), zlib.error)
    with pytest.raises(BufferEventError) as info:
        bev.read_some(timeout=1)
    assert isinstance(info.value.__cause__, zlib.error)
    assert hub_errors == []
    # The loop still serves everyone else.
    other0, other1 = pair_new()
    other1.enable(EV_READ)
    other0.write(b"fine")
    assert other1.read_some(timeout=1) == b"fine"


# -- backpressure onto the underlying -----------------------------------------


def test_underlying_reads_nothing_while_filter_reading_is_off(bev_with_peer):
    under, peer = bev_with_peer
    bev = filter_new(under, None, None, CLOSE)
    peer.sendall(b"a" * 1000)
    gevent.sleep(0.05)
    assert bev.get_enabled() == EV_WRITE
    assert (len(under.input), len(bev.input)) == (0, 0)  # left in the kernel
    bev.enable(EV_READ)
    assert bev.read_exactly(1000, timeout=1) == b"a" * 1000
    bev.disable(EV_READ)
    peer.sendall(b"b" * 1000)
    gevent.sleep(0.05)
    assert (len(under.input), len(bev.input)) == (0, 0)
    assert bev.read_exactly(1000, timeout=1) == b"b" * 1000  # enables again


def test_c07_tail_under_read_high_arrives_without_new_data(bev_with_peer, run_until):
    """C07 (a): 4343 bytes against a read high of 4096: the last 247 come up
    once the reader drains, with no further socket data."""
    under, peer = bev_with_peer
    bev = filter_new(under, None, None, CLOSE)
    bev.setwatermark(EV_READ, 0, 4096)
    reads: list = []
    received = bytearray()

    def readcb(b: Any, ctx: Any) -> None:
        reads.append(len(b.input))
        received.extend(b.read(len(b.input)))

    bev.setcb(readcb, None, None)
    bev.enable(EV_READ)
    peer.sendall(patterned(4343))
    assert run_until(lambda: len(received) == 4343, 0.5)
    assert bytes(received) == patterned(4343)
    assert max(reads) <= 4096


def test_c07_full_filter_suspends_the_underlying_and_resumes(bev_with_peer):
    """C07 (b): while nobody drains, the filter holds its 4096 bytes and the
    underlying stops reading (the rest stays in the kernel); draining
    resumes everything, in order."""
    under, peer = bev_with_peer
    bev = filter_new(under, None, None, CLOSE)
    bev.setwatermark(EV_READ, 0, 4096)
    bev.enable(EV_READ)
    payload = bytes(i * 13 % 256 for i in range(1 << 20))
    sender = gevent.spawn(peer.sendall, payload)
    try:
        gevent.sleep(0.2)
        assert len(bev.input) == 4096
        assert len(under.input) <= 16384 + 4096
        assert not sender.ready()
        received = bytearray()
        deadline = time.monotonic() + 3
        while len(received) < len(payload) and time.monotonic() < deadline:
            received += bev.read_some(timeout=1)
        assert bytes(received) == payload
        sender.get(timeout=1)
    finally:
        sender.kill(block=True, timeout=1)


# -- EOF, flush and shutdown --------------------------------------------------


def test_c08_input_filter_runs_finished_before_eof(bev_with_peer, run_until):
    """C08 (a): the 2-byte tail the filter held back in NORMAL mode comes
    out with FINISHED, before EOF|READING reaches the user (geventbev
    departs on purpose: libevent forwards the EOF without that run)."""
    under, peer = bev_with_peer
    modes: list = []
    bev = filter_new(under, whole_groups_of_four, None, CLOSE, None, modes)
    log: list = []
    bev.setcb(
        lambda b, ctx: log.append(b.read(len(b.input))),
        None,
        lambda b, what, ctx: log.append(int(what)),
    )
    bev.enable(EV_READ)
    peer.sendall(b"0123456789")
    assert run_until(lambda: log)
    assert FlushMode.FINISHED not in modes
    peer.shutdown(socket.SHUT_WR)
    assert run_until(lambda: READ_EOF in log)
    gevent.sleep(0.02)
    assert log == [b"01234567", b"89", READ_EOF]
    assert FlushMode.FINISHED in modes
    assert bev.get_enabled() == EV_WRITE


def test_zlib_stream_and_its_eof_arrive_in_order(bev_with_peer):
    """The peer sends a whole zlib stream and closes: the reader gets every
    byte, then EOF; the decompressor saw the end of the stream."""
    under, peer = bev_with_peer
    inflater = zlib.decompressobj()
    bev = filter_new(under, zlib_inflate, None, CLOSE, None, inflater)
    payload = patterned(50_000)
    peer.sendall(zlib.compress(payload))
    peer.shutdown(socket.SHUT_WR)
    assert bev.read_until_eof(timeout=1) == payload
    assert inflater.eof


class CappedInflater:
    """A decompressor that hands out at most 1000 bytes per NORMAL run and
    keeps the rest inside zlib until it is run with FINISHED."""

    def __init__(self) -> None:
        self.zobj = zlib.decompressobj()

    def __call__(
        self, src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        data = self.zobj.unconsumed_tail + src.remove(len(src))
        if mode is FlushMode.FINISHED:
            out = self.zobj.decompress(data) + self.zobj.flush()
        else:
            out = self.zobj.decompress(data, 1000)
        if not out:
            return NEED_MORE
        dst.add(out)
        return OK


def test_decompressor_tail_is_delivered_at_eof(bev_with_peer, run_until):
    """geventbev departs from libevent on purpose: the underlying's EOF
    runs the input filter with FINISHED, so what the decompressor still
    held arrives before the EOF."""
    under, peer = bev_with_peer
    inflater = CappedInflater()
    bev = filter_new(under, inflater, None, CLOSE)
    bev.enable(EV_READ)
    payload = bytes(i * 7 % 251 for i in range(50_000))
    peer.sendall(zlib.compress(payload))
    assert run_until(lambda: len(bev.input) == 1000)
    gevent.sleep(0.05)
    assert len(bev.input) == 1000  # the rest waits inside zlib
    peer.shutdown(socket.SHUT_WR)
    assert bev.read_until_eof(timeout=1) == payload
    assert inflater.zobj.eof


def test_pair_partner_finished_reaches_the_filter_user_after_the_data():
    end0, end1 = pair_new()
    modes: list = []
    bev = filter_new(end1, whole_groups_of_four, None, 0, None, modes)
    log: list = []
    bev.setcb(
        lambda b, ctx: log.append(b.read(len(b.input))),
        None,
        lambda b, what, ctx: log.append(int(what)),
    )
    bev.enable(EV_READ)
    end0.write(b"abcdefg")
    end0.flush(EV_WRITE, FlushMode.FINISHED)
    gevent.sleep(0.05)
    assert b"".join(x for x in log if isinstance(x, bytes)) == b"abcdefg"
    assert log[-1] == READ_EOF
    assert log.count(READ_EOF) == 1


def test_flush_finished_lets_zlib_write_its_trailer(bev_with_peer):
    under, peer = bev_with_peer
    bev = filter_new(under, None, zlib_deflate, CLOSE, None, zlib.compressobj())
    payload = b"compress me " * 500
    bev.write(payload)
    gevent.sleep(0.02)
    assert bev.flush(EV_WRITE, FlushMode.FINISHED) == 1
    inflater = zlib.decompressobj()
    out = b""
    while not inflater.eof:
        out += inflater.decompress(peer.recv(65536))
    assert out == payload
    assert under.fileno() >= 0  # a flush is not a shutdown


def test_shutdown_write_finishes_the_stream_and_keeps_reading(bev_with_peer):
    under, peer = bev_with_peer
    modes: list = []

    def deflate(*args: Any) -> FilterResult:
        modes.append(args[3])
        return zlib_deflate(*args)

    bev = filter_new(under, None, deflate, CLOSE, None, zlib.compressobj())
    payload = b"hello " * 1000
    bev.write(payload)
    bev.shutdown_write()
    assert zlib.decompress(recv_until_eof(peer)) == payload
    assert modes[-1] is FlushMode.FINISHED
    assert modes.count(FlushMode.FINISHED) == 1
    bev.drain(timeout=1)
    peer.sendall(b"still talking")
    assert bev.read_some(timeout=1) == b"still talking"


def test_free_right_after_shutdown_write_still_sends_the_trailer(bev_with_peer):
    under, peer = bev_with_peer
    bev = filter_new(under, None, zlib_deflate, CLOSE, None, zlib.compressobj())
    payload = patterned(100_000)
    bev.write(payload)
    bev.shutdown_write()
    bev.free()
    assert zlib.decompress(recv_until_eof(peer)) == payload


def test_shutdown_write_over_a_pair_end_gives_the_partner_eof():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    bev.write(b"last words")
    bev.shutdown_write()
    assert end0.read_until_eof(timeout=1) == b"last words"


# -- free ---------------------------------------------------------------------


def test_c08_close_on_free_sends_what_the_underlying_holds(bev_with_peer):
    """C08 (b): freed from its write callback right after a FINISHED flush,
    the filter's underlying still delivers "abcEND" and then a clean EOF
    (geventbev departs on purpose: libevent drops those bytes)."""
    under, peer = bev_with_peer
    modes: list = []

    def end_on_finish(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        modes.append(mode)
        if mode is not FlushMode.FINISHED:
            return NEED_MORE
        src.remove_buffer(dst, len(src))
        dst.add(b"END")
        return OK

    bev = filter_new(under, None, end_on_finish, CLOSE)

    def writecb(b: Any, ctx: Any) -> None:
        if not len(b.output):
            b.free()

    bev.setcb(None, writecb, None)
    bev.write(b"abc")
    assert bev.flush(EV_WRITE, FlushMode.FINISHED) == 1
    assert recv_until_eof(peer) == b"abcEND"
    assert bev.freed and under.freed
    assert modes.count(FlushMode.FINISHED) == 1


def test_close_on_free_hands_a_pair_underlyings_bytes_over_at_once():
    """A pair end under a freed filter gives its partner what it holds,
    even before the partner reads, and is freed without lingering."""
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None, CLOSE)
    bev.write(b"parting gift")
    gevent.sleep(0.02)
    assert bytes(end1.output) == b"parting gift"  # end0 does not read yet
    bev.free()
    assert end1.freed
    end0.enable(EV_READ)
    assert end0.read_exactly(12, timeout=1) == b"parting gift"


def test_without_close_on_free_the_underlying_survives(bev_with_peer):
    under, peer = bev_with_peer
    under.setcb(lambda *args: None, None, None)
    bev = filter_new(under, None, None)
    assert under.getcb()[0] is not None  # the filter's own callbacks
    bev.free()
    assert not under.freed
    assert under.getcb() == (None, None, None, None)
    peer.sendall(b"direct")
    assert under.read_some(timeout=1) == b"direct"
    under.write(b"back")
    assert peer.recv(10) == b"back"
    again = filter_new(under, None, None)  # free to filter it again
    assert again.get_underlying() is under


def test_free_context_runs_once_on_free_only():
    end0, end1 = pair_new()
    released: list = []
    ctx = object()
    bev = filter_new(end1, None, None, CLOSE, released.append, ctx)
    bev.enable(EV_READ)
    end0.write(b"traffic")
    bev.write(b"traffic")
    gevent.sleep(0.02)
    assert released == []
    bev.free()
    assert released == [ctx]
    bev.free()
    with bev:
        pass
    assert released == [ctx]


def test_free_from_inside_the_input_filter():
    end0, end1 = pair_new()
    released: list = []
    holder: dict = {}

    def free_self(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        src.remove_buffer(dst, len(src))
        holder["bev"].free()
        return OK

    bev = filter_new(end1, free_self, None, CLOSE, released.append, "ctx")
    holder["bev"] = bev
    bev.setcb(lambda *args: released.append("read callback"), None, None)
    bev.enable(EV_READ)
    end0.write(b"x")
    gevent.sleep(0.02)
    assert bev.freed and end1.freed
    assert released == ["ctx"]


# -- stacking -----------------------------------------------------------------


def upper_case(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    data = src.remove(len(src))
    if not data:
        return NEED_MORE
    dst.add(data.upper())
    return OK


def bracket(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    data = src.remove(len(src))
    if not data:
        return NEED_MORE
    dst.add(b"<" + data + b">")
    return OK


def test_filter_over_filter_over_socket(bev_with_peer):
    under, peer = bev_with_peer
    lower = filter_new(under, upper_case, upper_case, CLOSE)
    top = filter_new(lower, bracket, bracket, CLOSE)
    assert top.get_underlying() is lower
    assert lower.get_underlying() is under
    assert top.fileno() == lower.fileno() == under.fileno() >= 0
    top.write(b"abc")
    assert peer.recv(100) == b"<ABC>"
    peer.sendall(b"xyz")
    assert top.read_some(timeout=1) == b"<XYZ>"
    top.free()
    assert recv_until_eof(peer) == b""
    assert lower.freed and under.freed


def test_fileno_of_a_filter_over_a_pair_end_is_minus_one():
    end0, end1 = pair_new()
    assert filter_new(end1, None, None).fileno() == -1


# -- filter_new argument checking ---------------------------------------------


def _freed_pair_end() -> Any:
    end0, _ = pair_new()
    end0.free()
    return end0


def _filtered_pair_end() -> Any:
    end0, _ = pair_new()
    filter_new(end0, None, None)
    return end0


BAD_FILTER_ARGS = [
    pytest.param(lambda: (None, None, None), TypeError, "underlying", id="none"),
    pytest.param(lambda: (Buffer(), None, None), TypeError, "underlying", id="buffer"),
    pytest.param(
        lambda: (pair_new()[0], "f", None), TypeError, "input_filter", id="input-str"
    ),
    pytest.param(
        lambda: (pair_new()[0], None, 5), TypeError, "output_filter", id="output-int"
    ),
    pytest.param(
        lambda: (pair_new()[0], None, None, 0, "f"),
        TypeError,
        "free_context",
        id="free-context-str",
    ),
    pytest.param(
        lambda: (pair_new()[0], None, None, "x"), TypeError, "options", id="options"
    ),
    pytest.param(
        lambda: (pair_new()[0], None, None, 0x100),
        ValueError,
        "options",
        id="options-bit",
    ),
    pytest.param(
        lambda: (_freed_pair_end(), None, None),
        BufferEventError,
        "freed",
        id="freed-underlying",
    ),
    pytest.param(
        lambda: (_filtered_pair_end(), None, None),
        BufferEventError,
        "already has a filter",
        id="already-filtered",
    ),
]


@pytest.mark.parametrize(("make_args", "exc", "match"), BAD_FILTER_ARGS)
def test_filter_new_rejects_bad_arguments(make_args, exc, match):
    args = make_args()
    with pytest.raises(exc, match=match):
        filter_new(*args)
    padded = (tuple(args) + (0, None))[:5]
    assert event2.bufferevent_filter_new(*padded, None) is None


def test_refused_second_filter_leaves_the_first_working():
    end0, end1 = pair_new()
    first = filter_new(end1, None, None)
    with pytest.raises(BufferEventError, match="already has a filter"):
        filter_new(end1, None, None)
    first.enable(EV_READ)
    end0.write(b"still mine")
    assert first.read_some(timeout=1) == b"still mine"


# -- known bugs ------------------------------------------------------------------


def passing_and_counting(calls: list) -> Callable[..., FilterResult]:
    def fn(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        calls.append(mode)
        if not len(src):
            return NEED_MORE
        src.remove_buffer(dst, len(src))
        return OK

    return fn


def test_normal_flush_leaves_disabled_reading_alone():
    end0, end1 = pair_new()
    calls: list = []
    reads: list = []
    bev = filter_new(end1, passing_and_counting(calls), None)
    bev.setcb(lambda b, ctx: reads.append(len(b.input)), None, None)
    end0.write(b"abc")
    end0.flush(EV_WRITE, FlushMode.FLUSH)  # into end1's input
    gevent.sleep(0.02)
    assert bev.get_enabled() == EV_WRITE
    assert (calls, len(end1.input)) == ([], 3)
    bev.flush(EV_READ, FlushMode.NORMAL)
    gevent.sleep(0.02)
    assert calls == []
    assert (len(bev.input), len(end1.input)) == (0, 3)
    assert reads == []


def test_normal_flush_leaves_disabled_writing_alone():
    end0, end1 = pair_new()
    end0.enable(EV_READ)
    calls: list = []
    bev = filter_new(end1, None, passing_and_counting(calls))
    bev.disable(EV_WRITE)
    bev.write(b"abc")
    gevent.sleep(0.02)
    assert (calls, len(bev.output)) == ([], 3)
    bev.flush(EV_WRITE, FlushMode.NORMAL)
    assert calls == []
    assert (len(bev.output), len(end0.input)) == (3, 0)


def test_underlying_writing_eof_reaches_the_user():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    end0.flush(EV_READ, FlushMode.FINISHED)  # end1 gets EOF|WRITING
    gevent.sleep(0.02)
    assert events == [Event.WRITING | Event.EOF]


def test_underlying_eof_on_both_directions_reaches_the_user():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    events: list = []
    bev.setcb(None, None, lambda b, what, ctx: events.append(int(what)))
    bev.enable(EV_READ)
    end0.flush(EV_READ | EV_WRITE, FlushMode.FINISHED)  # end1: EOF|R|W
    gevent.sleep(0.05)
    seen = 0
    for what in events:
        seen |= what
    assert seen == Event.EOF | Event.READING | Event.WRITING


# -- found by the code review ---------------------------------------------------


def test_shutdown_write_after_the_output_side_failed_leaves_dispatch_free():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, lambda *args: FilterResult.ERROR)
    bev.write(b"x")
    gevent.sleep(0.02)
    assert bev.get_error() is not None
    bev.shutdown_write()  # nothing can be finished any more: a no-op
    assert not bev._has_pending_work()
    assert gevent.with_timeout(1, bev.base.dispatch, timeout_value="hung") != "hung"


def test_a_filter_over_a_stranded_pair_end_fails_blocking_calls_at_once():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    end0.free()
    with pytest.raises(BufferEventError, match="other end of the pair was freed"):
        bev.read_some(timeout=5)
    bev.write(b"x")
    with pytest.raises(BufferEventError, match="other end of the pair was freed"):
        bev.drain(timeout=5)


def test_a_read_flush_keeps_the_pending_eof_of_shutdown_write():
    end0, end1 = pair_new()
    end1.setwatermark(EV_READ, 0, 4)  # holds back half of what end0 writes
    end1.enable(EV_READ)
    end0.write(b"12345678")
    end0.shutdown_write()
    end0.flush(EV_READ, FlushMode.FINISHED)  # the other direction
    assert end1.read_until_eof(timeout=1) == b"12345678"


def test_free_from_inside_the_finishing_output_filter_releases_once():
    """A pending shutdown_write() is finished by free(); the output filter
    sees a live filter while it runs, and freeing from there is safe."""
    seen: list = []
    holder: list = []

    def finisher(src, dst, limit, mode, ctx):
        seen.append((mode, holder[0].freed))
        if mode == FlushMode.FINISHED:
            holder[0].free()
        src._move_internal(dst, -1)
        return FilterResult.OK

    end0, end1 = pair_new()
    bev = filter_new(end1, None, finisher, Option.CLOSE_ON_FREE)
    holder.append(bev)
    bev.write(b"abc")
    gevent.sleep(0.01)
    bev.shutdown_write()
    bev.free()
    assert (FlushMode.FINISHED, False) in seen
    assert bev.freed and end1.freed
    end0.enable(EV_READ)
    assert end0.read_until_eof(timeout=1) == b"abc"


def test_a_read_error_below_waits_until_the_bytes_before_it_are_filtered():
    """Bytes the underlying read before its error are still delivered, also
    when the filter's input was at its read high watermark."""
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    bev.setwatermark(EV_READ, 0, 100)
    bev.enable(EV_READ)
    end0.write(b"x" * 1000)
    gevent.sleep(0.02)
    assert len(bev.input) == 100
    # What a socket's reader reports on ECONNRESET, simulated on the pair end.
    end1._report_event(Event.ERROR | Event.READING, ConnectionResetError(104, "reset"))
    got = b""
    with pytest.raises(BufferEventError) as failure:
        while True:
            got += bev.read_some(timeout=1)
    assert got == b"x" * 1000
    assert isinstance(failure.value.__cause__, ConnectionResetError)


def test_flush_on_a_filter_whose_underlying_was_freed_raises():
    end0, end1 = pair_new()
    bev = filter_new(end1, None, None)
    end1.free()
    with pytest.raises(BufferEventError, match="underlying bufferevent was freed"):
        bev.flush(EV_WRITE, FlushMode.FLUSH)
