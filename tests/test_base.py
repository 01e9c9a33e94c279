"""EventBase: the deferred-callback queue and dispatch/loopexit/loopbreak."""

from __future__ import annotations

import gevent
import gevent.event
import pytest

from geventbev import EV_READ, EventBase, get_default_base, socket_new


def test_default_base_is_one_per_hub():
    assert get_default_base() is get_default_base()
    assert get_default_base().hub is gevent.get_hub()


def test_deferred_callbacks_run_in_order_and_later():
    base = EventBase()
    seen: list = []
    for i in range(5):
        base.run_deferred(seen.append, i)
    assert seen == []  # never inside the caller
    gevent.sleep(0.01)
    assert seen == [0, 1, 2, 3, 4]


def test_callbacks_queued_by_a_callback_wait_for_the_next_pass():
    """A chain of callbacks that keep queueing each other cannot starve
    other greenlets: each pass runs only what was queued before it began."""
    base = EventBase()
    ticks: list = []
    chain: list = []

    def step(n: int) -> None:
        chain.append(n)
        if n < 200:
            base.run_deferred(step, n + 1)

    def ticker() -> None:
        for _ in range(50):
            ticks.append(len(chain))
            gevent.sleep(0)

    glet = gevent.spawn(ticker)
    base.run_deferred(step, 0)
    glet.join(timeout=5)
    gevent.sleep(0.05)
    assert chain == list(range(201))
    # The ticker ran while the chain was still going, many times.
    assert len([t for t in ticks if 0 < t < 201]) > 10


def test_deferred_callbacks_run_outside_the_hub_and_may_block():
    base = EventBase()
    result = gevent.event.AsyncResult()

    def blocking() -> None:
        gevent.sleep(0.01)  # would raise inside the hub
        result.set(gevent.getcurrent() is not base.hub)

    base.run_deferred(blocking)
    assert result.get(timeout=2) is True


def test_a_failing_deferred_callback_is_reported_and_the_rest_run(hub_errors):
    base = EventBase()
    seen: list = []

    def boom() -> None:
        raise RuntimeError("callback failed")

    base.run_deferred(seen.append, 1)
    base.run_deferred(boom)
    base.run_deferred(seen.append, 2)
    gevent.sleep(0.01)
    assert seen == [1, 2]
    assert [type(exc) for _, exc in hub_errors] == [RuntimeError]
    hub_errors.clear()


def test_dispatch_returns_1_when_nothing_is_pending():
    base = EventBase()
    assert base.dispatch() == 1
    assert not base.got_exit() and not base.got_break()


def test_dispatch_runs_pending_deferred_callbacks_first():
    base = EventBase()
    seen: list = []
    base.run_deferred(seen.append, "ran")
    assert base.dispatch() == 1
    assert seen == ["ran"]


def test_dispatch_waits_for_an_enabled_bufferevent_until_loopexit():
    base = EventBase()
    bev = socket_new(None, base=base)
    bev.enable(EV_READ)  # enabled, never connected: work without end
    base.loopexit(0.05)
    started = gevent.get_hub().loop.now()
    assert base.dispatch() == 0
    assert base.got_exit() and not base.got_break()
    assert gevent.get_hub().loop.now() - started >= 0.04
    bev.free()


def test_loopbreak_from_another_greenlet_stops_dispatch():
    base = EventBase()
    bev = socket_new(None, base=base)
    bev.enable(EV_READ)
    gevent.spawn_later(0.02, base.loopbreak)
    assert base.dispatch() == 0
    assert base.got_break() and not base.got_exit()
    bev.free()


def test_freeing_the_last_bufferevent_ends_dispatch():
    base = EventBase()
    bev = socket_new(None, base=base)
    bev.enable(EV_READ)
    gevent.spawn_later(0.02, bev.free)
    assert base.dispatch() == 1


def test_dispatch_from_the_hub_is_refused():
    base = EventBase()
    result = gevent.event.AsyncResult()

    def in_hub() -> None:
        try:
            base.dispatch()
        except RuntimeError as exc:
            result.set(str(exc))

    base.loop.run_callback(in_hub)
    assert "hub" in result.get(timeout=2)


def test_loopexit_rejects_a_negative_delay():
    with pytest.raises(ValueError, match="delay"):
        EventBase().loopexit(-1)
