"""A compression layer made of two filter functions and the zlib module.

A filter function moves bytes from ``src`` to ``dst`` and says how it
went.  ``deflate_out`` compresses what the user writes; the flush mode
decides when zlib must give up what it holds: NORMAL lets it collect
(better ratio), FLUSH ends with a sync flush (the peer can decode
everything so far), FINISHED writes the end of the stream.
``inflate_in`` undoes it on the other side.

Both ends of an in-memory pair get the layer; one end sends a few lines,
flushing after each, then a larger block, then finishes.  The other end
prints what arrived and how many bytes crossed the pair: the repeated
line costs fewer than the first, because zlib's window still holds it.

Run: python examples/zlib_filter.py
"""

from __future__ import annotations

import zlib

import geventbev
from geventbev import EOL, EV_READ, EV_WRITE, FilterResult, FlushMode, Option


class ZlibState:
    """One connection's compressor and decompressor (the filters' ctx)."""

    def __init__(self) -> None:
        self.compressor = zlib.compressobj()
        self.decompressor = zlib.decompressobj()


def deflate_out(src, dst, dst_limit, mode, state):
    out = state.compressor.compress(src.remove(len(src)))
    if mode == FlushMode.FLUSH:
        out += state.compressor.flush(zlib.Z_SYNC_FLUSH)
    elif mode == FlushMode.FINISHED:
        out += state.compressor.flush(zlib.Z_FINISH)
    if not out:
        return FilterResult.NEED_MORE  # zlib is still collecting
    dst.add(out)
    return FilterResult.OK


def inflate_in(src, dst, dst_limit, mode, state):
    try:
        out = state.decompressor.decompress(src.remove(len(src)))
        if mode == FlushMode.FINISHED:  # the peer closed: take the rest
            out += state.decompressor.flush()
    except zlib.error:
        return FilterResult.ERROR  # not a zlib stream
    if not out:
        return FilterResult.NEED_MORE
    dst.add(out)
    return FilterResult.OK


def zlib_layer(end):
    bev = geventbev.filter_new(
        end, inflate_in, deflate_out, Option.CLOSE_ON_FREE, ctx=ZlibState()
    )
    bev.enable(EV_READ | EV_WRITE)
    return bev


def main() -> None:
    end_a, end_b = geventbev.pair_new()
    crossed = []  # bytes the compressed side of B received, per move
    end_b.input.add_cb(lambda buf, info, ctx: crossed.append(info.n_added))
    sender, receiver = zlib_layer(end_a), zlib_layer(end_b)

    sent = 0
    for line in (b"hello, filter", b"hello, filter", b"hello, zlib"):
        before = sum(crossed)
        sender.write(line + b"\n")
        sent += len(line) + 1
        sender.flush(EV_WRITE, FlushMode.FLUSH)  # decodable now
        got = receiver.read_line(EOL.LF, timeout=5).decode()
        print(f"received {got!r}: {sum(crossed) - before} bytes on the pair")

    block = b"".join(b"line %d of a repetitive log\n" % (i % 50) for i in range(4000))
    sender.write(block)
    sender.shutdown_write()  # runs deflate_out with FINISHED, then EOF
    rest = receiver.read_until_eof(timeout=5)
    sent += len(block)
    print(f"then {len(rest)} bytes until EOF, intact: {rest == block}")
    print(f"{sent} bytes written, {sum(crossed)} crossed the pair")
    sender.free()
    receiver.free()


if __name__ == "__main__":
    main()
