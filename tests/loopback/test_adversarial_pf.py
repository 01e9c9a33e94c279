"""Adversarial pass on pairs and filters: filter functions that misbehave
or re-enter the library, frees from inside filters and callbacks, unlinked
pair ends, stacked filters and memory bounds, EOF and FINISHED at the read
high watermark, lingering CLOSE_ON_FREE, filters over connecting sockets,
the blocking style and the socket adapter over pairs and filters, event2
constructors with bad arguments and ``dispatch``.

The first group are the faults this pass found, fixed since; the others
pin behaviour that held up.
Everything talks to 127.0.0.1 or AF_UNIX socketpairs only, and every
blocking call has a timeout.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import Any, Callable, Iterator

import gevent
import gevent.socket
import pytest

import geventbev.filter as filter_module
from geventbev import (
    EV_READ,
    EV_WRITE,
    Buffer,
    BufferEventError,
    BufferEventSocket,
    Event,
    FilterResult,
    FlushMode,
    Option,
    event2,
    filter_new,
    get_default_base,
    pair_new,
    socket_new,
)

CLOSE = Option.CLOSE_ON_FREE
OK, NEED_MORE = FilterResult.OK, FilterResult.NEED_MORE
MIB = 1 << 20


# -- helpers -----------------------------------------------------------------


def pass_limited(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    """Pass bytes through, at most ``limit`` of them (-1: all)."""
    n = len(src) if limit < 0 else min(limit, len(src))
    if not n:
        return NEED_MORE
    dst.add(src.remove(n))
    return OK


def xor_5a(
    src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    """XOR every byte with 0x5a (its own inverse), honouring ``limit``."""
    n = len(src) if limit < 0 else min(limit, len(src))
    if not n:
        return NEED_MORE
    dst.add(bytes(b ^ 0x5A for b in src.remove(n)))
    return OK


def collect_until_eof(bev: Any, seconds: float) -> bytes:
    """Everything ``bev`` delivers until EOF (blocking style, bounded)."""
    return bev.read_until_eof(timeout=seconds)


@pytest.fixture
def tcp_listener() -> Iterator[Any]:
    """A loopback TCP listening gevent socket, closed at teardown."""
    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5.0)
    yield listener
    listener.close()


@pytest.fixture
def greenlets() -> Iterator[list]:
    """Greenlets a test spawns; killed at teardown so none outlives it."""
    spawned: list = []
    yield spawned
    gevent.killall(spawned, timeout=2)


def spawn_quiet(spawned: list, fn: Callable[[], Any]) -> gevent.Greenlet:
    """Spawn ``fn``; an exception it raises becomes its return value (a
    dying greenlet would otherwise go to the hub's error handler)."""

    def run() -> Any:
        try:
            return fn()
        except Exception as exc:
            return exc

    glet = gevent.spawn(run)
    spawned.append(glet)
    return glet


# -- faults found (fixed) -----------------------------------------------------


class _TailAtFinish:
    """An input filter holding state, like a decompressor: it takes all
    input into its state, emits at most ``limit`` bytes per call and adds
    a 500-byte trailer to its state at FINISHED."""

    TRAILER = b"T" * 500

    def __init__(self) -> None:
        self.state = bytearray()
        self.finished = False

    def __call__(
        self, src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        if len(src):
            self.state += src.remove(len(src))
        if mode == FlushMode.FINISHED and not self.finished:
            self.finished = True
            self.state += self.TRAILER
        n = len(self.state) if limit < 0 else min(limit, len(self.state))
        if not n:
            return NEED_MORE
        dst.add(bytes(self.state[:n]))
        del self.state[:n]
        return OK


def test_finished_tail_larger_than_the_room_below_read_high_arrives() -> None:
    """A tail bigger than the room below the read high watermark still
    arrives in full before EOF, as the user drains."""
    left, right = pair_new()
    tail_filter = _TailAtFinish()
    filt = filter_new(left, tail_filter, None, CLOSE)
    filt.setwatermark(EV_READ, 0, 100)
    filt.enable(EV_READ)
    right.write(b"A" * 30)
    right.shutdown_write()
    got = collect_until_eof(filt, 2.0)
    assert got == b"A" * 30 + _TailAtFinish.TRAILER
    assert not tail_filter.state


def test_stacked_filters_over_a_pair_give_the_writer_backpressure(
    greenlets: list,
) -> None:
    """Memory held by a two-filter stack over a pair stays near the top
    filter's read high watermark while nobody reads; the writer blocks."""
    bottom, writer = pair_new()
    middle = filter_new(bottom, None, None, CLOSE)
    top = filter_new(middle, None, None, CLOSE)
    top.setwatermark(EV_READ, 0, 64 * 1024)
    top.enable(EV_READ)
    chunks_done: list = []

    def write_chunks() -> None:
        for _ in range(20):
            writer.write_all(bytes(MIB), timeout=5)
            chunks_done.append(1)

    spawn_quiet(greenlets, write_chunks)
    gevent.sleep(0.3)
    held = len(bottom.input) + len(middle.input) + len(top.input)
    assert held <= 512 * 1024, f"{held} bytes held in the stack's inputs"
    assert len(chunks_done) < 20


def test_pair_shutdown_write_then_free_delivers_everything_and_eof() -> None:
    """What shutdown_write() promised (held-back bytes, then EOF) still
    reaches the partner when the end is freed right after."""
    sender, receiver = pair_new()
    receiver.setwatermark(EV_READ, 0, 10)
    receiver.enable(EV_READ)
    sender.write(b"x" * 100)
    sender.shutdown_write()
    sender.free()
    assert collect_until_eof(receiver, 1.0) == b"x" * 100


def test_drain_on_an_unlinked_pair_end_fails_at_once() -> None:
    """A blocking write on an end with no partner raises instead of
    waiting for a transfer that cannot happen."""
    survivor, gone = pair_new()
    gone.free()
    started = time.monotonic()
    with pytest.raises(BufferEventError):
        survivor.write(b"lost")
        survivor.drain(timeout=1.0)
    assert time.monotonic() - started < 0.5


def test_read_waiting_when_the_partner_is_freed_returns(greenlets: list) -> None:
    """read_some waiting on an end ends (b"" or BufferEventError) once the
    partner is gone."""
    survivor, gone = pair_new()
    reader = spawn_quiet(greenlets, lambda: survivor.read_some(timeout=1.0))
    gevent.sleep(0.01)
    started = time.monotonic()
    gone.free()
    reader.join(timeout=2)
    outcome = reader.value
    assert outcome == b"" or isinstance(outcome, BufferEventError), outcome
    assert time.monotonic() - started < 0.5


def test_filter_over_a_freed_underlying_refuses_blocking_writes() -> None:
    """Writing through a filter whose underlying is gone fails clearly."""
    under, partner = pair_new()
    filt = filter_new(under, None, None)
    partner.enable(EV_READ)
    under.free()
    started = time.monotonic()
    with pytest.raises(BufferEventError):
        filt.write(b"lost")
        filt.drain(timeout=1.0)
    assert time.monotonic() - started < 0.5


def test_drain_inside_a_filters_connected_callback(tcp_listener: Any) -> None:
    """drain() in the CONNECTED callback either works, as on a socket
    bufferevent, or is refused at once; it never waits for itself."""
    sock_bev = socket_new(None, CLOSE)
    filt = filter_new(sock_bev, None, None, CLOSE)
    outcome: list = []

    def on_event(bev: Any, events: int, ctx: Any) -> None:
        if not events & Event.CONNECTED:
            return
        bev.write(b"hello")
        started = time.monotonic()
        try:
            bev.drain(timeout=1.0)
            outcome.append(("drained", time.monotonic() - started))
        except (BufferEventError, TimeoutError) as exc:
            outcome.append((type(exc).__name__, time.monotonic() - started))

    filt.setcb(None, None, on_event)
    sock_bev.connect(tcp_listener.getsockname())
    peer, _ = tcp_listener.accept()
    try:
        deadline = time.monotonic() + 2.0
        while not outcome and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert outcome, "no CONNECTED callback"
        name, waited = outcome[0]
        assert name in ("drained", "BufferEventError"), outcome
        assert waited < 0.5
    finally:
        peer.close()


def test_raising_buffer_callback_does_not_stall_a_pair(
    greenlets: list, hub_errors: list
) -> None:
    """Bytes moved by a pair reach a waiting reader even when a user's
    buffer callback on the sender's output raises."""
    receiver, sender = pair_new()

    def failing_cb(buf: Buffer, info: Any, ctx: Any) -> None:
        if info.n_deleted:
            raise RuntimeError("buffer callback failed")

    sender.output.add_cb(failing_cb)
    reader = spawn_quiet(greenlets, lambda: receiver.read_some(timeout=1.0))
    gevent.sleep(0)
    try:
        sender.write(b"hello")
    except RuntimeError:
        pass  # whether write() reports it is not what this test is about
    reader.join(timeout=2)
    try:
        assert reader.value == b"hello"
    finally:
        hub_errors[:] = [
            entry for entry in hub_errors if not isinstance(entry[1], RuntimeError)
        ]


def test_free_inside_the_finishing_output_filter_keeps_the_eof() -> None:
    """shutdown_write() still ends in EOF for the partner when the output
    filter frees the filter during its FINISHED run."""
    under, partner = pair_new()
    partner.enable(EV_READ)
    holder: dict = {}

    def trailer_then_free(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        if len(src):
            dst.add(src.remove(len(src)))
        if mode == FlushMode.FINISHED:
            dst.add(b"END")
            holder["filter"].free()
        return OK

    filt = holder["filter"] = filter_new(under, None, trailer_then_free, CLOSE)
    filt.write(b"body")
    filt.shutdown_write()
    assert collect_until_eof(partner, 1.0) == b"bodyEND"


# -- attacks the library survived --------------------------------------------


def test_one_filter_over_a_pair_bounds_a_writer_that_never_yields(
    greenlets: list,
) -> None:
    """A writer looping on write_all before the filter's pumps ever ran
    still meets the read-ahead cap (it is set with the watermark)."""
    under, writer = pair_new()
    filt = filter_new(under, None, None, CLOSE)
    filt.setwatermark(EV_READ, 0, 64 * 1024)
    filt.enable(EV_READ)
    chunks_done: list = []

    def write_chunks() -> None:
        for _ in range(20):
            writer.write_all(bytes(MIB), timeout=5)
            chunks_done.append(1)

    spawn_quiet(greenlets, write_chunks)
    gevent.sleep(0.3)
    assert len(under.input) + len(filt.input) <= 256 * 1024
    assert len(chunks_done) < 20


@pytest.mark.parametrize("options", [True, b"1", "3", 2.5])
def test_pair_new_refuses_options_that_only_int_would_take(options: Any) -> None:
    """int() would turn these into flags (True and b"1" into
    CLOSE_ON_FREE); pair_new refuses them, naming the argument."""
    with pytest.raises(TypeError, match="options"):
        pair_new(options)


def _free_filter(st: dict) -> None:
    st["filter"].free()


def _free_underlying(st: dict) -> None:
    st["under"].free()


def _free_partner(st: dict) -> None:
    st["partner"].free()


def _write_to_self(st: dict) -> None:
    if st.setdefault("writes", 0) < 3:
        st["writes"] += 1
        st["filter"].write(b"+")


def _flush_finished(st: dict) -> None:
    st["filter"].flush(EV_READ | EV_WRITE, FlushMode.FINISHED)


def _storm(st: dict) -> None:
    filt = st["filter"]
    filt.setwatermark(EV_READ, 0, 1)
    filt.disable(EV_READ | EV_WRITE)
    filt.enable(EV_READ | EV_WRITE)
    filt.setwatermark(EV_READ, 0, 0)
    filt.shutdown_write()


@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize(
    "action",
    [
        _free_filter,
        _free_underlying,
        _free_partner,
        _write_to_self,
        _flush_finished,
        _storm,
    ],
    ids=lambda fn: fn.__name__.lstrip("_"),
)
def test_filter_functions_that_reenter_the_library(
    side: str, action: Callable[[dict], None], hub_errors: list
) -> None:
    """Freeing, writing, flushing, re-watermarking and shutting down from
    inside a filter function leaves no hub error and no stuck greenlet,
    and the bytes the filter moved before stay where it put them."""
    under, partner = pair_new()
    partner.enable(EV_READ)
    st: dict = {"under": under, "partner": partner}

    def meddling(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        result = pass_limited(src, dst, limit, mode, ctx)
        if result is OK:
            action(st)
        return result

    if side == "input":
        filt = filter_new(under, meddling, None, CLOSE)
    else:
        filt = filter_new(under, None, meddling, CLOSE)
    st["filter"] = filt
    filt.enable(EV_READ)
    try:
        if side == "input":
            partner.write(b"data")
        else:
            filt.write(b"data")
    except BufferEventError:
        pass  # the action freed the sender first
    gevent.sleep(0.05)
    if side == "input" and not filt.freed:
        assert bytes(filt.input).startswith(b"data")
    if side == "output":
        assert bytes(partner.input).startswith(b"data")
    assert not hub_errors


def test_three_filters_over_a_pair_blocking_both_ways(greenlets: list) -> None:
    """Framed messages, lines and a makefile() stream cross three XOR
    filters on each end of a pair, from several greenlets, intact."""
    left, right = pair_new()
    for _ in range(3):
        left = filter_new(left, xor_5a, xor_5a, CLOSE)
        right = filter_new(right, xor_5a, xor_5a, CLOSE)
    right.setwatermark(EV_READ, 0, 3000)
    messages = [bytes([i % 251]) * (1 + i * 37 % 4000) for i in range(60)]
    lines = [b"line %d" % i for i in range(100)]

    def send() -> None:
        for message in messages:
            left.write_all(len(message).to_bytes(4, "big") + message, timeout=5)
        for line in lines:
            left.write_all(line + b"\r\n", timeout=5)
        left.shutdown_write()

    def receive() -> tuple:
        got = []
        for _ in messages:
            size = int.from_bytes(right.read_exactly(4, timeout=5), "big")
            got.append(right.read_exactly(size, timeout=5))
        got_lines = []
        while (line := right.read_line(timeout=5)) is not None:
            got_lines.append(line)
        return got, got_lines

    def answer() -> None:
        out = right.makefile("wb")
        out.write(b"B" * 200_000)
        out.flush()
        right.shutdown_write()

    spawn_quiet(greenlets, send)
    receiver = spawn_quiet(greenlets, receive)
    receiver.join(timeout=10)
    assert receiver.value == (messages, lines)
    spawn_quiet(greenlets, answer)
    assert left.makefile("rb", timeout=5).read() == b"B" * 200_000


@pytest.mark.parametrize("layers", [1, 3])
def test_filter_stack_over_a_socket_stays_bounded(
    raw_sockets: Any, greenlets: list, layers: int
) -> None:
    """With only the top filter's read high watermark set, every input of
    a filter stack over a socket stays near it while nobody reads, and
    all 8 MiB arrive in order once the user reads."""
    ours, theirs = raw_sockets.pair()
    stack = [socket_new(ours, CLOSE)]
    for _ in range(layers):
        stack.append(filter_new(stack[-1], None, None, CLOSE))
    top = stack[-1]
    high = 64 * 1024
    top.setwatermark(EV_READ, 0, high)
    top.enable(EV_READ)
    sender = socket_new(theirs, CLOSE)
    data = bytes(range(256)) * (8 * 4096)
    spawn_quiet(greenlets, lambda: sender.write_all(data, timeout=10))
    gevent.sleep(0.3)
    for layer in stack:
        assert len(layer.input) <= high + 64 * 1024, stack
    got = bytearray()
    deadline = time.monotonic() + 5
    while len(got) < len(data) and time.monotonic() < deadline:
        got += top.read_some(timeout=2)
    assert bytes(got) == data


def test_linger_sends_mebibytes_to_a_slow_reader(raw_sockets: Any) -> None:
    """Freeing a CLOSE_ON_FREE filter while its underlying holds 4 MiB:
    free() returns at once, every byte reaches a slow reader, then the
    socket closes."""
    ours, theirs = raw_sockets.pair()
    under = socket_new(ours, CLOSE)
    under.setwatermark(EV_WRITE, 0, 8 * MIB)  # let the pump hand it all over
    filt = filter_new(under, None, None, CLOSE)
    data = bytes(range(256)) * (4 * 4096)
    filt.write(data)
    gevent.sleep(0.02)
    assert len(under.output) > MIB
    started = time.monotonic()
    filt.free()
    assert time.monotonic() - started < 0.1
    got = bytearray()
    while True:
        piece = theirs.recv(65536)
        if not piece:
            break
        got += piece
        gevent.sleep(0.0002)
    assert bytes(got) == data
    assert under.freed


def test_linger_gives_up_on_a_peer_that_never_reads(
    raw_sockets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A never-reading peer: the linger ends after FREE_DRAIN_TIMEOUT, the
    socket closes, and other greenlets ran all along."""
    monkeypatch.setattr(filter_module, "FREE_DRAIN_TIMEOUT", 0.3)
    ours, theirs = raw_sockets.pair()
    under = socket_new(ours, CLOSE)
    filt = filter_new(under, None, None, CLOSE)
    filt.write(bytes(4 * MIB))
    filt.shutdown_write()
    ticks = [0]

    def tick() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    try:
        filt.free()
        gevent.sleep(0.6)
        assert under.freed
        assert ticks[0] >= 20
    finally:
        ticker.kill()
    theirs.settimeout(1.0)
    received = 0
    while piece := theirs.recv(1 << 20):
        received += len(piece)
    assert 0 < received < 4 * MIB  # cut off by the close, not hung


@pytest.mark.parametrize("connect_first", [True, False])
def test_filter_over_a_connecting_socket(
    tcp_listener: Any, greenlets: list, connect_first: bool
) -> None:
    """Bytes written through an output filter before CONNECTED arrive,
    transformed and in order, whether connect() came before filter_new or
    after."""
    received = bytearray()

    def serve_one() -> None:
        conn, _ = tcp_listener.accept()
        conn.settimeout(3)
        with conn:
            while piece := conn.recv(65536):
                received.extend(piece)
            conn.sendall(b"bye")

    server = spawn_quiet(greenlets, serve_one)
    sock_bev = socket_new(None, CLOSE)
    if connect_first:
        sock_bev.connect(tcp_listener.getsockname())
    filt = filter_new(sock_bev, None, xor_5a, CLOSE)
    filt.write(b"before connect;")
    if not connect_first:
        sock_bev.connect(tcp_listener.getsockname())
    filt.write(b" after")
    filt.wait_connected(timeout=2)
    filt.shutdown_write()
    assert collect_until_eof(filt, 3.0) == b"bye"
    server.join(timeout=3)
    assert bytes(b ^ 0x5A for b in received) == b"before connect; after"


def test_event2_pair_and_filter_constructors_never_raise() -> None:
    """Bad arguments give None from the C-style constructors."""
    left, right = pair_new()
    freed, _ = pair_new()
    freed.free()
    bad_calls = [
        lambda: event2.bufferevent_pair_new("base", 0),
        lambda: event2.bufferevent_pair_new(None, -1),
        lambda: event2.bufferevent_pair_new(None, 1 << 40),
        lambda: event2.bufferevent_pair_new(None, None),
        lambda: event2.bufferevent_pair_new(None, 1.5),
        lambda: event2.bufferevent_pair_new(None, True),
        lambda: event2.bufferevent_filter_new(None, None, None, 0, None, None),
        lambda: event2.bufferevent_filter_new(3, None, None, 0, None, None),
        lambda: event2.bufferevent_filter_new(Buffer(), None, None, 0, None, None),
        lambda: event2.bufferevent_filter_new(left, 5, None, 0, None, None),
        lambda: event2.bufferevent_filter_new(left, None, None, 0, 5, None),
        lambda: event2.bufferevent_filter_new(left, None, None, -1, None, None),
        lambda: event2.bufferevent_filter_new(left, None, None, 1 << 70, None, None),
        lambda: event2.bufferevent_filter_new(left, None, None, None, None, None),
        lambda: event2.bufferevent_filter_new(freed, None, None, 0, None, None),
    ]
    for call in bad_calls:
        assert call() is None
    first = event2.bufferevent_filter_new(right, None, None, 0, None, None)
    assert first is not None
    assert event2.bufferevent_filter_new(right, None, None, 0, None, None) is None


def test_dispatch_with_pairs_and_filters(greenlets: list) -> None:
    """dispatch returns at once when pairs and filters are idle, and waits
    for a read timeout armed on a filter."""
    base = get_default_base()
    left, right = pair_new()
    filt = filter_new(left, None, None, CLOSE)
    filt.enable(EV_READ)
    right.enable(EV_READ)
    started = time.monotonic()
    runner = spawn_quiet(greenlets, base.dispatch)
    runner.join(timeout=2)
    assert runner.value == 1
    assert time.monotonic() - started < 0.2

    events: list = []
    filt.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    filt.set_timeouts(read=0.3)
    started = time.monotonic()
    runner = spawn_quiet(greenlets, base.dispatch)
    runner.join(timeout=3)
    assert runner.value == 1
    assert 0.25 <= time.monotonic() - started < 1.5
    assert events == [int(Event.READING | Event.TIMEOUT)]


def test_eof_waits_until_the_full_input_is_drained() -> None:
    """EOF arriving while the filter's input is at its read high watermark
    reaches the user only after every byte, the FINISHED tail included."""
    left, right = pair_new()
    calls: list = []

    def hold_last_byte(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: dict
    ) -> FilterResult:
        calls.append(mode)
        if len(src):
            data = ctx.get("held", b"") + src.remove(len(src))
            ctx["held"] = data[-1:]
            dst.add(data[:-1])
        if mode == FlushMode.FINISHED and ctx.get("held"):
            dst.add(ctx.pop("held"))
            return OK
        return OK if len(dst) else NEED_MORE

    filt = filter_new(left, hold_last_byte, None, CLOSE, ctx={})
    filt.setwatermark(EV_READ, 0, 100)
    events: list = []
    filt.setcb(None, None, lambda bev, what, ctx: events.append(len(bev.input)))
    filt.enable(EV_READ)
    right.write(b"A" * 101)
    gevent.sleep(0.02)
    right.shutdown_write()
    gevent.sleep(0.05)
    assert len(filt.input) == 100
    assert events == []  # EOF waits for the drain
    assert collect_until_eof(filt, 2.0) == b"A" * 101
    assert FlushMode.FINISHED in calls


def test_socket_adapter_over_a_filtered_pair(greenlets: list) -> None:
    """BufferEventSocket over filters on both ends of a pair: makefile
    lines, sendall of 500 kB, SHUT_WR as EOF, then close."""
    left, right = pair_new()
    client = BufferEventSocket(filter_new(left, xor_5a, xor_5a, CLOSE))
    server = BufferEventSocket(filter_new(right, xor_5a, xor_5a, CLOSE))
    client.settimeout(2)
    server.settimeout(2)
    assert client.fileno() == -1

    def serve() -> bytes:
        stream = server.makefile("rwb")
        line = stream.readline()
        stream.write(line.upper())
        stream.flush()
        server.sendall(b"z" * 500_000)
        server.shutdown(socket.SHUT_WR)
        return line

    handler = spawn_quiet(greenlets, serve)
    client.sendall(b"hello\n")
    # One file for both reads: a buffered reader reads ahead, as on a socket.
    reader = client.makefile("rb")
    assert reader.readline() == b"HELLO\n"
    assert reader.read() == b"z" * 500_000
    reader.close()
    assert client.recv(10) == b""
    handler.join(timeout=2)
    assert handler.value == b"hello\n"
    server.close()
    client.close()


@pytest.mark.parametrize("kind", ["pair", "socketpair"])
def test_enable_disable_storm_with_watermarks_changed_inside_the_filter(
    kind: str, raw_sockets: Any, greenlets: list
) -> None:
    """Random enable/disable by the user and by the input filter, with the
    read high watermark changed inside the filter: 1 MiB arrives intact,
    then EOF."""
    rng = random.Random(7)
    if kind == "pair":
        under, sender = pair_new()
    else:
        ours, theirs = raw_sockets.pair()
        under, sender = socket_new(ours, CLOSE), socket_new(theirs, CLOSE)
    holder: dict = {}

    def jittery(
        src: Buffer, dst: Buffer, limit: int, mode: FlushMode, ctx: Any
    ) -> FilterResult:
        n = len(src) if limit < 0 else min(limit, len(src))
        if not n:
            return NEED_MORE
        dst.add(src.remove(rng.randrange(1, n + 1)))
        roll = rng.random()
        if roll < 0.1:
            holder["f"].setwatermark(EV_READ, 0, rng.choice([0, 1, 10, 5000]))
        elif roll < 0.15:
            holder["f"].disable(EV_READ)
        return OK

    filt = holder["f"] = filter_new(under, jittery, None, CLOSE)
    events: list = []
    filt.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    data = rng.randbytes(MIB)

    def send() -> None:
        for i in range(0, len(data), 65536):
            sender.write_all(data[i : i + 65536], timeout=5)
        sender.shutdown_write()

    spawn_quiet(greenlets, send)
    got = bytearray()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if rng.random() < 0.2:
            filt.disable(EV_READ)
        filt.enable(EV_READ)
        got += filt.read(rng.randrange(1, 100_000))
        gevent.sleep(0)
        if events and not len(filt.input):
            break
    assert bytes(got) == data
    assert events == [int(Event.READING | Event.EOF)]


def test_reset_after_data_under_a_full_filter_loses_nothing(
    tcp_listener: Any,
) -> None:
    """The peer sends 50,000 bytes and resets while the filter sits at a
    1,000-byte read high watermark: every byte is readable before the
    ERROR|READING, none stays behind in the underlying."""
    client = gevent.socket.create_connection(tcp_listener.getsockname())
    peer, _ = tcp_listener.accept()
    data = bytes(range(250)) * 200
    peer.sendall(data)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    time.sleep(0.05)  # the bytes and the RST are in our kernel first
    under = socket_new(client, CLOSE)
    filt = filter_new(under, pass_limited, None, CLOSE)
    filt.setwatermark(EV_READ, 0, 1000)
    events: list = []
    filt.setcb(None, None, lambda bev, what, ctx: events.append(int(what)))
    filt.enable(EV_READ)
    got = bytearray()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (events and not len(filt.input)):
        got += filt.read(700)
        gevent.sleep(0.001)
    assert bytes(got) == data
    assert events == [int(Event.READING | Event.ERROR)]
    assert not len(under.input)
