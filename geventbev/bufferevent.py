"""BufferEvent: the state and behaviour every kind of bufferevent shares.

Theory of operation
-------------------

A bufferevent is two Buffers (``input`` and ``output``), three user
callbacks, and the rules that decide when those callbacks run.  Kinds
(socket, pair, filter, TLS) only move bytes: they implement a handful of
hooks (``_kind_start``, ``_kind_stop``, ``_kind_output_grew``,
``_kind_flush``, ``_kind_free``, and the questions ``_kind_busy``,
``_kind_output_settled``, ``_kind_io_greenlet``, ``_has_pending_work``)
and report what happened through ``_bytes_read`` and ``_report_event``
(and drain their output, which the output watcher notices).  Everything
else lives here once: watermarks, enable/disable, suspension, timeouts,
deferred callbacks and the blocking-style methods.

Layers.  A filter on top of this bufferevent sets ``_upper`` and owns our
callbacks.  While it cannot take bytes it suspends our reading
(SUSPEND_FILT_READ), and it may set ``_read_cap``: the most input we hold
while it is not taking any, which a socket also applies to each read and a
pair to each transfer.  Progress in our output counts as write progress
for every filter above.  ``_stranded`` says why nothing can ever move
again without an error event (a pair end whose partner was freed):
blocking calls that would wait forever raise with it instead.

Enabled versus suspended.  ``enabled`` is what the user asked for.
Suspension is the library's own reason not to move bytes right now (the
input reached the read high watermark, a DNS lookup is running, ...).  Each
reason is one bit; a direction runs only while it is enabled and has no
suspension bits, and ``get_enabled()`` never shows suspension.

Callbacks.  A callback runs at once, in the greenlet that made the change
(a socket's reader or writer greenlet, for instance), unless the
bufferevent was created with DEFER_CALLBACKS or the trigger asked for
deferral; then it is queued on the EventBase and the queued callbacks run
in libevent's order: CONNECTED first, then read, then write, then all other
events OR-ed into one call.  Callbacks that come from the hub itself (a
timeout) never run inside the hub: with DEFER_CALLBACKS they go through the
EventBase's callback greenlet, otherwise each gets a greenlet of its own.
A callback that runs in a socket's reader (writer) greenlet must not wait
for input (output) of that same bufferevent: it would wait for itself, so
the blocking-style methods refuse with BufferEventError there.
``write()`` never runs a callback, so callbacks cannot nest inside each
other through writes.

Timeouts.  A timeout counts only while its direction is wanted (enabled,
not suspended and, for writing, with bytes pending).  Every read or write
only records a timestamp; the hub timer checks that timestamp when it
fires and re-arms itself for the remainder, so busy connections pay no
timer cost per I/O.

Blocking style.  Every state change the blocking methods care about (input
grew, output shrank, connected, EOF, error, freed) calls ``_notify``, which
wakes whichever greenlets are waiting.  Nothing is allocated for this while
no greenlet waits.

Re-entrancy: callbacks may free the bufferevent or change its callbacks;
every step that runs after user code re-checks ``_freed``.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from typing import Any, Callable, Optional

import gevent
from gevent import getcurrent
from gevent.hub import Waiter

from .base import EventBase, get_default_base
from .buffer import Buffer, _size_arg
from .constants import (
    EOL,
    EV,
    EV_READ,
    EV_SSIZE_MAX,
    EV_WRITE,
    MAX_SINGLE_READ_DEFAULT,
    MAX_SINGLE_WRITE_DEFAULT,
    Event,
    FlushMode,
    Option,
    Trigger,
)
from .errors import BufferEventError, IncompleteReadError, LineTooLongError

logger = logging.getLogger(__name__)

_TIMED_OUT = object()  # what a blocking wait's timer hands its Waiter

__all__ = ["BufferEvent"]

ReadCallback = Callable[["BufferEvent", Any], None]
EventCallback = Callable[["BufferEvent", int, Any], None]

# Plain ints: on Python 3.11+ ``~`` of an IntFlag only flips its own
# defined bits, which would let unknown bits through these masks.
_BOTH = int(EV_READ | EV_WRITE)
_ALL_OPTIONS = int(
    Option.CLOSE_ON_FREE
    | Option.THREADSAFE
    | Option.DEFER_CALLBACKS
    | Option.UNLOCK_CALLBACKS
)
_ALL_TRIGGER_OPTIONS = int(Trigger.IGNORE_WATERMARKS | Trigger.DEFER_CALLBACKS)
_CONNECTED = int(Event.CONNECTED)
# Hot-path copies as plain ints: an IntFlag operation costs about half a
# microsecond, a plain int one about ten nanoseconds.
_READ = int(EV_READ)
_WRITE = int(EV_WRITE)
_DEFER = int(Option.DEFER_CALLBACKS)
_IGNORE_WM = int(Trigger.IGNORE_WATERMARKS)
# Internal trigger option: deliver in a new greenlet (see _trigger_event).
_OWN_GREENLET = 1 << 30

# Suspension reasons, one bit each (libevent's BEV_SUSPEND_*).
SUSPEND_WM = 0x01  # input reached the read high watermark
SUSPEND_BW = 0x02  # own token bucket empty
SUSPEND_BW_GROUP = 0x04  # group token bucket empty
SUSPEND_LOOKUP = 0x08  # DNS lookup in progress
SUSPEND_FILT_READ = 0x10  # a filter on top does not want data


def _check_direction(what: int, name: str = "what", allow_empty: bool = False) -> int:
    if not isinstance(what, int) or isinstance(what, bool):
        raise TypeError(f"{name} must be EV_READ, EV_WRITE or both, got {what!r}")
    if what & ~_BOTH or (not what and not allow_empty):
        raise ValueError(f"{name} must be EV_READ, EV_WRITE or both, got {what!r}")
    return what


def _check_timeout(value: Optional[float], name: str) -> Optional[float]:
    """None or 0 means no timeout, as a zero timeval does in libevent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds as a float or None, got {value!r}")
    if value != value or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    if value == float("inf"):
        return None
    return float(value) or None


class _DirectionTimer:
    """A read or write timeout that restarts on activity without re-arming.

    The obvious design restarts a hub timer after every read or write.  At
    tens of thousands of I/O operations per second that is real work, so
    activity only stores a timestamp; when the timer fires it compares that
    timestamp with the deadline and re-arms itself for the remainder.
    """

    __slots__ = ("_bev", "direction", "seconds", "last_activity", "_timer")

    def __init__(self, bev: BufferEvent, direction: int, seconds: float) -> None:
        self._bev = bev
        self.direction = direction
        self.seconds = seconds
        self.last_activity = time.monotonic()
        self._timer: Any = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, restart: bool) -> None:
        """Start counting (if not already); ``restart`` resets the clock."""
        if restart or self._timer is None:
            self.last_activity = time.monotonic()
        if self._timer is None:
            self._start(self.seconds)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _start(self, delay: float) -> None:
        loop = self._bev.base.loop
        # libev measures time from the start of the loop iteration; update
        # it so a timer armed after a long callback is not short.
        loop.update_now()
        self._timer = loop.timer(max(delay, 0.0))
        self._timer.start(self._expired)

    def _expired(self) -> None:
        self._timer.close()
        self._timer = None
        idle = time.monotonic() - self.last_activity
        remaining = self.seconds - idle
        # A millisecond of slack: libev may fire a hair early.
        if remaining > 0.001:
            self._start(remaining)
            return
        self._bev._on_timeout(self.direction)


class BufferEvent:
    """Buffered, callback-driven connection state shared by every kind.

    Do not instantiate this class directly: use ``socket_new`` (or
    ``connect``/``serve``), ``pair_new`` or ``filter_new``.

    Attributes:
        input: the Buffer of received bytes; the user removes from it.
        output: the Buffer of bytes to send; the user appends to it.
        base: the EventBase this bufferevent runs on.
    """

    def __init__(self, base: Optional[EventBase] = None, options: int = 0) -> None:
        if not isinstance(options, int) or isinstance(options, bool):
            raise TypeError(f"options must be an Option flag set, got {options!r}")
        if options & ~_ALL_OPTIONS:
            raise ValueError(f"options has unknown bits: {options & ~_ALL_OPTIONS:#x}")
        if options & Option.UNLOCK_CALLBACKS and not options & Option.DEFER_CALLBACKS:
            raise ValueError("options: UNLOCK_CALLBACKS requires DEFER_CALLBACKS")
        if base is not None and not isinstance(base, EventBase):
            raise TypeError(f"base must be an EventBase, got {type(base).__name__}")
        self.base = base if base is not None else get_default_base()
        self._options = int(options)
        self.input = Buffer()
        self.output = Buffer()
        # The user only removes from input and only appends to output.
        self.input.freeze(False)
        self.output.freeze(True)
        self.output._watcher = self._on_output_changed
        self.input._owned = self.output._owned = True

        self._readcb: Optional[ReadCallback] = None
        self._writecb: Optional[ReadCallback] = None
        self._eventcb: Optional[EventCallback] = None
        self._cbarg: Any = None

        self._enabled = int(EV_WRITE)
        self._read_suspended = 0
        self._write_suspended = 0
        self._read_low = 0
        self._read_high = 0
        self._write_low = 0
        self._write_high = 0
        self._read_timer: Optional[_DirectionTimer] = None
        self._write_timer: Optional[_DirectionTimer] = None
        self._max_single_read = MAX_SINGLE_READ_DEFAULT
        self._max_single_write = MAX_SINGLE_WRITE_DEFAULT
        # Set by a filter on top: the most input this one may hold before
        # reading stops (SUSPEND_FILT_READ) while the filter is not taking
        # bytes; 0 means no such cap.  See filter.py.
        self._read_cap = 0
        # The filter layered on this one, if any (it owns our callbacks).
        self._upper: Optional[BufferEvent] = None

        # Deferred-callback slot (libevent: one per bufferevent).
        self._deferred_queued = False
        self._pending_read = False
        self._pending_write = False
        self._pending_events = 0

        # What the blocking style needs to know.
        self._connected = False
        self._eof = False
        self._error: Optional[BaseException] = None
        self._error_events = 0
        self._freed = False
        # Set when the transport is gone for good (a failed connect).
        self._dead = False
        # Why nothing can ever move any more without that being an error
        # event (a pair end whose partner was freed); blocking calls that
        # would wait forever raise with it instead.
        self._stranded: Optional[str] = None
        # " to <address>" once a connect started, for error messages.
        self._target_desc = ""
        # Timeouts so far, so a blocking call can tell one fired meanwhile.
        self._read_timeouts = 0
        self._write_timeouts = 0
        self._waiting: list = []  # gevent Waiters of blocking-style calls
        self.base._register(self)

    def __repr__(self) -> str:
        state = "freed" if self._freed else f"enabled={self._enabled:#x}"
        return (
            f"<{type(self).__name__} {state} in={len(self.input)} "
            f"out={len(self.output)} at {id(self):#x}>"
        )

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> BufferEvent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.free()

    # -- callbacks ----------------------------------------------------------

    def setcb(
        self,
        readcb: Optional[ReadCallback],
        writecb: Optional[ReadCallback],
        eventcb: Optional[EventCallback],
        ctx: Any = None,
    ) -> None:
        """Replace all three callbacks and their shared context argument.

        ``readcb(bev, ctx)`` runs when input reaches the read low watermark,
        ``writecb(bev, ctx)`` when output falls to the write low watermark,
        ``eventcb(bev, events, ctx)`` on CONNECTED, EOF, ERROR and TIMEOUT.
        Any of them may be None.

        Raises:
            TypeError: a callback is neither callable nor None.
        """
        for name, cb in (
            ("readcb", readcb),
            ("writecb", writecb),
            ("eventcb", eventcb),
        ):
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable or None, got {cb!r}")
        self._check_alive()
        self._readcb, self._writecb, self._eventcb, self._cbarg = (
            readcb,
            writecb,
            eventcb,
            ctx,
        )

    def getcb(self) -> tuple:
        """Return ``(readcb, writecb, eventcb, ctx)`` as set by ``setcb``."""
        return self._readcb, self._writecb, self._eventcb, self._cbarg

    def _call_user(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a user callback; a failure goes to the hub's error handler."""
        try:
            fn(*args)
        except Exception:
            self.base.hub.handle_error(self, *sys.exc_info())

    def _trigger_read(self, options: int = 0) -> None:
        """Run (or queue) the read callback if the read low watermark allows."""
        if self._readcb is None or self._freed:
            return
        if not options & _IGNORE_WM and len(self.input) < self._read_low:
            return
        if (self._options | options) & _DEFER:
            self._pending_read = True
            self._queue_deferred()
        else:
            self._call_user(self._readcb, self, self._cbarg)

    def _trigger_write(self, options: int = 0) -> None:
        """Run (or queue) the write callback if output is at or below write-low."""
        if self._writecb is None or self._freed:
            return
        if not options & _IGNORE_WM and len(self.output) > self._write_low:
            return
        if (self._options | options) & _DEFER:
            self._pending_write = True
            self._queue_deferred()
        else:
            self._call_user(self._writecb, self, self._cbarg)

    def _trigger_event(self, events: int, options: int = 0) -> None:
        """Run (or queue) the event callback with ``events``."""
        if self._eventcb is None or self._freed:
            return
        if options & _OWN_GREENLET and not self._options & _DEFER:
            # From the hub, for a bufferevent whose callbacks are not
            # deferred: run it soon in a greenlet of its own, so neither the
            # hub nor the base's callback greenlet waits for it.
            gevent.spawn(self._deliver_event_later, events)
            return
        if (self._options | options) & _DEFER:
            self._pending_events |= events
            self._queue_deferred()
        else:
            self._call_user(self._eventcb, self, _as_event(events), self._cbarg)

    def _deliver_event_later(self, events: int) -> None:
        if self._eventcb is not None and not self._freed:
            self._call_user(self._eventcb, self, _as_event(events), self._cbarg)

    def _queue_deferred(self) -> None:
        if not self._deferred_queued:
            self._deferred_queued = True
            self.base.run_deferred(self._run_deferred)

    def _run_deferred(self) -> None:
        """Deliver queued callbacks in libevent's order."""
        self._deferred_queued = False
        events, self._pending_events = self._pending_events, 0
        if events & _CONNECTED:
            events &= ~_CONNECTED
            if self._eventcb is not None and not self._freed:
                self._call_user(self._eventcb, self, Event.CONNECTED, self._cbarg)
        if self._pending_read:
            self._pending_read = False
            if self._readcb is not None and not self._freed:
                self._call_user(self._readcb, self, self._cbarg)
        if self._pending_write:
            self._pending_write = False
            if self._writecb is not None and not self._freed:
                self._call_user(self._writecb, self, self._cbarg)
        if events and self._eventcb is not None and not self._freed:
            self._call_user(self._eventcb, self, _as_event(events), self._cbarg)

    # -- data ---------------------------------------------------------------

    def get_input(self) -> Buffer:
        """The input Buffer (same as ``input``)."""
        return self.input

    def get_output(self) -> Buffer:
        """The output Buffer (same as ``output``)."""
        return self.output

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; returns at once.

        Raises:
            BufferEventError: the bufferevent was freed.
            TypeError: ``data`` is not a bytes-like object.
        """
        self._check_alive()
        self.output.add(data)

    def write_buffer(self, buf: Buffer) -> None:
        """Move everything in ``buf`` to the output."""
        self._check_alive()
        if not isinstance(buf, Buffer):
            raise TypeError(f"buf must be a Buffer, got {type(buf).__name__}")
        self.output.add_buffer(buf)

    def read(self, n: int) -> bytes:
        """Remove and return up to ``n`` bytes of input; b"" when none."""
        self._check_alive()
        _size_arg(n, "n")
        return self.input.remove(n)

    def read_buffer(self, buf: Buffer) -> None:
        """Move the whole input into ``buf``."""
        self._check_alive()
        if not isinstance(buf, Buffer):
            raise TypeError(f"buf must be a Buffer, got {type(buf).__name__}")
        buf.add_buffer(self.input)

    # -- enable / disable / suspend -----------------------------------------

    def enable(self, what: int) -> None:
        """Start reading and/or writing (``EV_READ``, ``EV_WRITE``).

        Enabling restarts that direction's timeout.
        """
        _check_direction(what)
        self._check_alive()
        self._enabled |= int(what)
        if what & _READ and not self._read_suspended:
            self._kind_start(_READ)
        if what & _WRITE and not self._write_suspended:
            self._kind_start(_WRITE)
        self._update_timers(restart=what)

    def disable(self, what: int) -> None:
        """Stop reading and/or writing; buffered bytes stay where they are."""
        _check_direction(what)
        self._check_alive()
        self._enabled &= ~int(what)
        self._kind_stop(what)
        self._update_timers()
        self._maybe_idle()

    def get_enabled(self) -> int:
        """The directions the user enabled (suspension does not show here)."""
        return EV(self._enabled)

    def _suspend(self, what: int, reason: int) -> None:
        if what & _READ:
            was = self._read_suspended
            self._read_suspended |= reason
            if not was:
                self._kind_stop(_READ)
        if what & _WRITE:
            was = self._write_suspended
            self._write_suspended |= reason
            if not was:
                self._kind_stop(_WRITE)
        self._update_timers()

    def _unsuspend(self, what: int, reason: int) -> None:
        if what & _READ and self._read_suspended & reason:
            self._read_suspended &= ~reason
            if not self._read_suspended and self._enabled & _READ:
                self._kind_start(_READ)
        if what & _WRITE and self._write_suspended & reason:
            self._write_suspended &= ~reason
            if not self._write_suspended and self._enabled & _WRITE:
                self._kind_start(_WRITE)
        self._update_timers()

    def _has_pending_work(self) -> bool:
        """Whether ``EventBase.dispatch`` should keep waiting for this one."""
        if self._freed or self._dead:
            return False
        if self._enabled & _READ and not self._eof:
            return True
        return bool(self._enabled & _WRITE) and (
            len(self.output) > 0 or self._kind_busy()
        )

    def _maybe_idle(self) -> None:
        """Let a running ``dispatch`` re-check once this has no work left
        (a poke per state change would cost a scan per message)."""
        if self.base._dispatch_wakeup is not None and not self._has_pending_work():
            self.base._poke()

    def _kind_busy(self) -> bool:
        """True while the kind has work of its own (connecting, lookup)."""
        return False

    def _timeout_armed(self) -> bool:
        """True while a read or write timeout is counting."""
        return any(
            timer is not None and timer.armed
            for timer in (self._read_timer, self._write_timer)
        )

    def _reading_wanted(self) -> bool:
        return bool(self._enabled & _READ) and not self._read_suspended

    def _writing_wanted(self) -> bool:
        return bool(self._enabled & _WRITE) and not self._write_suspended

    # -- watermarks ---------------------------------------------------------

    def setwatermark(self, what: int, low: int, high: int) -> None:
        """Set the low and high watermarks of ``what`` (bytes; 0 = none).

        Read low: the read callback runs only with at least that many
        bytes of input.  Read high: reading pauses while the input holds
        that many bytes and resumes by itself once it holds fewer.  Write
        low: the write callback runs once the output is at or below it.
        Write high: only consulted by a layer writing into this one.
        Changing marks never runs a callback by itself.
        """
        _check_direction(what)
        _size_arg(low, "low")
        _size_arg(high, "high")
        self._check_alive()
        if what & _WRITE:
            self._write_low, self._write_high = low, high
        if what & _READ:
            self._read_low, self._read_high = low, high
            if high:
                # Watch the input so draining it below the mark resumes
                # reading at once, whoever drains it.
                self.input._watcher = self._on_input_changed
                self._check_read_high()
            else:
                self.input._watcher = None
                self._unsuspend(_READ, SUSPEND_WM)

    def getwatermark(self, what: int) -> tuple:
        """Return ``(low, high)`` for exactly one of EV_READ or EV_WRITE."""
        _check_direction(what)
        if what == EV_READ:
            return self._read_low, self._read_high
        if what == EV_WRITE:
            return self._write_low, self._write_high
        raise ValueError("what must be exactly one of EV_READ or EV_WRITE")

    def _check_read_high(self) -> None:
        if self._read_high and len(self.input) >= self._read_high:
            if not self._read_suspended & SUSPEND_WM:
                self._suspend(_READ, SUSPEND_WM)
        elif self._read_suspended & SUSPEND_WM:
            self._unsuspend(_READ, SUSPEND_WM)

    def _on_input_changed(self, n_added: int, n_deleted: int) -> None:
        if n_deleted and not self._freed:
            self._check_read_high()

    def _on_output_changed(self, n_added: int, n_deleted: int) -> None:
        if self._freed:
            return
        if n_added:
            timer = self._write_timer
            if timer is not None and not timer.armed and self._writing_wanted():
                timer.arm(restart=True)
            self._kind_output_grew()
        if n_deleted:
            # Only the transport drains output (its front is frozen to the
            # user), so this is write progress.
            timer = self._write_timer
            if timer is not None:
                if len(self.output):
                    timer.last_activity = time.monotonic()
                else:
                    timer.disarm()
            upper = self._upper
            while upper is not None:
                # Bytes a filter handed down are moving: that is write
                # progress for every filter stacked above, too.
                if upper._write_timer is not None:
                    upper._write_timer.last_activity = time.monotonic()
                upper = upper._upper
            if self._waiting:
                self._notify()
            if not len(self.output):
                self._maybe_idle()

    def _read_budget(self) -> int:
        """How many bytes one read may take now (max single read, read-high,
        and the cap a filter on top may set)."""
        room = self._input_room()
        return self._max_single_read if room < 0 else min(room, self._max_single_read)

    def _input_room(self) -> int:
        """How many more bytes the input may take now; -1 for no limit."""
        room = -1
        if self._read_high:
            room = max(0, self._read_high - len(self.input))
        if self._read_cap:
            cap_room = max(0, self._read_cap - len(self.input))
            room = cap_room if room < 0 else min(room, cap_room)
        return room

    def _set_read_cap(self, cap: int) -> None:
        """Set by a filter on top: the most input to hold while that filter
        is not taking bytes (0: no cap)."""
        self._read_cap = cap

    def _check_read_limits(self) -> None:
        """Pause reading if the input reached the read high watermark or
        the cap of a filter on top (the filter lifts the latter)."""
        self._check_read_high()
        if self._read_cap and len(self.input) >= self._read_cap:
            self._suspend(_READ, SUSPEND_FILT_READ)

    # -- timeouts -----------------------------------------------------------

    def set_timeouts(
        self, read: Optional[float] = None, write: Optional[float] = None
    ) -> None:
        """Set the read and write timeouts in seconds; None or 0 clears one.

        A timeout counts only while its direction is enabled and not paused
        (and, for writing, while bytes wait to be sent); every successful
        read or write restarts it.  When it fires, that direction is
        disabled and the event callback gets ``READING|TIMEOUT`` or
        ``WRITING|TIMEOUT``.
        """
        read = _check_timeout(read, "read")
        write = _check_timeout(write, "write")
        self._check_alive()
        for attr, seconds, direction in (
            ("_read_timer", read, EV_READ),
            ("_write_timer", write, EV_WRITE),
        ):
            old = getattr(self, attr)
            if old is not None:
                old.disarm()
            timer = _DirectionTimer(self, direction, seconds) if seconds else None
            setattr(self, attr, timer)
        self._update_timers()

    def _timer_wanted(self, direction: int) -> bool:
        if self._dead:
            return False
        if direction == EV_READ:
            return self._reading_wanted()
        return self._writing_wanted() and len(self.output) > 0

    def _update_timers(self, restart: int = 0) -> None:
        for timer in (self._read_timer, self._write_timer):
            if timer is None:
                continue
            if self._timer_wanted(timer.direction) and not self._freed:
                timer.arm(restart=bool(restart & timer.direction))
            else:
                timer.disarm()

    def _on_timeout(self, direction: int) -> None:
        """A timeout expired.  Runs in the hub: the state changes now (so
        blocking callers see it even if the callback greenlet is busy) and
        the event callback is always deferred, never run inside the hub."""
        if self._freed or not self._timer_wanted(direction):
            return
        logger.debug("%r: %s timeout", self, "read" if direction == _READ else "write")
        self.disable(direction)
        if direction == _READ:
            self._read_timeouts += 1
            events = Event.READING | Event.TIMEOUT
        else:
            self._write_timeouts += 1
            events = Event.WRITING | Event.TIMEOUT
        self._report_event(events, options=_DEFER | _OWN_GREENLET)

    # -- events reported by kinds -------------------------------------------

    def _bytes_read(self) -> None:
        """A kind appended to input: restart the timer, check the read high
        watermark, run callbacks, wake blocking readers."""
        timer = self._read_timer
        if timer is not None:
            timer.last_activity = time.monotonic()
        held = len(self.input)
        if (self._read_high and held >= self._read_high) or (
            self._read_cap and held >= self._read_cap
        ):
            self._check_read_limits()
        self._trigger_read()
        if self._waiting:
            self._notify()

    def _report_event(
        self,
        events: int,
        error: Optional[BaseException] = None,
        options: int = 0,
        disable: bool = True,
    ) -> None:
        """Record an event for the blocking style and deliver it to eventcb
        (``options`` may ask for deferral).

        EOF and ERROR on a direction disable that direction first, as in
        libevent's socket code, unless ``disable`` is False (a pair's EOF
        from ``flush(..., FINISHED)`` leaves the partner's state alone).
        """
        if self._freed:
            return
        if events & Event.CONNECTED:
            self._connected = True
        if events & Event.EOF and events & Event.READING:
            self._eof = True
        if events & Event.ERROR:
            self._error = error
            self._error_events = events
        if disable and events & (Event.EOF | Event.ERROR):
            direction = 0
            if events & Event.READING:
                direction |= EV_READ
            if events & Event.WRITING:
                direction |= EV_WRITE
            if direction:
                self.disable(direction)
        if error is not None:
            logger.debug("%r: event %#x: %s", self, events, error)
        self._trigger_event(events, options)
        if self._waiting:
            self._notify()
        self._maybe_idle()

    def get_error(self) -> Optional[BaseException]:
        """The exception behind the last ERROR event, or None.

        For sockets this is the ``OSError`` (its ``errno`` is what libevent
        programs read with ``EVUTIL_SOCKET_ERROR()`` in the event callback).
        """
        return self._error

    # -- flush / trigger ----------------------------------------------------

    def flush(self, what: int, mode: int = FlushMode.FLUSH) -> int:
        """Ask the kind to push buffered data through now.

        Returns:
            1 if something was produced, 0 if not (sockets always 0: their
            writer already sends as fast as the peer reads).

        Raises:
            BufferEventError: there is nothing to flush to (an unlinked pair
                end, a filter whose underlying was freed).
        """
        _check_direction(what)
        if mode not in (FlushMode.NORMAL, FlushMode.FLUSH, FlushMode.FINISHED):
            raise ValueError(f"mode must be a FlushMode, got {mode!r}")
        self._check_alive()
        return self._kind_flush(what, FlushMode(mode))

    def trigger(self, what: int, options: int = 0) -> None:
        """Run the read and/or write callback as if data had moved.

        The watermark rule applies unless ``Trigger.IGNORE_WATERMARKS`` is
        given; ``Trigger.DEFER_CALLBACKS`` queues instead of calling now.
        Enabled directions are not consulted (as in libevent).
        """
        _check_direction(what)
        if not isinstance(options, int) or options & ~_ALL_TRIGGER_OPTIONS:
            raise ValueError(f"options must be Trigger flags, got {options!r}")
        self._check_alive()
        if what & _READ:
            self._trigger_read(options)
        if what & _WRITE:
            self._trigger_write(options)

    def trigger_event(self, events: int, options: int = 0) -> None:
        """Run the event callback with ``events`` (passed through unchanged)."""
        if not isinstance(events, int):
            raise TypeError(f"events must be Event flags, got {events!r}")
        if not isinstance(options, int) or options & ~_ALL_TRIGGER_OPTIONS:
            raise ValueError(f"options must be Trigger flags, got {options!r}")
        self._check_alive()
        self._trigger_event(events, options)

    # -- sizes --------------------------------------------------------------

    def set_max_single_read(self, n: int) -> None:
        """Cap one read from the transport at ``n`` bytes (0: the default)."""
        _size_arg(n, "n")
        self._check_alive()
        self._max_single_read = (
            MAX_SINGLE_READ_DEFAULT if n == 0 or n > EV_SSIZE_MAX else n
        )

    def set_max_single_write(self, n: int) -> None:
        """Cap one write to the transport at ``n`` bytes (0: the default)."""
        _size_arg(n, "n")
        self._check_alive()
        self._max_single_write = (
            MAX_SINGLE_WRITE_DEFAULT if n == 0 or n > EV_SSIZE_MAX else n
        )

    def get_max_single_read(self) -> int:
        """The current cap on one read, in bytes."""
        return self._max_single_read

    def get_max_single_write(self) -> int:
        """The current cap on one write, in bytes."""
        return self._max_single_write

    # -- misc ---------------------------------------------------------------

    def get_underlying(self) -> Optional[BufferEvent]:
        """The bufferevent this one is layered on, or None."""
        return None

    def fileno(self) -> int:
        """The file descriptor, or -1 when there is none."""
        return -1

    def get_options(self) -> Option:
        """The options this bufferevent was created with."""
        return Option(self._options)

    @property
    def connected(self) -> bool:
        """True once the transport is connected (CONNECTED was reported,
        or the bufferevent was made on a connected socket)."""
        return self._connected

    @property
    def freed(self) -> bool:
        """True once ``free()`` was called."""
        return self._freed

    def free(self) -> None:
        """Release the bufferevent at once; pending output is not sent.

        Clears the callbacks (nothing queued runs any more), stops I/O and,
        with CLOSE_ON_FREE, closes the transport.  Two kinds honour what
        was already promised: a filter freed with CLOSE_ON_FREE lets its
        underlying send what it was handed, and a pair end with a pending
        ``shutdown_write()`` hands its output and EOF to its partner.
        Greenlets blocked in the blocking-style methods wake with
        BufferEventError.  Freeing twice is harmless.
        """
        if self._freed:
            return
        self._freed = True
        self._readcb = self._writecb = self._eventcb = None
        upper = self._upper
        if upper is not None and not upper._freed:
            # Freed directly under a filter that still uses it.
            upper._under_freed()
        for timer in (self._read_timer, self._write_timer):
            if timer is not None:
                timer.disarm()
        self.base._unregister(self)
        logger.debug("%r: free", self)
        try:
            self._kind_free()
        finally:
            self._notify()
            # Break the cycles through our buffers' observers and the
            # timers, so a freed bufferevent (and whatever its callbacks
            # held) goes with its last reference rather than at the next
            # cyclic garbage collection.  Nothing can run them any more.
            self.input._watcher = self.output._watcher = None
            self._read_timer = self._write_timer = None

    def _drain_and_free(self, timeout: float) -> Optional[tuple]:
        """Send what is queued (bounded by ``timeout`` seconds), then free.

        Returns:
            None when everything went out, else ``(unsent bytes, the
            exception that ended the wait)`` for the caller to log.
        """
        try:
            self.drain(timeout=timeout)
            return None
        except (BufferEventError, TimeoutError) as exc:
            return len(self.output), exc
        finally:
            self.free()

    def _check_alive(self) -> None:
        if self._freed:
            raise BufferEventError(f"{type(self).__name__} has been freed")

    # -- hooks for kinds ----------------------------------------------------

    def _kind_start(self, what: int) -> None:
        """A direction became wanted (enabled and not suspended)."""

    def _kind_stop(self, what: int) -> None:
        """A direction stopped being wanted."""

    def _kind_output_grew(self) -> None:
        """Bytes were appended to output."""

    def _kind_flush(self, what: int, mode: FlushMode) -> int:
        return 0

    def _kind_free(self) -> None:
        """Stop I/O and release the transport (CLOSE_ON_FREE)."""

    def _kind_output_settled(self) -> bool:
        """True when everything taken from output reached the transport."""
        return True

    def _kind_io_greenlet(self, direction: int) -> Any:
        """The greenlet that moves bytes in ``direction`` (it must never
        block waiting for its own work), or None."""
        return None

    def _in_own_io_greenlet(self, direction: int) -> bool:
        """True when the calling greenlet is one that must run for bytes
        to move in ``direction`` (so it must not wait for them)."""
        return getcurrent() is self._kind_io_greenlet(direction)

    def shutdown_write(self) -> None:
        """Tell the peer no more data will come, once output has drained.

        A geventbev extension (libevent has no such call): a socket
        bufferevent shuts down its sending side (the peer reads EOF) after
        the last queued byte is sent; reading goes on.
        """
        raise NotImplementedError(f"{type(self).__name__} has no write shutdown")

    # -- blocking style -----------------------------------------------------

    def _notify(self) -> None:
        """Wake every greenlet waiting in a blocking-style call.

        Each waiter re-checks its own condition, so a wake-up that turns
        out not to concern it only costs it one more loop.
        """
        waiting = self._waiting
        if waiting:
            self._waiting = []
            run_callback = self.base.loop.run_callback
            for waiter in waiting:
                # Waiter.switch must run in the hub; it ignores a waiter
                # that already left (timed out), so nothing goes stale.
                run_callback(waiter.switch, None)

    def _wait_change(
        self, deadline: Optional[float], what: str, direction: int = _READ
    ) -> None:
        """Park until ``_notify``; TimeoutError once ``deadline`` passes.

        ``direction`` says which I/O greenlet would deliver what we wait for
        (the reader for data, the writer for drained output and connects);
        waiting inside that very greenlet could never end, so it is refused.
        """
        if self._in_own_io_greenlet(direction):
            # This greenlet is the one that would deliver what we wait for.
            raise BufferEventError(
                f"cannot wait for {what} inside a callback that runs in this "
                "bufferevent's own I/O greenlet: create it with "
                "DEFER_CALLBACKS, or block in another greenlet"
            )
        waiter = Waiter(self.base.hub)
        timer = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            timer = self.base.loop.timer(remaining)
            timer.start(waiter.switch, _TIMED_OUT)
        timeouts_before = self._read_timeouts, self._write_timeouts
        self._waiting.append(waiter)
        try:
            result = waiter.get()
        finally:
            if timer is not None:
                timer.close()
            try:
                self._waiting.remove(waiter)
            except ValueError:
                pass  # _notify already took it
        if result is _TIMED_OUT:
            raise TimeoutError(f"timed out waiting for {what}")
        # A timeout set with set_timeouts fired meanwhile: it disabled the
        # direction, and it is an answer for the blocking caller too.
        if direction == _READ and self._read_timeouts != timeouts_before[0]:
            raise TimeoutError(f"read timeout while waiting for {what}")
        if direction == _WRITE and self._write_timeouts != timeouts_before[1]:
            raise TimeoutError(f"write timeout while waiting for {what}")

    def _raise_if_failed(self, what: str) -> None:
        if self._freed:
            raise BufferEventError(
                f"{type(self).__name__} was freed while waiting for {what}"
            )
        if self._error_events:
            raise BufferEventError(
                f"{what} failed: {self._error or 'error event'}",
                events=self._error_events,
            ) from self._error
        stranded = self._stranded_reason()
        if stranded is not None:
            raise BufferEventError(f"{what} can never complete: {stranded}")

    def _stranded_reason(self) -> Optional[str]:
        """Why nothing can ever move again without an error event (an
        unlinked pair end), or None."""
        return self._stranded

    def _ensure_reading(self) -> None:
        self._check_alive()
        if not self._enabled & _READ and not self._eof:
            self.enable(EV_READ)

    @staticmethod
    def _deadline(timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be seconds or None, got {timeout!r}")
        if timeout != timeout:
            raise ValueError("timeout must be a number of seconds, got nan")
        if timeout == float("inf"):
            return None
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        return time.monotonic() + timeout

    def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Block until the connection is established.

        Raises:
            BufferEventError: connecting failed (cause: the OSError) or the
                bufferevent was freed.
            TimeoutError: not connected within ``timeout`` seconds.
        """
        deadline = self._deadline(timeout)
        self._check_alive()
        while not self._connected:
            self._raise_if_failed(f"connect{self._target_desc}")
            if not self._kind_busy():
                raise BufferEventError(
                    "not connected and no connect in progress: call connect() first"
                )
            self._wait_change(deadline, "connect", _WRITE)
            self._check_alive()

    def read_some(self, max_bytes: int = -1, timeout: Optional[float] = None) -> bytes:
        """Block until input is available; return up to ``max_bytes`` of it.

        Returns:
            At least one byte, or b"" at EOF.  ``max_bytes`` of -1 takes
            everything buffered.

        Raises:
            BufferEventError: an ERROR event with no input left.
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an int, got {max_bytes!r}")
        if max_bytes == 0:
            return b""
        if max_bytes < -1:
            raise ValueError(f"max_bytes must be -1 or >= 0, got {max_bytes}")
        deadline = self._deadline(timeout) if timeout is not None else None
        inp = self.input
        if self._freed or not self._enabled & _READ:
            self._ensure_reading()
        while not inp._len:
            # An error beats EOF, and EOF beats a partner that left.
            if self._freed or self._error_events or not self._eof:
                self._raise_if_failed("read")
            if self._eof:
                return b""
            self._ensure_reading()
            self._wait_change(deadline, "data")
        take = inp.remove if inp._front_frozen else inp._remove_internal
        return take(inp._len if max_bytes < 0 else max_bytes)

    def read_exactly(self, n: int, timeout: Optional[float] = None) -> bytes:
        """Block until ``n`` bytes arrived, then remove and return them.

        Raises:
            IncompleteReadError: EOF came first (``.partial`` holds what
                arrived).
            BufferEventError: an ERROR event or free came first; the bytes
                that arrived stay in the input.
            TimeoutError: not enough bytes within ``timeout`` seconds; the
                bytes that arrived stay in the input.
        """
        _size_arg(n, "n")
        deadline = self._deadline(timeout)
        self._ensure_reading()
        with _Collected(self) as collected:
            while collected.size + len(self.input) < n:
                if self._eof:
                    rest = self.input.remove(len(self.input))
                    raise IncompleteReadError(collected.join(rest), n)
                self._raise_if_failed("read_exactly")
                if collected.take_if_full():
                    continue
                self._ensure_reading()
                self._wait_change(deadline, f"{n} bytes")
            return collected.join(self.input.remove(n - collected.size))

    def read_line(
        self,
        eol: EOL = EOL.CRLF,
        limit: int = 65536,
        timeout: Optional[float] = None,
    ) -> Optional[bytes]:
        """Block until a whole line arrived; return it without its EOL.

        Returns:
            The line, the unterminated rest at EOF, or None at EOF with
            nothing left.

        Raises:
            LineTooLongError: no EOL within ``limit`` bytes (or within the
                read high watermark, which stops the input growing); the
                bytes stay in the input.
            BufferEventError: an ERROR event with no complete line.
            TimeoutError: no line within ``timeout`` seconds.
        """
        eol = EOL(eol)
        _size_arg(limit, "limit")
        deadline = self._deadline(timeout)
        self._ensure_reading()
        scanned = 0
        while True:
            pos, eol_len = self.input.search_eol(max(scanned - 1, 0), eol)
            if pos >= 0:
                if pos > limit:
                    raise LineTooLongError(f"line longer than limit={limit} bytes")
                line = self.input.remove(pos)
                self.input.drain(eol_len)
                return line
            scanned = len(self.input)
            if scanned > limit:
                raise LineTooLongError(f"no end of line within limit={limit} bytes")
            if self._read_high and scanned >= self._read_high:
                raise LineTooLongError(
                    f"no end of line within the read high watermark "
                    f"({self._read_high} bytes)"
                )
            if self._eof:
                return self.input.remove(scanned) if scanned else None
            self._raise_if_failed("read_line")
            self._ensure_reading()
            self._wait_change(deadline, "a line")

    def read_until_eof(
        self, limit: Optional[int] = None, timeout: Optional[float] = None
    ) -> bytes:
        """Block until EOF; return everything received.

        Raises:
            BufferEventError: more than ``limit`` bytes arrived (they stay in
                the input), or an ERROR event came before EOF.
            TimeoutError: no EOF within ``timeout`` seconds.
        """
        if limit is not None:
            _size_arg(limit, "limit")
        deadline = self._deadline(timeout)
        self._ensure_reading()
        with _Collected(self) as collected:
            while not self._eof:
                if limit is not None and collected.size + len(self.input) > limit:
                    raise BufferEventError(f"more than limit={limit} bytes before EOF")
                self._raise_if_failed("read_until_eof")
                if collected.take_if_full():
                    continue
                self._ensure_reading()
                self._wait_change(deadline, "EOF")
            if limit is not None and collected.size + len(self.input) > limit:
                raise BufferEventError(f"more than limit={limit} bytes before EOF")
            return collected.join(self.input.remove(len(self.input)))

    def _wait_output_below(self, limit: int, timeout: Optional[float] = None) -> None:
        """Block until the output holds fewer than ``limit`` bytes (enables
        EV_WRITE if needed); the room a socket-style ``send`` waits for."""
        deadline = self._deadline(timeout)
        self._check_alive()
        if len(self.output) and not self._enabled & _WRITE:
            self.enable(EV_WRITE)
        while len(self.output) >= limit:
            self._raise_if_failed("send")
            self._wait_change(deadline, "room in the output", _WRITE)
        self._raise_if_failed("send")

    def write_all(self, data: bytes, timeout: Optional[float] = None) -> None:
        """Queue ``data``, then block until output is at or below write-low.

        Enables EV_WRITE if it is off.

        Raises:
            BufferEventError: an ERROR event or free came first.
            TimeoutError: output still above write-low after ``timeout``.
        """
        deadline = self._deadline(timeout) if timeout is not None else None
        self.write(data)
        if not self._enabled & _WRITE:
            self.enable(EV_WRITE)
        out = self.output
        while out._len > self._write_low:
            self._raise_if_failed("write_all")
            self._wait_change(deadline, "output to drain", _WRITE)
        if self._error_events or self._freed:
            self._raise_if_failed("write_all")

    def drain(self, timeout: Optional[float] = None) -> None:
        """Block until output is empty and handed to the transport.

        Raises:
            BufferEventError: an ERROR event or free came first.
            TimeoutError: output not drained within ``timeout`` seconds.
        """
        deadline = self._deadline(timeout)
        self._check_alive()
        if len(self.output) and not self._enabled & _WRITE:
            self.enable(EV_WRITE)
        while len(self.output) or not self._kind_output_settled():
            self._raise_if_failed("drain")
            self._wait_change(deadline, "output to drain", _WRITE)
        self._raise_if_failed("drain")

    def makefile(
        self, mode: str = "rb", buffering: int = -1, timeout: Optional[float] = None
    ) -> Any:
        """A file object reading and/or writing through this bufferevent.

        ``mode`` is one of "r", "w", "rw" (or "rwb"), with "b" for bytes;
        without "b" the file is text (UTF-8).  ``timeout`` bounds each
        blocking read or write (TimeoutError; for socket-style errors use
        ``BufferEventSocket(bev).makefile()``).  Closing the file does not
        free the bufferevent.
        """
        if (
            not isinstance(mode, str)
            or not set(mode) <= set("rwb")
            or not ("r" in mode or "w" in mode)
        ):
            raise ValueError(f"mode must combine 'r', 'w' and 'b', got {mode!r}")
        raw = _BufferEventRawIO(
            self, reading="r" in mode, writing="w" in mode, timeout=timeout
        )
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered files must be binary (mode with 'b')")
            return raw
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        if "r" in mode and "w" in mode:
            buffered: Any = io.BufferedRWPair(raw, raw, size)
        elif "r" in mode:
            buffered = io.BufferedReader(raw, size)
        else:
            buffered = io.BufferedWriter(raw, size)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(
            buffered, encoding="utf-8", line_buffering=buffering == 1
        )


class _Collected:
    """Bytes a blocking read took out of a full input so more could arrive.

    With a read high watermark below what a read needs, the input can never
    hold it all; the read moves the full input here and lets reading go on.
    If the read then gives up (timeout, error, free), the bytes go back to
    the front of the input: nothing accepted is lost.
    """

    __slots__ = ("_bev", "_pieces", "size")

    def __init__(self, bev: BufferEvent) -> None:
        self._bev = bev
        self._pieces: list = []
        self.size = 0

    def take_if_full(self) -> bool:
        """Move the input here if it is at the read high watermark."""
        inp = self._bev.input
        high = self._bev._read_high
        if not high or len(inp) < high:
            return False
        piece = inp.remove(len(inp))
        self._pieces.append(piece)
        self.size += len(piece)
        return True

    def join(self, tail: bytes) -> bytes:
        """Everything collected plus ``tail``; the collection is handed over."""
        data = b"".join(self._pieces) + tail
        self._pieces = []
        self.size = 0
        return data

    def __enter__(self) -> _Collected:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self._pieces and not self._bev._freed:
            self._bev.input._prepend_internal(b"".join(self._pieces))
        self._pieces = []


class _BufferEventRawIO(io.RawIOBase):
    """The raw layer under ``BufferEvent.makefile``: blocking reads/writes."""

    def __init__(
        self, bev: BufferEvent, reading: bool, writing: bool, timeout: Optional[float]
    ) -> None:
        super().__init__()
        self._bev = bev
        self._timeout = timeout
        self._reading = reading
        self._writing = writing

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, b: Any) -> int:
        if not self._reading:
            raise io.UnsupportedOperation("file not open for reading")
        data = self._bev.read_some(len(b), timeout=self._timeout)
        b[: len(data)] = data
        return len(data)

    def write(self, b: Any) -> int:
        if not self._writing:
            raise io.UnsupportedOperation("file not open for writing")
        data = bytes(b)
        self._bev.write_all(data, timeout=self._timeout)
        return len(data)


def _as_event(events: int) -> int:
    """Show event bits as an Event flag set when they are ordinary bits."""
    if isinstance(events, Event) or events < 0:
        return events
    try:
        return Event(events)
    except ValueError:
        return events
