"""One conformance suite for the contract every kind of bufferevent shares.

Each test gets ``ends``: the bufferevent under test (``ends.ours``) and
the bufferevent at the other end of its transport (``ends.peer``), for
every kind registered in ``KINDS``:

* ``socket-tcp``: socket bufferevents on both ends of a loopback TCP
  connection (127.0.0.1 only);
* ``socket-unix``: the same over an AF_UNIX socketpair;
* ``pair``: the two ends of ``pair_new()``;
* ``filter-socket``: a pass-through filter over a TCP socket bufferevent;
* ``filter-pair``: a pass-through filter over one end of a pair;
* ``filter-filter-socket``: two pass-through filters over a TCP socket.

The peer is always a plain socket bufferevent or pair end, so a failure
points at the kind under test.  To add a kind (TLS, once geventbev has it),
register a factory with ``@_kind("name")`` that returns an ``Ends``; every
test then runs on it.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any, Callable, Iterator

import gevent
import gevent.socket
import pytest

from geventbev import (
    EOL,
    EV_READ,
    EV_WRITE,
    BufferEvent,
    BufferEventError,
    Event,
    FlushMode,
    IncompleteReadError,
    Option,
    PairBufferEvent,
    SocketBufferEvent,
    Trigger,
    filter_new,
    pair_new,
    socket_new,
)

CLOSE = Option.CLOSE_ON_FREE
READ_TIMEOUT = Event.READING | Event.TIMEOUT  # 0x41
WRITE_TIMEOUT = Event.WRITING | Event.TIMEOUT  # 0x42
EOF_READING = Event.READING | Event.EOF  # 0x11


def payload(size: int, seed: int = 0) -> bytes:
    """Reproducible random bytes: a dropped, repeated or reordered chunk
    changes the content, which a repeating pattern might not show."""
    return random.Random(seed).randbytes(size)


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` and return its result or the exception it raised.

    For greenlets that are expected to fail: an exception escaping a
    greenlet would go to the hub's error handler and fail the test.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


# -- the kinds ------------------------------------------------------------------


class Ends:
    """A connected bufferevent under test and whatever sits at the far end.

    Attributes:
        kind: the registry name.
        layers: the bufferevent under test first, then each bufferevent
            it is layered on, down to the transport.
        ours: ``layers[0]``.
        peer: the bufferevent at the other end (reading and writing on).
    """

    def __init__(self, kind: str, layers: list, peer: BufferEvent) -> None:
        self.kind = kind
        self.layers = layers
        self.ours: BufferEvent = layers[0]
        self.peer = peer

    @property
    def bottom(self) -> BufferEvent:
        """The transport layer: a socket bufferevent or a pair end."""
        return self.layers[-1]

    @property
    def has_fd(self) -> bool:
        return isinstance(self.bottom, SocketBufferEvent)

    def finish_peer(self) -> None:
        """Make the peer send EOF after what it already wrote."""
        if isinstance(self.peer, PairBufferEvent):
            self.peer.flush(EV_WRITE, FlushMode.FINISHED)
        else:
            self.peer.shutdown_write()

    def free(self) -> None:
        for bev in (*self.layers, self.peer):
            bev.free()


class _Sockets:
    """Raw sockets made for one test, closed at teardown."""

    def __init__(self) -> None:
        self._socks: list = []

    def tcp(self) -> tuple:
        """Both ends of a fresh 127.0.0.1 TCP connection."""
        with gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._socks.append(client)
            client.settimeout(5.0)
            client.connect(listener.getsockname())
            listener.settimeout(5.0)
            server, _ = listener.accept()
        self._socks.append(server)
        return client, server

    def unix(self) -> tuple:
        a, b = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socks += [a, b]
        return a, b

    def close_all(self) -> None:
        for sock in self._socks:
            sock.close()


KindFactory = Callable[[_Sockets], Ends]
KINDS: dict[str, KindFactory] = {}


def _kind(name: str) -> Callable[[KindFactory], KindFactory]:
    """Register a factory: every test of this module runs on its Ends."""

    def register(factory: KindFactory) -> KindFactory:
        KINDS[name] = factory
        return factory

    return register


def _socket_ends(socks: _Sockets) -> tuple:
    client, server = socks.tcp()
    return socket_new(client, CLOSE), socket_new(server, CLOSE)


@_kind("socket-tcp")
def _socket_tcp(socks: _Sockets) -> Ends:
    ours, peer = _socket_ends(socks)
    return Ends("socket-tcp", [ours], peer)


@_kind("socket-unix")
def _socket_unix(socks: _Sockets) -> Ends:
    a, b = socks.unix()
    return Ends("socket-unix", [socket_new(a, CLOSE)], socket_new(b, CLOSE))


@_kind("pair")
def _pair(socks: _Sockets) -> Ends:
    ours, peer = pair_new()
    return Ends("pair", [ours], peer)


@_kind("filter-socket")
def _filter_socket(socks: _Sockets) -> Ends:
    under, peer = _socket_ends(socks)
    return Ends("filter-socket", [filter_new(under, None, None, CLOSE), under], peer)


@_kind("filter-pair")
def _filter_pair(socks: _Sockets) -> Ends:
    under, peer = pair_new()
    return Ends("filter-pair", [filter_new(under, None, None, CLOSE), under], peer)


@_kind("filter-filter-socket")
def _filter_filter_socket(socks: _Sockets) -> Ends:
    under, peer = _socket_ends(socks)
    middle = filter_new(under, None, None, CLOSE)
    top = filter_new(middle, None, None, CLOSE)
    return Ends("filter-filter-socket", [top, middle, under], peer)


@pytest.fixture(params=list(KINDS))
def ends(request: pytest.FixtureRequest) -> Iterator[Ends]:
    """The bufferevent under test (only EV_WRITE enabled, as created) and
    its peer (EV_READ and EV_WRITE enabled)."""
    socks = _Sockets()
    try:
        made = KINDS[request.param](socks)
        made.peer.enable(EV_READ | EV_WRITE)
        yield made
        made.free()
    finally:
        socks.close_all()


def kinds_with_known_bugs(bugs: dict) -> list:
    """Every kind as a parameter for ``ends`` (``indirect=True``), with a
    strict xfail on the kinds named in ``bugs`` (kind -> reason)."""
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=bugs[name])]
            if name in bugs
            else [],
        )
        for name in KINDS
    ]


def collect(bev: BufferEvent, size: int, timeout: float = 5.0) -> bytes:
    """Read exactly ``size`` bytes from ``bev`` in a blocking call."""
    return bev.read_exactly(size, timeout=timeout)


# -- moving bytes -----------------------------------------------------------------


def test_small_writes_arrive_in_order_both_ways(ends):
    """Many small writes on either side arrive whole and in order."""
    ours, peer = ends.ours, ends.peer
    ours.enable(EV_READ)
    up = b"".join(f"up{i};".encode() for i in range(200))
    down = b"".join(f"down{i};".encode() for i in range(200))
    for i in range(200):
        ours.write(f"up{i};".encode())
        peer.write(f"down{i};".encode())
    assert collect(peer, len(up)) == up
    assert collect(ours, len(down)) == down


def test_four_mib_both_ways_at_once(ends):
    """4 MiB in each direction at the same time, byte for byte."""
    ours, peer = ends.ours, ends.peer
    up, down = payload(4 << 20, seed=1), payload(4 << 20, seed=2)
    readers = [
        gevent.spawn(outcome, collect, peer, len(up), 10.0),
        gevent.spawn(outcome, collect, ours, len(down), 10.0),
    ]
    ours.write(up)
    peer.write(down)
    got_up, got_down = (g.get(timeout=15) for g in readers)
    assert got_up == up
    assert got_down == down


def test_input_and_output_accessors(ends):
    ours = ends.ours
    assert ours.get_input() is ours.input
    assert ours.get_output() is ours.output


# -- watermarks -------------------------------------------------------------------


def test_read_low_watermark_gates_readcb(ends, record, run_until):
    """No read callback below read-low; one as soon as input reaches it."""
    ours, peer = ends.ours, ends.peer
    rec = record(ours)
    ours.setwatermark(EV_READ, 10, 0)
    ours.enable(EV_READ)
    peer.write(b"abcd")
    assert run_until(lambda: len(ours.input) == 4)
    gevent.sleep(0.05)
    assert rec.reads == []
    peer.write(b"efghij")
    assert run_until(lambda: rec.reads)
    gevent.sleep(0.05)
    assert rec.reads == [10]


def test_read_high_watermark_pauses_and_draining_resumes(ends, run_until):
    """Input stops at read-high (every kind reads at most ``high - len``,
    so no callback ever sees more); draining resumes delivery without new
    data from the peer."""
    ours, peer = ends.ours, ends.peer
    seen: list = []
    ours.setcb(lambda bev, ctx: seen.append(len(bev.input)), None, None)
    ours.setwatermark(EV_READ, 0, 1000)
    ours.enable(EV_READ)
    data = payload(5000)
    peer.write(data)
    assert run_until(lambda: len(ours.input) == 1000)
    gevent.sleep(0.1)
    assert len(ours.input) == 1000
    assert ours.get_enabled() & EV_READ  # paused, not disabled

    got = bytearray()

    def drained_all() -> bool:
        got.extend(ours.read(len(ours.input)))
        return len(got) >= len(data)

    assert run_until(drained_all, 3.0)
    assert bytes(got) == data
    assert seen and max(seen) <= 1000


def test_write_low_watermark_gates_writecb(ends, run_until):
    """The write callback only ever sees output at or below write-low, and
    it runs once the output has emptied."""
    ours, peer = ends.ours, ends.peer
    seen: list = []
    ours.setcb(None, lambda bev, ctx: seen.append(len(bev.output)), None)
    ours.setwatermark(EV_WRITE, 4096, 0)
    # A peer that takes 64 KiB at a time keeps pair outputs from emptying
    # in one move, so the gate is exercised on every kind.
    peer.setwatermark(EV_READ, 0, 65536)
    data = payload(1 << 20)
    reader = gevent.spawn(outcome, collect, peer, len(data))
    ours.write(data)
    assert reader.get(timeout=10) == data
    assert run_until(lambda: seen and seen[-1] == 0)
    assert all(size <= 4096 for size in seen), seen


def test_getwatermark_returns_what_was_set(ends):
    ours = ends.ours
    assert ours.getwatermark(EV_READ) == (0, 0)
    assert ours.getwatermark(EV_WRITE) == (0, 0)
    ours.setwatermark(EV_READ, 5, 100)
    ours.setwatermark(EV_WRITE, 7, 200)
    assert ours.getwatermark(EV_READ) == (5, 100)
    assert ours.getwatermark(EV_WRITE) == (7, 200)
    with pytest.raises(ValueError, match="exactly one"):
        ours.getwatermark(EV_READ | EV_WRITE)
    with pytest.raises(ValueError, match="low"):
        ours.setwatermark(EV_READ, -1, 0)


# -- enable / disable -------------------------------------------------------------


def test_get_enabled_follows_enable_and_disable(ends):
    ours = ends.ours
    assert ours.get_enabled() == EV_WRITE  # as created, like libevent
    ours.enable(EV_READ)
    assert ours.get_enabled() == EV_READ | EV_WRITE
    ours.disable(EV_WRITE)
    assert ours.get_enabled() == EV_READ
    ours.disable(EV_READ)
    assert ours.get_enabled() == 0


def test_disable_read_stops_delivery_and_enable_resumes(ends, run_until):
    ours, peer = ends.ours, ends.peer
    ours.enable(EV_READ)
    peer.write(b"a")
    assert run_until(lambda: len(ours.input) == 1)
    ours.disable(EV_READ)
    peer.write(b"b" * 100)
    gevent.sleep(0.1)
    assert len(ours.input) == 1
    ours.enable(EV_READ)
    assert run_until(lambda: len(ours.input) == 101)
    assert ours.read(200) == b"a" + b"b" * 100


# -- timeouts ---------------------------------------------------------------------


def test_read_timeout_fires_once_and_disables_reading(ends, run_until):
    """READING|TIMEOUT once, then READ is off; never a write timeout while
    the output is empty; reading can be turned back on."""
    ours, peer = ends.ours, ends.peer
    events: list = []
    ours.setcb(
        None, None, lambda bev, what, ctx: events.append((int(what), time.monotonic()))
    )
    start = time.monotonic()
    ours.enable(EV_READ | EV_WRITE)
    ours.set_timeouts(read=0.2, write=0.2)
    assert run_until(lambda: events, 1.0)
    gevent.sleep(0.3)
    assert [what for what, _ in events] == [READ_TIMEOUT]
    assert events[0][1] - start == pytest.approx(0.2, abs=0.1)
    assert ours.get_enabled() == EV_WRITE

    ours.set_timeouts(None, None)
    ours.enable(EV_READ)
    peer.write(b"z")
    assert collect(ours, 1, 2.0) == b"z"


def test_read_timeout_restarts_on_each_arrival(ends):
    ours, peer = ends.ours, ends.peer
    events: list = []
    ours.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    ours.enable(EV_READ)
    ours.set_timeouts(read=0.25)
    for _ in range(4):
        gevent.sleep(0.1)
        peer.write(b"t")
    gevent.sleep(0.05)
    assert events == []
    assert ours.read(10) == b"tttt"
    ours.set_timeouts(None, None)


# -- EOF --------------------------------------------------------------------------


def test_peer_eof_comes_after_every_byte(ends, run_until):
    """EOF|READING reaches the event callback once, with every byte the
    peer sent before it already in the input."""
    ours = ends.ours
    log: list = []
    ours.setcb(
        lambda bev, ctx: log.append(("read", len(bev.input))),
        None,
        lambda bev, what, ctx: log.append(("event", int(what), len(bev.input))),
    )
    ours.enable(EV_READ)
    data = payload(100_000)
    ends.peer.write(data)
    ends.finish_peer()
    assert run_until(lambda: any(entry[0] == "event" for entry in log))
    gevent.sleep(0.05)
    assert [e for e in log if e[0] == "event"] == [("event", EOF_READING, len(data))]
    assert log[-1][0] == "event"
    assert ours.read(len(data) + 1) == data


# -- blocking style ---------------------------------------------------------------


def test_read_line_and_read_exactly(ends):
    ours, peer = ends.ours, ends.peer
    peer.write(b"first line\r\nsecond\nrest!")
    assert ours.read_line(timeout=2) == b"first line"
    assert ours.read_line(EOL.LF, timeout=2) == b"second"
    assert ours.read_exactly(5, timeout=2) == b"rest!"


def test_read_until_eof_and_read_line_at_eof(ends):
    ours, peer = ends.ours, ends.peer
    data = payload(200_000) + b"\nno newline"
    peer.write(data)
    ends.finish_peer()
    assert ours.read_until_eof(timeout=5) == data
    assert ours.read_line(timeout=1) is None
    assert ours.read_some(timeout=1) == b""


def test_read_exactly_at_eof_raises_incomplete(ends):
    peer = ends.peer
    peer.write(b"abc")
    ends.finish_peer()
    with pytest.raises(IncompleteReadError) as info:
        ends.ours.read_exactly(10, timeout=2)
    assert info.value.partial == b"abc"
    assert isinstance(info.value, EOFError)


def test_write_all_returns_once_output_is_at_write_low(ends):
    ours, peer = ends.ours, ends.peer
    data = payload(1 << 20)
    reader = gevent.spawn(outcome, collect, peer, len(data))
    ours.write_all(data, timeout=5)
    assert len(ours.output) == 0  # write-low is 0
    assert reader.get(timeout=5) == data


@pytest.mark.parametrize("ends", kinds_with_known_bugs({}), indirect=True)
def test_drain_returns_once_everything_was_handed_over(ends):
    ours, peer = ends.ours, ends.peer
    data = payload(1 << 20)
    reader = gevent.spawn(outcome, collect, peer, len(data))
    ours.write(data)
    ours.drain(timeout=1.5)
    assert len(ours.output) == 0
    assert all(len(layer.output) == 0 for layer in ends.layers)
    assert reader.get(timeout=5) == data


def test_read_some_timeout_then_data(ends):
    ours = ends.ours
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ours.read_some(timeout=0.1)
    assert time.monotonic() - started == pytest.approx(0.1, abs=0.08)
    ends.peer.write(b"late")
    got = b""
    while len(got) < 4:
        got += ours.read_some(timeout=2)
    assert got == b"late"


# -- trigger ----------------------------------------------------------------------


def test_trigger_follows_the_watermark_rule(ends, record, run_until):
    ours = ends.ours
    rec = record(ours)
    ours.trigger(EV_READ | EV_WRITE)
    assert run_until(lambda: rec.reads and rec.writes)
    assert (rec.reads, rec.writes) == ([0], [0])

    ours.setwatermark(EV_READ, 10, 0)
    ours.trigger(EV_READ)
    gevent.sleep(0.05)
    assert rec.reads == [0]
    ours.trigger(EV_READ, Trigger.IGNORE_WATERMARKS)
    assert run_until(lambda: len(rec.reads) == 2)

    calls = len(rec.calls)
    ours.trigger(EV_WRITE, Trigger.DEFER_CALLBACKS)
    assert len(rec.calls) == calls  # queued, not run inside trigger()
    assert run_until(lambda: len(rec.writes) == 2)
    assert rec.events == []


def test_trigger_event_passes_events_through(ends, record, run_until):
    ours = ends.ours
    rec = record(ours)
    ours.enable(EV_READ)
    ours.trigger_event(READ_TIMEOUT)
    assert run_until(lambda: rec.events)
    assert rec.events == [READ_TIMEOUT]
    # Only the callback runs: no state changes as a real timeout would.
    assert ours.get_enabled() == EV_READ | EV_WRITE
    ours.trigger_event(Event.CONNECTED, Trigger.DEFER_CALLBACKS)
    assert rec.events == [READ_TIMEOUT]
    assert run_until(lambda: len(rec.events) == 2)
    assert rec.events[1] == Event.CONNECTED


# -- callbacks --------------------------------------------------------------------


def test_setcb_and_getcb(ends):
    ours = ends.ours

    def readcb(bev: Any, ctx: Any) -> None: ...

    def writecb(bev: Any, ctx: Any) -> None: ...

    def eventcb(bev: Any, what: int, ctx: Any) -> None: ...

    assert ours.getcb() == (None, None, None, None)
    ctx = object()
    ours.setcb(readcb, writecb, eventcb, ctx)
    assert ours.getcb() == (readcb, writecb, eventcb, ctx)
    ours.setcb(None, None, None)
    assert ours.getcb() == (None, None, None, None)
    with pytest.raises(TypeError, match="readcb"):
        ours.setcb(42, None, None)


def test_write_never_runs_a_callback(ends, run_until):
    """Neither end's callbacks run inside ``write()``; they run later."""
    ours, peer = ends.ours, ends.peer
    log: list = []
    for name, bev in (("ours", ours), ("peer", peer)):
        bev.setcb(
            lambda bev, ctx, n=name: log.append((n, "read")),
            lambda bev, ctx, n=name: log.append((n, "write")),
            lambda bev, what, ctx, n=name: log.append((n, "event")),
        )
    ours.enable(EV_READ)
    for size in (1, 100, 70_000, 1):
        before = list(log)
        ours.write(b"x" * size)
        assert log == before
    assert run_until(lambda: ("peer", "read") in log and ("ours", "write") in log)


def test_raising_readcb_goes_to_the_hub_and_reading_goes_on(
    ends, hub_errors, run_until
):
    ours, peer = ends.ours, ends.peer
    chunks: list = []

    def readcb(bev: Any, ctx: Any) -> None:
        chunks.append(bev.read(len(bev.input)))
        if len(chunks) == 1:
            raise RuntimeError("readcb failed on purpose")

    ours.setcb(readcb, None, None)
    ours.enable(EV_READ)
    peer.write(b"one")
    assert run_until(lambda: hub_errors)
    [(context, exc)] = hub_errors
    assert context is ours
    assert isinstance(exc, RuntimeError)
    hub_errors.clear()

    peer.write(b"two")
    assert run_until(lambda: len(chunks) == 2)
    assert chunks == [b"one", b"two"]
    assert not ours.freed
    assert ours.get_enabled() & EV_READ


def test_raising_eventcb_goes_to_the_hub(ends, hub_errors, run_until):
    ours = ends.ours
    seen: list = []

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        seen.append(int(what))
        raise ValueError("eventcb failed on purpose")

    ours.setcb(None, None, eventcb)
    ours.trigger_event(Event.EOF)
    assert run_until(lambda: hub_errors)
    assert [type(exc) for _, exc in hub_errors] == [ValueError]
    hub_errors.clear()
    assert seen == [Event.EOF]
    assert not ours.freed
    ours.trigger_event(Event.ERROR)
    assert run_until(lambda: len(seen) == 2)
    assert [type(exc) for _, exc in hub_errors] == [ValueError]
    hub_errors.clear()


# -- free -------------------------------------------------------------------------


def test_free_wakes_blocked_readers_and_is_idempotent(ends):
    ours = ends.ours
    waiting = [
        gevent.spawn(outcome, ours.read_exactly, 10, 5.0),
        gevent.spawn(outcome, ours.read_line, EOL.LF, 100, 5.0),
    ]
    gevent.sleep(0.05)
    assert not any(g.ready() for g in waiting)
    ours.free()
    ours.free()
    assert ours.freed
    for glet in waiting:
        exc = glet.get(timeout=2)
        assert isinstance(exc, BufferEventError), exc
        assert not isinstance(exc, IncompleteReadError)
    with pytest.raises(BufferEventError, match="freed"):
        ours.write(b"x")
    with pytest.raises(BufferEventError, match="freed"):
        ours.enable(EV_READ)


def test_context_manager_frees_every_layer(ends, run_until):
    """Leaving the block frees the bufferevent; CLOSE_ON_FREE filters take
    their underlying with them, and a socket peer then reads EOF."""
    with ends.ours as bev:
        assert bev is ends.ours
        assert not bev.freed
    assert ends.ours.freed
    assert run_until(lambda: all(layer.freed for layer in ends.layers))
    if ends.has_fd:
        assert ends.peer.read_some(timeout=2) == b""


# -- identity ---------------------------------------------------------------------


def test_get_underlying_walks_the_layers(ends):
    layers = ends.layers
    for upper, lower in zip(layers, layers[1:]):
        assert upper.get_underlying() is lower
    assert layers[-1].get_underlying() is None


def test_fileno(ends):
    """The socket's descriptor, through every filter; -1 over a pair."""
    expected = ends.bottom.fileno()
    if ends.has_fd:
        assert expected >= 0
    else:
        assert expected == -1
    assert all(layer.fileno() == expected for layer in ends.layers)


def test_get_partner_on_pair_ends_only(ends):
    """A pair end at the bottom knows the peer; a filter has no partner."""
    if isinstance(ends.bottom, PairBufferEvent):
        assert ends.bottom.get_partner() is ends.peer
    if not isinstance(ends.ours, PairBufferEvent):
        assert not hasattr(ends.ours, "get_partner")
