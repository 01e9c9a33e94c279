"""Socket bufferevents: a reader and a writer greenlet over one socket.

Theory of operation
-------------------

The socket itself is a plain non-blocking stdlib socket; the two greenlets
make it cooperative by parking on the hub's io watchers when the kernel
says EAGAIN.  Each greenlet has three places it can park:

* its wake-up slot (``_Wakeup``), while its direction is not wanted
  (disabled, suspended by a watermark, nothing to send, not connected);
* the socket's io watcher, while the kernel has nothing for it;
* a zero-second yield after a read or write that used its whole budget,
  when anything else is ready to run, and at least every few of them, so
  a connection that always has data cannot starve other greenlets (see
  _READS_PER_TURN).

The writer also finishes connects: after a non-blocking ``connect`` it
waits for writability, reads SO_ERROR and reports CONNECTED or ERROR.  The
reader does not touch the socket before the connection is established.

Who runs user callbacks: the greenlet that moved the bytes (reader: read
and EOF/ERROR-on-read callbacks; writer: CONNECTED, write callbacks and
write errors), unless DEFER_CALLBACKS queues them on the EventBase.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import weakref
from typing import Any, Optional, Union

import gevent
import gevent.socket
from gevent import getcurrent

from .base import EventBase
from .bufferevent import _DEFER, _READ, _WRITE, SUSPEND_LOOKUP, BufferEvent
from .constants import EV_READ, EV_WRITE, Event, FlushMode, Option
from .errors import BufferEventError

logger = logging.getLogger(__name__)

__all__ = ["SocketBufferEvent", "socket_new"]

# One recv never asks for more than this, whatever max_single_read says:
# Python's recv allocates its whole size up front.
_RECV_CAP = 1 << 20

_CLOSE_ON_FREE = int(Option.CLOSE_ON_FREE)
_CONNECT_IN_PROGRESS = {0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}

# Fairness.  libevent reads at most max_single_read per bufferevent per
# loop iteration, so busy connections take turns.  The plain port of that
# is a yield to the hub after every full read or write; but when no other
# greenlet is ready, that yield only buys a poll for new I/O, and it costs
# about as much as the read itself.  So a reader or writer gives way after
# each full read/write when the hub has anything else ready to run, and in
# any case after _READS_PER_TURN of them, which bounds how long unpolled
# I/O can wait (four 64 KiB reads: well under a millisecond).
_READS_PER_TURN = 4


def _others_ready(loop: Any) -> bool:
    """True when the hub has other watchers or callbacks ready to run."""
    try:
        return bool(loop.pendingcnt or len(loop._callbacks))
    except AttributeError:  # a loop without these counters: always yield
        return True


class _Wakeup:
    """A one-greenlet parking slot that is cheap to signal.

    ``set()`` may be called from any greenlet or from the hub; it schedules
    the parked greenlet to resume, or, if none is parked, makes the next
    ``wait()`` return at once.  Only the owning greenlet may ``wait()``.
    """

    __slots__ = ("_hub", "_waiter", "_flag")

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        self._waiter: Any = None
        self._flag = False

    def wait(self) -> None:
        if self._flag:
            self._flag = False
            return
        self._waiter = getcurrent()
        try:
            self._hub.switch()
        finally:
            self._waiter = None
            self._flag = False

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        if self._waiter is not None:
            self._hub.loop.run_callback(self._resume)

    def _resume(self) -> None:
        waiter = self._waiter
        if waiter is not None and self._flag:
            waiter.switch()


def _is_ip_literal(host: Any) -> bool:
    """True for a numeric IPv4 or IPv6 address (no resolver needed)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, TypeError, ValueError):
            continue
    return False


def _family_for(address: Any) -> int:
    if isinstance(address, (str, bytes)):
        return socket.AF_UNIX
    if isinstance(address, tuple) and len(address) in (2, 4):
        host = address[0]
        if len(address) == 4:
            return socket.AF_INET6
        try:
            socket.inet_pton(socket.AF_INET6, host)
            return socket.AF_INET6
        except (OSError, TypeError):
            return socket.AF_INET
    raise TypeError(
        f"address must be (host, port), (host, port, flow, scope) or a path, "
        f"got {address!r}"
    )


class SocketBufferEvent(BufferEvent):
    """A bufferevent on a stream socket (TCP over IPv4/IPv6, or AF_UNIX).

    Create it with ``socket_new``.  With a connected socket it starts
    working at once; without one, call ``connect`` or ``connect_hostname``
    and wait for CONNECTED (event callback) or use ``wait_connected``.
    """

    def __init__(
        self,
        sock: Union[socket.socket, int, None] = None,
        options: int = 0,
        *,
        base: Optional[EventBase] = None,
    ) -> None:
        super().__init__(base, options)
        self._sock: Optional[socket.socket] = None
        self._user_sock: Any = None
        self._owns_fd = False
        self._connect_attempted = False
        self._connecting = False
        self._shutdown_pending = False
        self._write_kick = False
        self._writer_idle = False
        self._sending_inline = False
        self._sends = 0  # send() calls that moved bytes; see _reader_loop
        self._dns_error = 0
        self._reader: Optional[gevent.Greenlet] = None
        self._writer: Optional[gevent.Greenlet] = None
        self._lookup: Optional[gevent.Greenlet] = None
        hub = self.base.hub
        self._read_wake = _Wakeup(hub)
        self._write_wake = _Wakeup(hub)
        if sock is not None:
            self._attach(sock)
            # Taken as connected, as libevent does; connect() still accepts
            # a socket that was given unconnected (bound to a source
            # address, say).  Asking the kernel here instead would take a
            # connection the peer already reset for one never made.
            self._connected = True
            self._start_greenlets()

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} fd={self.fileno()}>"

    # -- setup --------------------------------------------------------------

    def _attach(self, sock: Union[socket.socket, int], owned: bool = False) -> None:
        """Wrap the file descriptor of ``sock`` in our own non-blocking socket.

        ``owned``: the socket was made by this bufferevent (``connect``), so
        ``free()`` closes it whatever the options say; nobody else could.
        """
        self._owns_fd = owned
        if isinstance(sock, bool):
            raise TypeError("sock must be a socket, a file descriptor or None")
        if isinstance(sock, int):
            if sock < 0:
                raise ValueError(f"sock must be a valid file descriptor, got {sock}")
            fd = sock
        elif hasattr(sock, "fileno"):
            fd = sock.fileno()
            if fd < 0:
                raise ValueError("sock is closed")
            self._user_sock = sock
        else:
            raise TypeError(
                f"sock must be a socket, a file descriptor or None, "
                f"got {type(sock).__name__}"
            )
        try:
            own = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"sock is not a usable socket: {exc}") from exc
        if own.type != socket.SOCK_STREAM:
            own.detach()
            raise ValueError("sock must be a stream socket (SOCK_STREAM)")
        # Put back on free when the caller keeps the socket.
        self._was_blocking = os.get_blocking(fd)
        if not owned and (
            self._user_sock is not None or not self._options & _CLOSE_ON_FREE
        ):
            # The descriptor belongs to the caller (or to the caller's
            # object): if this bufferevent is dropped without free(), our
            # wrapper must let go of the number instead of closing it, or a
            # later close of the caller's object could hit a recycled one.
            weakref.finalize(self, _let_go, own, self._was_blocking)
        own.setblocking(False)
        if own.family in (socket.AF_INET, socket.AF_INET6):
            try:
                own.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._sock = own
        loop = self.base.loop
        self._read_watcher = loop.io(fd, 1)
        self._write_watcher = loop.io(fd, 2)

    def _peer_known(self) -> bool:
        try:
            self._sock.getpeername()  # type: ignore[union-attr]
        except OSError:
            return False
        return True

    def _start_greenlets(self) -> None:
        self._reader = gevent.spawn(self._reader_loop)
        self._writer = gevent.spawn(self._writer_loop)

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 before connect / after free."""
        sock = self._sock
        return sock.fileno() if sock is not None else -1

    def getpeername(self) -> Any:
        """The peer's address (raises OSError when not connected)."""
        self._check_alive()
        if self._sock is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        """The local address of the socket."""
        self._check_alive()
        if self._sock is None:
            raise OSError(errno.ENOTCONN, "no socket yet")
        return self._sock.getsockname()

    def get_dns_error(self) -> int:
        """The last resolver error code of ``connect_hostname`` (0: none)."""
        return self._dns_error

    # -- connecting ---------------------------------------------------------

    def connect(self, address: Any) -> None:
        """Start connecting to ``address``; CONNECTED or ERROR follows.

        Creates the socket when the bufferevent has none.  A refusal is
        reported as an ERROR event (never raised), as libevent does, even
        when the kernel refuses at once.

        Raises:
            TypeError: ``address`` is not a socket address.
            BufferEventError: already connected or connecting, or the
                connect failed at once for a reason other than refusal
                (cause: the OSError).
        """
        self._check_alive()
        family = _family_for(address)
        if family != socket.AF_UNIX:
            if not _is_ip_literal(address[0]):
                # The stdlib would resolve it inside the hub, stalling
                # every greenlet meanwhile.
                raise ValueError(
                    f"address host must be a numeric IP address, got "
                    f"{address[0]!r}: use connect_hostname() for host names"
                )
            port = address[1]
            if isinstance(port, bool) or not isinstance(port, int):
                raise TypeError(f"port must be an int, got {port!r}")
            if not 1 <= port <= 65535:
                raise ValueError(f"port must be in 1..65535, got {port}")
        if (
            self._connected
            and not self._connect_attempted
            and not self._eof
            and not self._error_events
            and not self._peer_known()
        ):
            # A socket given unconnected (socket_new takes any socket as
            # connected, as libevent does): connect it now.
            self._connected = False
        self._connect_attempted = True
        if self._connected or self._connecting:
            raise BufferEventError("connect: already connected or connecting")
        created = False
        if self._sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                raise BufferEventError(f"connect: cannot create socket: {exc}") from exc
            self._attach(sock.detach(), owned=True)
            created = True
        assert self._sock is not None
        self._target_desc = f" to {address!r}"
        logger.debug("%r: connecting to %r", self, address)
        err = self._sock.connect_ex(address)
        if err in _CONNECT_IN_PROGRESS:
            self._connecting = True
            if self._writer is None:
                self._start_greenlets()
            else:
                self._write_wake.set()
            return
        exc = OSError(err, os.strerror(err))
        if err == errno.ECONNREFUSED:
            # Reported like an asynchronous failure; the state changes now
            # and the callback comes later, as libevent always defers it.
            self._connect_failed(exc, defer=True)
            return
        if created:
            self._close_socket()
        hint = ""
        if family == socket.AF_UNIX and isinstance(address, str) and ":" in address:
            hint = " (a str address is an AF_UNIX path; use (host, port) for TCP)"
        raise BufferEventError(f"connect to {address!r} failed: {exc}{hint}") from exc

    def connect_hostname(
        self, host: str, port: int, family: int = socket.AF_UNSPEC
    ) -> None:
        """Resolve ``host`` with gevent's resolver, then connect to the first
        address found.  A failed lookup is an ERROR event and
        ``get_dns_error()`` returns the resolver's code.

        Raises:
            ValueError: ``port`` outside 1..65535 or an unsupported family.
        """
        self._check_alive()
        if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
            raise ValueError(
                f"family must be AF_UNSPEC, AF_INET or AF_INET6, got {family}"
            )
        if (
            isinstance(port, bool)
            or not isinstance(port, int)
            or not 1 <= port <= 65535
        ):
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        try:
            host.encode("idna")
        except UnicodeError as exc:
            raise ValueError(f"host {host!r} is not a valid host name: {exc}") from None
        if self._connected or self._connecting or self._lookup is not None:
            raise BufferEventError(
                "connect_hostname: already connected, connecting or resolving"
            )
        self._suspend(EV_READ | EV_WRITE, SUSPEND_LOOKUP)
        self._lookup = gevent.spawn(self._resolve_and_connect, host, port, family)

    def _resolve_and_connect(self, host: str, port: int, family: int) -> None:
        try:
            infos = gevent.socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, or e.g. UnicodeError for a bad name
            self._lookup = None
            if not self._freed:
                code = exc.errno if isinstance(exc, socket.gaierror) else None
                self._dns_error = code or socket.EAI_FAIL
                self._unsuspend(EV_READ | EV_WRITE, SUSPEND_LOOKUP)
                self._connect_failed(exc)
            return
        self._lookup = None
        if self._freed:
            return
        self._dns_error = 0
        self._unsuspend(EV_READ | EV_WRITE, SUSPEND_LOOKUP)
        try:
            self.connect(infos[0][4])
        except BufferEventError as exc:
            self._connect_failed(exc.__cause__ or exc)

    def _connect_failed(self, exc: BaseException, defer: bool = False) -> None:
        """The connection will never be: say so once (ERROR, no direction)."""
        logger.debug("%r: connect failed: %s", self, exc)
        self._connecting = False
        self._dead = True
        self._update_timers()  # nothing will ever time out now
        self._report_event(Event.ERROR, exc, options=_DEFER if defer else 0)

    def _finish_connect(self) -> bool:
        """In the writer: wait for the connect to complete; True if it did."""
        sock = self._sock
        assert sock is not None
        self.base.hub.wait(self._write_watcher)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._connecting = False
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return False
        logger.debug("%r: connected", self)
        # CONNECTED never comes with a write callback unless bytes were
        # written in the same turn (libevent's rule).
        self._write_kick = False
        # Wake the reader first: a CONNECTED callback may block for data.
        self._read_wake.set()
        self._report_event(Event.CONNECTED)
        return True

    # -- the two greenlets --------------------------------------------------

    def _reader_loop(self) -> None:
        hub = self.base.hub
        wake = self._read_wake
        inp = self.input
        sleep = gevent.sleep
        loop = hub.loop
        # After a short read the kernel buffer is almost surely empty: wait
        # for readability first instead of paying for an EAGAIN exception.
        drained = False
        turn_reads = 0  # full reads since this greenlet last gave way
        while not self._freed:
            if not (self._connected and self._reading_wanted()):
                turn_reads = 0
                wake.wait()
                continue
            if drained:
                drained = False
                turn_reads = 0
                hub.wait(self._read_watcher)
                continue
            budget = self._read_budget()
            if budget <= 0:
                self._check_read_limits()
                continue
            try:
                data = self._sock.recv(min(budget, _RECV_CAP))  # type: ignore[union-attr]
            except BlockingIOError:
                drained = True
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if (
                    exc.errno in (errno.ENOTCONN, errno.EINVAL)
                    and not self._connect_attempted
                    and not self._peer_known()
                ):
                    # A socket given before it was connected, with reading
                    # enabled early: wait for connect() instead of failing.
                    self._connected = False
                    continue
                self._report_event(Event.READING | Event.ERROR, exc)
                return
            if not data:
                logger.debug("%r: EOF", self)
                self._report_event(Event.READING | Event.EOF)
                return
            try:
                inp._append_internal(data)
            except Exception:
                # A user's input.add_cb callback failed; the bytes are in.
                self.base.hub.handle_error(self, *sys.exc_info())
            sends = self._sends
            self._bytes_read()
            if len(data) < budget:
                # Unless the callback just sent something (then the peer's
                # answer may already be here and a recv is cheaper than a
                # trip through the hub).
                drained = sends == self._sends
            elif not self._freed:
                # More is probably waiting.  Let other greenlets have a turn
                # first if any is ready; with nobody else ready, a yield
                # would only buy a poll for new I/O, so do that every few
                # reads rather than after each (see _READS_PER_TURN).
                turn_reads += 1
                if turn_reads >= _READS_PER_TURN or _others_ready(loop):
                    turn_reads = 0
                    sleep(0)

    def _send_front(self) -> int:
        """One send() from the front of output; returns bytes sent.

        Returns 0 when the socket would block.  Raises OSError on failure.
        """
        out = self.output
        view = out._peek_chunk(self._max_single_write)
        try:
            sent = self._sock.send(view)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return 0
        finally:
            view.release()
        if sent:
            self._sends += 1
            try:
                out._drain_internal(sent)
            except Exception:
                # A user's output.add_cb callback failed; the bytes are out.
                self.base.hub.handle_error(self, *sys.exc_info())
        return sent

    def _writer_loop(self) -> None:
        hub = self.base.hub
        loop = hub.loop
        wake = self._write_wake
        out = self.output
        sleep = gevent.sleep
        turn_writes = 0  # full writes since this greenlet last gave way
        while not self._freed:
            if self._connecting:
                if not self._finish_connect():
                    return
                continue
            if not (self._connected and self._writing_wanted()) or not len(out):
                if self._write_kick and self._connected:
                    # Bytes went out inline (see _kind_output_grew), or
                    # EV_WRITE was enabled on an idle connection: one write
                    # callback under the watermark rule, as libevent gives.
                    self._write_kick = False
                    self._trigger_write()
                    continue
                if self._shutdown_pending and not len(out) and self._connected:
                    self._shutdown_pending = False
                    self._do_shutdown_write()
                    if self._freed:
                        return
                    continue
                self._writer_idle = True
                try:
                    wake.wait()
                finally:
                    self._writer_idle = False
                continue
            wanted = min(len(out), self._max_single_write)
            try:
                sent = self._send_front()
            except OSError as exc:
                self._report_event(Event.WRITING | Event.ERROR, exc)
                return
            if not sent:
                hub.wait(self._write_watcher)
                continue
            self._write_kick = False
            self._trigger_write()
            if self._freed:
                return
            if sent < wanted:
                # The kernel buffer is full: wait instead of hitting EAGAIN.
                turn_writes = 0
                hub.wait(self._write_watcher)
            elif len(out):
                turn_writes += 1
                if turn_writes >= _READS_PER_TURN or _others_ready(loop):
                    turn_writes = 0
                    sleep(0)

    def _do_shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError as exc:
            logger.debug("%r: shutdown(SHUT_WR) failed: %s", self, exc)
        else:
            logger.debug("%r: write side shut down", self)
        if self._waiting:
            self._notify()
        self._maybe_idle()

    # -- hooks --------------------------------------------------------------

    def _kind_start(self, what: int) -> None:
        if what & _READ:
            self._read_wake.set()
        if what & _WRITE:
            self._write_kick = True
            self._write_wake.set()

    def _kind_output_grew(self) -> None:
        if not (
            (self._writer_idle or getcurrent() is self._writer)
            and self._connected
            and self._writing_wanted()
            and not self._sending_inline
        ):
            self._write_wake.set()
            return
        # The writer is parked with nothing to do (or is the caller, in a
        # callback, between two sends) and the socket is almost surely
        # writable: send now, in the caller's greenlet, and spare a
        # greenlet switch per message.  Callbacks still run in the writer
        # (never inside write()), so it is woken when one may be due.
        self._sending_inline = True
        try:
            sent = self._send_front()
        except OSError:
            sent = 0  # the writer retries and reports the error itself
        finally:
            self._sending_inline = False
        if sent:
            self._write_kick = True
        if (
            len(self.output)
            or self._shutdown_pending
            or (sent and self._writecb is not None)
        ):
            self._write_wake.set()

    def _kind_flush(self, what: int, mode: FlushMode) -> int:
        # The writer already sends as fast as the peer takes bytes.
        return 0

    def shutdown_write(self) -> None:
        """Shut down the sending side once all queued output has been sent.

        The peer then reads EOF; this side can still read.
        """
        self._check_alive()
        self._shutdown_pending = True
        self._write_wake.set()

    def _kind_output_settled(self) -> bool:
        return not len(self.output)

    def _kind_io_greenlet(self, direction: int) -> Any:
        return self._reader if direction == _READ else self._writer

    def _kind_busy(self) -> bool:
        return self._connecting or self._lookup is not None or self._shutdown_pending

    def _kind_free(self) -> None:
        current = getcurrent()
        for glet in (self._reader, self._writer, self._lookup):
            if glet is not None and glet is not current and not glet.dead:
                glet.kill(block=False)
        self._reader = self._writer = self._lookup = None
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        for name in ("_read_watcher", "_write_watcher"):
            watcher = getattr(self, name, None)
            if watcher is not None:
                watcher.stop()
        if self._options & _CLOSE_ON_FREE or self._owns_fd:
            user_sock, self._user_sock = self._user_sock, None
            if user_sock is not None:
                # Close through the caller's object so it never closes a
                # recycled descriptor number later.
                sock.detach()
                user_sock.close()
            else:
                sock.close()
        else:
            try:
                os.set_blocking(sock.fileno(), self._was_blocking)
            except OSError:
                pass  # the caller closed it already
            sock.detach()


def _let_go(sock: socket.socket, was_blocking: bool) -> None:
    """Give the descriptor back as it came, without closing it (_attach)."""
    try:
        os.set_blocking(sock.fileno(), was_blocking)
    except OSError:
        pass  # the caller closed it already
    sock.detach()


def socket_new(
    sock: Union[socket.socket, int, None] = None,
    options: int = 0,
    *,
    base: Optional[EventBase] = None,
) -> SocketBufferEvent:
    """Create a socket bufferevent.

    Args:
        sock: a connected stream socket (stdlib or gevent), its file
            descriptor, or None to connect later with ``connect``.
        options: ``Option`` flags; with CLOSE_ON_FREE, ``free()`` closes
            the socket.
        base: the EventBase (default: ``get_default_base()``).

    Returns:
        A SocketBufferEvent with only writing enabled, as in libevent.
    """
    return SocketBufferEvent(sock, options, base=base)
