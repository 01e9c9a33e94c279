"""Pair and filter bufferevents against the bare Python they wrap.

Usage (from the repository root)::

    python bench/bench_pair.py [--mib 256] [--zlib-mib 64] [--repeat 3]
        [--impl pump,pair,pair-blocking,pair-yield,socketpair,
                zlib-bare,zlib-filter,inflate-bare,inflate-filter]
        [--cpu 0 | --cpu none] [--profile DIR]

Everything runs in this one process, one row after the other, on one gevent
hub; the repetitions interleave the rows and the best run of each row is
kept.  Two workloads, each with its own reference row:

* **stream** (``--mib``, default 256): move N MiB from one greenlet to
  another in 16 KiB writes, with about 1 MiB in flight at most.  The
  reference is ``pump``, a gevent queue of 16 KiB chunks between two
  greenlets: the ceiling for any in-memory stream on gevent (its Queue is
  compiled).  ``pair-yield`` is a diagnostic row: the pair without its
  flow control.
* **zlib** (``--zlib-mib``, default 64): compress (level 6) N MiB of
  text-like lines written in 16 KiB writes, through a filter bufferevent
  over a pair end, against calling ``zlib.compressobj().compress`` on the
  same chunks; the ``inflate-*`` rows do the reverse direction.

Each row's docstring below says exactly what it does; ``bench/README.md``
has the table of rows and the checks that keep a wrong result from posting
a number.  ``--profile DIR`` runs every selected row under cProfile
(process CPU time), writes ``DIR/<row>.prof`` and prints the heaviest
functions; the table it prints is then not a benchmark result.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import random
import resource
import shlex
import signal
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Measure the library of this checkout, not some installed copy.
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_common  # noqa: E402
import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.queue  # noqa: E402
import gevent.socket  # noqa: E402

logger = logging.getLogger(__name__)

MIB = 1 << 20
KIB = 1 << 10
#: One application write, in bytes (libevent's own single-write default).
CHUNK = 16 * KIB
#: Bytes allowed in flight between writer and reader in the stream rows:
#: 64 chunks.  The queue's maxsize, the pair reader's read high watermark.
IN_FLIGHT = 64 * CHUNK
ZLIB_LEVEL = 6

TARGETS = {"stream": 0.8, "zlib": 0.9, "inflate": 0.9}

#: The stream payload: 16 KiB of fixed pseudo-random bytes, written again
#: and again.  Random, so that a reader that lost or reordered bytes shows
#: up in the spot checks of ``_Sink.take``.
PAYLOAD = random.Random(0x9E3779B9).randbytes(CHUNK)


class RunFailed(Exception):
    """A run finished with wrong numbers, or did not finish in time."""


Result = Dict[str, Any]


# -- the stream workload -------------------------------------------------------


class _Sink:
    """The reader's side of a stream row: counts and spot-checks the bytes,
    and makes sure each byte was copied exactly once.

    Every reader must end up with its own copy of the bytes, made once.  A
    gevent queue hands over the writer's very object, and so does a Buffer
    whose ``remove`` takes exactly one whole chunk; ``take`` copies those
    into a reusable 1 MiB buffer, the way ``recv_into`` would.  A ``remove``
    that spans chunks has already copied (it joins them), so it is not
    copied again.  ``copies`` counts the bytes copied here, ``handed``
    those that arrived already copied.

    Attributes:
        count: bytes received so far.
        copies: bytes this sink copied itself.
        handed: bytes that arrived already copied by the transport.
        bad: pieces whose first or last byte was not the expected one.
    """

    def __init__(self) -> None:
        self.buf = bytearray(IN_FLIGHT)
        self.view = memoryview(self.buf)
        self.count = 0
        self.copies = 0
        self.handed = 0
        self.bad = 0

    def take(self, data: bytes) -> None:
        """Account for one piece the reader took out of the transport."""
        n = len(data)
        if not n:
            return
        pos = self.count % CHUNK
        # O(1) spot check of order and loss: where this piece starts and
        # ends in the endlessly repeated PAYLOAD.
        if data[0] != PAYLOAD[pos] or data[-1] != PAYLOAD[(pos + n - 1) % CHUNK]:
            self.bad += 1
        if data is PAYLOAD:
            self.view[:n] = data
            self.copies += n
        else:
            self.handed += n
        self.count += n

    def took_into(self, n: int) -> None:
        """Account for ``n`` bytes the transport copied into ``self.buf``."""
        pos = self.count % CHUNK
        buf = self.buf
        if buf[0] != PAYLOAD[pos] or buf[n - 1] != PAYLOAD[(pos + n - 1) % CHUNK]:
            self.bad += 1
        self.handed += n
        self.count += n

    def check(self, total: int) -> None:
        """Raise RunFailed unless exactly ``total`` good bytes arrived."""
        if self.count != total:
            raise RunFailed(f"reader got {self.count} of {total} bytes")
        if self.bad:
            raise RunFailed(f"{self.bad} pieces held unexpected bytes")
        if self.copies + self.handed != total:
            raise RunFailed("copy accounting does not add up")


def _join_all(greenlets: List[Any], limit: float) -> None:
    """Wait for every greenlet; raise RunFailed on a timeout or a failure."""
    done = gevent.joinall(greenlets, timeout=limit)
    if len(done) != len(greenlets):
        gevent.killall(greenlets, timeout=5)
        raise RunFailed(f"not finished within {limit:.0f} s")
    for g in greenlets:
        if g.exception is not None:
            raise RunFailed(f"greenlet failed: {g.exception!r}")


def stream_pump(total: int, limit: float) -> Result:
    """A gevent Queue(maxsize=64) of 16 KiB chunks between two greenlets;
    the reader copies each chunk once."""
    queue = gevent.queue.Queue(IN_FLIGHT // CHUNK)
    sink = _Sink()
    n = total // CHUNK

    def writer() -> None:
        put = queue.put
        for _ in range(n):
            put(PAYLOAD)

    def reader() -> None:
        get = queue.get
        take = sink.take
        for _ in range(n):
            take(get())

    t0 = time.perf_counter()
    _join_all([gevent.spawn(writer), gevent.spawn(reader)], limit)
    elapsed = time.perf_counter() - t0
    sink.check(total)
    return {"elapsed": elapsed, "copies": sink.copies, "handed": sink.handed}


def stream_pair(total: int, limit: float) -> Result:
    """A pair, callbacks only: the write callback tops the partner up to its
    read high watermark, the read callback takes the whole input.

    Flow control is libevent's own: the reading end's read high watermark
    (1 MiB) bounds what a move hands it, so once it is full the writer's
    next chunk stays in the writer's output.  The write callback therefore
    writes while its output is empty, which fills the reader to 1 MiB, and
    runs again once the reader's draining has let that output move on.
    One write callback per MiB, not per chunk: writing one chunk per
    callback would pay a deferred callback round per 16 KiB.
    """
    from geventbev import EV_READ, pair_new

    writer_end, reader_end = pair_new()
    sink = _Sink()
    finished = gevent.event.Event()
    state = {"left": total // CHUNK}

    def writecb(bev: Any, ctx: Any) -> None:
        out = bev.output
        write = bev.write
        left = state["left"]
        while left and not len(out):
            write(PAYLOAD)
            left -= 1
        state["left"] = left

    def readcb(bev: Any, ctx: Any) -> None:
        inp = bev.input
        sink.take(inp.remove(len(inp)))
        if sink.count >= total:
            finished.set()

    def eventcb(bev: Any, events: int, ctx: Any) -> None:
        state["error"] = f"unexpected event {events!r} on {bev!r}"
        finished.set()

    reader_end.setwatermark(EV_READ, 0, IN_FLIGHT)
    reader_end.setcb(readcb, None, eventcb)
    reader_end.enable(EV_READ)
    writer_end.setcb(None, writecb, eventcb)
    try:
        t0 = time.perf_counter()
        writecb(writer_end, None)  # the first fill; callbacks do the rest
        if not finished.wait(limit):
            raise RunFailed(f"not finished within {limit:.0f} s")
        elapsed = time.perf_counter() - t0
    finally:
        writer_end.free()
        reader_end.free()
    if "error" in state:
        raise RunFailed(state["error"])
    sink.check(total)
    return {"elapsed": elapsed, "copies": sink.copies, "handed": sink.handed}


def stream_pair_yield(total: int, limit: float) -> Result:
    """A pair with no watermarks, so every write takes the pair's fast path
    (straight into the reader's input); the writer greenlet yields after
    every 64 writes, which lets the deferred read callback empty the input.

    Diagnostic: the memory bound here comes from scheduling, not from the
    library, so it shows what the pair costs without its flow control.
    """
    from geventbev import EV_READ, pair_new

    writer_end, reader_end = pair_new()
    sink = _Sink()
    finished = gevent.event.Event()
    n = total // CHUNK
    per_turn = IN_FLIGHT // CHUNK

    def writer() -> None:
        write = writer_end.write
        sleep = gevent.sleep
        for i in range(1, n + 1):
            write(PAYLOAD)
            if not i % per_turn:
                sleep(0)

    def readcb(bev: Any, ctx: Any) -> None:
        inp = bev.input
        sink.take(inp.remove(len(inp)))
        if sink.count >= total:
            finished.set()

    reader_end.setcb(readcb, None, None)
    reader_end.enable(EV_READ)
    try:
        t0 = time.perf_counter()
        glet = gevent.spawn(writer)
        if not finished.wait(limit):
            raise RunFailed(f"not finished within {limit:.0f} s")
        elapsed = time.perf_counter() - t0
        _join_all([glet], 10)
    finally:
        writer_end.free()
        reader_end.free()
    sink.check(total)
    return {"elapsed": elapsed, "copies": sink.copies, "handed": sink.handed}


def stream_pair_blocking(total: int, limit: float) -> Result:
    """A pair in blocking style: one greenlet calls ``write_all`` per chunk,
    another ``read_some`` in a loop.

    ``write_all`` returns once the output is at or below the write low
    watermark (0): at once while the reader has room under its read high
    watermark (1 MiB), otherwise when the reader's draining lets the chunk
    move on.
    """
    from geventbev import EV_READ, pair_new

    writer_end, reader_end = pair_new()
    sink = _Sink()
    n = total // CHUNK
    reader_end.setwatermark(EV_READ, 0, IN_FLIGHT)

    def writer() -> None:
        write_all = writer_end.write_all
        for _ in range(n):
            write_all(PAYLOAD)

    def reader() -> None:
        read_some = reader_end.read_some
        take = sink.take
        while sink.count < total:
            data = read_some()
            if not data:
                raise RunFailed(f"EOF after {sink.count} bytes")
            take(data)

    try:
        t0 = time.perf_counter()
        _join_all([gevent.spawn(writer), gevent.spawn(reader)], limit)
        elapsed = time.perf_counter() - t0
    finally:
        writer_end.free()
        reader_end.free()
    sink.check(total)
    return {"elapsed": elapsed, "copies": sink.copies, "handed": sink.handed}


def stream_socketpair(total: int, limit: float) -> Result:
    """gevent AF_UNIX socketpair: ``sendall`` per chunk, ``recv_into`` a
    reusable 1 MiB buffer; the kernel's send buffer bounds what is in
    flight (SO_SNDBUF 512 KiB, which Linux doubles)."""
    import socket

    a, b = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, IN_FLIGHT // 2)
    sink = _Sink()
    n = total // CHUNK

    def writer() -> None:
        sendall = a.sendall
        for _ in range(n):
            sendall(PAYLOAD)

    def reader() -> None:
        recv_into = b.recv_into
        buf = sink.buf
        while sink.count < total:
            got = recv_into(buf)
            if not got:
                raise RunFailed(f"EOF after {sink.count} bytes")
            sink.took_into(got)

    try:
        t0 = time.perf_counter()
        _join_all([gevent.spawn(writer), gevent.spawn(reader)], limit)
        elapsed = time.perf_counter() - t0
    finally:
        a.close()
        b.close()
    sink.check(total)
    return {"elapsed": elapsed, "copies": sink.copies, "handed": sink.handed}


# -- the zlib workload ---------------------------------------------------------


def make_text(size: int, seed: int = 20240601) -> bytes:
    """``size`` bytes of deterministic log-like text lines.

    Words come from a 3,000-word invented vocabulary with a Zipf-like
    frequency, after a sequence number, a time stamp and a level, so zlib
    compresses it about as well as real logs.  Only the first 4 MiB are
    generated; the rest repeats them.  zlib looks back 32 KiB at most, so
    the repetition changes neither its speed nor its ratio, and the text
    costs a fraction of a second to build instead of several.
    """
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    vocab = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    block = min(size, 4 * MIB)
    words = rng.choices(vocab, weights, k=block // 5)
    levels = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]
    lines = []
    length = pos = seq = 0
    while length < block and pos < len(words):
        k = rng.randint(4, 14)
        seq += 1
        stamp = f"{seq // 3600 % 24:02d}:{seq // 60 % 60:02d}:{seq % 60:02d}"
        line = (
            f"{seq:08d} {stamp}.{rng.randrange(1000000):06d} "
            f"{rng.choice(levels)} {' '.join(words[pos : pos + k])}\n"
        )
        pos += k
        lines.append(line)
        length += len(line)
    text = "".join(lines).encode()
    return (text * (size // len(text) + 1))[:size]


def _chunks(data: bytes) -> List[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


class ZlibWork:
    """The zlib rows' input, built once and shared by every run.

    Attributes:
        text: the uncompressed payload.
        chunks: ``text`` in 16 KiB application writes.
        compressed: ``text`` compressed at level 6 (the inflate rows' input).
        cchunks: ``compressed`` in 16 KiB application writes.
    """

    def __init__(self, size: int, need_compressed: bool) -> None:
        self.text = make_text(size)
        self.chunks = _chunks(self.text)
        self.compressed = b""
        self.cchunks: List[bytes] = []
        if need_compressed:
            self.compressed = zlib.compress(self.text, ZLIB_LEVEL)
            self.cchunks = _chunks(self.compressed)

    def check_compressed(self, out: bytes) -> None:
        """Raise RunFailed unless ``out`` inflates back to the text."""
        try:
            back = zlib.decompress(out)
        except zlib.error as exc:
            raise RunFailed(f"output does not inflate: {exc}") from None
        if back != self.text:
            raise RunFailed(
                f"output inflates to {len(back)} bytes (crc32 "
                f"{zlib.crc32(back):08x}), not the {len(self.text)}-byte text "
                f"(crc32 {zlib.crc32(self.text):08x})"
            )

    def check_inflated(self, out: bytes) -> None:
        """Raise RunFailed unless ``out`` is the text."""
        if out != self.text:
            raise RunFailed(
                f"got {len(out)} bytes (crc32 {zlib.crc32(out):08x}), not the "
                f"{len(self.text)}-byte text (crc32 {zlib.crc32(self.text):08x})"
            )


def zlib_bare(work: ZlibWork, limit: float) -> Result:
    """``compressobj(6).compress`` on each 16 KiB chunk, then ``flush``."""
    comp = zlib.compressobj(ZLIB_LEVEL)
    out: List[bytes] = []
    append = out.append
    compress = comp.compress
    t0 = time.perf_counter()
    for chunk in work.chunks:
        append(compress(chunk))
    append(comp.flush())
    elapsed = time.perf_counter() - t0
    data = b"".join(out)
    work.check_compressed(data)
    return {"elapsed": elapsed, "out_bytes": len(data)}


def _compress_filter(comp: Any) -> Callable[..., Any]:
    """An output filter that deflates with ``comp``.

    zlib cannot bound its output, so a ``dst_limit`` is honoured the usual
    way for deflate: take at most that much input (deflate output is
    rarely larger than its input, and never by more than a few bytes).
    """
    from geventbev import FilterResult, FlushMode

    ok = FilterResult.OK
    finished = FlushMode.FINISHED
    flush = FlushMode.FLUSH

    def output_filter(src: Any, dst: Any, dst_limit: int, mode: Any, ctx: Any) -> Any:
        n = len(src)
        if dst_limit >= 0 and n > dst_limit:
            n = dst_limit
        if n:
            piece = comp.compress(src.remove(n))
            if piece:
                dst.add(piece)
        if mode == finished and not len(src):
            dst.add(comp.flush())
        elif mode == flush:
            dst.add(comp.flush(zlib.Z_SYNC_FLUSH))
        return ok

    return output_filter


def zlib_filter(work: ZlibWork, limit: float) -> Result:
    """A filter bufferevent over one end of a pair; its output filter
    deflates.  The writer calls ``write_all`` per 16 KiB chunk, then
    flushes with FINISHED; the other pair end collects the compressed
    bytes in its read callback until EOF.

    ``write_all``, not ``write``: the filter runs in its own pump greenlet,
    so a writer that never waits would queue all N MiB before the filter
    ran once, and the filter would then compress one huge piece.  The
    writer is a greenlet of its own, as in the stream rows.
    """
    from geventbev import EV_READ, EV_WRITE, Event, FlushMode, filter_new, pair_new

    under, far = pair_new()
    comp = zlib.compressobj(ZLIB_LEVEL)
    bev = filter_new(under, None, _compress_filter(comp))
    out: List[bytes] = []
    finished = gevent.event.Event()
    state: Dict[str, Any] = {}

    def readcb(b: Any, ctx: Any) -> None:
        inp = b.input
        out.append(inp.remove(len(inp)))

    def eventcb(b: Any, events: int, ctx: Any) -> None:
        if events & Event.EOF:
            readcb(b, ctx)
        else:
            state["error"] = f"unexpected event {events!r}"
        finished.set()

    def writer() -> None:
        write_all = bev.write_all
        for chunk in work.chunks:
            write_all(chunk)
        bev.flush(EV_WRITE, FlushMode.FINISHED)

    far.setcb(readcb, None, eventcb)
    far.enable(EV_READ)
    try:
        t0 = time.perf_counter()
        glet = gevent.spawn(writer)
        if not finished.wait(limit):
            raise RunFailed(f"no EOF within {limit:.0f} s")
        elapsed = time.perf_counter() - t0
        _join_all([glet], 10)
    finally:
        bev.free()
        under.free()
        far.free()
    if "error" in state:
        raise RunFailed(state["error"])
    data = b"".join(out)
    work.check_compressed(data)
    return {"elapsed": elapsed, "out_bytes": len(data)}


def inflate_bare(work: ZlibWork, limit: float) -> Result:
    """``decompressobj().decompress`` on each 16 KiB compressed chunk."""
    decomp = zlib.decompressobj()
    out: List[bytes] = []
    append = out.append
    decompress = decomp.decompress
    t0 = time.perf_counter()
    for chunk in work.cchunks:
        append(decompress(chunk))
    append(decomp.flush())
    elapsed = time.perf_counter() - t0
    data = b"".join(out)
    work.check_inflated(data)
    return {"elapsed": elapsed, "out_bytes": len(data)}


def _inflate_filter(decomp: Any) -> Callable[..., Any]:
    """An input filter that inflates with ``decomp``, producing at most
    ``dst_limit`` bytes.

    zlib cannot tell how much input makes ``dst_limit`` bytes of output, so
    the input it could not use yet (``unconsumed_tail``) goes back to the
    front of ``src``, where the filter's owner sees it as pending.  Under a
    limit it takes at most 64 KiB per call: taking all of a large ``src``
    would copy the same tail back and forth on every call.
    """
    from geventbev import FilterResult

    ok = FilterResult.OK
    need_more = FilterResult.NEED_MORE
    most = 4 * CHUNK

    def input_filter(src: Any, dst: Any, dst_limit: int, mode: Any, ctx: Any) -> Any:
        n = len(src)
        if not n or not dst_limit:
            return need_more
        if dst_limit > 0 and n > most:
            n = most
        # zlib reads max_length=0 as "no limit", the same as dst_limit=-1.
        piece = decomp.decompress(src.remove(n), max(dst_limit, 0))
        tail = decomp.unconsumed_tail
        if tail:
            src.prepend(tail)
        if not piece:
            return need_more
        dst.add(piece)
        return ok

    return input_filter


def inflate_filter(work: ZlibWork, limit: float) -> Result:
    """The far end of a pair writes the compressed stream with ``write_all``
    per 16 KiB chunk; a filter bufferevent over the near end inflates it
    with its input filter, and its read callback collects the text.

    The filter has a 1 MiB read high watermark, as anything that inflates
    untrusted input should; it also makes the underlying read at most
    16 KiB ahead, which is what makes the writer's ``write_all`` wait for
    the filter (without it, the pair would hand the whole compressed
    stream over before the filter ran once).  The writer is a greenlet of
    its own, as in the stream rows, so the filter's pumps start first.
    """
    from geventbev import EV_READ, filter_new, pair_new

    under, far = pair_new()
    decomp = zlib.decompressobj()
    bev = filter_new(under, _inflate_filter(decomp), None)
    out: List[bytes] = []
    total = len(work.text)
    state = {"got": 0}
    finished = gevent.event.Event()

    def readcb(b: Any, ctx: Any) -> None:
        inp = b.input
        piece = inp.remove(len(inp))
        out.append(piece)
        state["got"] += len(piece)
        if state["got"] >= total:
            finished.set()

    def eventcb(b: Any, events: int, ctx: Any) -> None:
        state["error"] = f"unexpected event {events!r}"
        finished.set()

    def writer() -> None:
        write_all = far.write_all
        for chunk in work.cchunks:
            write_all(chunk)

    bev.setwatermark(EV_READ, 0, IN_FLIGHT)
    bev.setcb(readcb, None, eventcb)
    bev.enable(EV_READ)
    try:
        t0 = time.perf_counter()
        glet = gevent.spawn(writer)
        if not finished.wait(limit):
            raise RunFailed(f"got {state['got']} of {total} bytes in {limit:.0f} s")
        elapsed = time.perf_counter() - t0
        _join_all([glet], 10)
    finally:
        bev.free()
        under.free()
        far.free()
    if "error" in state:
        raise RunFailed(state["error"])
    work.check_inflated(b"".join(out))
    return {"elapsed": elapsed, "out_bytes": total}


# -- rows ------------------------------------------------------------------------


class Impl:
    """One row: its workload, the function that runs it, and what it is."""

    def __init__(self, workload: str, fn: Callable[..., Result], text: str) -> None:
        self.workload = workload
        self.fn = fn
        self.text = text


IMPLS: Dict[str, Impl] = {
    "pump": Impl(
        "stream",
        stream_pump,
        "gevent Queue(maxsize=64) of 16 KiB chunks between two greenlets, "
        "the reader copies each chunk once (the ceiling)",
    ),
    "pair": Impl(
        "stream",
        stream_pair,
        "pair_new, callbacks: the writecb tops the reader up to its 1 MiB "
        "read high watermark, the readcb takes the whole input with remove()",
    ),
    "pair-blocking": Impl(
        "stream",
        stream_pair_blocking,
        "pair_new, blocking style: a greenlet calls write_all per chunk, "
        "another read_some in a loop; 1 MiB read high watermark",
    ),
    "pair-yield": Impl(
        "stream",
        stream_pair_yield,
        "diagnostic: pair_new without watermarks (the write fast path), the "
        "writer yields every 64 writes, the readcb takes the whole input",
    ),
    "socketpair": Impl(
        "stream",
        stream_socketpair,
        "gevent AF_UNIX socketpair, sendall / recv_into a 1 MiB buffer (for context)",
    ),
    "zlib-bare": Impl(
        "zlib",
        zlib_bare,
        "compressobj(6).compress per 16 KiB chunk + flush (the reference)",
    ),
    "zlib-filter": Impl(
        "zlib",
        zlib_filter,
        "filter_new over a pair end, deflating output filter; write_all per "
        "16 KiB chunk, flush FINISHED, the far end collects until EOF",
    ),
    "inflate-bare": Impl(
        "inflate",
        inflate_bare,
        "decompressobj().decompress per 16 KiB compressed chunk (the reference)",
    ),
    "inflate-filter": Impl(
        "inflate",
        inflate_filter,
        "the far pair end write_all's 16 KiB compressed chunks, an inflating "
        "input filter (1 MiB read high watermark) feeds the filter's readcb",
    ),
}

#: The reference row of each workload: ratios are against it.
REFERENCE = {"stream": "pump", "zlib": "zlib-bare", "inflate": "inflate-bare"}
#: Rows shown for context only: no target applies.
CONTEXT_ROWS = {"socketpair"}
#: Rows that measure the library without part of its machinery.
DIAGNOSTIC_ROWS = {"pair-yield"}


class Row:
    """Every finished run of one row."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.impl = IMPLS[name]
        self.elapsed: List[float] = []
        self.cpu: List[float] = []
        self.failed = 0
        self.last: Result = {}

    def best(self) -> Optional[float]:
        return min(self.elapsed) if self.elapsed else None

    def least_cpu(self) -> Optional[float]:
        return min(self.cpu) if self.cpu else None


def _time_limit(mib: float) -> float:
    """Seconds one run may take: generous (1 MiB/s, zlib's worst case)."""
    return 30.0 + mib


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(row: Row, arg: Any, mib: float, profile_dir: Optional[str]) -> Result:
    """Run ``row`` once; return its result with ``cpu`` seconds added."""
    limit = _time_limit(mib)
    gc.collect()
    cpu0 = _cpu_seconds()
    with gevent.Timeout(limit + 10, RunFailed(f"still running after {limit:.0f} s")):
        if profile_dir:
            import cProfile

            # Process CPU time: wall time would charge the hub's waits to
            # whichever function happened to be running.
            profiler = cProfile.Profile(time.process_time)
            try:
                result = profiler.runcall(row.impl.fn, arg, limit)
            finally:
                path = os.path.join(profile_dir, f"{row.name}.prof")
                if os.path.exists(path):
                    # Several repetitions: keep them all in one file.
                    import pstats

                    stats = pstats.Stats(profiler)
                    stats.add(path)
                    stats.dump_stats(path)
                else:
                    profiler.dump_stats(path)
        else:
            result = row.impl.fn(arg, limit)
    result["cpu"] = _cpu_seconds() - cpu0
    return result


# -- report ----------------------------------------------------------------------


def _machine_lines(opts: argparse.Namespace) -> List[str]:
    import greenlet

    import geventbev

    pin = f"pinned to CPU {opts.cpu}" if opts.cpu else "not pinned"
    command = " ".join(
        shlex.quote(a)
        for a in [sys.executable, os.path.relpath(__file__)] + sys.argv[1:]
    )
    return [
        f"machine: {bench_common.cpu_model()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; {pin}",
        f"software: Python {platform.python_version()}, gevent "
        f"{gevent.__version__} (loop: {gevent.config.loop.__module__}), greenlet "
        f"{greenlet.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}, geventbev "
        f"{geventbev.__version__}{bench_common.git_revision()}",
        f"command: {command}",
    ]


STREAM_HEADER = [
    "stream row",
    "MiB/s",
    "writes/s",
    "µs/write",
    "vs pump",
    "CPU µs/write",
]
ZLIB_HEADER = [
    "zlib row",
    "text MiB/s",
    "vs bare",
    "CPU µs/16 KiB text",
    "compressed/text",
]


def _ratio(row: Row, ref: Optional[Row]) -> str:
    mine = row.best()
    theirs = ref.best() if ref is not None else None
    if mine is None or theirs is None:
        return "-"
    return f"{theirs / mine:.2f}x"


def _cells(row: Row, sizes: Dict[str, int], results: Dict[str, Row]) -> List[str]:
    best = row.best()
    workload = row.impl.workload
    if best is None:
        return [row.name, "failed" if row.failed else "-"] + ["-"] * (
            len(STREAM_HEADER if workload == "stream" else ZLIB_HEADER) - 2
        )
    size = sizes[workload]
    ref = results.get(REFERENCE[workload])
    # Every workload is counted in 16 KiB units of its input.
    writes = size / CHUNK
    cpu = (row.least_cpu() or 0.0) / writes * 1e6
    mibs = f"{size / MIB / best:,.0f}"
    if workload == "stream":
        return [
            row.name,
            mibs,
            f"{writes / best:,.0f}",
            f"{best / writes * 1e6:.2f}",
            _ratio(row, ref),
            f"{cpu:.2f}",
        ]
    # Both directions show the same ratio: compressed bytes per text byte.
    compressed = row.last["out_bytes"] if workload == "zlib" else sizes["inflate_in"]
    return [row.name, mibs, _ratio(row, ref), f"{cpu:.1f}", f"{compressed / size:.3f}"]


def _text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header] + rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _targets(results: Dict[str, Row]) -> List[str]:
    """One line per library row: its ratio against the issue's target."""
    lines = []
    for name, row in results.items():
        workload = row.impl.workload
        ref = results.get(REFERENCE[workload])
        if ref is None or ref is row or name in CONTEXT_ROWS:
            continue
        mine, theirs = row.best(), ref.best()
        if mine is None or theirs is None:
            continue
        ratio = theirs / mine
        target = TARGETS[workload]
        verdict = "met" if ratio >= target else "MISSED"
        if name in DIAGNOSTIC_ROWS:
            verdict += "; diagnostic row, no flow control"
        lines.append(
            f"target, {name}: {ratio:.2f}x of {ref.name} "
            f"(target >= {target}x: {verdict})"
        )
    return lines


def _copy_notes(results: Dict[str, Row]) -> List[str]:
    """Where each stream row's one copy per byte was made (last run)."""
    lines = ["where the one copy per byte was made (last run of each row):"]
    for name, row in results.items():
        res = row.last
        if row.impl.workload != "stream" or "copies" not in res:
            continue
        total = res["copies"] + res["handed"]
        if total:
            lines.append(
                f"  {name}: {res['handed'] / total:.0%} of the bytes came out "
                f"already copied (a joining remove, or the kernel), "
                f"{res['copies'] / total:.0%} were copied by the reader"
            )
    return lines if len(lines) > 1 else []


def _report(
    opts: argparse.Namespace,
    results: Dict[str, Row],
    sizes: Dict[str, int],
    load: Optional[float],
) -> None:
    lines = _machine_lines(opts)
    notes = [
        f"best of {opts.repeat}; stream: {opts.mib} MiB in 16 KiB writes, at "
        f"most ~1 MiB in flight; zlib: {opts.zlib_mib} MiB of text, level "
        f"{ZLIB_LEVEL}, in 16 KiB writes (inflate: its compressed form, "
        f"16 KiB writes); MiB/s of the uncompressed text; CPU: user+sys of "
        f"the process, least of the runs",
    ]
    if load is not None and load >= 0.5:
        notes.append(
            f"warning: load average {load:.2f} at start: other processes shared the "
            f"machine, so the numbers are noisy"
        )
    if opts.profile:
        notes.append("NOTE: rows ran under cProfile: not a benchmark result")
    tables = []
    for header, workloads in (
        (STREAM_HEADER, ("stream",)),
        (ZLIB_HEADER, ("zlib", "inflate")),
    ):
        rows = [
            _cells(row, sizes, results)
            for row in results.values()
            if row.impl.workload in workloads
        ]
        if rows:
            tables.append((header, rows))
    descriptions = [(name, IMPLS[name].text) for name in results]

    print()
    print("\n".join(lines + notes))
    for header, rows in tables:
        print()
        print(_text_table(header, rows))
    print()
    for name, text in descriptions:
        print(f"  {name}: {text}")
    for line in _targets(results) + _copy_notes(results):
        print(line)
    if opts.profile:
        _print_profiles(opts.profile, opts.profile_top, list(results))
    print("\nMarkdown:\n")
    for line in lines + notes:
        print(f"{line}  ")
    for header, rows in tables:
        print()
        print(_markdown_table(header, rows))
    print()
    for name, text in descriptions:
        print(f"- `{name}`: {text}")


def _print_profiles(directory: str, top: int, names: List[str]) -> None:
    import pstats

    for name in names:
        path = os.path.join(directory, f"{name}.prof")
        if not os.path.exists(path):
            continue
        print(f"\n== profile {name} (all runs; top {top} by own time) ==")
        pstats.Stats(path).sort_stats("tottime").print_stats(top)


# -- command line ------------------------------------------------------------------


def _cpu_set(text: str) -> set:
    """``"0,2-3"`` -> {0, 2, 3}, as taskset -c spells CPU lists."""
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="MiB per stream run")
    p.add_argument("--zlib-mib", type=int, default=64, help="MiB of text per zlib run")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; best kept")
    p.add_argument(
        "--impl",
        type=lambda text: bench_common.parse_impls(text, IMPLS),
        default=list(IMPLS),
        help="comma-separated rows: " + ", ".join(IMPLS),
    )
    p.add_argument(
        "--cpu",
        type=bench_common.parse_cpu,
        default="0",
        help="CPU list to pin this process to (default 0; 'none': no pinning)",
    )
    p.add_argument("--profile", metavar="DIR", help="cProfile every row into DIR")
    p.add_argument("--profile-top", type=int, default=25, help=argparse.SUPPRESS)
    return p


def _warm_up(names: List[str]) -> None:
    """Run every row once, small and untimed, before measuring.

    The first run of a row would otherwise carry one-off costs: importing
    geventbev (charged to the CPU column, not the clock), starting the
    hub's loop, the EventBase's callback greenlet and the allocator's
    first growth.
    """
    small = ZlibWork(MIB, need_compressed=True)
    for name in names:
        impl = IMPLS[name]
        arg: Any = 4 * MIB if impl.workload == "stream" else small
        with gevent.Timeout(60, RunFailed(f"warm-up of {name} hung")):
            impl.fn(arg, 60.0)


def _run_all(
    opts: argparse.Namespace, sizes: Dict[str, int], zwork: Optional[ZlibWork]
) -> Dict[str, Row]:
    """Every repetition of every row; repetitions interleave the rows."""
    results = {name: Row(name) for name in opts.impl}
    for rep in range(opts.repeat):
        for name, row in results.items():
            workload = row.impl.workload
            arg: Any = sizes["stream"] if workload == "stream" else zwork
            tag = f"[{rep + 1}/{opts.repeat}] {name}"
            try:
                res = run_once(row, arg, sizes[workload] / MIB, opts.profile)
            except RunFailed as exc:
                row.failed += 1
                print(f"{tag}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            row.elapsed.append(res["elapsed"])
            row.cpu.append(res["cpu"])
            row.last = res
            mibs = sizes[workload] / MIB / res["elapsed"]
            print(
                f"{tag}: {mibs:,.0f} MiB/s ({res['elapsed']:.3f} s, "
                f"CPU {res['cpu']:.3f} s)",
                file=sys.stderr,
                flush=True,
            )
    return results


def main(argv: Optional[List[str]] = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.mib < 1 or opts.zlib_mib < 1 or opts.repeat < 1:
        print("--mib, --zlib-mib and --repeat must be >= 1", file=sys.stderr)
        return 2
    if opts.cpu is not None:
        os.sched_setaffinity(0, _cpu_set(opts.cpu))
    if opts.profile:
        os.makedirs(opts.profile, exist_ok=True)
        opts.profile = os.path.abspath(opts.profile)
        for name in opts.impl:
            path = os.path.join(opts.profile, f"{name}.prof")
            if os.path.exists(path):
                os.remove(path)
    load = bench_common.load_average()
    sizes = {"stream": opts.mib * MIB, "zlib": opts.zlib_mib * MIB}
    workloads = {IMPLS[name].workload for name in opts.impl}
    zwork = None
    if workloads & {"zlib", "inflate"}:
        zwork = ZlibWork(sizes["zlib"], need_compressed="inflate" in workloads)
        sizes["inflate"] = sizes["zlib"]
        sizes["inflate_in"] = len(zwork.compressed)
    # Last resort if a run hangs past every gevent timeout: SIGALRM kills.
    budget = sum(_time_limit(sizes[IMPLS[n].workload] / MIB) + 10 for n in opts.impl)
    signal.alarm(int(budget * opts.repeat) + 60)
    try:
        _warm_up(opts.impl)
    except RunFailed as exc:
        print(f"warm-up: FAILED: {exc}", file=sys.stderr)
        return 1
    results = _run_all(opts, sizes, zwork)
    signal.alarm(0)
    _report(opts, results, sizes, load)
    return 1 if any(row.failed for row in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
