"""Buffer: libevent's evbuffer, a byte queue with cheap appends and drains.

Theory of operation
-------------------

Storage.  The obvious storage is one ``bytearray``: appending is cheap, but
removing bytes from its front moves everything behind them, so a connection
that drains its output in 16 KiB steps from a 100 MiB queue does quadratic
work.  A Buffer instead keeps a ``deque`` of immutable ``bytes`` chunks plus
``_off``, the number of bytes already consumed from the first chunk.
Appending pushes a chunk on the right, draining pops chunks on the left or
moves ``_off`` forward, so both cost O(one chunk) whatever the buffer holds.
Because chunks are immutable, ``add`` stores a ``bytes`` object as it is (no
copy) and ``remove`` of exactly one whole chunk hands the same object back;
other buffer-protocol input is copied once, since its owner may change it.
Tiny pieces are merged into the last chunk (while the result stays within
``_MERGE_LIMIT`` bytes) so that a stream of small writes does not turn into
one Python object per write.

Invariants: no chunk in the deque is empty; ``0 <= _off < len(chunks[0])``
when there are chunks and ``_off == 0`` when there are none; ``_len`` is the
sum of the chunk lengths minus ``_off``.

Freezing.  A bufferevent freezes the end of its input (only its transport
may append) and the front of its output (only its transport may drain).  A
frozen end makes every public operation that would change that end raise
``BufferEventError``; ``_append_internal`` and friends skip the check
because they are the transport's own door.  Which corner cases are refused
(``add(b"")`` on a frozen end is, ``prepend(b"")`` on a frozen front is
not) follows libevent's freeze table.

Callbacks.  After every operation that changed the length, each registered
callback runs as ``cb(buf, info, ctx)``, newest registration first, with a
``BufferCbInfo(orig_size, n_added, n_deleted)`` describing that one
operation.  When nothing changed no callback runs, and when none is
registered the bookkeeping is skipped entirely (one truth test per call).
Callbacks run after the buffer is consistent again, so they may modify the
buffer (the nested change runs the callbacks again, recursively) or remove
themselves or others; a callback removed during a run is not called later in
that run, one added during a run first sees the next change.  If a callback
raises, the remaining callbacks still run, because a bufferevent's own
bookkeeping callbacks must not be skipped, and then the first exception
propagates to the caller of the operation, whose change has been made.

There is no locking: a Buffer belongs to one thread, and greenlets only
switch inside callbacks that choose to block.
"""

from __future__ import annotations

import itertools
import logging
import operator
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple

from .constants import EOL
from .errors import BufferEventError

__all__ = ["Buffer", "BufferCbInfo"]

logger = logging.getLogger(__name__)

#: Small pieces are merged while the merged chunk stays within this many
#: bytes.  Merging copies up to this much per append, which is cheaper than
#: a Python object per piece and keeps line searches from walking thousands
#: of one-byte chunks.
_MERGE_LIMIT = 1024

#: ``_peek_chunk`` joins following chunks when the first has fewer bytes
#: left than this, so a writer does not hand the kernel tiny pieces.
_TINY_CHUNK = 1024

#: ... but it never builds a joined chunk larger than this many bytes.
_PEEK_JOIN_TARGET = 16384

#: Patterns longer than this are searched in a joined copy of the range,
#: because carrying ``len(what) - 1`` bytes across every chunk boundary
#: would cost more than the copy.
_LONG_PATTERN = 256

#: A run of end-of-line bytes, for EOL.ANY.
_EOL_RUN = re.compile(rb"[\r\n]+")

_CR = 13


class BufferCbInfo(NamedTuple):
    """What one change did to a Buffer, as passed to its callbacks.

    Attributes:
        orig_size: the length in bytes before the change.
        n_added: bytes added by the change.
        n_deleted: bytes removed by the change.

    ``orig_size + n_added - n_deleted`` is the length after the change.
    """

    orig_size: int
    n_added: int
    n_deleted: int


BufferCallback = Callable[["Buffer", BufferCbInfo, Any], object]


class _CallbackEntry:
    """One registration made by ``add_cb``; the opaque handle it returns."""

    __slots__ = ("cb", "ctx", "active")

    def __init__(self, cb: BufferCallback, ctx: Any) -> None:
        self.cb = cb
        self.ctx = ctx
        self.active = True

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<buffer callback {self.cb!r} ({state})>"


def _int_arg(value: Any, name: str) -> int:
    """Return *value* as an int or raise TypeError naming the argument."""
    if type(value) is int:
        return value
    if isinstance(value, bool):  # an int subclass, but never a size
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, not {type(value).__name__}"
        ) from None


def _size_arg(value: Any, name: str) -> int:
    """Return *value* as a non-negative int or raise naming the argument."""
    value = _int_arg(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _bytes_arg(data: Any, name: str) -> bytes:
    """Return *data* as ``bytes``, copying anything that is not ``bytes``."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError(
            f"{name} must be bytes-like, not str: text must be encoded first"
        )
    if isinstance(data, Buffer):
        raise TypeError(
            f"{name} must be bytes-like, not Buffer: use add_buffer and friends"
        )
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"{name} must be a bytes-like object, not {type(data).__name__}"
        ) from None
    # One copy: the caller keeps ownership of a mutable object.
    return view.tobytes()


def _eol_arg(eol: Any) -> EOL:
    """Return *eol* as an EOL member or raise ValueError."""
    try:
        return EOL(eol)
    except ValueError:
        raise ValueError(f"eol must be an EOL style (0-4), got {eol!r}") from None


def _buffer_arg(other: Any, name: str) -> Buffer:
    if not isinstance(other, Buffer):
        raise TypeError(f"{name} must be a Buffer, not {type(other).__name__}")
    return other


def _notify_move(
    src: Buffer, src_orig: int, dst: Buffer, dst_orig: int, n: int
) -> None:
    """Report a move of *n* bytes to both buffers' observers, source first.

    The destination's callbacks run even when the source's raise; then the
    first exception propagates.
    """
    error: Optional[Exception] = None
    if src._cbs or src._watcher is not None:
        try:
            src._notify(src_orig, 0, n)
        except Exception as exc:
            error = exc
    if dst._cbs or dst._watcher is not None:
        try:
            dst._notify(dst_orig, n, 0)
        except Exception as exc:
            if error is None:
                raise
            logger.error("buffer callback on %r also failed", dst, exc_info=exc)
    if error is not None:
        raise error


def _refused(op: str, front: bool) -> BufferEventError:
    where = "front" if front else "end"
    return BufferEventError(f"{op} refused: the buffer's {where} is frozen")


class Buffer:
    """A queue of bytes (libevent's evbuffer).

    Bytes are appended at the end and consumed from the front; ``len(buf)``
    is the number of bytes held and ``bytes(buf)`` a copy of them.  Sizes and
    positions are in bytes, counted from the current front.  The module
    docstring explains storage, freezing and callbacks.

    A Buffer is not thread-safe.  Its truth value is its length.
    """

    __slots__ = (
        "_chunks",
        "_off",
        "_len",
        "_front_frozen",
        "_end_frozen",
        "_cbs",
        "_watcher",
        "_owned",
        "_reserved",
        "_merge_limit",
        "__weakref__",
    )

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._off = 0
        self._len = 0
        self._front_frozen = False
        self._end_frozen = False
        # Newest registration first: callbacks run in list order.
        self._cbs: list[_CallbackEntry] = []
        # One internal observer, ``fn(n_added, n_deleted)``, for the
        # bufferevent that owns this buffer.  It runs after the user
        # callbacks and costs no BufferCbInfo: it sees every change on the
        # data path, where a namedtuple per write was measurable.
        self._watcher: Optional[Callable[[int, int], None]] = None
        # True for a bufferevent's own input and output: only the
        # bufferevent may free those.
        self._owned = False
        self._reserved: Optional[bytearray] = None
        # Per instance so tests can force one chunk per append.
        self._merge_limit = _MERGE_LIMIT

    # -- introspection ---------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __bytes__(self) -> bytes:
        chunks = self._chunks
        if len(chunks) == 1 and not self._off:
            return chunks[0]
        return self._copy(self._len, 0) if self._len else b""

    def __repr__(self) -> str:
        frozen = [
            name
            for name, flag in (("front", self._front_frozen), ("end", self._end_frozen))
            if flag
        ]
        extra = f" frozen={'+'.join(frozen)}" if frozen else ""
        return (
            f"<{type(self).__name__} len={self._len} chunks={len(self._chunks)}"
            f"{extra} at {id(self):#x}>"
        )

    def get_length(self) -> int:
        """Return the number of bytes in the buffer (the same as ``len``)."""
        return self._len

    def get_contiguous_space(self) -> int:
        """Return how many bytes ``pullup`` can expose without copying.

        Returns:
            The bytes left in the first chunk; 0 when the buffer is empty.
        """
        if not self._chunks:
            return 0
        return len(self._chunks[0]) - self._off

    # -- appending ---------------------------------------------------------

    def add(self, data: Any) -> None:
        """Append *data* at the end.

        A ``bytes`` object is stored without copying, unless it is small
        enough to be merged into a small last chunk; other bytes-like
        objects (``bytearray``, ``memoryview``, ...) are copied once.
        Callbacks run when *data* is not empty.

        Args:
            data: a bytes-like object.

        Raises:
            TypeError: *data* is not bytes-like (``str`` must be encoded).
            BufferEventError: the end is frozen, even when *data* is empty.
        """
        if type(data) is not bytes:
            data = _bytes_arg(data, "data")
        if self._end_frozen:
            raise _refused("add", front=False)
        self._append_internal(data)

    def add_printf(self, fmt: str | bytes, *args: Any) -> int:
        """Append ``fmt % args``, encoded as UTF-8 when *fmt* is ``str``.

        A single mapping argument is used for ``%(name)s`` formats.

        Args:
            fmt: a %-format string (``str``, or ``bytes`` for bytes
                formatting).
            *args: the values to format.

        Returns:
            The number of bytes added.

        Raises:
            TypeError: *fmt* is neither ``str`` nor ``bytes``, or the
                arguments do not fit the format.
            BufferEventError: the end is frozen.
        """
        if not isinstance(fmt, (str, bytes)):
            raise TypeError(f"fmt must be str or bytes, not {type(fmt).__name__}")
        if self._end_frozen:
            raise _refused("add_printf", front=False)
        values: Any = args
        if len(args) == 1 and isinstance(args[0], Mapping):
            values = args[0]
        text = fmt % values
        data = text.encode("utf-8") if isinstance(text, str) else text
        self._append_internal(data)
        return len(data)

    def add_buffer(self, other: Buffer) -> None:
        """Move every byte of *other* to the end of this buffer.

        Chunks move without copying (only a partly consumed first chunk is
        trimmed).  *other*'s callbacks run first (bytes deleted), then this
        buffer's (bytes added).  Nothing happens when *other* is empty or is
        this buffer, even if an end is frozen.

        Args:
            other: the source Buffer; it is empty afterwards.

        Raises:
            TypeError: *other* is not a Buffer.
            BufferEventError: this buffer's end or *other*'s front is
                frozen.
        """
        other = _buffer_arg(other, "other")
        if other is self or not other._len:
            return
        if self._end_frozen:
            raise _refused("add_buffer", front=False)
        if other._front_frozen:
            raise _refused("add_buffer (source)", front=True)
        other._move_internal(self)

    def expand(self, n: int) -> None:
        """Prepare room for *n* more bytes (libevent's evbuffer_expand).

        Chunks are immutable ``bytes``, so there is nothing to pre-allocate
        and this only validates *n*; use ``reserve_space`` to get a writable
        area.  The contents do not change and no callback runs.

        Raises:
            TypeError: *n* is not an integer.
            ValueError: *n* is negative.
        """
        _size_arg(n, "n")

    def reserve_space(self, n: int) -> memoryview:
        """Return a writable area of *n* bytes to fill before ``commit_space``.

        Each call replaces any earlier reservation.  Nothing is added until
        ``commit_space``; the area is private, so the buffer may change in
        between and committed bytes then land at the end as it is then.

        Args:
            n: the size of the area, in bytes.

        Returns:
            A writable memoryview of exactly *n* zero bytes.

        Raises:
            TypeError: *n* is not an integer.
            ValueError: *n* is negative.
            BufferEventError: the end is frozen.
        """
        n = _size_arg(n, "n")
        if self._end_frozen:
            raise _refused("reserve_space", front=False)
        # A fresh bytearray each time: the caller may still hold the view of
        # an earlier one, and an exported bytearray cannot be reused safely.
        self._reserved = bytearray(n)
        return memoryview(self._reserved)

    def commit_space(self, n: int) -> None:
        """Append the first *n* bytes of the area from ``reserve_space``.

        The reservation is used up.  Callbacks run when *n* > 0.

        Args:
            n: how many bytes of the reserved area were written.

        Raises:
            TypeError: *n* is not an integer.
            ValueError: *n* is negative or larger than the reserved area
                (0 bytes when nothing is reserved).
            BufferEventError: the end is frozen.
        """
        n = _size_arg(n, "n")
        if self._end_frozen:
            raise _refused("commit_space", front=False)
        reserved = self._reserved
        size = 0 if reserved is None else len(reserved)
        if n > size:
            raise ValueError(f"n ({n}) exceeds the reserved space ({size} bytes)")
        self._reserved = None
        if n:
            assert reserved is not None
            self._append_internal(bytes(memoryview(reserved)[:n]))

    # -- prepending --------------------------------------------------------

    def prepend(self, data: Any) -> None:
        """Insert *data* before the first byte.

        Args:
            data: a bytes-like object; ``bytes`` is stored without copying.

        Raises:
            TypeError: *data* is not bytes-like.
            BufferEventError: the front is frozen and *data* is not empty.
        """
        if type(data) is not bytes:
            data = _bytes_arg(data, "data")
        if not data:
            return
        if self._front_frozen:
            raise _refused("prepend", front=True)
        self._prepend_internal(data)

    def prepend_buffer(self, other: Buffer) -> None:
        """Move every byte of *other* before the first byte of this buffer.

        *other*'s callbacks run first, then this buffer's.  Nothing happens
        when *other* is empty or is this buffer.

        Args:
            other: the source Buffer; it is empty afterwards.

        Raises:
            TypeError: *other* is not a Buffer.
            BufferEventError: the front of either buffer is frozen.
        """
        other = _buffer_arg(other, "other")
        if other is self or not other._len:
            return
        if self._front_frozen:
            raise _refused("prepend_buffer", front=True)
        if other._front_frozen:
            raise _refused("prepend_buffer (source)", front=True)
        orig, n = self._len, other._len
        moved = other._detach_all()
        chunks = self._chunks
        if self._off:
            chunks[0] = chunks[0][self._off :]
            self._off = 0
        chunks.extendleft(reversed(moved))
        self._len += n
        _notify_move(other, n, self, orig, n)

    # -- removing ----------------------------------------------------------

    def drain(self, n: int) -> None:
        """Discard the first *n* bytes; all of them when *n* exceeds the length.

        Args:
            n: how many bytes to discard.

        Raises:
            TypeError: *n* is not an integer.
            ValueError: *n* is negative.
            BufferEventError: the front is frozen and the buffer is not
                empty.
        """
        if type(n) is not int or n < 0:
            n = _size_arg(n, "n")
        if not self._len:
            return
        if self._front_frozen:
            raise _refused("drain", front=True)
        self._drain_internal(n)

    def remove(self, n: int) -> bytes:
        """Remove and return up to *n* bytes from the front.

        Taking exactly one whole chunk returns that chunk's ``bytes`` object
        without copying.

        Args:
            n: the most bytes to remove.

        Returns:
            The removed bytes; ``b""`` when *n* is 0 or the buffer is empty.

        Raises:
            TypeError: *n* is not an integer.
            ValueError: *n* is negative.
            BufferEventError: the front is frozen and *n* > 0.
        """
        if type(n) is not int or n < 0:
            n = _size_arg(n, "n")
        if not n:
            return b""
        if self._front_frozen:
            raise _refused("remove", front=True)
        return self._remove_internal(n)

    def remove_buffer(self, dst: Buffer, n: int) -> int:
        """Move up to *n* bytes from the front of this buffer to *dst*'s end.

        Whole chunks move without copying; only a chunk split by *n* is
        sliced.  This buffer's callbacks run first, then *dst*'s.

        Args:
            dst: the destination Buffer.
            n: the most bytes to move.

        Returns:
            The number of bytes moved: 0 when *dst* is this buffer, *n* is
            0 or this buffer is empty.

        Raises:
            TypeError: *dst* is not a Buffer or *n* is not an integer.
            ValueError: *n* is negative.
            BufferEventError: *dst*'s end or this buffer's front is frozen.
        """
        dst = _buffer_arg(dst, "dst")
        n = _size_arg(n, "n")
        if dst is self:
            return 0
        if dst._end_frozen:
            raise _refused("remove_buffer (destination)", front=False)
        if self._front_frozen:
            raise _refused("remove_buffer", front=True)
        return self._move_internal(dst, n)

    def readln(self, eol: EOL | int = EOL.CRLF) -> Optional[bytes]:
        """Remove one line from the front and return it without its end.

        The end-of-line styles are libevent's (see ``EOL``); for ANY the
        terminator is the whole run of CR and LF bytes after the line, so
        empty lines vanish.  The line and its terminator are drained as one
        change, so callbacks run once.

        Args:
            eol: the end-of-line style.

        Returns:
            The line (it may contain NUL bytes), or None, with the buffer
            untouched, when no complete line is present.

        Raises:
            ValueError: *eol* is not an EOL style.
            BufferEventError: the front is frozen.
        """
        if eol.__class__ is not EOL:
            eol = _eol_arg(eol)
        if self._front_frozen:
            raise _refused("readln", front=True)
        if not self._len:
            return None
        if eol is not EOL.ANY and eol is not EOL.CRLF_STRICT:
            # Fast path: the terminator is in the first chunk.  When it is
            # not, the general path below scans that chunk again; memchr
            # over one chunk costs less than the helper calls saved here.
            first = self._chunks[0]
            off = self._off
            i = first.find(b"\0" if eol is EOL.NUL else b"\n", off)
            if i >= 0:
                stop = i
                if eol is EOL.CRLF and i > off and first[i - 1] == _CR:
                    stop = i - 1
                line = first[off:stop]
                i += 1
                if i == len(first):
                    self._chunks.popleft()
                    self._off = 0
                else:
                    self._off = i
                orig = self._len
                self._len = orig - (i - off)
                if self._cbs or self._watcher is not None:
                    self._notify(orig, 0, i - off)
                return line
            if len(self._chunks) == 1:
                return None
        pos, eol_len = self._search_eol(0, eol)
        if pos < 0:
            return None
        orig = self._len
        line = self._take(pos) if pos else b""
        self._discard(eol_len)
        if self._cbs or self._watcher is not None:
            self._notify(orig, 0, pos + eol_len)
        return line

    # -- reading without removing ------------------------------------------

    def copyout(self, n: int, offset: int = 0) -> bytes:
        """Return a copy of up to *n* bytes starting *offset* bytes in.

        Nothing is removed and no callback runs; a frozen front does not
        matter, since nothing changes.

        Args:
            n: the most bytes to copy.
            offset: where to start, in bytes from the front.

        Returns:
            The bytes; shorter than *n* near the end, ``b""`` when *offset*
            is at or past the end.

        Raises:
            TypeError: *n* or *offset* is not an integer.
            ValueError: *n* or *offset* is negative.
        """
        if type(n) is not int or n < 0:
            n = _size_arg(n, "n")
        if type(offset) is not int or offset < 0:
            offset = _size_arg(offset, "offset")
        avail = self._len - offset
        if avail <= 0 or not n:
            return b""
        return self._copy(n if n < avail else avail, offset)

    def pullup(self, n: int = -1) -> Optional[memoryview]:
        """Make the first *n* bytes contiguous and return a view of them.

        Joins chunks when the first chunk is shorter than *n*; the contents
        do not change and no callback runs.  The view is read-only and stays
        valid after the buffer changes (it shows the bytes as they were).

        Args:
            n: how many bytes; any negative value means the whole buffer.

        Returns:
            A memoryview of exactly *n* bytes, or None (as libevent returns
            NULL) when *n* is 0, *n* exceeds the length or the buffer is
            empty.

        Raises:
            TypeError: *n* is not an integer.
        """
        if type(n) is not int:
            n = _int_arg(n, "n")
        if n < 0:
            n = self._len
        if not n or n > self._len:
            return None
        chunks = self._chunks
        off = self._off
        first = chunks[0]
        if len(first) - off < n:
            first = self._join_front(n)
            off = 0
        return memoryview(first)[off : off + n]

    def search(self, what: Any, start: int = 0, end: Optional[int] = None) -> int:
        """Find the first occurrence of *what* that starts at or after *start*.

        Matches that span chunk boundaries are found.

        Args:
            what: the bytes-like pattern.
            start: the first position a match may start at.
            end: when given, matches must end at or before this position.

        Returns:
            The position of the match, or -1.  An empty *what* matches at
            *start* when *start* is within the buffer and not past *end*.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: *start* or *end* is negative.
        """
        if type(what) is not bytes:
            what = _bytes_arg(what, "what")
        if type(start) is not int or start < 0:
            start = _size_arg(start, "start")
        length = self._len
        if end is None:
            end = length
        else:
            if type(end) is not int or end < 0:
                end = _size_arg(end, "end")
            if end > length:
                end = length
        if not what:
            return start if start <= end else -1
        return self._find(what, start, end)

    def search_eol(self, start: int = 0, eol: EOL | int = EOL.CRLF) -> Tuple[int, int]:
        """Find the first end of line at or after *start*.

        The search never looks before *start*: with CRLF, an LF found exactly
        at *start* counts alone even when a CR precedes it.

        Args:
            start: the first position the terminator may start at.
            eol: the end-of-line style.

        Returns:
            ``(position, length)`` of the terminator, or ``(-1, 0)`` when
            there is none (also when *start* is at or past the end).

        Raises:
            TypeError: *start* is not an integer.
            ValueError: *start* is negative or *eol* is not an EOL style.
        """
        if type(start) is not int or start < 0:
            start = _size_arg(start, "start")
        if eol.__class__ is not EOL:
            eol = _eol_arg(eol)
        if start >= self._len:
            return -1, 0
        return self._search_eol(start, eol)

    # -- freezing ----------------------------------------------------------

    def freeze(self, front: bool) -> None:
        """Refuse changes at the front (*front* true) or at the end.

        While the front is frozen, ``drain``, ``remove``, ``readln``,
        ``prepend``, ``prepend_buffer`` and moves out of this buffer raise
        ``BufferEventError``; while the end is frozen, ``add``,
        ``add_printf``, ``add_buffer``, ``reserve_space``, ``commit_space``
        and moves into this buffer do.  Freezing is a flag, not a count.
        """
        if front:
            self._front_frozen = True
        else:
            self._end_frozen = True

    def unfreeze(self, front: bool) -> None:
        """Accept changes at the front (*front* true) or at the end again."""
        if front:
            self._front_frozen = False
        else:
            self._end_frozen = False

    # -- callbacks ---------------------------------------------------------

    def add_cb(self, cb: BufferCallback, ctx: Any = None) -> object:
        """Register ``cb(buf, info, ctx)`` to run after each change.

        *info* is a ``BufferCbInfo``.  The newest registration runs first;
        the same function may be registered more than once.

        Args:
            cb: the callable.
            ctx: passed to *cb* unchanged.

        Returns:
            An opaque handle for ``remove_cb``.

        Raises:
            TypeError: *cb* is not callable.
        """
        if not callable(cb):
            raise TypeError(f"cb must be callable, not {type(cb).__name__}")
        entry = _CallbackEntry(cb, ctx)
        self._cbs.insert(0, entry)
        return entry

    def remove_cb(self, handle: object) -> None:
        """Unregister the callback that ``add_cb`` returned *handle* for.

        Safe to call from inside a callback, including on itself.

        Raises:
            ValueError: *handle* is not registered on this buffer (never
                was, or already removed).
        """
        for i, entry in enumerate(self._cbs):
            if entry is handle:
                del self._cbs[i]
                entry.active = False
                return
        raise ValueError(f"handle {handle!r} is not registered on this buffer")

    # -- internal door for the bufferevent core (bypasses freezing) --------

    def _append_internal(self, data: bytes) -> None:
        """Append *data* regardless of freezing and run the callbacks.

        A ``bytes`` object is stored without copying (tiny pieces may be
        merged); anything else is copied.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if data:
            orig = self._len
            self._push(data)
            if self._cbs or self._watcher is not None:
                self._notify(orig, len(data), 0)

    def _prepend_internal(self, data: bytes) -> None:
        """Insert *data* at the front regardless of freezing."""
        if type(data) is not bytes:
            data = bytes(data)
        if data:
            orig = self._len
            self._push_left(data)
            if self._cbs or self._watcher is not None:
                self._notify(orig, len(data), 0)

    def _drain_internal(self, n: int) -> None:
        """Discard up to *n* bytes from the front regardless of freezing."""
        orig = self._len
        if n >= orig:
            if not orig:
                return
            n = orig
            self._chunks.clear()
            self._off = 0
            self._len = 0
        elif n > 0:
            self._discard(n)
        else:
            return
        if self._cbs or self._watcher is not None:
            self._notify(orig, 0, n)

    def _remove_internal(self, n: int) -> bytes:
        """Remove and return up to *n* bytes regardless of freezing."""
        orig = self._len
        if n > orig:
            n = orig
        if n <= 0:
            return b""
        data = self._take(n)
        if self._cbs or self._watcher is not None:
            self._notify(orig, 0, n)
        return data

    def _move_internal(self, dst: Buffer, n: int = -1) -> int:
        """Move up to *n* bytes (all when negative) to *dst*'s end,
        regardless of freezing at either end; returns the bytes moved.

        ``add_buffer`` and ``remove_buffer`` end here after their checks;
        pairs and filters use it directly to hand bytes between their own
        buffers.  This buffer's callbacks run first (bytes deleted), then
        *dst*'s (bytes added).
        """
        orig_src = self._len
        if n < 0 or n > orig_src:
            n = orig_src
        if not n or dst is self:
            return 0
        orig_dst = dst._len
        if n == orig_src:
            if not orig_dst:
                # Swapping deques makes a whole move into an empty buffer
                # O(1).
                dst._chunks, self._chunks = self._chunks, dst._chunks
                dst._off, self._off = self._off, 0
                dst._len, self._len = n, 0
            else:
                dst._extend(self._detach_all(), n)
        else:
            dst._extend(self._split_front(n), n)
        _notify_move(self, orig_src, dst, orig_dst, n)
        return n

    def _peek_chunk(self, max_n: int = -1) -> memoryview:
        """Return a zero-copy view of at most *max_n* bytes from the front.

        Normally the view covers the rest of the first chunk.  When that is
        tiny and more chunks follow, small following chunks are first joined
        into it (up to ``_PEEK_JOIN_TARGET`` bytes) so that a writer does not
        send a run of small pieces.  Nothing is removed; drain what was sent
        with ``_drain_internal``.  The view stays valid afterwards.

        Args:
            max_n: the most bytes to expose; negative means no limit.

        Returns:
            A read-only memoryview, empty when the buffer is empty or
            *max_n* is 0.
        """
        chunks = self._chunks
        if not chunks or not max_n:
            return memoryview(b"")
        first = chunks[0]
        off = self._off
        avail = len(first) - off
        if avail < _TINY_CHUNK and len(chunks) > 1:
            want = _PEEK_JOIN_TARGET if max_n < 0 else min(max_n, _PEEK_JOIN_TARGET)
            if avail < want:
                joined = self._join_small_front(want)
                if joined is not None:
                    first, off, avail = joined, 0, len(joined)
        if 0 < max_n < avail:
            avail = max_n
        return memoryview(first)[off : off + avail]

    # -- storage helpers (no freezing checks, no callbacks) ----------------

    def _push(self, data: bytes) -> None:
        """Append non-empty *data*, merging it into a small last chunk."""
        chunks = self._chunks
        if chunks:
            last = chunks[-1]
            if len(last) + len(data) <= self._merge_limit:
                # The consumed prefix of a lone first chunk rides along;
                # _off still points past it.
                chunks[-1] = last + data
                self._len += len(data)
                return
        chunks.append(data)
        self._len += len(data)

    def _push_left(self, data: bytes) -> None:
        """Insert non-empty *data* at the front."""
        chunks = self._chunks
        n = len(data)
        self._len += n
        if not chunks:
            chunks.append(data)
            return
        first = chunks[0]
        off = self._off
        if off >= n and first.startswith(data, off - n):
            # Putting back bytes just consumed from this chunk: no copy.
            self._off = off - n
            return
        rest = first[off:] if off else first
        if len(rest) + n <= self._merge_limit:
            chunks[0] = data + rest
        else:
            # The old first chunk stops being first, so its offset must go.
            chunks[0] = rest
            chunks.appendleft(data)
        self._off = 0

    def _extend(self, moved: deque[bytes] | list[bytes], n: int) -> None:
        """Append the non-empty chunks *moved*, holding *n* bytes in all."""
        chunks = self._chunks
        if chunks and moved:
            last = chunks[-1]
            head = moved[0]
            if len(last) + len(head) <= self._merge_limit:
                chunks[-1] = last + head
                chunks.extend(itertools.islice(moved, 1, None))
                self._len += n
                return
        chunks.extend(moved)
        self._len += n

    def _detach_all(self) -> deque[bytes]:
        """Empty the buffer and return its chunks, the first one trimmed."""
        chunks = self._chunks
        if self._off:
            chunks[0] = chunks[0][self._off :]
        self._chunks = deque()
        self._off = 0
        self._len = 0
        return chunks

    def _split_front(self, n: int) -> list[bytes]:
        """Remove the first *n* bytes (0 < n < length) as a list of chunks."""
        chunks = self._chunks
        off = self._off
        moved = []
        remaining = n
        while remaining:
            first = chunks[0]
            avail = len(first) - off
            if remaining < avail:
                moved.append(first[off : off + remaining])
                off += remaining
                break
            chunks.popleft()
            moved.append(first[off:] if off else first)
            remaining -= avail
            off = 0
        self._off = off
        self._len -= n
        return moved

    def _take(self, n: int) -> bytes:
        """Remove and return the first *n* bytes (0 < n <= length)."""
        chunks = self._chunks
        first = chunks[0]
        off = self._off
        stop = off + n
        flen = len(first)
        self._len -= n
        if stop < flen:
            self._off = stop
            return first[off:stop]
        if stop == flen:
            chunks.popleft()
            self._off = 0
            return first[off:] if off else first
        if not self._len:
            # Everything goes: join the deque itself (one copy, no per-chunk
            # Python work) and start a fresh one.
            if off:
                chunks[0] = memoryview(first)[off:]  # type: ignore[call-overload]
            self._chunks = type(chunks)()
            self._off = 0
            return b"".join(chunks)
        # The bytes span chunks: collect views and copy once with join.
        chunks.popleft()
        parts: list[Any] = [memoryview(first)[off:]]
        remaining = stop - flen
        off = 0
        while remaining:
            chunk = chunks[0]
            clen = len(chunk)
            if remaining < clen:
                parts.append(memoryview(chunk)[:remaining])
                off = remaining
                break
            chunks.popleft()
            parts.append(chunk)
            remaining -= clen
        self._off = off
        return b"".join(parts)

    def _discard(self, n: int) -> None:
        """Drop the first *n* bytes (0 <= n <= length)."""
        chunks = self._chunks
        off = self._off
        self._len -= n
        while n:
            avail = len(chunks[0]) - off
            if n < avail:
                self._off = off + n
                return
            chunks.popleft()
            n -= avail
            off = 0
        self._off = off

    def _copy(self, n: int, offset: int) -> bytes:
        """Copy *n* bytes from *offset* (both in range, n > 0)."""
        pos = offset + self._off
        parts: list[Any] = []
        for chunk in self._chunks:
            clen = len(chunk)
            if pos >= clen:
                pos -= clen
                continue
            stop = pos + n
            if stop <= clen:
                if not parts:
                    # One chunk covers it all: one slice (or none).
                    return chunk[pos:stop] if pos or stop != clen else chunk
                parts.append(memoryview(chunk)[pos:stop])
                break
            parts.append(memoryview(chunk)[pos:] if pos else chunk)
            n -= clen - pos
            pos = 0
        return b"".join(parts)

    def _join_front(self, n: int) -> bytes:
        """Join whole chunks until the first chunk holds at least *n* bytes."""
        chunks = self._chunks
        first = chunks.popleft()
        parts: list[Any] = [memoryview(first)[self._off :]]
        total = len(first) - self._off
        while total < n:
            chunk = chunks.popleft()
            parts.append(chunk)
            total += len(chunk)
        joined = b"".join(parts)
        chunks.appendleft(joined)
        self._off = 0
        return joined

    def _join_small_front(self, want: int) -> Optional[bytes]:
        """Join small chunks at the front until *want* bytes or a big one.

        Returns:
            The new first chunk (offset 0), or None when the chunk after the
            first is too big to join.
        """
        chunks = self._chunks
        first = chunks[0]
        parts: list[Any] = [memoryview(first)[self._off :]]
        total = len(first) - self._off
        for chunk in itertools.islice(chunks, 1, None):
            if total >= want or total + len(chunk) > _PEEK_JOIN_TARGET:
                break
            parts.append(chunk)
            total += len(chunk)
        if len(parts) == 1:
            return None
        for _ in range(len(parts)):
            chunks.popleft()
        joined = b"".join(parts)
        chunks.appendleft(joined)
        self._off = 0
        return joined

    # -- searching ---------------------------------------------------------

    def _segments(self, start: int) -> Iterator[Tuple[bytes, int, int]]:
        """Yield ``(chunk, lo, base)`` for each chunk holding bytes >= *start*.

        ``chunk[lo:]`` are the bytes at positions ``base + lo`` onwards.
        """
        base = -self._off
        for chunk in self._chunks:
            cend = base + len(chunk)
            if cend > start:
                yield chunk, (start - base if start > base else 0), base
            base = cend

    def _find(self, what: bytes, start: int, end: int) -> int:
        """Return the first position of non-empty *what* in [start, end)."""
        m = len(what)
        if end - start < m:
            return -1
        first = self._chunks[0]
        off = self._off
        if off + end <= len(first):
            i = first.find(what, off + start, off + end)
            return i - off if i >= 0 else -1
        if m > _LONG_PATTERN:
            i = self._copy(end - start, start).find(what)
            return start + i if i >= 0 else -1
        # A match either lies inside one chunk, or starts in the last m-1
        # bytes before some chunk boundary; those bytes are kept in `carry`
        # and searched together with the first m-1 bytes after the boundary.
        # If the chunk after the boundary is shorter than m-1 bytes, a match
        # still pending starts within the new carry, so it is found later.
        carry = b""
        keep = m - 1
        for chunk, lo, base in self._segments(start):
            hi = len(chunk)
            cend = base + hi
            if cend > end:
                hi = end - base
            if carry:
                window = carry + chunk[: keep if keep < hi else hi]
                i = window.find(what)
                if i >= 0:
                    return base - len(carry) + i
            i = chunk.find(what, lo, hi)
            if i >= 0:
                return base + i
            if cend >= end:
                return -1
            if keep:
                if hi - lo >= keep:
                    carry = chunk[hi - keep : hi]
                else:
                    carry = (carry + chunk[lo:hi])[-keep:]
        return -1

    def _search_eol(self, start: int, eol: EOL) -> Tuple[int, int]:
        """search_eol without argument checks; *start* < length."""
        if eol is EOL.LF or eol is EOL.NUL:
            pos = self._find(b"\n" if eol is EOL.LF else b"\0", start, self._len)
            return (pos, 1) if pos >= 0 else (-1, 0)
        if eol is EOL.CRLF_STRICT:
            pos = self._find(b"\r\n", start, self._len)
            return (pos, 2) if pos >= 0 else (-1, 0)
        if eol is EOL.CRLF:
            return self._search_crlf(start)
        return self._search_any(start)

    def _search_crlf(self, start: int) -> Tuple[int, int]:
        """Find an LF, counting one CR before it when that CR is >= start.

        Scanning for CR and LF separately and pairing them would be the
        direct reading of libevent's loop; finding the LF with one memchr
        and then looking at the single byte before it gives the same answer.
        """
        pos = self._find(b"\n", start, self._len)
        if pos < 0:
            return -1, 0
        if pos > start and self._byte_at(pos - 1) == _CR:
            return pos - 1, 2
        return pos, 1

    def _byte_at(self, pos: int) -> int:
        """Return the byte at *pos* (0 <= pos < length)."""
        pos += self._off
        for chunk in self._chunks:
            if pos < len(chunk):
                return chunk[pos]
            pos -= len(chunk)
        raise IndexError(pos)

    def _search_any(self, start: int) -> Tuple[int, int]:
        """Find the first CR or LF and measure the run of CR/LF it opens."""
        segments = self._segments(start)
        for chunk, lo, base in segments:
            i = chunk.find(b"\r", lo)
            # Only an LF before that CR can come first.
            j = chunk.find(b"\n", lo, i if i >= 0 else len(chunk))
            k = j if j >= 0 else i
            if k < 0:
                continue
            stop = _EOL_RUN.match(chunk, k).end()
            run = stop - k
            if stop == len(chunk):
                # The run may go on into the following chunks.
                for nxt, _, _ in segments:
                    match = _EOL_RUN.match(nxt)
                    if match is None:
                        break
                    run += match.end()
                    if match.end() < len(nxt):
                        break
            return base + k, run
        return -1, 0

    # -- callbacks ---------------------------------------------------------

    def free(self) -> None:
        """Drop the contents and callbacks; every later use raises.

        After ``free()`` any operation on the buffer (including ``len``)
        raises BufferEventError, as API.md asks of a freed buffer.  Freeing
        twice is harmless.  A bufferevent's own buffers are not freed with
        it (they stay readable after ``bufferevent.free()``).
        """
        if self._owned:
            raise BufferEventError(
                "this buffer belongs to a bufferevent; free the bufferevent instead"
            )
        self._chunks.clear()
        self._off = self._len = 0
        self._cbs = []
        self._watcher = None
        self._reserved = None
        self.__class__ = _FreedBuffer

    @property
    def freed(self) -> bool:
        """True once ``free()`` was called."""
        return False

    def _notify(self, orig: int, added: int, deleted: int) -> None:
        """Run every callback for one change; re-raise the first failure."""
        if not self._cbs:
            self._watcher(added, deleted)  # type: ignore[misc]
            return
        info = BufferCbInfo(orig, added, deleted)
        error: Optional[Exception] = None
        # A snapshot, because callbacks may add or remove entries; `active`
        # skips the ones removed during this run.
        for entry in tuple(self._cbs):
            if not entry.active:
                continue
            try:
                entry.cb(self, info, entry.ctx)
            except Exception as exc:
                if error is None:
                    error = exc
                else:
                    # Only one exception can propagate; keep the rest visible.
                    logger.error(
                        "buffer callback %r on %r also failed",
                        entry.cb,
                        self,
                        exc_info=exc,
                    )
        watcher = self._watcher
        if watcher is not None:
            watcher(added, deleted)
        if error is not None:
            raise error


class _FreedBuffer(Buffer):
    """What a Buffer becomes after ``free()``: every attribute but a few
    raises BufferEventError.  Swapping the class keeps the cost of the
    check off every live buffer's operations."""

    __slots__ = ()
    _ALLOWED = frozenset({"__class__", "free", "freed", "__repr__"})

    def __getattribute__(self, name: str) -> Any:
        if name in _FreedBuffer._ALLOWED:
            return object.__getattribute__(self, name)
        raise BufferEventError(f"Buffer has been freed (tried {name!r})")

    def free(self) -> None:
        """Already freed: nothing to do."""

    @property
    def freed(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "<Buffer freed>"
