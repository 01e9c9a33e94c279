"""Cases C06, C07, C08 and C02 step 5 (shared/cases/CASES.md) for pairs
and filters, with the values the cases name.

The filter cases run over socket bufferevents on loopback TCP connections
(127.0.0.1 only); the far end is a raw gevent socket so the test decides
exactly what is sent and when.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any, Iterator

import gevent
import gevent.socket
import pytest

from geventbev import (
    EV_READ,
    EV_WRITE,
    Buffer,
    BufferEventError,
    Event,
    FilterResult,
    FlushMode,
    Option,
    event2,
    filter_new,
    pair_new,
    socket_new,
)

CLOSE = Option.CLOSE_ON_FREE
EOF_READING = Event.READING | Event.EOF  # 0x11
READ_TIMEOUT = Event.READING | Event.TIMEOUT  # 0x41
WRITE_TIMEOUT = Event.WRITING | Event.TIMEOUT  # 0x42


@pytest.fixture
def tcp_peer() -> Iterator[Any]:
    """``tcp_peer()`` -> (client socket, accepted peer socket): a loopback
    TCP connection; both gevent sockets time out after 5 s and are closed
    at teardown."""
    made: list = []

    def connect() -> tuple:
        with gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(5.0)
            client = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            made.append(client)
            client.settimeout(5.0)
            client.connect(listener.getsockname())
            peer, _ = listener.accept()
        made.append(peer)
        peer.settimeout(5.0)
        return client, peer

    yield connect
    for sock in made:
        sock.close()


def recv_until_eof(sock: Any, limit: int = 1 << 20) -> bytes:
    """Everything ``sock`` receives until the peer's FIN (its timeout
    bounds each wait)."""
    data = b""
    while len(data) <= limit:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"more than {limit} bytes before EOF")


# -- C06: pair flush modes, EOF, get_partner ----------------------------------------


def test_c06_finished_flush_gives_the_partner_one_eof_and_no_read(record, run_until):
    """(1) FINISHED on an idle pair: the partner gets EOF|READING once and
    no read callback; the flushing end gets nothing."""
    bev1, bev2 = pair_new()
    rec1, rec2 = record(bev1), record(bev2)
    bev2.enable(EV_READ)
    assert bev1.flush(EV_WRITE, FlushMode.FINISHED) == 0
    assert run_until(lambda: rec2.calls)
    gevent.sleep(0.05)
    assert rec2.calls == [("event", EOF_READING)]
    assert rec1.calls == []


def _check_c06_transfers(bev1: Any, bev2: Any) -> None:
    """Steps (2)-(4): the read high watermark bounds a normal transfer,
    FLUSH ignores it, NORMAL afterwards has nothing to do."""
    bev2.setwatermark(EV_READ, 0, 1000)
    bev1.write(b"p" * 5000)
    gevent.sleep(0.05)
    assert (len(bev2.input), len(bev1.output)) == (1000, 4000)

    assert bev1.flush(EV_WRITE, FlushMode.FLUSH) == 1
    assert (len(bev2.input), len(bev1.output)) == (5000, 0)

    assert bev1.flush(EV_WRITE, FlushMode.NORMAL) == 0
    assert (len(bev2.input), len(bev1.output)) == (5000, 0)
    assert bytes(bev2.input) == b"p" * 5000


def test_c06_watermark_and_flush_after_the_eof(record, run_until):
    """(1) then (2)-(4) on the same pair, as the case runs them."""
    bev1, bev2 = pair_new()
    rec2 = record(bev2)
    bev2.enable(EV_READ)
    bev1.flush(EV_WRITE, FlushMode.FINISHED)
    assert run_until(lambda: rec2.events)
    _check_c06_transfers(bev1, bev2)


def test_c06_watermark_and_flush_modes(record):
    """(2)-(4) on a pair that had no EOF."""
    bev1, bev2 = pair_new()
    record(bev2)
    bev2.enable(EV_READ)
    _check_c06_transfers(bev1, bev2)


def test_c06_freeing_one_end_only_unlinks_the_other(record, run_until):
    """(5) After bev2 is freed: no partner, flush -1, write still accepted,
    no callback on either end (bev1 gets no EOF)."""
    bev1, bev2 = pair_new()
    rec1, rec2 = record(bev1), record(bev2)
    bev2.enable(EV_READ)
    bev1.write(b"before")
    assert run_until(lambda: rec2.reads)
    rec1.calls.clear()
    rec2.calls.clear()

    bev2.free()
    assert bev1.get_partner() is None
    assert bev2.get_partner() is None
    with pytest.raises(BufferEventError, match="unlinked"):
        bev1.flush(EV_WRITE, FlushMode.FLUSH)
    assert event2.bufferevent_flush(bev1, EV_WRITE, FlushMode.FLUSH) == -1
    bev1.write(b"x")
    assert len(bev1.output) == 1  # it stays queued
    gevent.sleep(0.1)
    assert rec1.calls == []
    assert rec2.calls == []


# -- C07: filter read watermark over a socket ----------------------------------------


def test_c07a_tail_below_the_watermark_is_delivered(tcp_peer, run_until):
    """(a) 4,343 bytes once, filter read-high 4,096, read callback drains:
    4,096 then the remaining 247, within 0.5 s, with no further data."""
    client, peer = tcp_peer()
    under = socket_new(client, CLOSE)
    bev = filter_new(under, None, None, CLOSE)
    deliveries: list = []
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        deliveries.append(len(bev.input))
        received.extend(bev.read(len(bev.input)))

    bev.setcb(readcb, None, None)
    bev.setwatermark(EV_READ, 0, 4096)
    bev.enable(EV_READ)
    data = random.Random(7).randbytes(4343)
    started = time.monotonic()
    peer.sendall(data)
    assert run_until(lambda: len(received) >= len(data), 0.5), deliveries
    assert time.monotonic() - started < 0.5
    gevent.sleep(0.05)
    assert deliveries == [4096, 247]
    assert bytes(received) == data


def test_c07b_watermark_bounds_the_filter_and_its_underlying(tcp_peer, run_until):
    """(b) 1 MiB as fast as the peer can; no draining for 0.5 s: filter
    input exactly 4,096, underlying input at most 16,384 + 4,096; then the
    read callback drains and all 1,048,576 bytes arrive in order."""
    client, peer = tcp_peer()
    under = socket_new(client, CLOSE)
    bev = filter_new(under, None, None, CLOSE)
    draining = False
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        if draining:
            received.extend(bev.read(len(bev.input)))

    bev.setcb(readcb, None, None)
    bev.setwatermark(EV_READ, 0, 4096)
    bev.enable(EV_READ)
    data = random.Random(8).randbytes(1 << 20)
    sender = gevent.spawn(peer.sendall, data)

    assert run_until(lambda: len(bev.input) == 4096)
    most_underlying = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        most_underlying = max(most_underlying, len(under.input))
        assert len(bev.input) == 4096
        gevent.sleep(0.01)
    assert most_underlying <= 16384 + 4096

    draining = True
    bev.trigger(EV_READ)  # the read callback drains from here on
    assert run_until(lambda: len(received) >= len(data), 5.0)
    assert bytes(received) == data
    sender.get(timeout=2)


# -- C08: NEED_MORE, FINISHED, free ----------------------------------------------


def test_c08a_held_back_bytes_come_before_the_eof(tcp_peer, run_until):
    """(a) Input filter passes whole 4-byte groups only, everything on
    FINISHED.  10 bytes then FIN: deliveries 8 then 2, FINISHED seen after
    the EOF, EOF|READING reported after the last 2 bytes."""
    client, peer = tcp_peer()
    modes: list = []

    def groups_of_four(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        modes.append((mode, len(src)))
        n = len(src) if mode == FlushMode.FINISHED else len(src) // 4 * 4
        if limit >= 0:
            n = min(n, limit)
        if not n:
            return FilterResult.NEED_MORE
        dst.add(src.remove(n))
        return FilterResult.OK

    bev = filter_new(socket_new(client, CLOSE), groups_of_four, None, CLOSE)
    log: list = []
    received = bytearray()

    def readcb(bev: Any, ctx: Any) -> None:
        log.append(("read", len(bev.input)))
        received.extend(bev.read(len(bev.input)))

    bev.setcb(readcb, None, lambda bev, what, ctx: log.append(("event", int(what))))
    bev.enable(EV_READ)
    peer.sendall(b"0123456789")
    peer.shutdown(socket.SHUT_WR)
    assert run_until(lambda: ("event", EOF_READING) in log)
    gevent.sleep(0.05)

    assert log == [("read", 8), ("read", 2), ("event", EOF_READING)]
    assert bytes(received) == b"0123456789"
    assert (FlushMode.FINISHED, 2) in modes


class _C08bSetup:
    """C08 (b): a filter whose output filter holds bytes until FINISHED
    (then appends END), over a socket bufferevent whose ``flush`` calls are
    recorded, freed by its write callback once its output is empty."""

    def __init__(self, client: Any) -> None:
        self.modes: list = []
        self.under_flushes: list = []
        self.under = socket_new(client, CLOSE)
        real_flush = self.under.flush

        def spying_flush(what: int, mode: int = FlushMode.FLUSH) -> int:
            self.under_flushes.append((int(what), mode))
            return real_flush(what, mode)

        self.under.flush = spying_flush  # type: ignore[method-assign]
        self.bev = filter_new(self.under, None, self._hold_until_finished, CLOSE)
        self.bev.setcb(None, self._free_when_empty, None)

    def _hold_until_finished(
        self, src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        self.modes.append(mode)
        if mode != FlushMode.FINISHED:
            return FilterResult.NEED_MORE
        dst.add(src.remove(len(src)) + b"END")
        return FilterResult.OK

    @staticmethod
    def _free_when_empty(bev: Any, ctx: Any) -> None:
        if not len(bev.output):
            bev.free()

    def write_and_finish(self) -> None:
        self.bev.write(b"abc")
        gevent.sleep(0.02)  # the output pump runs the filter in NORMAL mode
        assert len(self.bev.output) == 3
        self.bev.flush(EV_WRITE, FlushMode.FINISHED)


def test_c08b_free_after_finished_flush_keeps_every_byte(tcp_peer, run_until):
    """(b) write abc, flush FINISHED, free the filter from the write
    callback that sees an empty output: FINISHED reaches the output filter
    exactly once and the peer reads exactly abcEND then a clean EOF."""
    client, peer = tcp_peer()
    case = _C08bSetup(client)
    case.write_and_finish()
    assert recv_until_eof(peer) == b"abcEND"  # then b"": a FIN, not a reset
    assert case.bev.freed
    assert case.modes.count(FlushMode.FINISHED) == 1
    assert run_until(lambda: case.under.freed)


def test_c08b_finished_flush_is_forwarded_to_the_underlying(tcp_peer):
    """(b) The FINISHED flush goes on to the underlying bufferevent, even
    though the write callback freed the filter during it."""
    client, peer = tcp_peer()
    case = _C08bSetup(client)
    case.write_and_finish()
    assert case.under_flushes == [(int(EV_WRITE), FlushMode.FINISHED)]


# -- C02 step 5: timeouts on a filter ----------------------------------------------


def test_c02_step5_filter_read_timeout_without_write_timeout(tcp_peer):
    """A pass-through filter on a socket bufferevent, READ|WRITE enabled,
    read and write timeouts 0.3 s, silent peer: exactly one READING|TIMEOUT
    at 0.3 s +- 0.1 s, READ then disabled, no WRITING|TIMEOUT with an
    empty output."""
    client, peer = tcp_peer()
    under = socket_new(client, CLOSE)
    bev = filter_new(under, None, None, CLOSE)
    events: list = []
    bev.setcb(
        None, None, lambda bev, what, ctx: events.append((int(what), time.monotonic()))
    )
    started = time.monotonic()
    bev.enable(EV_READ | EV_WRITE)
    bev.set_timeouts(read=0.3, write=0.3)
    gevent.sleep(1.0)

    assert [what for what, _ in events] == [READ_TIMEOUT]
    assert events[0][1] - started == pytest.approx(0.3, abs=0.1)
    assert bev.get_enabled() == EV_WRITE
    assert WRITE_TIMEOUT not in [what for what, _ in events]
    assert len(bev.output) == 0
