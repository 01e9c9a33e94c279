"""Tests for geventbev.event2: libevent's C functions and their return codes.

Each function is called once for its success value and, where it has one,
for its failure value; the bad-argument table at the end checks that no bad
argument raises.  The freeze table is libevent's ``evbuffer/freeze_start``
and ``freeze_end`` (semantics §3.2), and two regress scenarios are ported
line by line: an echo server with a connecting client, and
``bufferevent_read_failed``.  Everything runs over socketpairs or
127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable

import gevent
import pytest

import geventbev.event2 as e2
from geventbev import Buffer, EventBase, Listener, SocketBufferEvent
from geventbev.event2 import (
    BEV_EVENT_CONNECTED,
    BEV_EVENT_EOF,
    BEV_EVENT_ERROR,
    BEV_OPT_CLOSE_ON_FREE,
    EV_READ,
    EV_WRITE,
    LEV_OPT_CLOSE_ON_FREE,
    LEV_OPT_REUSEABLE,
    bufferevent_enable,
    bufferevent_free,
    bufferevent_get_input,
    bufferevent_get_output,
    bufferevent_read,
    bufferevent_setcb,
    bufferevent_socket_connect,
    bufferevent_socket_new,
    bufferevent_write,
    evbuffer_add_buffer,
    evbuffer_freeze,
    evbuffer_get_length,
    evconnlistener_free,
    evconnlistener_get_base,
    evconnlistener_new_bind,
    event_base_dispatch,
    event_base_got_exit,
    event_base_loopexit,
)

LOOPBACK = ("127.0.0.1", 0)


def wait_until(predicate: Callable[[], Any], timeout: float = 2.0) -> bool:
    """Let the hub run until ``predicate()`` is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.002)
    return True


def no_accept(*args: Any) -> None:
    raise AssertionError("no connection expected")


@pytest.fixture
def base():
    base = e2.event_base_new()
    yield base
    e2.event_base_free(base)


@pytest.fixture
def sockpair(base):
    """A socket bufferevent on one end of a socketpair, and the raw other end."""
    ours, peer = socket.socketpair()
    bev = e2.bufferevent_socket_new(base, ours, BEV_OPT_CLOSE_ON_FREE)
    yield bev, peer
    e2.bufferevent_free(bev)
    peer.close()


def filled(data: bytes = b"hellofoocatattack") -> Buffer:
    buf = e2.evbuffer_new()
    assert e2.evbuffer_add(buf, data) == 0
    return buf


def test_every_function_has_a_one_line_docstring():
    for name in e2.__all__:
        fn = getattr(e2, name)
        if callable(fn) and name.islower():
            doc = fn.__doc__ or ""
            assert doc and "\n" not in doc.strip(), name


def test_constants_are_reexported_with_libevent_values():
    assert (e2.EV_READ, e2.EV_WRITE) == (0x02, 0x04)
    assert (e2.BEV_EVENT_EOF, e2.BEV_EVENT_CONNECTED) == (0x10, 0x80)
    assert e2.EVBUFFER_EOL_NUL == 4
    assert e2.LEV_OPT_REUSEABLE == 1 << 3 and e2.LEV_OPT_DISABLED == 1 << 5


# -- event_base ----------------------------------------------------------------


def test_event_base_new_and_free():
    base = e2.event_base_new()
    assert isinstance(base, EventBase)
    assert e2.event_base_free(base) is None


def test_dispatch_returns_1_when_nothing_is_pending(base):
    assert e2.event_base_dispatch(base) == 1
    assert e2.event_base_got_exit(base) == 0
    assert e2.event_base_got_break(base) == 0


def test_dispatch_returns_0_after_loopexit(base):
    lev = e2.evconnlistener_new_bind(base, no_accept, None, 0, -1, LOOPBACK)
    assert e2.event_base_loopexit(base, 0.02) == 0
    assert e2.event_base_dispatch(base) == 0
    assert (e2.event_base_got_exit(base), e2.event_base_got_break(base)) == (1, 0)
    e2.evconnlistener_free(lev)


def test_dispatch_returns_0_after_loopbreak(base):
    lev = e2.evconnlistener_new_bind(base, no_accept, None, 0, -1, LOOPBACK)
    results: list = []
    gevent.spawn_later(0.01, lambda: results.append(e2.event_base_loopbreak(base)))
    assert e2.event_base_dispatch(base) == 0
    assert results == [0]
    assert (e2.event_base_got_exit(base), e2.event_base_got_break(base)) == (0, 1)
    e2.evconnlistener_free(lev)


def test_dispatch_from_the_hub_fails(base):
    results: list = []
    hub = gevent.get_hub()
    hub.loop.run_callback(lambda: results.append(e2.event_base_dispatch(base)))
    assert wait_until(lambda: results)
    assert results == [-1]


def test_earlier_loopexit_is_not_postponed_by_a_later_one(base):
    lev = e2.evconnlistener_new_bind(base, no_accept, None, 0, -1, LOOPBACK)
    e2.event_base_loopexit(base, 0.01)
    e2.event_base_loopexit(base, 0.5)
    started = time.monotonic()
    try:
        assert e2.event_base_dispatch(base) == 0
        assert time.monotonic() - started < 0.3
    finally:
        e2.evconnlistener_free(lev)


# -- evbuffer ------------------------------------------------------------------


def test_evbuffer_new_free_length():
    buf = e2.evbuffer_new()
    assert isinstance(buf, Buffer)
    assert e2.evbuffer_get_length(buf) == 0
    assert e2.evbuffer_add(buf, b"abc") == 0
    assert e2.evbuffer_get_length(buf) == 3
    assert e2.evbuffer_get_contiguous_space(buf) == 3
    assert e2.evbuffer_free(buf) is None


def test_evbuffer_add_and_prepend_take_an_optional_c_length():
    buf = e2.evbuffer_new()
    assert e2.evbuffer_add(buf, b"hello world", 5) == 0
    assert e2.evbuffer_add(buf, bytearray(b"!?"), 1) == 0
    assert e2.evbuffer_prepend(buf, b">> ignored", 3) == 0
    assert e2.evbuffer_prepend(buf, memoryview(b"[")) == 0
    assert bytes(buf) == b"[>> hello!"
    assert e2.evbuffer_add(buf, b"abc", 4) == -1
    assert bytes(buf) == b"[>> hello!"


def test_evbuffer_add_printf_returns_the_bytes_added():
    buf = e2.evbuffer_new()
    assert e2.evbuffer_add_printf(buf, "Hello %s", "world") == 11
    assert e2.evbuffer_add_printf(buf, b" %d", 42) == 3
    assert bytes(buf) == b"Hello world 42"
    assert e2.evbuffer_add_printf(buf, "%d", "not a number") == -1
    assert e2.evbuffer_get_length(buf) == 14


def test_evbuffer_add_buffer_and_prepend_buffer_move_everything():
    dst, src = filled(b"middle"), filled(b"-end")
    assert e2.evbuffer_add_buffer(dst, src) == 0
    assert e2.evbuffer_prepend_buffer(dst, filled(b"start-")) == 0
    assert (bytes(dst), len(src)) == (b"start-middle-end", 0)
    assert e2.evbuffer_add_buffer(dst, "text") == -1


def test_evbuffer_remove_buffer_returns_the_count_moved():
    src, dst = filled(b"abcdef"), e2.evbuffer_new()
    assert e2.evbuffer_remove_buffer(src, dst, 4) == 4
    assert e2.evbuffer_remove_buffer(src, dst, 100) == 2
    assert e2.evbuffer_remove_buffer(src, dst, 1) == 0
    assert (bytes(src), bytes(dst)) == (b"", b"abcdef")
    assert e2.evbuffer_remove_buffer(src, dst, -1) == -1


def test_evbuffer_remove_buffer_of_zero_bytes_ignores_freezing():
    """C answers datlen 0 before it looks at either buffer's freeze state."""
    src, dst = filled(b"abc"), e2.evbuffer_new()
    e2.evbuffer_freeze(src, 1)
    assert e2.evbuffer_remove_buffer(src, dst, 0) == 0
    assert e2.evbuffer_remove_buffer(src, dst, 1) == -1


def test_evbuffer_drain_clamps_to_the_length():
    buf = filled(b"abcdef")
    assert e2.evbuffer_drain(buf, 2) == 0
    assert bytes(buf) == b"cdef"
    assert e2.evbuffer_drain(buf, 100) == 0
    assert e2.evbuffer_get_length(buf) == 0
    assert e2.evbuffer_drain(buf, -1) == -1


def test_evbuffer_remove_returns_bytes():
    buf = filled(b"abcdef")
    assert e2.evbuffer_remove(buf, 4) == b"abcd"
    assert e2.evbuffer_remove(buf, 10) == b"ef"
    assert e2.evbuffer_remove(buf, 10) == b""
    assert e2.evbuffer_remove(buf, -1) is None


def test_evbuffer_remove_across_chunks_keeps_the_stream():
    """A remove that spans chunks must not repeat or lose a byte."""
    stream = bytes(range(256)) * 6 + b"0123456789" * 150
    buf = e2.evbuffer_new()
    e2.evbuffer_add(buf, stream[:1536])  # two chunks: too big to merge
    e2.evbuffer_add(buf, stream[1536:])
    first = e2.evbuffer_remove(buf, 1546)
    assert first + e2.evbuffer_remove(buf, 5000) == stream


def test_evbuffer_remove_from_an_empty_frozen_buffer_is_empty_not_failed():
    """C clamps to the length first; nothing to copy means 0, frozen or not."""
    buf = e2.evbuffer_new()
    e2.evbuffer_freeze(buf, 1)
    assert e2.evbuffer_remove(buf, 5) == b""
    assert e2.evbuffer_copyout(buf, 5) == b""


def test_evbuffer_copyout_and_copyout_from_leave_the_bytes():
    buf = filled(b"abcdef")
    assert e2.evbuffer_copyout(buf, 3) == b"abc"
    assert e2.evbuffer_copyout_from(buf, 4, 10) == b"ef"
    assert e2.evbuffer_copyout_from(buf, None, 2) == b"ab"
    assert e2.evbuffer_copyout_from(buf, 6, 2) == b""
    assert e2.evbuffer_get_length(buf) == 6
    assert e2.evbuffer_copyout_from(buf, 7, 1) is None


def test_evbuffer_copyout_refuses_a_front_frozen_buffer():
    """libevent's copyout_from returns -1 when the front is frozen."""
    buf = filled(b"abc")
    e2.evbuffer_freeze(buf, 1)
    assert e2.evbuffer_copyout(buf, 2) is None
    e2.evbuffer_unfreeze(buf, 1)
    assert e2.evbuffer_copyout(buf, 2) == b"ab"


def test_evbuffer_pullup():
    buf = e2.evbuffer_new()
    for piece in (b"ab" * 600, b"cd" * 600, b"ef"):
        e2.evbuffer_add(buf, piece)
    view = e2.evbuffer_pullup(buf, 1300)
    assert bytes(view) == (b"ab" * 600 + b"cd" * 50)
    assert bytes(e2.evbuffer_pullup(buf, -1)) == bytes(buf)
    assert e2.evbuffer_pullup(buf, 0) is None
    assert e2.evbuffer_pullup(buf, 5000) is None
    assert e2.evbuffer_pullup(e2.evbuffer_new(), -1) is None


@pytest.mark.parametrize(
    "style, data, lines",
    [
        (e2.EVBUFFER_EOL_ANY, b"one\r\n\n\rtwo\n", [b"one", b"two", None]),
        (e2.EVBUFFER_EOL_CRLF, b"a\rb\nc\r\n\nd", [b"a\rb", b"c", b"", None]),
        (e2.EVBUFFER_EOL_CRLF_STRICT, b"x\ny\r\nz\r", [b"x\ny", None]),
        (e2.EVBUFFER_EOL_LF, b"An\rand\n\nText", [b"An\rand", b"", None]),
        (e2.EVBUFFER_EOL_NUL, b"NUL\n\0\0rest", [b"NUL\n", b"", None]),
    ],
)
def test_evbuffer_readln(style, data, lines):
    buf = filled(data)
    assert [e2.evbuffer_readln(buf, style) for _ in lines] == lines


def test_evbuffer_search_vectors():
    """Vectors from libevent's evbuffer/search test."""
    buf = filled(b"hellofoocatattack")
    assert e2.evbuffer_search(buf, b"attack") == 11
    assert e2.evbuffer_search(buf, b"attacker") == -1
    assert e2.evbuffer_search(buf, b"oc", 2) == 7
    assert e2.evbuffer_search(buf, b"cat", None, 7) == 8
    assert e2.evbuffer_search(buf, b"tacking", None, 8) == -1
    assert e2.evbuffer_search(buf, b"tat", start=7) == 10
    assert e2.evbuffer_search(buf, b"", 0, 5) == 5
    assert e2.evbuffer_search_range(buf, b"foocata", None, 0, 12) == 5
    assert e2.evbuffer_search_range(buf, b"foocatat", None, 0, 12) == -1
    assert e2.evbuffer_search_range(buf, b"attack", None, 11, 17) == 11
    assert e2.evbuffer_search_range(buf, b"attack", None, 17, 17) == -1


def test_evbuffer_search_eol_vectors():
    buf = filled(b"string! \r\n\r\nx\n")
    assert e2.evbuffer_search_eol(buf, None, e2.EVBUFFER_EOL_CRLF) == (8, 2)
    assert e2.evbuffer_search_eol(buf, 9, e2.EVBUFFER_EOL_CRLF) == (9, 1)
    assert e2.evbuffer_search_eol(buf, 9, e2.EVBUFFER_EOL_CRLF_STRICT) == (10, 2)
    assert e2.evbuffer_search_eol(buf, 10, e2.EVBUFFER_EOL_LF) == (11, 1)
    assert e2.evbuffer_search_eol(buf, 14, e2.EVBUFFER_EOL_LF) == (-1, 0)


def test_evbuffer_expand_reserve_and_commit():
    buf = filled(b"head:")
    assert e2.evbuffer_expand(buf, 4096) == 0
    view = e2.evbuffer_reserve_space(buf, 10)
    view[:4] = b"tail"
    assert e2.evbuffer_commit_space(buf, 4) == 0
    assert bytes(buf) == b"head:tail"
    assert e2.evbuffer_commit_space(buf, 1) == -1


def test_evbuffer_freeze_and_unfreeze():
    buf = filled(b"abc")
    assert e2.evbuffer_freeze(buf, 0) == 0
    assert e2.evbuffer_add(buf, b"d") == -1
    assert e2.evbuffer_unfreeze(buf, 0) == 0
    assert e2.evbuffer_add(buf, b"d") == 0
    assert bytes(buf) == b"abcd"


def test_evbuffer_callbacks_add_and_remove():
    buf = e2.evbuffer_new()
    log: list = []

    def cb(b: Buffer, info: Any, arg: Any) -> None:
        log.append((arg, info.orig_size, info.n_added, info.n_deleted))

    first = e2.evbuffer_add_cb(buf, cb, "one")
    assert first is not None
    assert e2.evbuffer_add_cb(buf, cb, "two") is not None
    e2.evbuffer_add(buf, b"abc")
    assert log == [("two", 0, 3, 0), ("one", 0, 3, 0)]
    assert e2.evbuffer_remove_cb(buf, cb, "two") == 0
    assert e2.evbuffer_remove_cb(buf, cb, "two") == -1
    e2.evbuffer_drain(buf, 1)
    assert log[-1] == ("one", 3, 0, 1)
    assert e2.evbuffer_remove_cb_entry(buf, first) == 0
    assert e2.evbuffer_remove_cb_entry(buf, first) == -1
    e2.evbuffer_drain(buf, 1)
    assert len(log) == 3


def test_evbuffer_callback_that_raises_does_not_fail_the_operation(monkeypatch):
    """The error goes to the hub's handler; the add itself succeeded."""
    reported: list = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda ctx, t, v, tb: reported.append(v))
    buf = e2.evbuffer_new()

    def bad_cb(b: Buffer, info: Any, arg: Any) -> None:
        raise ValueError("callback bug")

    e2.evbuffer_add_cb(buf, bad_cb, None)
    assert e2.evbuffer_add(buf, b"abc") == 0
    assert bytes(buf) == b"abc"
    assert [str(exc) for exc in reported] == ["callback bug"]


# -- the evbuffer freeze table (semantics §3.2) ------------------------------------


def _reserve_then_commit(buf: Buffer, tmp: Buffer, freeze: Callable[[], Any]) -> Any:
    view = e2.evbuffer_reserve_space(buf, 10)
    view[:4] = b"more"
    freeze()
    return e2.evbuffer_commit_space(buf, 4)


def _plain(op: Callable[[Buffer, Buffer], Any]) -> Callable[..., Any]:
    def run(buf: Buffer, tmp: Buffer, freeze: Callable[[], Any]) -> Any:
        freeze()
        return op(buf, tmp)

    return run


REFUSED = object()

# (operation, result with the front frozen, result with the end frozen);
# REFUSED stands for the C failure value (-1, or None where C gives NULL).
FREEZE_TABLE = {
    "add 0 bytes": (_plain(lambda b, t: e2.evbuffer_add(b, b"")), 0, REFUSED),
    "reserve_space": (
        _plain(lambda b, t: e2.evbuffer_reserve_space(b, 10) is not None or None),
        True,
        REFUSED,
    ),
    "commit_space": (_reserve_then_commit, 0, REFUSED),
    "add_printf": (
        _plain(lambda b, t: e2.evbuffer_add_printf(b, "Hello %s", "world")),
        11,
        REFUSED,
    ),
    "add_buffer": (_plain(lambda b, t: e2.evbuffer_add_buffer(b, t)), 0, REFUSED),
    "remove 1 byte": (_plain(lambda b, t: e2.evbuffer_remove(b, 1)), REFUSED, b"L"),
    "drain 3": (_plain(lambda b, t: e2.evbuffer_drain(b, 3)), REFUSED, 0),
    "prepend 5": (_plain(lambda b, t: e2.evbuffer_prepend(b, b"01234")), REFUSED, 0),
    "readln LF": (
        _plain(lambda b, t: e2.evbuffer_readln(b, e2.EVBUFFER_EOL_LF)),
        REFUSED,
        b"Line one",
    ),
    "remove_buffer 3": (
        _plain(lambda b, t: e2.evbuffer_remove_buffer(b, t, 3)),
        REFUSED,
        3,
    ),
    "prepend_buffer": (
        _plain(lambda b, t: e2.evbuffer_prepend_buffer(b, t)),
        REFUSED,
        0,
    ),
    "copyout 2": (_plain(lambda b, t: e2.evbuffer_copyout(b, 2)), REFUSED, b"Li"),
}


@pytest.mark.parametrize("at_front", [1, 0], ids=["front", "end"])
@pytest.mark.parametrize("op", sorted(FREEZE_TABLE))
def test_freeze_table(op, at_front):
    run, front_result, end_result = FREEZE_TABLE[op]
    expected = front_result if at_front else end_result
    buf = filled(b"Line one\nLine two\n")
    tmp = filled(b"tmp data")
    before = e2.evbuffer_get_length(buf)

    result = run(buf, tmp, lambda: e2.evbuffer_freeze(buf, at_front))

    if expected is REFUSED:
        assert result in (-1, None)
        assert e2.evbuffer_get_length(buf) == before
        assert e2.evbuffer_get_length(tmp) == 8
    else:
        assert result == expected


# -- bufferevents over a socketpair --------------------------------------------------


def test_socket_new_accepts_a_socket_a_descriptor_none_or_minus_one(base):
    a, b = socket.socketpair()
    with_sock = e2.bufferevent_socket_new(base, a, BEV_OPT_CLOSE_ON_FREE)
    fd = b.detach()
    with_fd = e2.bufferevent_socket_new(None, fd, BEV_OPT_CLOSE_ON_FREE)
    unset = e2.bufferevent_socket_new(base, -1, 0)
    none = e2.bufferevent_socket_new(base, None, 0)
    assert isinstance(with_sock, SocketBufferEvent)
    assert e2.bufferevent_getfd(with_sock) == a.fileno()
    assert e2.bufferevent_getfd(with_fd) == fd
    assert e2.bufferevent_getfd(unset) == e2.bufferevent_getfd(none) == -1
    assert e2.bufferevent_get_base(with_sock) is base
    for bev in (with_sock, with_fd, unset, none):
        assert e2.bufferevent_free(bev) is None
    assert a.fileno() == -1


def test_write_and_read_over_a_socketpair(sockpair):
    bev, peer = sockpair
    assert e2.bufferevent_write(bev, b"ping pong", 4) == 0
    assert e2.bufferevent_write_buffer(bev, filled(b"!")) == 0
    out = e2.bufferevent_get_output(bev)
    assert wait_until(lambda: e2.evbuffer_get_length(out) == 0)
    peer.settimeout(2)
    assert peer.recv(100) == b"ping!"

    assert e2.bufferevent_enable(bev, EV_READ) == 0
    peer.sendall(b"hello world")
    inp = e2.bufferevent_get_input(bev)
    assert wait_until(lambda: e2.evbuffer_get_length(inp) == 11)
    assert e2.bufferevent_read(bev, 5) == b"hello"
    dst = e2.evbuffer_new()
    assert e2.bufferevent_read_buffer(bev, dst) == 0
    assert bytes(dst) == b" world"
    assert e2.bufferevent_read(bev, 5) == b""


def test_input_and_output_are_frozen_like_libevent(sockpair):
    """The user may not append to input nor take from output."""
    bev, _ = sockpair
    assert e2.evbuffer_add(e2.bufferevent_get_input(bev), b"x") == -1
    out = e2.bufferevent_get_output(bev)
    assert e2.evbuffer_prepend(out, b"x") == -1
    assert e2.evbuffer_add(out, b"") == 0


def test_enable_disable_get_enabled(sockpair):
    bev, _ = sockpair
    assert e2.bufferevent_get_enabled(bev) == EV_WRITE
    assert e2.bufferevent_enable(bev, EV_READ | EV_WRITE) == 0
    assert e2.bufferevent_get_enabled(bev) == EV_READ | EV_WRITE
    assert e2.bufferevent_disable(bev, EV_WRITE) == 0
    assert e2.bufferevent_get_enabled(bev) == EV_READ
    assert e2.bufferevent_enable(bev, 0) == 0
    assert e2.bufferevent_disable(bev, 0) == 0
    assert e2.bufferevent_get_enabled(bev) == EV_READ


def test_setcb_and_getcb(sockpair):
    bev, _ = sockpair

    def readcb(b: Any, ctx: Any) -> None:
        pass

    def eventcb(b: Any, what: int, ctx: Any) -> None:
        pass

    assert e2.bufferevent_getcb(bev) == (None, None, None, None)
    assert e2.bufferevent_setcb(bev, readcb, None, eventcb, "arg") is None
    assert e2.bufferevent_getcb(bev) == (readcb, None, eventcb, "arg")
    assert e2.bufferevent_setcb(bev, "not callable", None, None) is None
    assert e2.bufferevent_getcb(bev) == (readcb, None, eventcb, "arg")


def test_watermarks(sockpair):
    bev, _ = sockpair
    assert e2.bufferevent_getwatermark(bev, EV_READ) == (0, 0)
    assert e2.bufferevent_setwatermark(bev, EV_READ, 10, 20) is None
    assert e2.bufferevent_setwatermark(bev, EV_WRITE, 100, 2000) is None
    assert e2.bufferevent_getwatermark(bev, EV_READ) == (10, 20)
    assert e2.bufferevent_getwatermark(bev, EV_WRITE) == (100, 2000)
    assert e2.bufferevent_getwatermark(bev, EV_READ | EV_WRITE) == -1


def test_read_timeout_reports_reading_timeout_and_disables(sockpair):
    bev, _ = sockpair
    events: list = []
    e2.bufferevent_setcb(
        bev, None, None, lambda b, what, ctx: events.append(what), None
    )
    assert e2.bufferevent_set_timeouts(bev, 0.05, None) == 0
    e2.bufferevent_enable(bev, EV_READ)
    assert wait_until(lambda: events)
    assert events == [e2.BEV_EVENT_READING | e2.BEV_EVENT_TIMEOUT]
    assert e2.bufferevent_get_enabled(bev) == EV_WRITE
    assert e2.bufferevent_set_timeouts(bev, None, None) == 0


def test_flush_on_a_socket_is_a_noop(sockpair):
    bev, _ = sockpair
    assert e2.bufferevent_flush(bev, EV_WRITE, e2.BEV_FLUSH) == 0
    assert e2.bufferevent_flush(bev, EV_READ | EV_WRITE, e2.BEV_FINISHED) == 0
    assert e2.bufferevent_flush(bev, 0, e2.BEV_NORMAL) == 0
    assert e2.bufferevent_flush(bev, EV_WRITE, 7) == -1


def test_trigger_honours_watermarks_unless_told_not_to(sockpair):
    """Regress bufferevent_trigger: read-low above the length blocks a trigger."""
    bev, _ = sockpair
    calls: list = []
    e2.bufferevent_setcb(
        bev,
        lambda b, ctx: calls.append("read"),
        None,
        lambda b, what, ctx: calls.append(what),
        None,
    )
    e2.bufferevent_setwatermark(bev, EV_READ, 1, 0)
    assert e2.bufferevent_trigger(bev, EV_READ, 0) is None
    assert calls == []
    # Unknown option bits are ignored, as C masks them.
    e2.bufferevent_trigger(bev, EV_READ, e2.BEV_TRIG_IGNORE_WATERMARKS | 1 << 20)
    assert calls == ["read"]
    assert e2.bufferevent_trigger_event(bev, ~0, 0) is None
    assert calls == ["read", -1]


def test_underlying_fd_partner(sockpair):
    bev, peer = sockpair
    assert e2.bufferevent_get_underlying(bev) is None
    assert e2.bufferevent_getfd(bev) >= 0
    assert e2.bufferevent_pair_get_partner(bev) is None


def test_pair_get_partner_uses_get_partner_when_the_kind_has_one(base):
    class Paired(SocketBufferEvent):
        partner: Any = None

        def get_partner(self) -> Any:
            return self.partner

    one, two = Paired(base=base), Paired(base=base)
    one.partner = two
    assert e2.bufferevent_pair_get_partner(one) is two
    assert e2.bufferevent_pair_get_partner(two) is None
    one.free()
    two.free()


def test_max_single_read_and_write(sockpair):
    bev, _ = sockpair
    assert e2.bufferevent_get_max_single_read(bev) == 65536
    assert e2.bufferevent_set_max_single_read(bev, 1024) == 0
    assert e2.bufferevent_set_max_single_write(bev, 2048) == 0
    assert e2.bufferevent_get_max_single_read(bev) == 1024
    assert e2.bufferevent_get_max_single_write(bev) == 2048
    assert e2.bufferevent_set_max_single_read(bev, 0) == 0
    assert e2.bufferevent_get_max_single_read(bev) == 65536
    assert e2.bufferevent_set_max_single_read(bev, 2**31 - 1) == 0
    assert e2.bufferevent_set_max_single_write(bev, 2**63) == 0
    assert e2.bufferevent_get_max_single_write(bev) == 65536


def test_max_single_read_above_int_max_fails_but_is_stored(sockpair):
    """libevent stores the value, then its int-sized evbuffer refuses it."""
    bev, _ = sockpair
    assert e2.bufferevent_set_max_single_read(bev, 2**31) == -1
    assert e2.bufferevent_get_max_single_read(bev) == 2**31
    assert e2.bufferevent_set_max_single_read(bev, 2**63) == 0
    assert e2.bufferevent_get_max_single_read(bev) == 65536


def test_functions_on_a_freed_bufferevent_fail(sockpair):
    bev, _ = sockpair
    e2.bufferevent_free(bev)
    assert e2.bufferevent_free(bev) is None
    assert e2.bufferevent_write(bev, b"x") == -1
    assert e2.bufferevent_get_input(bev) is None
    assert e2.bufferevent_getfd(bev) == -1
    assert e2.bufferevent_read(bev, 1) == b""


def test_read_failed_port(base):
    """Regress bufferevent_read_failed: a frozen input front makes read give 0."""
    pair = socket.socketpair()
    results: dict = {}

    def readcb(bev: Any, ctx: Any) -> None:
        results["len"] = evbuffer_get_length(bufferevent_get_input(bev))
        results["first"] = bufferevent_read(bev, 8)
        evbuffer_freeze(bufferevent_get_input(bev), 1)
        results["second"] = bufferevent_read(bev, 1)
        event_base_loopexit(base, None)

    bev = bufferevent_socket_new(base, pair[0], BEV_OPT_CLOSE_ON_FREE)
    bufferevent_setcb(bev, readcb, None, None, None)
    pair[1].sendall(b"test data")
    bufferevent_enable(bev, EV_READ)
    event_base_loopexit(base, 2.0)
    assert event_base_dispatch(base) == 0
    bufferevent_free(bev)
    pair[1].close()
    assert results == {"len": 9, "first": b"test dat", "second": b""}


# -- connecting ---------------------------------------------------------------------


def test_connect_refused_is_an_error_event_and_returns_0(base):
    """A port bound but not listening refuses; C reports ERROR, no direction."""
    closed = socket.socket()
    closed.bind(LOOPBACK)
    events: list = []
    bev = e2.bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)
    e2.bufferevent_setcb(bev, None, None, lambda b, what, c: events.append(what), None)
    try:
        assert e2.bufferevent_socket_connect(bev, closed.getsockname()) == 0
        assert wait_until(lambda: events)
        assert events == [BEV_EVENT_ERROR]
    finally:
        e2.bufferevent_free(bev)
        closed.close()


def test_connect_hostname_with_a_literal_address(base):
    accepted: list = []
    lev = e2.evconnlistener_new_bind(
        base,
        lambda lev, sock, addr, socklen, ctx: accepted.append(sock),
        None,
        LEV_OPT_REUSEABLE,
        -1,
        LOOPBACK,
    )
    port = lev.getsockname()[1]
    events: list = []
    bev = e2.bufferevent_socket_new(base, None, BEV_OPT_CLOSE_ON_FREE)
    e2.bufferevent_setcb(bev, None, None, lambda b, what, c: events.append(what), None)
    try:
        assert e2.bufferevent_socket_get_dns_error(bev) == 0
        rc = e2.bufferevent_socket_connect_hostname(
            bev, None, socket.AF_INET, "127.0.0.1", port
        )
        assert rc == 0
        assert wait_until(lambda: events and accepted)
        assert events == [BEV_EVENT_CONNECTED]
        assert e2.bufferevent_socket_get_dns_error(bev) == 0
    finally:
        e2.bufferevent_free(bev)
        e2.evconnlistener_free(lev)
        for sock in accepted:
            sock.close()


def test_ported_echo_program(base):
    """A libevent echo server and client, ported line by line.

    The client connects with fd -1, queues its message before the connect
    completes, and sees CONNECTED (0x80); the server echoes everything back
    and frees its bufferevent once the echo is sent, so the client then
    sees READING|EOF (0x11).
    """
    message = b"Now is the time for all good events to signal\n" * 8
    server = {"received": 0, "freed": 0}
    client = {"events": [], "echoed": b""}

    def echo_read_cb(bev: Any, ctx: dict) -> None:
        input = bufferevent_get_input(bev)
        output = bufferevent_get_output(bev)
        ctx["received"] += evbuffer_get_length(input)
        evbuffer_add_buffer(output, input)

    def echo_write_cb(bev: Any, ctx: dict) -> None:
        if ctx["received"] == len(message):
            bufferevent_free(bev)
            ctx["freed"] += 1

    def echo_event_cb(bev: Any, events: int, ctx: dict) -> None:
        if events & (BEV_EVENT_ERROR | BEV_EVENT_EOF):
            bufferevent_free(bev)

    def accept_conn_cb(listener: Any, fd: Any, address: Any, socklen: int, ctx: dict):
        base = evconnlistener_get_base(listener)
        bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE)
        bufferevent_setcb(bev, echo_read_cb, echo_write_cb, echo_event_cb, ctx)
        bufferevent_enable(bev, EV_READ | EV_WRITE)

    def client_read_cb(bev: Any, ctx: dict) -> None:
        while data := bufferevent_read(bev, 4096):
            ctx["echoed"] += data

    def client_event_cb(bev: Any, events: int, ctx: dict) -> None:
        ctx["events"].append(events)
        if events & (BEV_EVENT_EOF | BEV_EVENT_ERROR):
            bufferevent_free(bev)
            event_base_loopexit(base, None)

    listener = evconnlistener_new_bind(
        base,
        accept_conn_cb,
        server,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
        -1,
        ("127.0.0.1", 0),
    )
    assert listener is not None
    address = listener.getsockname()

    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)
    bufferevent_setcb(bev, client_read_cb, None, client_event_cb, client)
    assert bufferevent_enable(bev, EV_READ | EV_WRITE) == 0
    assert bufferevent_socket_connect(bev, address) == 0
    assert bufferevent_write(bev, message) == 0

    event_base_loopexit(base, 5.0)  # watchdog; the EOF handler exits first
    assert event_base_dispatch(base) == 0
    assert event_base_got_exit(base) == 1
    evconnlistener_free(listener)

    assert client["echoed"] == message
    assert client["events"] == [0x80, 0x11]
    assert server == {"received": len(message), "freed": 1}


# -- listeners ------------------------------------------------------------------------


def test_listener_accepts_with_libevents_callback_shape(base):
    seen: list = []

    def accept_cb(lev: Any, fd: Any, address: Any, socklen: int, ctx: Any) -> None:
        seen.append((lev, address, socklen, ctx))
        fd.close()

    lev = e2.evconnlistener_new_bind(
        base, accept_cb, "ctx", LEV_OPT_REUSEABLE, 16, LOOPBACK
    )
    assert isinstance(lev, Listener)
    assert e2.evconnlistener_get_base(lev) is base
    assert e2.evconnlistener_get_fd(lev) >= 0
    with socket.create_connection(lev.getsockname(), timeout=2) as client:
        assert wait_until(lambda: seen)
        assert seen == [(lev, client.getsockname(), 16, "ctx")]
    assert e2.evconnlistener_free(lev) is None
    assert e2.evconnlistener_get_fd(lev) == -1


def test_listener_created_disabled_waits_for_enable(base):
    accepted: list = []

    def accept_cb(lev: Any, fd: Any, address: Any, socklen: int, ctx: Any) -> None:
        accepted.append(fd)

    lev = e2.evconnlistener_new_bind(
        base, accept_cb, None, e2.LEV_OPT_DISABLED, -1, LOOPBACK
    )
    try:
        with socket.create_connection(lev.getsockname(), timeout=2):
            gevent.sleep(0.05)
            assert accepted == []
            assert e2.evconnlistener_enable(lev) == 0
            assert wait_until(lambda: accepted)
            assert e2.evconnlistener_disable(lev) == 0
    finally:
        e2.evconnlistener_free(lev)
        for sock in accepted:
            sock.close()


def test_listener_set_cb_replaces_the_callback(base):
    seen: list = []
    lev = e2.evconnlistener_new_bind(base, no_accept, None, 0, -1, LOOPBACK)

    def accept_cb(lev: Any, fd: Any, address: Any, socklen: int, ctx: Any) -> None:
        seen.append(ctx)
        fd.close()

    assert e2.evconnlistener_set_cb(lev, accept_cb, "new") is None
    try:
        with socket.create_connection(lev.getsockname(), timeout=2):
            assert wait_until(lambda: seen)
        assert seen == ["new"]
    finally:
        e2.evconnlistener_free(lev)


# -- failures: bad arguments never raise ----------------------------------------------


class Things:
    """Live and dead objects for the bad-argument table."""

    def __init__(self, base: EventBase) -> None:
        self.base = base
        self.buf = filled(b"abc\n")
        self.buf2 = e2.evbuffer_new()
        ours, self.peer = socket.socketpair()
        self.bev = e2.bufferevent_socket_new(base, ours, BEV_OPT_CLOSE_ON_FREE)
        self.dead = e2.bufferevent_socket_new(base, -1, 0)
        e2.bufferevent_free(self.dead)
        self.lev = e2.evconnlistener_new_bind(base, no_accept, None, 0, -1, LOOPBACK)
        self.dead_lev = e2.evconnlistener_new_bind(
            base, no_accept, None, 0, -1, LOOPBACK
        )
        e2.evconnlistener_free(self.dead_lev)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def close(self) -> None:
        e2.bufferevent_free(self.bev)
        e2.evconnlistener_free(self.lev)
        self.peer.close()
        self.udp.close()


@pytest.fixture
def things(base):
    t = Things(base)
    yield t
    t.close()


def _cb(*args: Any) -> None:
    pass


# (function name, arguments built from Things, the C failure value)
BAD_CALLS: list = [
    ("event_base_free", lambda t: (None,), None),
    ("event_base_dispatch", lambda t: (None,), -1),
    ("event_base_dispatch", lambda t: ("base",), -1),
    ("event_base_loopexit", lambda t: (None, None), -1),
    ("event_base_loopexit", lambda t: (t.base, -1.0), -1),
    ("event_base_loopexit", lambda t: (t.base, "soon"), -1),
    ("event_base_loopbreak", lambda t: (None,), -1),
    ("event_base_got_exit", lambda t: (None,), -1),
    ("event_base_got_break", lambda t: (42,), -1),
    ("evbuffer_free", lambda t: (None,), None),
    ("evbuffer_get_length", lambda t: (b"abc",), -1),
    ("evbuffer_get_contiguous_space", lambda t: (None,), -1),
    ("evbuffer_add", lambda t: (None, b"x"), -1),
    ("evbuffer_add", lambda t: (t.buf, "text"), -1),
    ("evbuffer_add", lambda t: (t.buf, 42), -1),
    ("evbuffer_add", lambda t: (t.buf, None), -1),
    ("evbuffer_add", lambda t: (t.buf, b"abc", 4), -1),
    ("evbuffer_add", lambda t: (t.buf, b"abc", -1), -1),
    ("evbuffer_add", lambda t: (t.buf, b"abc", "3"), -1),
    ("evbuffer_prepend", lambda t: (t.buf, "text"), -1),
    ("evbuffer_prepend", lambda t: (t.buf, b"abc", 9), -1),
    ("evbuffer_add_printf", lambda t: (t.buf, 42), -1),
    ("evbuffer_add_printf", lambda t: (t.buf, "%s %s", "one"), -1),
    ("evbuffer_add_printf", lambda t: (None, "x"), -1),
    ("evbuffer_add_buffer", lambda t: (t.buf, b"x"), -1),
    ("evbuffer_add_buffer", lambda t: (None, t.buf), -1),
    ("evbuffer_prepend_buffer", lambda t: (t.buf, None), -1),
    ("evbuffer_remove_buffer", lambda t: (t.buf, None, 1), -1),
    ("evbuffer_remove_buffer", lambda t: (t.buf, t.buf2, -1), -1),
    ("evbuffer_remove_buffer", lambda t: (t.buf, t.buf2, 1.5), -1),
    ("evbuffer_drain", lambda t: (t.buf, -1), -1),
    ("evbuffer_drain", lambda t: (t.buf, "1"), -1),
    ("evbuffer_drain", lambda t: (None, 1), -1),
    ("evbuffer_remove", lambda t: (t.buf, -1), None),
    ("evbuffer_remove", lambda t: (t.buf, 2.0), None),
    ("evbuffer_remove", lambda t: (None, 1), None),
    ("evbuffer_copyout", lambda t: (t.buf, -5), None),
    ("evbuffer_copyout_from", lambda t: (t.buf, -1, 1), None),
    ("evbuffer_copyout_from", lambda t: (t.buf, 10**6, 1), None),
    ("evbuffer_copyout_from", lambda t: (t.buf, "0", 1), None),
    ("evbuffer_pullup", lambda t: (t.buf, "all"), None),
    ("evbuffer_pullup", lambda t: (None, -1), None),
    ("evbuffer_readln", lambda t: (t.buf, 99), None),
    ("evbuffer_readln", lambda t: (t.buf, "lf"), None),
    ("evbuffer_readln", lambda t: (None, e2.EVBUFFER_EOL_LF), None),
    ("evbuffer_search", lambda t: (t.buf, "abc"), -1),
    ("evbuffer_search", lambda t: (t.buf, b"abc", 5), -1),
    ("evbuffer_search", lambda t: (t.buf, b"a", None, -1), -1),
    ("evbuffer_search", lambda t: (None, b"a"), -1),
    ("evbuffer_search_range", lambda t: (t.buf, b"a", None, 0, -2), -1),
    ("evbuffer_search_range", lambda t: (t.buf, b"a", None, 0, "end"), -1),
    ("evbuffer_search_eol", lambda t: (t.buf, -1), (-1, 0)),
    ("evbuffer_search_eol", lambda t: (t.buf, 0, 42), (-1, 0)),
    ("evbuffer_search_eol", lambda t: (None,), (-1, 0)),
    ("evbuffer_expand", lambda t: (t.buf, -1), -1),
    ("evbuffer_expand", lambda t: (t.buf, None), -1),
    ("evbuffer_reserve_space", lambda t: (t.buf, -1), None),
    ("evbuffer_reserve_space", lambda t: (None, 1), None),
    ("evbuffer_commit_space", lambda t: (t.buf, 5), -1),
    ("evbuffer_commit_space", lambda t: (t.buf, -1), -1),
    ("evbuffer_freeze", lambda t: (None, 1), -1),
    ("evbuffer_unfreeze", lambda t: ("buf", 0), -1),
    ("evbuffer_add_cb", lambda t: (t.buf, "not callable"), None),
    ("evbuffer_add_cb", lambda t: (None, _cb), None),
    ("evbuffer_remove_cb_entry", lambda t: (t.buf, object()), -1),
    ("evbuffer_remove_cb_entry", lambda t: (None, object()), -1),
    ("evbuffer_remove_cb", lambda t: (t.buf, _cb, None), -1),
    ("evbuffer_remove_cb", lambda t: (None, _cb, None), -1),
    ("bufferevent_socket_new", lambda t: (t.base, -2, 0), None),
    ("bufferevent_pair_new", lambda t: (t.base, 1 << 10), None),
    ("bufferevent_pair_new", lambda t: ("base", 0), None),
    ("bufferevent_filter_new", lambda t: (None, None, None, 0, None, None), None),
    ("bufferevent_filter_new", lambda t: (t.bev, "f", None, 0, None, None), None),
    ("bufferevent_socket_new", lambda t: ("base", -1, 0), None),
    ("bufferevent_socket_new", lambda t: (t.base, "fd", 0), None),
    ("bufferevent_socket_new", lambda t: (t.base, 1.5, 0), None),
    ("bufferevent_socket_new", lambda t: (t.base, 99999, 0), None),
    ("bufferevent_socket_new", lambda t: (t.base, t.udp, 0), None),
    ("bufferevent_socket_new", lambda t: (t.base, -1, "0"), None),
    (
        "bufferevent_socket_new",
        lambda t: (t.base, -1, e2.BEV_OPT_UNLOCK_CALLBACKS),
        None,
    ),
    ("bufferevent_socket_connect", lambda t: (t.dead, ("127.0.0.1", 9)), -1),
    ("bufferevent_socket_connect", lambda t: (t.bev, None), -1),
    ("bufferevent_socket_connect", lambda t: (t.bev, 42), -1),
    ("bufferevent_socket_connect", lambda t: (t.bev, ("127.0.0.1", 70000)), -1),
    ("bufferevent_socket_connect", lambda t: ("bev", ("127.0.0.1", 9)), -1),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.bev, None, socket.AF_INET, "127.0.0.1", 0),
        -1,
    ),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.bev, None, 12345, "127.0.0.1", 80),
        -1,
    ),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.bev, None, socket.AF_INET, "", 80),
        -1,
    ),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.bev, None, socket.AF_INET, None, 80),
        -1,
    ),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.bev, None, socket.AF_INET, "127.0.0.1", "80"),
        -1,
    ),
    (
        "bufferevent_socket_connect_hostname",
        lambda t: (t.dead, None, socket.AF_INET, "127.0.0.1", 80),
        -1,
    ),
    ("bufferevent_socket_get_dns_error", lambda t: (None,), -1),
    ("bufferevent_socket_get_dns_error", lambda t: (t.dead,), -1),
    ("bufferevent_free", lambda t: (None,), None),
    ("bufferevent_free", lambda t: ("bev",), None),
    ("bufferevent_setcb", lambda t: (t.dead, None, None, None), None),
    ("bufferevent_setcb", lambda t: (t.bev, "not callable", None, None), None),
    ("bufferevent_getcb", lambda t: (t.dead,), None),
    ("bufferevent_getcb", lambda t: (None,), None),
    ("bufferevent_enable", lambda t: (t.dead, EV_READ), -1),
    ("bufferevent_enable", lambda t: (t.bev, 0x10), -1),
    ("bufferevent_enable", lambda t: (t.bev, "r"), -1),
    ("bufferevent_enable", lambda t: (t.bev, None), -1),
    ("bufferevent_enable", lambda t: (t.bev, True), -1),
    ("bufferevent_disable", lambda t: (t.dead, EV_READ), -1),
    ("bufferevent_disable", lambda t: (t.bev, -1), -1),
    ("bufferevent_get_enabled", lambda t: (t.dead,), -1),
    ("bufferevent_get_enabled", lambda t: (None,), -1),
    ("bufferevent_get_input", lambda t: (t.dead,), None),
    ("bufferevent_get_output", lambda t: (None,), None),
    ("bufferevent_get_base", lambda t: (t.dead,), None),
    ("bufferevent_get_underlying", lambda t: ("bev",), None),
    ("bufferevent_getfd", lambda t: (t.dead,), -1),
    ("bufferevent_getfd", lambda t: (None,), -1),
    ("bufferevent_pair_get_partner", lambda t: (None,), None),
    ("bufferevent_write", lambda t: (t.dead, b"x"), -1),
    ("bufferevent_write", lambda t: (t.bev, "text"), -1),
    ("bufferevent_write", lambda t: (t.bev, b"abc", 10), -1),
    ("bufferevent_write", lambda t: (t.bev, None), -1),
    ("bufferevent_write_buffer", lambda t: (t.bev, b"x"), -1),
    ("bufferevent_write_buffer", lambda t: (t.dead, t.buf), -1),
    ("bufferevent_read", lambda t: (t.dead, 10), b""),
    ("bufferevent_read", lambda t: (t.bev, -1), b""),
    ("bufferevent_read", lambda t: (t.bev, "10"), b""),
    ("bufferevent_read_buffer", lambda t: (t.bev, None), -1),
    ("bufferevent_read_buffer", lambda t: (t.dead, t.buf), -1),
    ("bufferevent_set_timeouts", lambda t: (t.bev, -1, None), -1),
    ("bufferevent_set_timeouts", lambda t: (t.bev, "1", None), -1),
    ("bufferevent_set_timeouts", lambda t: (t.bev, float("nan"), None), -1),
    ("bufferevent_set_timeouts", lambda t: (t.dead, 1, 1), -1),
    ("bufferevent_setwatermark", lambda t: (t.bev, EV_READ, -1, 0), None),
    ("bufferevent_setwatermark", lambda t: (t.bev, "r", 1, 2), None),
    ("bufferevent_setwatermark", lambda t: (t.dead, EV_READ, 1, 2), None),
    ("bufferevent_getwatermark", lambda t: (t.bev, EV_READ | EV_WRITE), -1),
    ("bufferevent_getwatermark", lambda t: (t.bev, 0), -1),
    ("bufferevent_getwatermark", lambda t: (t.bev, e2.EV_TIMEOUT), -1),
    ("bufferevent_getwatermark", lambda t: (t.dead, EV_READ), -1),
    ("bufferevent_flush", lambda t: (t.bev, EV_WRITE, 7), -1),
    ("bufferevent_flush", lambda t: (t.bev, 0x10, 0), -1),
    ("bufferevent_flush", lambda t: (t.dead, EV_WRITE, 0), -1),
    ("bufferevent_trigger", lambda t: (t.dead, EV_READ, 0), None),
    ("bufferevent_trigger", lambda t: (t.bev, "r", 0), None),
    ("bufferevent_trigger_event", lambda t: (t.dead, 1, 0), None),
    ("bufferevent_trigger_event", lambda t: (t.bev, "x", 0), None),
    ("bufferevent_set_max_single_read", lambda t: (t.bev, 2**31), -1),
    ("bufferevent_set_max_single_read", lambda t: (t.bev, -1), -1),
    ("bufferevent_set_max_single_read", lambda t: (t.bev, 1.0), -1),
    ("bufferevent_set_max_single_read", lambda t: (t.dead, 1), -1),
    ("bufferevent_set_max_single_write", lambda t: (t.bev, -1), -1),
    ("bufferevent_set_max_single_write", lambda t: (t.dead, 1), -1),
    ("bufferevent_get_max_single_read", lambda t: (t.dead,), -1),
    ("bufferevent_get_max_single_write", lambda t: (None,), -1),
    (
        "evconnlistener_new_bind",
        lambda t: (t.base, _cb, None, e2.LEV_OPT_REUSEABLE_PORT, -1, LOOPBACK),
        None,
    ),
    (
        "evconnlistener_new_bind",
        lambda t: (t.base, _cb, None, 1 << 12, -1, LOOPBACK),
        None,
    ),
    ("evconnlistener_new_bind", lambda t: (t.base, _cb, None, "0", -1, LOOPBACK), None),
    ("evconnlistener_new_bind", lambda t: (t.base, _cb, None, 0, 0, LOOPBACK), None),
    ("evconnlistener_new_bind", lambda t: (t.base, None, None, 0, -1, LOOPBACK), None),
    ("evconnlistener_new_bind", lambda t: ("base", _cb, None, 0, -1, LOOPBACK), None),
    ("evconnlistener_new_bind", lambda t: (t.base, _cb, None, 0, -1, 42), None),
    (
        "evconnlistener_new_bind",
        lambda t: (t.base, _cb, None, 0, -1, ("127.0.0.1", -1)),
        None,
    ),
    (
        "evconnlistener_new_bind",
        lambda t: (t.base, _cb, None, 0, -1, t.lev.getsockname()),
        None,
    ),
    ("evconnlistener_free", lambda t: (None,), None),
    ("evconnlistener_enable", lambda t: (t.dead_lev,), -1),
    ("evconnlistener_disable", lambda t: (None,), -1),
    ("evconnlistener_get_fd", lambda t: (t.dead_lev,), -1),
    ("evconnlistener_get_base", lambda t: (t.dead_lev,), None),
    ("evconnlistener_set_cb", lambda t: (t.dead_lev, _cb, None), None),
    ("evconnlistener_set_cb", lambda t: (t.lev, None, None), None),
]


@pytest.mark.parametrize(
    "name, make_args, failure",
    [pytest.param(*call, id=f"{call[0]}-{i}") for i, call in enumerate(BAD_CALLS)],
)
def test_bad_argument_returns_the_c_failure_value(things, name, make_args, failure):
    result = getattr(e2, name)(*make_args(things))
    assert result == failure
    assert type(result) is type(failure)


def test_socket_new_with_unknown_option_bits_fails(base):
    assert e2.bufferevent_socket_new(base, -1, 1 << 10) is None


def test_every_function_that_can_fail_is_in_the_bad_argument_table():
    cannot_fail = {"event_base_new", "evbuffer_new"}
    functions = {n for n in e2.__all__ if n.islower() and callable(getattr(e2, n))}
    assert functions - cannot_fail == {call[0] for call in BAD_CALLS}


def test_wrong_number_of_arguments_still_raises():
    """A call C would not compile is a porting bug, not a bad value."""
    with pytest.raises(TypeError, match="missing 1 required positional"):
        e2.evbuffer_add(e2.evbuffer_new())
    with pytest.raises(TypeError, match="unexpected keyword"):
        e2.bufferevent_enable(None, EV_READ, extra=1)


def test_a_failure_is_logged_at_debug_with_its_reason(caplog):
    caplog.set_level(logging.DEBUG, logger="geventbev.event2")
    buf = e2.evbuffer_new()
    assert e2.evbuffer_add(buf, b"fine") == 0
    assert caplog.records == []
    assert e2.evbuffer_drain(buf, -3) == -1
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == (
        "evbuffer_drain failed: ValueError: len must be >= 0, got -3"
    )
