"""The blocking style: BufferEvent methods that park the calling greenlet.

Every test here runs over an AF_UNIX socketpair; the peer-reset case needs
TCP and lives in tests/loopback/test_sock_tcp.py.  Exceptions follow the
table in API.md.
"""

from __future__ import annotations

import io
from typing import Any

import gevent
import pytest

from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    BufferEventError,
    Event,
    IncompleteReadError,
    LineTooLongError,
)

PATTERN = bytes(i * 13 % 256 for i in range(1 << 20))  # 1 MiB, not periodic in 256


def spawn_catching(fn: Any, *args: Any) -> gevent.Greenlet:
    """Spawn ``fn(*args)``; the greenlet's value is its result or the
    exception it raised (so an expected failure is not a hub error)."""

    def run() -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            return exc

    return gevent.spawn(run)


def test_wait_connected_returns_at_once_on_a_connected_socket(bev_pair):
    bev, _ = bev_pair
    bev.wait_connected(timeout=1)


def test_read_some_returns_what_is_there(bev_with_peer):
    bev, peer = bev_with_peer
    assert bev.read_some(0) == b""
    peer.sendall(b"hello world")
    assert bev.read_some(5, timeout=1) == b"hello"
    assert bev.read_some(timeout=1) == b" world"
    peer.close()
    assert bev.read_some(timeout=1) == b""
    assert bev.read_some(timeout=1) == b""


def test_blocking_read_enables_reading(bev_with_peer):
    bev, peer = bev_with_peer
    assert not bev.get_enabled() & EV_READ
    gevent.spawn_later(0.05, peer.sendall, b"x")
    assert bev.read_some(timeout=1) == b"x"
    assert bev.get_enabled() & EV_READ


def test_read_exactly_collects_pieces(bev_with_peer):
    bev, peer = bev_with_peer

    def send_slowly() -> None:
        for piece in (b"ab", b"cde", b"fghij"):
            gevent.sleep(0.02)
            peer.sendall(piece)

    glet = gevent.spawn(send_slowly)
    assert bev.read_exactly(7, timeout=2) == b"abcdefg"
    glet.join(1)
    assert bev.read_exactly(3, timeout=1) == b"hij"
    assert len(bev.input) == 0


def test_read_exactly_at_eof_raises_incomplete_read(bev_with_peer):
    bev, peer = bev_with_peer
    peer.sendall(b"12345")
    peer.close()
    with pytest.raises(IncompleteReadError) as info:
        bev.read_exactly(10, timeout=1)
    assert info.value.partial == b"12345"
    assert info.value.expected == 10
    assert isinstance(info.value, EOFError)
    assert isinstance(info.value, BufferEventError)
    assert len(bev.input) == 0
    assert bev.read_exactly(0, timeout=1) == b""


def test_read_exactly_beyond_the_read_high_watermark(bev_with_peer):
    """n larger than the read high mark still completes, in order."""
    bev, peer = bev_with_peer
    bev.setwatermark(EV_READ, 0, 100)
    glet = gevent.spawn(peer.sendall, PATTERN[:5000])
    assert bev.read_exactly(4000, timeout=2) == PATTERN[:4000]
    assert bev.read_exactly(1000, timeout=2) == PATTERN[4000:5000]
    glet.join(1)
    assert bev.getwatermark(EV_READ) == (0, 100)


def test_read_exactly_timeout_keeps_the_data(bev_with_peer):
    bev, peer = bev_with_peer
    bev.setwatermark(EV_READ, 0, 64)  # forces read_exactly to collect pieces
    peer.sendall(PATTERN[:150])
    with pytest.raises(TimeoutError):
        bev.read_exactly(200, timeout=0.2)
    assert bev.input.copyout(1000) == PATTERN[:150]
    peer.sendall(PATTERN[150:200])
    assert bev.read_exactly(200, timeout=1) == PATTERN[:200]


@pytest.mark.parametrize(
    ("eol", "data", "lines"),
    [
        (EOL.CRLF, b"one\r\ntwo\nthree\r\n", [b"one", b"two", b"three"]),
        (EOL.CRLF_STRICT, b"one\r\ntwo\nthree\r\n", [b"one", b"two\nthree"]),
        (EOL.LF, b"one\r\ntwo\n", [b"one\r", b"two"]),
        (EOL.NUL, b"one\0two\0", [b"one", b"two"]),
        (EOL.ANY, b"one\r\n\r\ntwo\n\r", [b"one", b"two"]),
    ],
    ids=lambda value: value.name if isinstance(value, EOL) else None,
)
def test_read_line_each_eol_style(bev_with_peer, eol, data, lines):
    bev, peer = bev_with_peer
    peer.sendall(data)
    for line in lines:
        assert bev.read_line(eol, timeout=1) == line
    peer.close()
    assert bev.read_line(eol, timeout=1) is None


def test_read_line_waits_and_returns_the_rest_at_eof(bev_with_peer):
    bev, peer = bev_with_peer

    def talk() -> None:
        peer.sendall(b"par")
        gevent.sleep(0.05)
        peer.sendall(b"tial\nunterminated")
        gevent.sleep(0.05)
        peer.close()

    glet = gevent.spawn(talk)
    assert bev.read_line(EOL.LF, timeout=1) == b"partial"
    assert bev.read_line(EOL.LF, timeout=1) == b"unterminated"
    assert bev.read_line(EOL.LF, timeout=1) is None
    glet.join(1)


def test_read_line_limit(bev_with_peer):
    """A line of exactly ``limit`` bytes passes; one more byte does not, and
    the bytes stay in the input."""
    bev, peer = bev_with_peer
    peer.sendall(b"0123456789\n")
    assert bev.read_line(EOL.LF, limit=10, timeout=1) == b"0123456789"
    peer.sendall(b"0123456789a\n")
    with pytest.raises(LineTooLongError, match="limit"):
        bev.read_line(EOL.LF, limit=10, timeout=1)
    assert bev.input.copyout(100) == b"0123456789a\n"


def test_read_line_limit_without_eol(bev_with_peer, run_until):
    bev, peer = bev_with_peer
    peer.sendall(b"x" * 100)
    with pytest.raises(LineTooLongError) as info:
        bev.read_line(EOL.LF, limit=50, timeout=1)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BufferEventError)
    assert run_until(lambda: len(bev.input) == 100)
    assert bev.read_some(timeout=1) == b"x" * 100


def test_read_line_longer_than_read_high_watermark(bev_with_peer):
    bev, peer = bev_with_peer
    bev.setwatermark(EV_READ, 0, 100)
    peer.sendall(b"y" * 300 + b"\n")
    with pytest.raises(LineTooLongError, match="watermark"):
        bev.read_line(EOL.LF, timeout=1)
    assert bev.input.copyout(1000) == b"y" * 100


def test_read_line_timeout_keeps_the_data(bev_with_peer):
    bev, peer = bev_with_peer
    peer.sendall(b"no end yet")
    with pytest.raises(TimeoutError):
        bev.read_line(timeout=0.1)
    assert bev.input.copyout(100) == b"no end yet"
    peer.sendall(b"\r\n")
    assert bev.read_line(timeout=1) == b"no end yet"


def test_read_until_eof(bev_with_peer):
    bev, peer = bev_with_peer
    bev.setwatermark(EV_READ, 0, 1000)  # smaller than what comes

    def send_and_close() -> None:
        peer.sendall(PATTERN[:20000])
        peer.close()

    glet = gevent.spawn(send_and_close)
    assert bev.read_until_eof(timeout=2) == PATTERN[:20000]
    glet.join(1)
    assert bev.read_until_eof(timeout=1) == b""


def test_read_until_eof_limit(make_bev_with_peer):
    bev, peer = make_bev_with_peer()
    peer.sendall(b"z" * 100)
    peer.close()
    assert bev.read_until_eof(limit=100, timeout=1) == b"z" * 100

    bev, peer = make_bev_with_peer()
    peer.sendall(b"z" * 101)
    peer.close()
    with pytest.raises(BufferEventError, match="limit"):
        bev.read_until_eof(limit=100, timeout=1)
    assert bev.read_some(timeout=1) == b"z" * 101  # nothing was lost


def test_read_until_eof_timeout(bev_with_peer):
    bev, peer = bev_with_peer
    peer.sendall(b"some")
    with pytest.raises(TimeoutError):
        bev.read_until_eof(timeout=0.1)
    peer.close()
    assert bev.read_until_eof(timeout=1) == b"some"


def test_write_all_and_drain(bev_pair):
    bev, other = bev_pair
    bev.setwatermark(EV_WRITE, 1000, 0)
    reader = gevent.spawn(other.read_exactly, len(PATTERN), timeout=5)
    bev.write_all(PATTERN, timeout=5)
    assert len(bev.output) <= 1000
    bev.drain(timeout=5)
    assert len(bev.output) == 0
    assert reader.get(timeout=5) == PATTERN
    bev.drain(timeout=0)  # nothing queued: returns at once


def test_write_all_enables_writing(bev_with_peer):
    bev, peer = bev_with_peer
    bev.disable(EV_WRITE)
    bev.write_all(b"wake up", timeout=1)
    assert bev.get_enabled() & EV_WRITE
    assert peer.recv(100) == b"wake up"


def test_write_all_timeout_loses_nothing(bev_with_peer):
    bev, peer = bev_with_peer
    payload = PATTERN * 4  # more than the socket buffers hold
    with pytest.raises(TimeoutError):
        bev.write_all(payload, timeout=0.2)
    assert len(bev.output) > 0
    with pytest.raises(TimeoutError):
        bev.drain(timeout=0.1)
    received = bytearray()
    while len(received) < len(payload):
        chunk = peer.recv(1 << 16)
        assert chunk
        received += chunk
    assert received == payload


def test_write_all_after_write_error(bev_with_peer):
    """BufferEventError with .events and the OSError as __cause__."""
    bev, peer = bev_with_peer
    peer.close()
    with pytest.raises(BufferEventError) as info:
        bev.write_all(b"x" * 10, timeout=2)
    assert info.value.events == Event.WRITING | Event.ERROR
    assert isinstance(info.value.__cause__, BrokenPipeError)
    with pytest.raises(BufferEventError) as again:
        bev.drain(timeout=1)
    assert isinstance(again.value.__cause__, BrokenPipeError)


def test_makefile_binary_modes(bev_pair):
    bev, other = bev_pair
    writer = bev.makefile("wb")
    writer.write(b"line one\nline two\n")
    writer.flush()
    reader = other.makefile("rb")
    assert reader.readline() == b"line one\n"
    assert reader.readline() == b"line two\n"

    both = other.makefile("rwb")
    bev.write(b"ping")
    assert both.read(4) == b"ping"
    both.write(b"pong")
    both.flush()
    assert bev.read_exactly(4, timeout=1) == b"pong"
    for f in (writer, reader, both):
        f.close()
    assert not bev.freed and not other.freed  # closing a file keeps the bev


def test_makefile_text_mode(bev_pair):
    bev, other = bev_pair
    text = other.makefile("r")
    assert isinstance(text, io.TextIOBase)
    bev.write("héllo\nwörld\n".encode())
    assert text.readline() == "héllo\n"
    assert text.readline() == "wörld\n"
    bev.free()
    assert text.read() == ""


def test_makefile_direction_is_enforced(bev_pair):
    bev, _ = bev_pair
    with pytest.raises(io.UnsupportedOperation):
        bev.makefile("rb").write(b"x")
    with pytest.raises(io.UnsupportedOperation):
        bev.makefile("wb").read(1)


@pytest.mark.parametrize(
    ("call", "prefill"),
    [
        (lambda bev: bev.read_exactly(10), b"abc"),
        (lambda bev: bev.read_some(), b""),
        (lambda bev: bev.read_line(), b"abc"),
        (lambda bev: bev.read_until_eof(), b"abc"),
    ],
    ids=["read_exactly", "read_some", "read_line", "read_until_eof"],
)
def test_free_wakes_a_blocked_reader(bev_with_peer, call, prefill):
    bev, peer = bev_with_peer
    if prefill:
        peer.sendall(prefill)
    glet = spawn_catching(call, bev)
    gevent.sleep(0.05)
    assert not glet.ready()
    bev.free()
    outcome = glet.get(timeout=1)
    assert isinstance(outcome, BufferEventError)
    assert "freed" in str(outcome)


def test_free_wakes_a_blocked_writer(bev_with_peer):
    bev, _peer = bev_with_peer
    glet = spawn_catching(bev.write_all, PATTERN * 4)
    gevent.sleep(0.05)
    assert not glet.ready()
    bev.free()
    outcome = glet.get(timeout=1)
    assert isinstance(outcome, BufferEventError)
    assert "freed" in str(outcome)


def test_several_greenlets_wait_at_once(bev_with_peer):
    bev, peer = bev_with_peer
    results: list = []

    def reader() -> None:
        results.append(bev.read_exactly(5, timeout=2))

    glets = [gevent.spawn(reader) for _ in range(3)]
    line_reader = gevent.spawn(bev.read_line, EOL.LF, timeout=2)
    gevent.sleep(0.05)
    payload = b"aaaaabbbbbccccc"
    peer.sendall(payload)
    gevent.joinall(glets, timeout=2)
    assert b"".join(results) == payload
    peer.sendall(b"tail\n")
    assert line_reader.get(timeout=2) == b"tail"


def test_wait_connected_on_freed_bev(bev_pair):
    bev, _ = bev_pair
    bev.free()
    with pytest.raises(BufferEventError, match="freed"):
        bev.wait_connected(timeout=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda bev: bev.read_some(timeout=0.1),
        lambda bev: bev.read_exactly(1, timeout=0.1),
        lambda bev: bev.read_line(timeout=0.1),
        lambda bev: bev.read_until_eof(timeout=0.1),
        lambda bev: bev.write_all(b"x", timeout=0.1),
        lambda bev: bev.drain(timeout=0.1),
        lambda bev: bev.makefile("rb").read(1),
    ],
    ids=[
        "read_some",
        "read_exactly",
        "read_line",
        "read_until_eof",
        "write_all",
        "drain",
        "makefile",
    ],
)
def test_blocking_call_on_freed_bev_raises(bev_pair, call):
    bev, _ = bev_pair
    bev.free()
    with pytest.raises(BufferEventError, match="freed"):
        call(bev)


#: name -> (exception, message pattern, call)
BAD_CALLS = {
    "read_some-neg": (ValueError, "max_bytes", lambda b: b.read_some(-2)),
    "read_some-str": (TypeError, "max_bytes", lambda b: b.read_some("1")),
    "read_exactly-neg": (ValueError, "n", lambda b: b.read_exactly(-1)),
    "read_exactly-float": (TypeError, "n", lambda b: b.read_exactly(1.5)),
    "read_line-limit": (ValueError, "limit", lambda b: b.read_line(limit=-1)),
    "read_line-eol": (ValueError, "EOL", lambda b: b.read_line(eol=9)),
    "read_until_eof-limit": (ValueError, "limit", lambda b: b.read_until_eof(-1)),
    "timeout-neg": (ValueError, "timeout", lambda b: b.read_some(timeout=-1)),
    "timeout-str": (TypeError, "timeout", lambda b: b.read_exactly(1, timeout="1")),
    "drain-timeout": (ValueError, "timeout", lambda b: b.drain(timeout=-1)),
    "wait_connected-timeout": (
        ValueError,
        "timeout",
        lambda b: b.wait_connected(timeout=-1),
    ),
    "write_all-str": (TypeError, "data", lambda b: b.write_all("text")),
    "makefile-mode": (ValueError, "mode", lambda b: b.makefile("x")),
    "makefile-text-unbuffered": (ValueError, "binary", lambda b: b.makefile("r", 0)),
}
_KNOWN_BUGS: dict = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=_KNOWN_BUGS[name])]
            if name in _KNOWN_BUGS
            else [],
        )
        for name in BAD_CALLS
    ],
)
def test_bad_argument(bev_pair, name):
    bev, _ = bev_pair
    exc, match, call = BAD_CALLS[name]
    with pytest.raises(exc, match=match):
        call(bev)
