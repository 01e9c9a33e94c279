"""Fixtures shared by the whole test suite.

Every test runs under three autouse guards:

* a watchdog: a ``gevent.Timeout`` that interrupts a test blocked in the
  hub for longer than ``TEST_DEADLINE`` seconds, so a hang fails one test
  instead of stalling the run;
* ``hub_errors``: the hub's ``handle_error`` is wrapped so every exception
  a callback or greenlet lets escape is recorded.  Such an exception would
  otherwise only be printed, and the test would pass.  A test that provokes
  one on purpose asserts on the list and then clears it;
* leftover cleanup: bufferevents and listeners the test did not free are
  freed before the hub errors are checked, so one test's connections do
  not leak callbacks into the next.

The connection fixtures here use AF_UNIX socketpairs only; tests that need
real loopback TCP live under ``tests/loopback/``.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator

import gevent
import gevent.socket
import pytest

from geventbev import SocketBufferEvent, get_default_base, socket_new
from geventbev.constants import EV_READ, EV_WRITE, Option

#: Seconds a single test may stay blocked before the watchdog fails it.
TEST_DEADLINE = 30.0


# -- guards ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    timeout = gevent.Timeout(TEST_DEADLINE)
    timeout.start()
    try:
        yield
    finally:
        timeout.close()


@pytest.fixture(autouse=True)
def hub_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Exceptions the hub was asked to report during the test.

    Each entry is ``(context, exception)``.  The test fails at teardown if
    the list is not empty; clear it after asserting on expected errors.
    """
    hub = gevent.get_hub()
    original = hub.handle_error
    errors: list = []

    def recording_handle_error(
        context: Any, exc_type: Any, value: Any, tb: Any
    ) -> None:
        errors.append((context, value if value is not None else exc_type))
        original(context, exc_type, value, tb)

    monkeypatch.setattr(hub, "handle_error", recording_handle_error)
    yield errors
    if errors:
        details = "; ".join(f"{exc!r} from {ctx!r}" for ctx, exc in errors)
        pytest.fail(f"the hub reported {len(errors)} error(s): {details}")


@pytest.fixture(autouse=True)
def _free_leftovers(hub_errors: list) -> Iterator[None]:
    # Depends on hub_errors so that this teardown runs first: whatever
    # freeing a leftover bufferevent reports is still checked.
    yield
    base = get_default_base()
    # The base tracks every live bufferevent and listener (private, but
    # it is the one complete list).
    for obj in list(base._active):
        obj.free()
    gevent.sleep(0)


# -- running the hub -----------------------------------------------------------


def _run_until(predicate: Callable[[], Any], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(0.001)
    return True


@pytest.fixture
def run_until() -> Callable[..., bool]:
    """``run_until(predicate, timeout=2.0) -> bool``.

    Lets the hub run until ``predicate()`` is true (True) or ``timeout``
    seconds have passed (False); use it as ``assert run_until(...)``.
    """
    return _run_until


# -- recording callbacks -----------------------------------------------------


class CallbackRecorder:
    """Installs all three callbacks on a bufferevent and logs each call.

    Attributes:
        calls: ``("read", len(input))``, ``("write", len(output))`` and
            ``("event", int(events))`` in the order the callbacks ran.
        received: what the read callback removed (with ``drain=True``).
    """

    def __init__(self, bev: Any, drain: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.received = bytearray()
        self._drain = drain
        bev.setcb(self._on_read, self._on_write, self._on_event)

    def _on_read(self, bev: Any, ctx: Any) -> None:
        self.calls.append(("read", len(bev.input)))
        if self._drain:
            self.received += bev.read(len(bev.input))

    def _on_write(self, bev: Any, ctx: Any) -> None:
        self.calls.append(("write", len(bev.output)))

    def _on_event(self, bev: Any, events: int, ctx: Any) -> None:
        self.calls.append(("event", int(events)))

    def _of(self, kind: str) -> list[int]:
        return [value for name, value in self.calls if name == kind]

    @property
    def reads(self) -> list[int]:
        """Input length seen by each read callback."""
        return self._of("read")

    @property
    def writes(self) -> list[int]:
        """Output length seen by each write callback."""
        return self._of("write")

    @property
    def events(self) -> list[int]:
        """The events each event callback received."""
        return self._of("event")


@pytest.fixture
def record() -> type[CallbackRecorder]:
    """``record(bev, drain=False) -> CallbackRecorder``."""
    return CallbackRecorder


# -- connections ---------------------------------------------------------------


class _Sockets:
    """Closes the raw sockets a fixture handed out, at teardown."""

    def __init__(self) -> None:
        self._socks: list = []

    def pair(self) -> tuple:
        # gevent sockets, so that a test blocking on the raw peer yields to
        # the hub instead of freezing the whole process.
        a, b = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socks += [a, b]
        return a, b

    def add(self, sock: Any) -> Any:
        """Close ``sock`` at teardown too."""
        self._socks.append(sock)
        return sock

    def close_all(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture
def raw_sockets() -> Iterator[_Sockets]:
    """``.pair()`` makes a connected AF_UNIX gevent socketpair; every socket
    it made, or was given with ``.add(sock)``, is closed at teardown."""
    sockets = _Sockets()
    yield sockets
    sockets.close_all()


@pytest.fixture
def make_bev_pair(
    raw_sockets: _Sockets,
) -> Callable[..., tuple[SocketBufferEvent, SocketBufferEvent]]:
    """``make_bev_pair(options=0)``: two socket bufferevents on the two ends
    of a connected AF_UNIX socketpair, each with ``CLOSE_ON_FREE | options``."""

    def make(options: int = 0) -> tuple[SocketBufferEvent, SocketBufferEvent]:
        a, b = raw_sockets.pair()
        opts = Option.CLOSE_ON_FREE | options
        return socket_new(a, opts), socket_new(b, opts)

    return make


@pytest.fixture
def bev_pair(make_bev_pair: Callable[..., tuple]) -> tuple:
    """Two connected socket bufferevents over an AF_UNIX socketpair."""
    return make_bev_pair()


@pytest.fixture
def make_bev_with_peer(
    raw_sockets: _Sockets,
) -> Callable[..., tuple[SocketBufferEvent, Any]]:
    """``make_bev_with_peer(options=0)``: a socket bufferevent and the raw
    gevent socket at the other end of its socketpair (the test decides what
    the peer sends, and whether it reads at all).  The peer's blocking calls
    time out after 5 seconds."""

    def make(options: int = 0) -> tuple[SocketBufferEvent, Any]:
        a, b = raw_sockets.pair()
        b.settimeout(5.0)
        return socket_new(a, Option.CLOSE_ON_FREE | options), b

    return make


@pytest.fixture
def bev_with_peer(make_bev_with_peer: Callable[..., tuple]) -> tuple:
    """A socket bufferevent and the raw socket at its other end."""
    return make_bev_with_peer()


def _a15_timeouts(bev1: Any, bev2: Any) -> list:
    """libevent's A15 timeout scenario on two connected bufferevents.

    bev1: read timeout 0.15 s, write timeout 0.1 s, 7 bytes queued, reading
    and writing enabled.  bev2: reading disabled, read 0.1 s / write 0.2 s,
    writing enabled with nothing queued.  Runs 0.35 s and returns every
    callback as ``(name, what, seconds since the start)``, where name is
    "bev1"/"bev2" and what is "read", "write" or the event flags.
    """
    log: list = []
    start = time.monotonic()

    def eventcb(bev: Any, what: int, ctx: Any) -> None:
        log.append((ctx, int(what), time.monotonic() - start))

    def datacb(name: str) -> Any:
        return lambda bev, ctx: log.append((ctx, name, time.monotonic() - start))

    bev1.setcb(datacb("read"), datacb("write"), eventcb, "bev1")
    bev2.setcb(datacb("read"), datacb("write"), eventcb, "bev2")
    bev1.set_timeouts(read=0.15, write=0.1)
    bev1.write(b"ABCDEFG")
    bev1.enable(EV_READ | EV_WRITE)
    bev2.disable(EV_READ)
    bev2.set_timeouts(read=0.1, write=0.2)
    bev2.enable(EV_WRITE)
    gevent.sleep(0.35)
    return log


@pytest.fixture
def a15_timeouts() -> Callable[[Any, Any], list]:
    """``a15_timeouts(bev1, bev2) -> log``: libevent's A15 scenario, shared
    by the pair and filter variants."""
    return _a15_timeouts
