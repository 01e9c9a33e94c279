"""Tests for geventbev.compress: the zlib filter functions and the filter.

The filter functions are plain functions over Buffers, so most tests call
them directly; the last ones run them inside real filter bufferevents
over an in-memory pair.
"""

from __future__ import annotations

import random
import zlib
from typing import Any, Iterator

import pytest

from geventbev import (
    EV_READ,
    EV_WRITE,
    Buffer,
    Event,
    FilterResult,
    FlushMode,
    Option,
    pair_new,
)
from geventbev.compress import (
    CompressionError,
    ZlibContext,
    zlib_filter_new,
    zlib_input_filter,
    zlib_output_filter,
)

WORDS = b"alpha bravo charlie delta echo foxtrot status reply 200 404".split()


def text(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of compressible, seed-dependent lines of words."""
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(6)) + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def buffer_of(*pieces: bytes) -> Buffer:
    buf = Buffer()
    for piece in pieces:
        buf.add(piece)
    return buf


def deflate(ctx: ZlibContext, data: bytes, mode: FlushMode = FlushMode.NORMAL) -> bytes:
    src, dst = buffer_of(data), Buffer()
    zlib_output_filter(src, dst, -1, mode, ctx)
    assert len(src) == 0
    return bytes(dst)


def inflate(ctx: ZlibContext, data: bytes, mode: FlushMode = FlushMode.NORMAL) -> bytes:
    src, dst = buffer_of(data), Buffer()
    zlib_input_filter(src, dst, -1, mode, ctx)
    return bytes(dst)


# -- compressing ------------------------------------------------------------


def test_each_normal_batch_is_decodable_at_once() -> None:
    """The latency rule: a NORMAL run ends with a sync flush, so the peer
    decodes every byte of a small batch without waiting for more."""
    sender, receiver = ZlibContext(), ZlibContext()
    for i in range(5):
        request = b"GET /item/%d HTTP/1.1\r\n\r\n" % i
        wire = deflate(sender, request)
        assert wire.endswith(b"\x00\x00\xff\xff")  # a sync flush point
        assert inflate(receiver, wire) == request


def test_normal_run_over_many_chunks_compresses_them_all() -> None:
    data = text(300_000)
    src = buffer_of(*(data[i : i + 7000] for i in range(0, len(data), 7000)))
    dst = Buffer()
    ctx = ZlibContext()
    assert zlib_output_filter(src, dst, -1, FlushMode.NORMAL, ctx) == FilterResult.OK
    assert len(src) == 0
    assert len(dst) < len(data) // 2
    assert zlib.decompressobj().decompress(bytes(dst)) == data
    assert (ctx.payload_out, ctx.wire_out) == (len(data), len(dst))


def test_finished_writes_a_complete_standard_zlib_stream() -> None:
    ctx = ZlibContext()
    data = text(50_000)
    wire = deflate(ctx, data[:20_000]) + deflate(ctx, data[20_000:], FlushMode.FINISHED)
    assert zlib.decompress(wire) == data
    assert ctx.out_finished


def test_finished_with_nothing_written_still_gives_a_valid_empty_stream() -> None:
    wire = deflate(ZlibContext(), b"", FlushMode.FINISHED)
    assert zlib.decompress(wire) == b""


def test_flush_mode_sync_flushes_even_small_data() -> None:
    ctx = ZlibContext()
    wire = deflate(ctx, b"x", FlushMode.FLUSH)
    assert wire.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompressobj().decompress(wire) == b"x"


def test_nothing_to_do_is_need_more() -> None:
    ctx = ZlibContext()
    result = zlib_output_filter(Buffer(), Buffer(), -1, FlushMode.NORMAL, ctx)
    assert result == FilterResult.NEED_MORE
    result = zlib_output_filter(buffer_of(b"abc"), Buffer(), 0, FlushMode.NORMAL, ctx)
    assert result == FilterResult.NEED_MORE


def test_writing_after_finished_is_an_error_naming_zlib() -> None:
    ctx = ZlibContext()
    deflate(ctx, b"done", FlushMode.FINISHED)
    # Nothing more to send: quietly nothing to do.
    assert zlib_output_filter(Buffer(), Buffer(), -1, FlushMode.FINISHED, ctx) == (
        FilterResult.NEED_MORE
    )
    with pytest.raises(CompressionError, match=r"^zlib: 4 bytes written after"):
        zlib_output_filter(buffer_of(b"more"), Buffer(), -1, FlushMode.NORMAL, ctx)


def test_output_limit_takes_a_slice_and_leaves_the_rest() -> None:
    """dst_limit bounds the input taken per run, so the output stays near
    the limit even for incompressible bytes; every run moves something."""
    data = random.Random(3).randbytes(100_000)
    src, wire = buffer_of(data), Buffer()
    ctx = ZlibContext()
    runs = 0
    while len(src):
        before = len(wire)
        result = zlib_output_filter(src, wire, 10_000, FlushMode.NORMAL, ctx)
        assert result == FilterResult.OK
        assert len(wire) - before <= 10_000 + 64
        runs += 1
        assert runs < 100
    assert runs >= 10
    assert zlib.decompressobj().decompress(bytes(wire)) == data


def test_bad_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="level must be an int in -1..9"):
        ZlibContext(10)


# -- decompressing ----------------------------------------------------------


def test_input_in_tiny_pieces_decodes_the_same() -> None:
    data = text(40_000)
    wire = zlib.compress(data)
    ctx = ZlibContext()
    got = b"".join(inflate(ctx, wire[i : i + 3]) for i in range(0, len(wire), 3))
    assert got + inflate(ctx, b"", FlushMode.FINISHED) == data
    assert (ctx.wire_in, ctx.payload_in) == (len(wire), len(data))


def test_input_limit_bounds_each_run_and_keeps_the_rest_in_src() -> None:
    """Undecoded input stays in src (not hidden in the context), so the
    caller's "src not empty: run again" loop collects everything."""
    data = text(200_000)
    src, dst = buffer_of(zlib.compress(data)), Buffer()
    ctx = ZlibContext()
    runs = 0
    while len(src):
        before = len(dst)
        zlib_input_filter(src, dst, 4096, FlushMode.NORMAL, ctx)
        # zlib may release a finished match past the limit: a few hundred
        # bytes at most.
        assert len(dst) - before <= 4096 + 1024
        runs += 1
        assert runs < 1000
    assert bytes(dst) == data
    assert runs >= 200_000 // 5120


def test_eof_after_a_complete_stream_is_clean() -> None:
    ctx = ZlibContext()
    wire = zlib.compress(b"whole")
    assert inflate(ctx, wire) == b"whole"
    result = zlib_input_filter(Buffer(), Buffer(), -1, FlushMode.FINISHED, ctx)
    assert result == FilterResult.NEED_MORE


def test_eof_before_any_byte_is_clean() -> None:
    result = zlib_input_filter(
        Buffer(), Buffer(), -1, FlushMode.FINISHED, ZlibContext()
    )
    assert result == FilterResult.NEED_MORE


def test_eof_in_the_middle_of_the_stream_is_an_error() -> None:
    """Only the sync-flushed part arrived: it is delivered, then EOF without
    the end marker is reported as an error (bytes may be missing)."""
    ctx = ZlibContext()
    wire = deflate(ZlibContext(), b"partial")
    assert inflate(ctx, wire) == b"partial"
    with pytest.raises(CompressionError, match=r"^zlib: the peer closed in the middle"):
        zlib_input_filter(Buffer(), Buffer(), -1, FlushMode.FINISHED, ctx)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 64, bytes(range(256))],
    ids=["http", "zeros", "bytes"],
)
def test_garbage_input_raises_compression_error_naming_zlib(garbage: bytes) -> None:
    with pytest.raises(CompressionError, match=r"^zlib: corrupt stream from the peer"):
        inflate(ZlibContext(), garbage)


@pytest.mark.parametrize("limit", [-1, 4096])
def test_bytes_after_the_stream_end_are_an_error(limit: int) -> None:
    src = buffer_of(zlib.compress(b"end") + b"extra")
    with pytest.raises(CompressionError, match=r"^zlib: 5 bytes arrived after the end"):
        zlib_input_filter(src, Buffer(), limit, FlushMode.NORMAL, ZlibContext())


def test_bytes_arriving_later_after_the_stream_end_are_an_error() -> None:
    ctx = ZlibContext()
    assert inflate(ctx, zlib.compress(b"end")) == b"end"
    with pytest.raises(CompressionError, match=r"^zlib: 2 bytes arrived after the end"):
        inflate(ctx, b"no")


# -- inside filter bufferevents ---------------------------------------------


@pytest.fixture
def zlib_pair() -> Iterator[tuple]:
    """Two zlib filters over the ends of a pair, reading and writing
    enabled: ``(near, far, near_end, far_end)``."""
    end0, end1 = pair_new()
    near = zlib_filter_new(end0, Option.CLOSE_ON_FREE)
    far = zlib_filter_new(end1, Option.CLOSE_ON_FREE)
    for bev in (near, far):
        bev.enable(EV_READ | EV_WRITE)
    yield near, far, end0, end1
    near.free()
    far.free()


def test_filters_over_a_pair_move_compressed_bytes_both_ways(zlib_pair) -> None:
    near, far, near_end, far_end = zlib_pair
    wire = []
    far_end.input.add_cb(lambda buf, info, ctx: wire.append(info.n_added))
    data = text(500_000)
    near.write(data)
    assert far.read_exactly(len(data), timeout=5) == data
    assert 0 < sum(wire) < len(data) // 2
    far.write_all(b"reply\n", timeout=5)
    assert near.read_line(timeout=5) == b"reply"
    assert near.get_underlying() is near_end


def test_small_writes_arrive_without_a_flush(zlib_pair) -> None:
    """An interactive exchange: each line is answered before the next is
    sent, with no flush() call; the sync flush per run makes this work."""
    near, far, _, _ = zlib_pair
    for i in range(20):
        near.write(b"ping %d\n" % i)
        assert far.read_line(timeout=2) == b"ping %d" % i
        far.write(b"pong %d\n" % i)
        assert near.read_line(timeout=2) == b"pong %d" % i


def test_shutdown_write_sends_the_trailer_and_then_eof(zlib_pair) -> None:
    near, far, _, _ = zlib_pair
    near.write(b"last words")
    near.shutdown_write()
    assert far.read_until_eof(timeout=5) == b"last words"
    assert far.get_error() is None
    # The other direction still works after the half-close.
    far.write_all(b"still here\n", timeout=5)
    assert near.read_line(timeout=5) == b"still here"


def test_garbage_from_the_peer_is_an_error_event_with_the_exception(
    run_until,
) -> None:
    raw, end = pair_new()
    far = zlib_filter_new(end, Option.CLOSE_ON_FREE)
    events: list = []

    def on_event(bev: Any, what: int, ctx: Any) -> None:
        events.append((what, bev.get_error()))

    far.setcb(None, None, on_event)
    far.enable(EV_READ | EV_WRITE)
    raw.enable(EV_READ | EV_WRITE)
    try:
        raw.write(b"GET / HTTP/1.0\r\n\r\n")
        assert run_until(lambda: events)
        what, error = events[0]
        assert what & Event.ERROR and what & Event.READING
        assert isinstance(error, CompressionError)
        assert str(error).startswith("zlib: corrupt stream from the peer")
    finally:
        far.free()
        raw.free()


def test_read_high_watermark_on_the_filter_still_gets_every_byte(zlib_pair) -> None:
    """A small read high watermark limits each inflate run (dst_limit);
    the input zlib has not used stays in the underlying's input, so reading
    resumes as the user drains, up to the trailer and EOF."""
    near, far, _, _ = zlib_pair
    far.setwatermark(EV_READ, 0, 4096)
    data = text(1 << 20, seed=5)
    near.write(data)
    near.shutdown_write()
    got = bytearray()
    largest = 0
    while True:
        chunk = far.read_some(timeout=5)
        if not chunk:
            break
        largest = max(largest, len(chunk))
        got += chunk
    assert bytes(got) == data
    assert largest <= 4096 + 1024  # the limit, plus what zlib may release
    assert far.get_error() is None
