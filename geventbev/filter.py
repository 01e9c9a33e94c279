"""Filtering bufferevents: a transformation between the user and another
bufferevent (the *underlying*: a socket, a pair end, another filter).

Theory of operation
-------------------

A filter bufferevent has its own input and output Buffers and two filter
functions ``f(src, dst, dst_limit, mode, ctx) -> FilterResult``.  Two
greenlets, the pumps, run them:

* the input pump moves the underlying's input through the input filter
  into the filter's input, then runs the user's read callback;
* the output pump moves the filter's output through the output filter into
  the underlying's output, which the underlying then sends.

Running the filters in pumps, rather than inside ``write()`` or inside the
underlying's callbacks, means that a user draining the filter's input (or
writing to it) never finds a filter run, and its read callback, nested
inside that call.  The read callback runs in the input pump, the write
callback in the output pump (or in the caller of ``flush``), and events
passed on from the underlying in the underlying's greenlet; a blocking
call refuses to wait in any greenlet that must run for its bytes to move.

The filter takes over the underlying's callbacks: its read callback wakes
the input pump, its write callback wakes the output pump, and its events
are passed on to the filter's user (EOF only after the input filter has
run once with FINISHED, so a decompressor's tail arrives before the EOF;
libevent passes the EOF on at once).

Backpressure.  Reading on the underlying is suspended (SUSPEND_FILT_READ)
while the filter does not want data: reading disabled, the filter's input
at its read high watermark, or the input direction failed.  While the
filter has a read high watermark, the underlying also reads ahead no more
than that many bytes, and no less than ``UNDERLYING_READ_CAP`` (libevent's
16 KiB read size), so that a filter that stops taking bytes leaves the
rest in the kernel rather than in memory; the cap is lifted while the
input filter asks for more than that (NEED_MORE with the cap reached),
which would otherwise never end.  On the way out the output filter gets
``dst_limit`` from the underlying's write high watermark; without one the
pump stops feeding the underlying at ``UNDERLYING_WRITE_CAP`` bytes and
goes on when the underlying's write callback says it drained, so the
filter's own output (and the user's watermarks on it) carries the
backpressure.

Failures.  A filter that returns ERROR, raises, or returns something that
is not a FilterResult stops its direction: the user gets ERROR|READING or
ERROR|WRITING with the exception as ``get_error()`` (libevent stays
silent), and blocking callers get it as ``__cause__``.  Bytes already
filtered stay readable.

Freeing.  ``free()`` drops what is still in the filter's own output (it is
abortive, like every bufferevent's), but never what the filter already
handed to its underlying: with CLOSE_ON_FREE the underlying first writes
that out, bounded by ``FREE_DRAIN_TIMEOUT`` seconds, and only then is
freed (libevent frees it at once and loses those bytes).  A pending
``shutdown_write()`` is honoured before the free, so a compressor's
trailer is written.  ``free_context(ctx)`` runs exactly once.

Filters must not block (they run inside the pumps and inside ``flush``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional

import gevent
from gevent import getcurrent

from .buffer import Buffer
from .bufferevent import (
    _DEFER,
    _OWN_GREENLET,
    _READ,
    _WRITE,
    SUSPEND_FILT_READ,
    BufferEvent,
)
from .constants import (
    EV_READ,
    EV_WRITE,
    LIBEVENT_MAX_SINGLE_DEFAULT,
    Event,
    FilterResult,
    FlushMode,
    Option,
)
from .errors import BufferEventError
from .pair import PairBufferEvent
from .sock import _Wakeup

logger = logging.getLogger(__name__)

__all__ = ["FilterBufferEvent", "filter_new"]

FilterFunction = Callable[[Buffer, Buffer, int, FlushMode, Any], Any]

# The least the underlying may read ahead while the filter has a read high
# watermark (see the module docstring and _read_ahead_cap).
UNDERLYING_READ_CAP = LIBEVENT_MAX_SINGLE_DEFAULT
# Bytes the output pump leaves queued in an underlying that has no write
# high watermark of its own before it waits for the underlying to drain.
UNDERLYING_WRITE_CAP = 256 * 1024
# How long a filter freed with CLOSE_ON_FREE lets its underlying finish
# sending what it already holds, in seconds.
FREE_DRAIN_TIMEOUT = 30.0

_NORMAL = FlushMode.NORMAL
_FINISHED = FlushMode.FINISHED
_OK = FilterResult.OK
_NEED_MORE = FilterResult.NEED_MORE
_FILTER_ERROR = FilterResult.ERROR
_RESULTS = {int(r): r for r in FilterResult}
_CLOSE_ON_FREE = int(Option.CLOSE_ON_FREE)
_EOF = int(Event.EOF)
_ERROR = int(Event.ERROR)
_READING = int(Event.READING)
_WRITING = int(Event.WRITING)
_CONNECTED = int(Event.CONNECTED)
# Runs of a pump before it lets other greenlets go first.
_RUNS_PER_TURN = 8


def _pass_through(
    src: Buffer, dst: Buffer, dst_limit: int, mode: FlushMode, ctx: Any
) -> FilterResult:
    """The filter used for ``None``: moves bytes unchanged, at most
    ``dst_limit`` of them when that is not -1."""
    if not len(src):
        return _NEED_MORE
    src._move_internal(dst, dst_limit)
    return _OK


class FilterBufferEvent(BufferEvent):
    """A bufferevent that transforms the bytes of another (see
    ``filter_new`` and the module docstring).

    Attributes:
        input, output, base: as for every BufferEvent.
    """

    def __init__(
        self,
        underlying: BufferEvent,
        input_filter: Optional[FilterFunction],
        output_filter: Optional[FilterFunction],
        options: int = 0,
        free_context: Optional[Callable[[Any], Any]] = None,
        ctx: Any = None,
    ) -> None:
        if not isinstance(underlying, BufferEvent):
            raise TypeError(
                f"underlying must be a BufferEvent, got {type(underlying).__name__}"
            )
        for name, fn in (
            ("input_filter", input_filter),
            ("output_filter", output_filter),
            ("free_context", free_context),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {fn!r}")
        if underlying.freed:
            raise BufferEventError("underlying bufferevent has been freed")
        if underlying._upper is not None and not underlying._upper.freed:
            raise BufferEventError(
                f"underlying already has a filter on top: {underlying._upper!r}"
            )
        super().__init__(underlying.base, options)
        self._under = underlying
        self._input_filter = input_filter or _pass_through
        self._output_filter = output_filter or _pass_through
        self._filter_ctx = ctx
        self._free_context = free_context
        self._connected = underlying.connected
        self._in_dirty = True  # the underlying may already hold input
        self._out_dirty = False
        self._in_failed = False
        self._out_failed = False
        self._under_eof = False  # the underlying reported EOF
        # (events, error) of a read error held back for the input pump.
        self._under_error: Optional[tuple] = None
        self._eof_delivered = False
        self._shutdown_pending = False
        self._write_finished = False  # the output filter ran with FINISHED
        self._filtering_output = False  # guards against re-entry by flush
        self._filtering_input = False
        self._flushing = False  # inside _kind_flush
        self._release_pending = False  # freed during a flush (_kind_flush)
        self._released = False  # the underlying was given back or freed
        hub = self.base.hub
        self._in_wake = _Wakeup(hub)
        self._out_wake = _Wakeup(hub)

        underlying._upper = self
        # Without write watermarks of its own, the underlying calls back
        # once it is down to half of what the output pump queues in it, so
        # the pump refills it before it runs dry (and the filter's write
        # timeout sees steady progress).  Restored when the filter goes.
        self._lent_write_low = not (underlying._write_low or underlying._write_high)
        if self._lent_write_low:
            underlying._write_low = UNDERLYING_WRITE_CAP // 2
        underlying.setcb(
            self._under_readcb, self._under_writecb, self._under_eventcb, None
        )
        underlying.enable(EV_READ | EV_WRITE)
        self._reader = gevent.spawn(self._input_pump)
        self._writer = gevent.spawn(self._output_pump)
        self._sync_under_read()
        logger.debug("%r: filtering %r", self, underlying)

    # -- running the filter functions ---------------------------------------

    def _call_filter(
        self, output: bool, src: Buffer, dst: Buffer, limit: int, mode: FlushMode
    ) -> Optional[FilterResult]:
        """Run one filter function; None when it failed (already reported)."""
        fn = self._output_filter if output else self._input_filter
        # The frozen ends keep users out of the filter's own buffers; the
        # filter function is the one allowed in.
        frozen_src_front, frozen_dst_end = src._front_frozen, dst._end_frozen
        src._front_frozen = dst._end_frozen = False
        try:
            result = fn(src, dst, limit, mode, self._filter_ctx)
        except Exception as exc:
            # Known shortcoming: a user's add_cb callback on one of these
            # buffers that raises (say a byte counter on the underlying's
            # output) raises out of the filter function's add/remove, so it
            # is reported as this filter failing (ERROR on the direction),
            # where sockets and pairs hand such errors to the hub's error
            # handler and go on.  Telling the two apart would need a hook
            # in every Buffer operation the filter function may call.
            self._filter_failed(output, exc)
            return None
        finally:
            src._front_frozen = frozen_src_front
            dst._end_frozen = frozen_dst_end
        checked = (
            _RESULTS.get(result)
            if type(result) is int or isinstance(result, FilterResult)
            else None
        )
        which = "output" if output else "input"
        if checked is None:
            self._filter_failed(
                output,
                TypeError(
                    f"{which} filter {fn!r} returned {result!r}; expected a "
                    "FilterResult (OK, NEED_MORE or ERROR)"
                ),
            )
            return None
        if checked is _FILTER_ERROR:
            self._filter_failed(output, BufferEventError(f"{which} filter failed"))
            return None
        return checked

    def _filter_failed(self, output: bool, exc: BaseException) -> None:
        if self._freed:
            return
        if output:
            self._out_failed = True
            events = Event.ERROR | Event.WRITING
        else:
            self._in_failed = True
            events = Event.ERROR | Event.READING
        which = "output" if output else "input"
        logger.debug("%r: %s filter failed: %r", self, which, exc)
        self._report_event(events, exc)
        self._sync_under_read()

    def _run_input(self, mode: FlushMode, forced: bool = False) -> int:
        """Run the input filter until it has nothing more to give now.

        ``forced`` (a ``flush``) ignores the read high watermark, passes
        ``dst_limit`` -1 and calls the filter at least once.  Returns the
        bytes produced, plus 1 if a call returned OK (so 0 means neither).
        """
        under = self._under
        src, dst = under.input, self.input
        produced_total = any_ok = 0
        result: Optional[FilterResult] = _OK
        # Why the loop stopped: "done" (the filter has nothing more now),
        # "full" (no room below the read high watermark or a cap set from
        # above) or "paused" (reading was turned off meanwhile).
        stopped = "done"
        finishing = mode is _FINISHED
        self._filtering_input = True
        try:
            while not self._freed and not self._in_failed and not under.freed:
                limit = -1 if forced else self._input_room()
                if not limit:
                    stopped = "full"
                    break
                src_before, dst_before = len(src), len(dst)
                result = self._call_filter(False, src, dst, limit, mode)
                if result is None:
                    return produced_total + any_ok
                if result is _OK:
                    any_ok = 1
                produced = len(dst) - dst_before
                progressed = bool(produced or src_before - len(src))
                if produced:
                    produced_total += produced
                    self._bytes_read()
                if result is _NEED_MORE or not progressed:
                    break
                # Finishing, a stateful filter (a decompressor) that filled
                # all the room it had may hold more with its source empty:
                # ask again once there is room (the "full" stop below).
                if not len(src) and not (finishing and 0 <= limit <= produced):
                    break
                if not forced and not self._reading_wanted():
                    stopped = "paused"
                    break
        finally:
            self._filtering_input = False
        if self._freed or under.freed:
            return produced_total + any_ok
        cap = self._read_ahead_cap()
        if cap:
            # Lift the read-ahead cap while the filter waits for more than
            # the cap lets in (see the module docstring).
            starving = stopped == "done" and len(src) >= cap
            under._set_read_cap(0 if starving else cap)
        self._sync_under_read()
        if self._under_error is not None and stopped == "done":
            self._pass_on_held_error()
            return produced_total + any_ok
        if (
            self._under_eof
            and finishing
            and stopped == "done"
            and not self._eof_delivered
            and not self._in_failed
        ):
            self._eof_delivered = True
            logger.debug("%r: EOF", self)
            self._report_event(Event.EOF | Event.READING)
        return produced_total + any_ok

    def _run_output(self, mode: FlushMode, forced: bool = False) -> int:
        """Run the output filter until it has nothing more to give now.

        ``forced`` (a ``flush`` or the finish of ``shutdown_write``)
        ignores the underlying's write high watermark and our cap, passes
        ``dst_limit`` -1 and calls the filter at least once.  Returns the
        bytes produced, plus 1 if a call returned OK.
        """
        under = self._under
        src, dst = self.output, under.output
        produced_total = consumed_total = any_ok = 0
        self._filtering_output = True
        try:
            while not self._freed and not self._out_failed and not under.freed:
                limit = -1
                if not forced:
                    if not len(src):
                        break
                    if under._write_high:
                        limit = under._write_high - len(dst)
                        if limit <= 0:
                            break
                    elif len(dst) >= UNDERLYING_WRITE_CAP:
                        break
                src_before, dst_before = len(src), len(dst)
                result = self._call_filter(True, src, dst, limit, mode)
                if result is None:
                    return produced_total + any_ok
                if result is _OK:
                    any_ok = 1
                produced = len(dst) - dst_before
                consumed = src_before - len(src)
                produced_total += produced
                consumed_total += consumed
                if result is _NEED_MORE or not (produced or consumed) or not len(src):
                    break
                if not forced and not self._writing_wanted():
                    break
        finally:
            self._filtering_output = False
        if consumed_total and not self._freed:
            self._trigger_write()
        return produced_total + any_ok

    def _read_ahead_cap(self) -> int:
        """How much the underlying may read ahead (0: no limit): while this
        filter's input is bounded (a read high watermark, or a cap set by a
        filter above) as much as that bound, and at least libevent's 16 KiB
        read."""
        held = self._read_high
        if self._read_cap:
            held = min(held, self._read_cap) if held else self._read_cap
        return max(UNDERLYING_READ_CAP, held) if held else 0

    def _push_read_cap(self) -> None:
        """Give the underlying the read-ahead bound this filter has now."""
        if not self._under.freed:
            self._under._set_read_cap(self._read_ahead_cap())
            self._sync_under_read()

    def _set_read_cap(self, cap: int) -> None:
        # A filter above bounds this one: pass the bound on down, so that a
        # writer at the bottom of the stack meets it.
        self._read_cap = cap
        self._push_read_cap()

    def setwatermark(self, what: int, low: int, high: int) -> None:
        """As for every bufferevent; a read high watermark also caps how far
        the underlying reads ahead (module docstring)."""
        super().setwatermark(what, low, high)
        if what & _READ:
            self._push_read_cap()

    # -- the pumps ----------------------------------------------------------

    def _wants_input_run(self) -> bool:
        return (
            self._in_dirty
            and not self._in_failed
            and not self._eof_delivered
            and self._reading_wanted()
        )

    def _pass_on_held_error(self) -> None:
        """Report a held read error once the underlying's input is used up
        (or the filter can take no more of it for now and never will)."""
        held, self._under_error = self._under_error, None
        if held is not None and not self._freed:
            self._report_event(held[0], held[1])

    def _input_pump(self) -> None:
        wake = self._in_wake
        runs = 0
        while not self._freed:
            if not self._wants_input_run():
                runs = 0
                self._maybe_idle()
                wake.wait()
                continue
            self._in_dirty = False
            self._run_input(_FINISHED if self._under_eof else _NORMAL)
            runs += 1
            if runs >= _RUNS_PER_TURN:
                runs = 0
                gevent.sleep(0)

    def _output_pump(self) -> None:
        wake = self._out_wake
        runs = 0
        while not self._freed:
            if self._out_failed or not (
                self._out_dirty and (self._writing_wanted() or self._shutdown_pending)
            ):
                runs = 0
                self._maybe_idle()
                wake.wait()
                continue
            self._out_dirty = False
            if self._writing_wanted():
                self._run_output(_NORMAL)
            if self._shutdown_pending and not self._freed:
                self._finish_output()
            runs += 1
            if runs >= _RUNS_PER_TURN:
                runs = 0
                gevent.sleep(0)

    def _finish_output(self) -> None:
        """shutdown_write: let the output filter finish, then shut down the
        underlying's write side."""
        self._shutdown_pending = False
        self._write_finished = True
        under = self._under
        if self._out_failed or under.freed:
            return
        # A callback may free this filter during the run: the underlying
        # is then released only after its shutdown (see _kind_flush).
        outer = not self._flushing
        self._flushing = True
        try:
            self._run_output(_FINISHED, forced=True)
            if not self._out_failed and not under.freed:
                try:
                    under.shutdown_write()
                except NotImplementedError:
                    logger.debug("%r: underlying %r cannot shut down", self, under)
        finally:
            if outer:
                self._flushing = False
                if self._freed and self._release_pending:
                    self._release_underlying()
        if self._waiting:
            self._notify()
        self._maybe_idle()

    def _sync_under_read(self) -> None:
        """Suspend or resume the underlying's reading (module docstring)."""
        under = self._under
        if under.freed:
            return
        want = (
            not self._freed
            and self._reading_wanted()
            and not self._in_failed
            and not self._under_eof
            and not (under._read_cap and len(under.input) >= under._read_cap)
        )
        if want:
            if under._read_suspended & SUSPEND_FILT_READ:
                under._unsuspend(_READ, SUSPEND_FILT_READ)
        elif not under._read_suspended & SUSPEND_FILT_READ:
            under._suspend(_READ, SUSPEND_FILT_READ)

    # -- the underlying's callbacks -----------------------------------------

    def _under_readcb(self, under: BufferEvent, ctx: Any) -> None:
        self._in_dirty = True
        self._in_wake.set()

    def _under_writecb(self, under: BufferEvent, ctx: Any) -> None:
        if len(self.output) or self._shutdown_pending:
            self._out_dirty = True
            self._out_wake.set()
        # drain() waits for the underlying too, also on the filters stacked
        # on this one.
        layer: Optional[BufferEvent] = self
        while layer is not None:
            if layer._waiting:
                layer._notify()
            layer = layer._upper
        if not len(under.output):
            self._maybe_idle()

    def _under_eventcb(self, under: BufferEvent, events: int, ctx: Any) -> None:
        if self._freed:
            return
        events = int(events)
        if events & _EOF and events & _READING and not events & _ERROR:
            # Held back until the input filter ran with FINISHED.
            self._under_eof = True
            self._in_dirty = True
            self._in_wake.set()
            events &= ~(_EOF | _READING)
            if events & _WRITING:
                events |= _EOF  # the writing side ended too: pass that on
            elif not events:
                return
        if (
            events & _ERROR
            and events & _READING
            and len(under.input)
            and self._enabled & _READ
            and not self._in_failed
        ):
            # Bytes that arrived before the error are the user's too: the
            # input pump passes the error on once it has filtered them.
            self._under_error = (events & (_ERROR | _READING), under.get_error())
            self._in_dirty = True
            self._in_wake.set()
            events &= ~(_ERROR | _READING)
            if not events:
                return
        if events & _CONNECTED:
            self._out_dirty = True
            self._out_wake.set()
        self._report_event(events, under.get_error())

    # -- hooks --------------------------------------------------------------

    def _kind_start(self, what: int) -> None:
        under = self._under
        if under.freed:
            return
        if what & _READ:
            # A filter owns its underlying's directions: bring back one a
            # timeout on the underlying turned off.
            if not (under._enabled & _READ or under._eof or under._error_events):
                under.enable(EV_READ)
            self._in_dirty = True
            self._in_wake.set()
            self._sync_under_read()
        if what & _WRITE:
            if not under._enabled & _WRITE and not under._error_events:
                under.enable(EV_WRITE)
            self._out_dirty = True
            self._out_wake.set()

    def _kind_stop(self, what: int) -> None:
        if what & _READ:
            self._sync_under_read()

    def _kind_output_grew(self) -> None:
        if not self._out_dirty:
            self._out_dirty = True
            self._out_wake.set()

    def _kind_flush(self, what: int, mode: FlushMode) -> int:
        """Run the filter(s) with ``mode`` (NORMAL included), then flush
        the underlying the same way.

        Returns 1 when a filter call returned OK or produced bytes, else
        the underlying's answer."""
        under = self._under
        if under.freed:
            raise BufferEventError("flush: the underlying bufferevent was freed")
        produced = 0
        forced = mode is not _NORMAL
        # A callback run by the filters below may free this filter; the
        # underlying is then released only after the flush went down to it
        # (what was handed over must still be pushed through, case C08).
        outer = not self._flushing
        self._flushing = True
        try:
            # NORMAL runs only a direction that is wanted, as in libevent.
            if (
                what & _READ
                and not self._filtering_input
                and (forced or self._reading_wanted())
            ):
                produced += self._run_input(mode, forced)
            if (
                what & _WRITE
                and not self._filtering_output
                and (forced or self._writing_wanted())
            ):
                produced += self._run_output(mode, forced)
            answer = under.flush(what, mode) if not under.freed else 0
        finally:
            if outer:
                self._flushing = False
                if self._freed and self._release_pending:
                    self._release_underlying()
        return 1 if produced else answer

    def shutdown_write(self) -> None:
        """Finish the output side: once everything written so far went
        through the output filter, run it with FINISHED (a compressor
        writes its trailer), then shut down the underlying's write side.
        """
        self._check_alive()
        if self._write_finished or self._out_failed or self._under.freed:
            return  # nothing more can be finished
        self._shutdown_pending = True
        self._out_dirty = True
        self._out_wake.set()

    def _kind_output_settled(self) -> bool:
        under = self._under
        if under.freed:
            return True
        return (
            not self._shutdown_pending
            and not len(under.output)
            and under._kind_output_settled()
        )

    def _kind_io_greenlet(self, direction: int) -> Any:
        return self._reader if direction == _READ else self._writer

    def _in_own_io_greenlet(self, direction: int) -> bool:
        # Bytes also need the underlying's greenlets, which run the events
        # this filter passes on (CONNECTED, for one).
        if getcurrent() is self._kind_io_greenlet(direction):
            return True
        under = self._under
        return not under.freed and under._in_own_io_greenlet(direction)

    def _stranded_reason(self) -> Optional[str]:
        # Stranded below (a pair end whose partner left) with nothing left
        # to filter: nothing more can come up through this filter either.
        under = self._under
        if self._stranded is not None or under.freed:
            return self._stranded
        reason = under._stranded_reason()
        if reason is not None and not len(under.input):
            return reason
        return None

    def _under_freed(self) -> None:
        """The underlying was freed directly, under this filter."""
        logger.debug("%r: underlying %r freed under it", self, self._under)
        self._in_failed = self._out_failed = True
        self._report_event(
            Event.ERROR | Event.READING | Event.WRITING,
            BufferEventError("the underlying bufferevent was freed"),
            options=_DEFER | _OWN_GREENLET,
        )

    def _has_pending_work(self) -> bool:
        # The underlying is on the same base and speaks for its own I/O;
        # a filter only adds its timeouts and the work its pumps hold.
        if self._freed:
            return False
        return (
            self._timeout_armed()
            or self._wants_input_run()
            or (self._out_dirty and bool(len(self.output)) and self._writing_wanted())
            or self._shutdown_pending
        )

    def _kind_busy(self) -> bool:
        under = self._under
        if under.freed:
            return False
        return self._shutdown_pending or under._kind_busy() or bool(len(under.output))

    def free(self) -> None:
        """As for every bufferevent; a ``shutdown_write()`` still pending is
        finished first, so a trailer is not lost (it then goes out with
        the underlying, see the module docstring)."""
        if not self._freed and self._shutdown_pending and not self._under.freed:
            # A free() from inside the output filter lands here again with
            # nothing pending and frees; _finish_output then releases the
            # underlying after its shutdown.
            self._finish_output()
        super().free()

    def _kind_free(self) -> None:
        current = getcurrent()
        for glet in (self._reader, self._writer):
            if glet is not None and glet is not current and not glet.dead:
                glet.kill(block=False)
        self._reader = self._writer = None
        free_context, self._free_context = self._free_context, None
        ctx, self._filter_ctx = self._filter_ctx, None
        if free_context is not None:
            try:
                free_context(ctx)
            except Exception:
                self.base.hub.handle_error(self, *sys.exc_info())
        self._release_pending = True
        if not self._flushing:
            self._release_underlying()

    def _release_underlying(self) -> None:
        """Give the underlying back (or free it, with CLOSE_ON_FREE, once it
        has sent what it holds)."""
        if self._released:
            return
        self._released = True
        self._release_pending = False
        under = self._under
        if under.freed:
            return
        if under._upper is self:
            under._upper = None
            under.setcb(None, None, None)
        if self._lent_write_low:
            self._lent_write_low = False
            under._write_low = 0
        under._set_read_cap(0)
        if not self._options & _CLOSE_ON_FREE:
            under._unsuspend(_READ, SUSPEND_FILT_READ)
            return
        if isinstance(under, PairBufferEvent) and under.get_partner() is not None:
            # Nothing to wait for in a pair: hand everything to the partner
            # now, whether it reads yet or not.
            under._transfer(ignore_watermarks=True)
        if len(under.output) or not under._kind_output_settled():
            lingering = gevent.spawn(_drain_then_free, under)
            _LINGERING.add(lingering)
            lingering.link(_LINGERING.discard)
        else:
            under.free()

    def get_underlying(self) -> BufferEvent:
        """The bufferevent this filter reads from and writes to."""
        return self._under

    def fileno(self) -> int:
        """The underlying's file descriptor, or -1."""
        under = self._under
        return -1 if under.freed else under.fileno()


# Underlyings of freed filters that are still sending (see wait_lingering).
_LINGERING: set = set()


def wait_lingering(timeout: Optional[float] = None, stop: Any = None) -> int:
    """Wait until the underlyings of freed filters (CLOSE_ON_FREE) have
    sent what they held and closed.

    A program about to exit calls this so that those last bytes (a
    compressor's trailer, for one) are not cut off with the process.

    Args:
        timeout: the most seconds to wait (None: no limit).
        stop: a gevent Event that ends the wait early when set.

    Returns:
        How many are still sending.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while _LINGERING and not (stop is not None and stop.is_set()):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        waits = list(_LINGERING) + ([stop] if stop is not None else [])
        gevent.wait(waits, timeout=remaining, count=1)
    return len(_LINGERING)


def _drain_then_free(under: BufferEvent) -> None:
    """Let a freed filter's underlying send what it holds, then free it."""
    if under.freed:  # an abortive close freed it meanwhile
        return
    under.disable(EV_READ)
    failed = under._drain_and_free(FREE_DRAIN_TIMEOUT)
    if failed is not None:  # the peer is gone or too slow: nothing to save
        # A peer that went away is its own news; one that stalled past the
        # timeout is worth a warning.
        log = logger.warning if isinstance(failed[1], TimeoutError) else logger.debug
        log("%r: closed with %d bytes unsent from a freed filter: %s", under, *failed)


def filter_new(
    underlying: BufferEvent,
    input_filter: Optional[FilterFunction],
    output_filter: Optional[FilterFunction],
    options: int = 0,
    free_context: Optional[Callable[[Any], Any]] = None,
    ctx: Any = None,
) -> FilterBufferEvent:
    """Layer a filtering bufferevent over ``underlying``.

    A filter is ``f(src, dst, dst_limit, mode, ctx) -> FilterResult``: it
    moves bytes from ``src`` to ``dst`` transformed, adding at most
    ``dst_limit`` bytes unless that is -1.  ``mode`` is NORMAL, FLUSH
    (from ``flush``) or FINISHED (``flush(..., FINISHED)``,
    ``shutdown_write()``, or the input side at the underlying's EOF).  It
    returns OK when it produced what it could, NEED_MORE when it needs more
    input first, ERROR when the stream is broken.  ``None`` passes bytes
    through unchanged.

    The filter takes over the underlying's callbacks and enables its
    reading and writing; do not use the underlying directly afterwards.
    While the filter lives it also bounds how far the underlying reads
    ahead, and, when the underlying has no write watermarks, lends it a
    write low watermark of half ``UNDERLYING_WRITE_CAP`` (given back when
    the filter is freed).

    Args:
        underlying: any bufferevent (socket, pair end, filter).
        input_filter: transforms what the underlying reads, or None.
        output_filter: transforms what the user writes, or None.
        options: Option flags; CLOSE_ON_FREE frees the underlying with the
            filter (after it sent what it holds).
        free_context: called as ``free_context(ctx)`` once, on free.
        ctx: the last argument of both filters.

    Returns:
        The new FilterBufferEvent, with writing enabled and reading not.

    Raises:
        TypeError: a bad argument type.
        BufferEventError: the underlying is freed or already filtered.
    """
    return FilterBufferEvent(
        underlying, input_filter, output_filter, options, free_context, ctx
    )
