"""Regression tests for faults a code review found; each once failed."""

from __future__ import annotations

import logging
import socket
import time

import gevent
import gevent.socket
import pytest

import geventbev
from geventbev import EV_READ, EV_WRITE, BufferEventError, Event, EventBase, Option


def test_a_name_the_resolver_would_reject_is_refused_at_the_call():
    """A label over 63 characters can never resolve: say so at once instead
    of leaving the lookup to fail (it used to leave the bufferevent hung)."""
    bev = geventbev.socket_new(None, Option.CLOSE_ON_FREE)
    with pytest.raises(ValueError, match="not a valid host name"):
        bev.connect_hostname("a" * 64 + ".example", 80)
    bev.free()


def test_any_lookup_failure_ends_the_connect(monkeypatch):
    """Not only gaierror: whatever the resolver raises becomes ERROR."""

    def broken_resolver(*args, **kwargs):
        raise OSError("resolver exploded")

    monkeypatch.setattr(gevent.socket, "getaddrinfo", broken_resolver)
    bev = geventbev.socket_new(None, Option.CLOSE_ON_FREE)
    events: list = []
    bev.setcb(None, None, lambda b, e, c: events.append(e))
    bev.connect_hostname("example.invalid", 80)
    with pytest.raises(BufferEventError, match="resolver exploded"):
        bev.wait_connected(timeout=5)
    assert events == [Event.ERROR]
    assert bev.get_dns_error() != 0
    bev.free()


def test_connect_refuses_a_host_name_and_points_to_connect_hostname():
    bev = geventbev.socket_new(None)
    with pytest.raises(ValueError, match="connect_hostname"):
        bev.connect(("localhost", 80))
    assert bev.fileno() == -1
    bev.free()


def test_high_level_connect_still_takes_host_names():
    server = geventbev.serve(("127.0.0.1", 0), lambda bev: bev.write_all(b"hi"))
    bev = geventbev.connect(("localhost", server.address[1]), timeout=5)
    assert bev.read_exactly(2, timeout=5) == b"hi"
    bev.free()
    server.stop(timeout=1)


def test_a_connected_callback_may_block_for_the_first_bytes():
    """The reader is woken before CONNECTED runs, so a CONNECTED callback
    (in the writer greenlet) can wait for input."""
    server = geventbev.serve(("127.0.0.1", 0), lambda bev: bev.write_all(b"hello"))
    got: list = []

    def on_event(bev, events, ctx):
        if events & Event.CONNECTED:
            got.append(bev.read_exactly(5, timeout=2))

    bev = geventbev.socket_new(None, Option.CLOSE_ON_FREE)
    bev.setcb(None, None, on_event)
    bev.enable(EV_READ | EV_WRITE)
    bev.connect(server.address)
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert got == [b"hello"]
    bev.free()
    server.stop(timeout=1)


def test_dispatch_returns_once_a_write_shutdown_is_done():
    a, b = socket.socketpair()
    base = EventBase()
    bev = geventbev.socket_new(a, Option.CLOSE_ON_FREE, base=base)
    bev.write(b"x" * 10)
    bev.shutdown_write()
    watchdog = gevent.spawn_later(5.0, base.loopbreak)  # not counted as work
    assert base.dispatch() == 1  # nothing left (loopbreak would give 0)
    watchdog.kill()
    b.settimeout(1)
    assert b.recv(100) == b"x" * 10
    assert b.recv(100) == b""
    bev.free()
    b.close()


def test_dispatch_returns_when_a_listener_dies(caplog):
    base = EventBase()
    listener = geventbev.Listener(lambda *a: None, ("127.0.0.1", 0), base=base)
    gevent.sleep(0.05)
    with caplog.at_level(logging.CRITICAL, logger="geventbev.listener"):
        listener._sock.shutdown(socket.SHUT_RDWR)  # accept() now fails: EINVAL
        watchdog = gevent.spawn_later(5.0, base.loopbreak)
        assert base.dispatch() == 1
        watchdog.kill()
    listener.free()
