"""Paired bufferevents: two ends joined in memory, no socket in between.

Theory of operation
-------------------

Bytes written on one end move from its output Buffer to the partner's input
Buffer.  The move is a chunk hand-over (no copy), and it happens at once,
in the greenlet that caused it: the writer's ``write()``, an ``enable``, or
the partner draining its input below its read high watermark.  A move
happens only while the sending end wants to write (EV_WRITE enabled, not
suspended) and the receiving end wants to read; it takes no more than the
receiver's read high watermark leaves room for, so the rest waits in the
sender's output, which is where a socket would keep it too.

Because a move can happen inside user code (a read callback that writes to
its partner, whose read callback writes back, ...), every pair end always
has DEFER_CALLBACKS: callbacks only ever run from the EventBase's callback
greenlet, so a chain of 10,000 ping-pongs is a loop there, not a recursion,
and other greenlets get their turns between rounds.

The hot path.  When a write could move everything at once (the end's
output is empty, the partner wants data and has room for all of it under
its read high watermark, no filter caps it, no user callback watches
either buffer), ``write`` appends straight to the partner's input.
Observably this is the same as appending to the output and moving it at
once: nobody could look in between.

Unlinking.  Freeing one end leaves the other alive and unlinked: its writes
stay in its output, it gets no event about the other's end (as in libevent;
a socket user might expect EOF, which is what ``flush(EV_WRITE, FINISHED)``
or ``shutdown_write()`` is for) and ``get_partner()`` returns None.  Its
blocking calls that would wait for the gone partner raise instead.  An end
freed with a ``shutdown_write()`` still pending first hands its partner
everything and the EOF it promised.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional, Tuple

from .base import EventBase
from .bufferevent import _DEFER, _READ, _WRITE, BufferEvent
from .constants import Event, FlushMode
from .errors import BufferEventError

logger = logging.getLogger(__name__)

__all__ = ["PairBufferEvent", "pair_new"]


class PairBufferEvent(BufferEvent):
    """One end of an in-memory pair (see ``pair_new``).

    Pair ends are connected from the start (there is no CONNECTED event),
    have no file descriptor, and always defer their callbacks.
    CLOSE_ON_FREE is accepted and has no effect.
    """

    def __init__(self, base: Optional[EventBase] = None, options: int = 0) -> None:
        if isinstance(options, int) and not isinstance(options, bool):
            # Added before the checks, so UNLOCK_CALLBACKS alone is valid.
            options = int(options) | _DEFER
        super().__init__(base, options)
        self._partner: Optional[PairBufferEvent] = None
        self._connected = True
        # shutdown_write() asked for EOF once the output has moved.
        self._eof_after_output = False

    def __repr__(self) -> str:
        linked = "linked" if self._partner is not None else "unlinked"
        return super().__repr__()[:-1] + f" {linked}>"

    def get_partner(self) -> Optional[PairBufferEvent]:
        """The other end of the pair.

        Returns:
            The partner, or None once either end was freed.
        """
        return self._partner

    # -- the data path ------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data``; it reaches the partner at once when it can.

        Raises:
            BufferEventError: this end was freed.
            TypeError: ``data`` is not a bytes-like object.
        """
        partner = self._partner
        out = self.output
        if (
            partner is not None
            and type(data) is bytes
            and data
            and not out._len
            and self._enabled & _WRITE
            and partner._enabled & _READ
            and not (
                self._write_suspended
                or partner._read_suspended
                or partner._read_cap
                or out._cbs
                or partner.input._cbs
            )
        ):
            # The hot path (module docstring): the same result as queueing
            # and moving at once, minus the bookkeeping of the round trip.
            # The input's own watcher only acts on removals, so skipping it
            # for this append loses nothing; the output's write timer only
            # runs while bytes wait, and none wait here.
            pin = partner.input
            high = partner._read_high
            size = len(data)
            if not high or pin._len + size <= high:
                # pin._push(data) inlined (a call is a fifth of this path).
                chunks = pin._chunks
                if chunks and len(chunks[-1]) + size <= pin._merge_limit:
                    chunks[-1] = chunks[-1] + data
                else:
                    chunks.append(data)
                pin._len += size
                if partner._read_timer is None and not partner._read_low:
                    # partner._bytes_read() inlined for the common case.
                    if high and pin._len >= high:
                        partner._check_read_high()
                    if partner._readcb is not None:
                        partner._pending_read = True
                        if not partner._deferred_queued:
                            partner._queue_deferred()
                    if partner._waiting:
                        partner._notify()
                else:
                    partner._bytes_read()
                if self._writecb is not None:
                    # _trigger_write() inlined: the output is empty, so at
                    # or below any write low watermark.
                    self._pending_write = True
                    if not self._deferred_queued:
                        self._queue_deferred()
                return
        BufferEvent.write(self, data)

    def _wants_to_talk(self, dst: PairBufferEvent) -> bool:
        return bool(
            self._enabled & _WRITE
            and not self._write_suspended
            and dst._enabled & _READ
            and not dst._read_suspended
        )

    def _transfer(self, ignore_watermarks: bool = False) -> int:
        """Move output to the partner's input; returns the bytes moved.

        Without ``ignore_watermarks`` the partner's read high watermark (and
        a filter's cap) bounds the move.
        """
        dst = self._partner
        out = self.output
        if dst is None or not out._len:
            return 0
        room = -1 if ignore_watermarks else dst._input_room()
        if not room:
            return 0
        before = out._len
        try:
            out._move_internal(dst.input, room)
        except Exception:
            # A user's callback on one of the buffers failed; the bytes
            # moved all the same and the partner must hear of them.
            self.base.hub.handle_error(self, *sys.exc_info())
        moved = before - out._len
        if moved:
            dst._bytes_read()
            if not self._freed:
                self._trigger_write()
                if self._eof_after_output and not out._len:
                    self._send_eof()
        return moved

    def _send_eof(self, events: int = Event.EOF | Event.READING) -> None:
        if events & Event.READING:
            self._eof_after_output = False  # this is the EOF it promised
        partner = self._partner
        if partner is not None:
            logger.debug("%r: EOF to %r", self, partner)
            # libevent leaves the partner's directions as they are: it may
            # go on reading whatever is written later (case C06).
            partner._report_event(events, disable=False)
            if self._waiting:
                self._notify()

    # -- hooks --------------------------------------------------------------

    def _kind_start(self, what: int) -> None:
        partner = self._partner
        if partner is None:
            return
        if what & _WRITE and self._wants_to_talk(partner):
            self._transfer()
        if what & _READ and partner._wants_to_talk(self):
            partner._transfer()

    def _kind_output_grew(self) -> None:
        partner = self._partner
        if partner is not None and self._wants_to_talk(partner):
            self._transfer()

    def _kind_flush(self, what: int, mode: FlushMode) -> int:
        """NORMAL and FLUSH move everything pending, ignoring watermarks;
        FINISHED does too and then gives the partner EOF.

        Returns 1 when bytes moved, 0 when none did.
        """
        partner = self._partner
        if partner is None:
            raise BufferEventError(
                "flush: the pair end is unlinked (its partner was freed)"
            )
        moved = 0
        if what & _WRITE:
            moved += self._transfer(ignore_watermarks=True)
        if what & _READ:
            moved += partner._transfer(ignore_watermarks=True)
        if mode == FlushMode.FINISHED and not self._freed:
            events = Event.EOF
            if what & _WRITE:
                events |= Event.READING  # the partner reads the EOF
            if what & _READ:
                events |= Event.WRITING
            self._send_eof(events)
        return 1 if moved else 0

    def shutdown_write(self) -> None:
        """Give the partner EOF (``EOF|READING``) once the output has moved.

        A geventbev extension; for a pair end it is the polite form of
        ``flush(EV_WRITE, FINISHED)``: bytes still held back by the
        partner's watermark go first.
        """
        self._check_alive()
        if self.output._len:
            self._eof_after_output = True
        else:
            self._send_eof()

    def _kind_busy(self) -> bool:
        return self._eof_after_output and self._partner is not None

    def _kind_free(self) -> None:
        partner = self._partner
        if partner is not None and self._eof_after_output:
            # shutdown_write() promised the partner everything, then EOF.
            self._transfer(ignore_watermarks=True)
            self._send_eof()
        self._partner = None
        if partner is not None:
            logger.debug("%r: unlinked from %r", self, partner)
            partner._partner = None
            partner._stranded = "the other end of the pair was freed"
            partner._eof_after_output = False
            partner._maybe_idle()
            layer: Optional[BufferEvent] = partner
            while layer is not None:
                # Blocking callers on it, and on filters stacked over it,
                # must learn that nothing more can come.
                if layer._waiting:
                    layer._notify()
                layer = layer._upper

    def _has_pending_work(self) -> bool:
        # A pair end has no I/O of its own to wait for: bytes arrive only
        # when other code writes them, and that code is what dispatch must
        # wait for, not this end (libevent's dispatch returns too).  Only an
        # armed timeout is an event still to come.
        return not self._freed and self._timeout_armed()


def pair_new(
    options: int = 0, *, base: Optional[EventBase] = None
) -> Tuple[PairBufferEvent, PairBufferEvent]:
    """Create two bufferevents joined in memory.

    Whatever one end writes, the other reads.  Both ends start with
    writing enabled and reading disabled, like every bufferevent, and both
    always defer their callbacks (DEFER_CALLBACKS is added).

    Args:
        options: Option flags for both ends; CLOSE_ON_FREE has no effect.
        base: the EventBase (default: the hub's).

    Returns:
        ``(bev0, bev1)``, each the other's partner.

    Raises:
        TypeError: ``options`` is not an int, or ``base`` not an EventBase.
        ValueError: ``options`` has unknown bits.
    """
    first = PairBufferEvent(base, options)
    second = PairBufferEvent(first.base, options)
    first._partner, second._partner = second, first
    return first, second
