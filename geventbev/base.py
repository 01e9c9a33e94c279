"""EventBase: the gevent hub seen as libevent's ``event_base``.

gevent already owns the event loop, so an EventBase does not run one of its
own.  It adds the two things libevent programs expect from a base:

* an ordered queue of deferred callbacks.  Everything queued with
  ``run_deferred`` runs from the hub, in the order it was queued, never
  nested inside the code that queued it.  One pass runs only what was
  queued before the pass began; whatever those callbacks queue waits for the
  next pass, so a chain of callbacks that keep queueing each other cannot
  starve other greenlets (libevent caps a pass the same way).
* ``dispatch()``, which blocks the calling greenlet while the base has work
  (an enabled bufferevent or listener, or a deferred callback), until
  ``loopexit`` or ``loopbreak``.  Other greenlets keep running meanwhile.

Bufferevents and listeners register with their base; ``dispatch`` asks
each whether it still has I/O pending, whenever one of them pokes it.
"""

from __future__ import annotations

import collections
import logging
import sys
import weakref
from typing import Any, Callable

import gevent
from gevent.event import Event as _GeventEvent

logger = logging.getLogger(__name__)

__all__ = ["EventBase", "get_default_base"]


class EventBase:
    """The gevent hub of the current thread, with a deferred-callback queue.

    Attributes:
        hub: the gevent hub this base runs on.
        loop: that hub's event loop.
    """

    def __init__(self) -> None:
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self._deferred: collections.deque = collections.deque()
        self._runner: Any = None
        self._runner_parked = False
        self._dispatch_waits_on_deferred = False
        # Weak: an object nobody references any more has no work to wait for.
        self._active: weakref.WeakSet = weakref.WeakSet()
        self._got_exit = False
        self._got_break = False
        self._dispatch_wakeup: _GeventEvent | None = None
        self._exit_timers: set = set()

    def __repr__(self) -> str:
        return f"<EventBase active={len(self._active)} deferred={len(self._deferred)}>"

    # -- deferred callbacks -------------------------------------------------

    def run_deferred(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` to run soon from the base's callback greenlet.

        Deferred callbacks run in the order they were queued, in a greenlet
        of their own (never inside the hub, so they may block).  An
        exception raised by one is reported through the hub's error
        handler and does not stop the others.  One greenlet runs them all,
        as one loop does in libevent: a callback that blocks delays the
        others (and the deferred callbacks of every bufferevent on this
        base) until it returns.
        """
        self._deferred.append((fn, args))
        if self._runner_parked:
            self._runner_parked = False
            self.loop.run_callback(self._resume_runner)
        elif self._runner is None or self._runner.dead:
            self._runner = gevent.spawn(self._run_deferred_forever)

    def _resume_runner(self) -> None:
        runner = self._runner
        if runner is not None and not runner.dead:
            runner.switch()

    def _run_deferred_forever(self) -> None:
        queue = self._deferred
        while True:
            if not queue:
                self._runner_parked = True
                if self._dispatch_waits_on_deferred:
                    self._poke()
                self.hub.switch()
                continue
            # Only what was queued before this pass started runs now.
            for _ in range(len(queue)):
                fn, args = queue.popleft()
                try:
                    fn(*args)
                except Exception:
                    self.hub.handle_error(fn, *sys.exc_info())
            if queue:
                gevent.sleep(0)

    # -- dispatch -----------------------------------------------------------

    def _register(self, obj: object) -> None:
        """Track ``obj``, which has ``_has_pending_work()``, for ``dispatch``."""
        self._active.add(obj)

    def _unregister(self, obj: object) -> None:
        """Stop tracking ``obj`` (it was freed)."""
        self._active.discard(obj)
        self._poke()

    def _poke(self) -> None:
        """Something may have gone idle: let ``dispatch`` look again."""
        if self._dispatch_wakeup is not None:
            self._dispatch_wakeup.set()

    def _has_work(self) -> bool:
        self._dispatch_waits_on_deferred = False
        if self._exit_timers or any(obj._has_pending_work() for obj in self._active):
            return True
        if self._deferred:
            # Only queued callbacks keep dispatch waiting: the callback
            # greenlet pokes it once the queue runs dry.
            self._dispatch_waits_on_deferred = True
            return True
        return False

    def dispatch(self) -> int:
        """Block the calling greenlet until the base has nothing left to do.

        Returns when ``loopexit`` fires, ``loopbreak`` is called, or no
        enabled bufferevent, listener or deferred callback remains.  Other
        greenlets run meanwhile.  Must not be called from the hub itself.

        Returns:
            0 when it stopped because of loopexit or loopbreak, 1 when it
            stopped because nothing was pending (libevent's convention).
        """
        if gevent.getcurrent() is self.hub:
            raise RuntimeError("dispatch() cannot block the gevent hub itself")
        if self._dispatch_wakeup is not None:
            raise RuntimeError("dispatch() is already running on this base")
        self._got_exit = False
        self._got_break = False
        wakeup = self._dispatch_wakeup = _GeventEvent()
        try:
            while not (self._got_exit or self._got_break):
                if not self._has_work():
                    return 1
                wakeup.clear()
                wakeup.wait()
            return 0
        finally:
            self._dispatch_wakeup = None

    def loopexit(self, delay: float | None = 0.0) -> None:
        """Make ``dispatch`` return after ``delay`` seconds (0: at once)."""
        if delay is None:
            delay = 0.0
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be seconds as a float, got {delay!r}")
        if not 0 <= delay < float("inf"):  # also refuses nan
            raise ValueError(f"delay must be >= 0 seconds and finite, got {delay!r}")
        # Each call is its own timer and the first to expire wins, as in
        # libevent: a later, longer loopexit never postpones an earlier one.
        timer = self.loop.timer(delay)
        self._exit_timers.add(timer)
        timer.start(self._on_exit_timer, timer)

    def _on_exit_timer(self, timer: Any) -> None:
        timer.close()
        self._exit_timers.discard(timer)
        self._got_exit = True
        if self._dispatch_wakeup is not None:
            self._dispatch_wakeup.set()

    def loopbreak(self) -> None:
        """Make ``dispatch`` return as soon as the calling greenlet yields."""
        self._got_break = True
        if self._dispatch_wakeup is not None:
            self._dispatch_wakeup.set()

    def got_exit(self) -> bool:
        """True if the last ``dispatch`` ended because of ``loopexit``."""
        return self._got_exit

    def got_break(self) -> bool:
        """True if the last ``dispatch`` ended because of ``loopbreak``."""
        return self._got_break

    def free(self) -> None:
        """Forget the pending deferred callbacks; the hub itself lives on."""
        self._deferred.clear()
        self._active.clear()
        for timer in self._exit_timers:
            timer.close()
        self._exit_timers.clear()


_default_bases: dict = {}


def get_default_base() -> EventBase:
    """The EventBase of the current thread's gevent hub, created on first use."""
    hub = gevent.get_hub()
    base = _default_bases.get(id(hub))
    if base is None or base.hub is not hub:
        base = _default_bases[id(hub)] = EventBase()
    return base
