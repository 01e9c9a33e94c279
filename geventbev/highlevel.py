"""The convenience layer: connect(), serve() and a socket-like adapter.

These are thin compositions of the bufferevent API for code that wants to
look synchronous: ``connect`` returns once connected, ``serve`` runs one
handler greenlet per connection, and ``BufferEventSocket`` lets code
written against the socket module run over any bufferevent unchanged.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import sys
import time
from typing import Any, Callable, Optional

import gevent
from gevent.pool import Group

from .base import EventBase
from .bufferevent import BufferEvent
from .constants import EV_READ, EV_WRITE, FlushMode, Option
from .errors import BufferEventError, UnsupportedOperation
from .filter import FilterBufferEvent
from .listener import Listener
from .pair import PairBufferEvent
from .sock import _is_ip_literal, socket_new

logger = logging.getLogger(__name__)

__all__ = ["connect", "serve", "Server", "BufferEventSocket"]

#: Bytes a BufferEventSocket's output takes before ``send`` waits (its
#: "socket send buffer").
SEND_BUFFER = 256 * 1024

_OWN_TIMEOUT = object()  # "use the adapter's settimeout() value"


def _bytes_like(data: Any) -> bytes:
    """``bytes(data)`` for a bytes-like object; TypeError otherwise (an int
    would make ``bytes()`` a run of zeros)."""
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(
            f"a bytes-like object is required, not {type(data).__name__!r}"
        ) from None


#: How long a finished connection may take to send what its handler left
#: in the output before it is freed anyway, in seconds.
CLOSE_DRAIN_TIMEOUT = 30.0


def _not_yet(feature: str, value: Any) -> None:
    # TLS and rate limits are built on later; refuse clearly meanwhile.
    if value is not None:
        raise UnsupportedOperation(f"{feature} is not supported by this version")


def connect(
    address: Any,
    *,
    ssl: Any = None,
    server_hostname: Optional[str] = None,
    rate_limit: Any = None,
    group: Any = None,
    timeout: Optional[float] = None,
    base: Optional[EventBase] = None,
) -> BufferEvent:
    """Connect to ``address`` and return a ready socket bufferevent.

    Host names are resolved with gevent's resolver.  The bufferevent has
    reading and writing enabled and closes its socket when freed.

    Raises:
        BufferEventError: the connection failed (cause: the OSError or
            resolver error).
        TimeoutError: not connected within ``timeout`` seconds.
        UnsupportedOperation: ``ssl``, ``rate_limit`` or ``group`` given
            (not available in this version).
    """
    _not_yet("ssl", ssl)
    _not_yet("server_hostname", server_hostname)
    _not_yet("rate_limit", rate_limit)
    _not_yet("group", group)
    bev = socket_new(None, Option.CLOSE_ON_FREE, base=base)
    try:
        if (
            isinstance(address, tuple)
            and len(address) == 2
            and isinstance(address[0], str)
            and not _is_ip_literal(address[0])
        ):
            bev.connect_hostname(address[0], address[1])
        else:
            bev.connect(address)
        bev.wait_connected(timeout)
    except BaseException:
        bev.free()
        raise
    bev.enable(EV_READ | EV_WRITE)
    return bev


def _free_stack(bev: BufferEvent) -> None:
    """Free ``bev`` and every filter stacked on it, the top one first."""
    layers = [bev]
    while layers[-1]._upper is not None:
        layers.append(layers[-1]._upper)
    for layer in reversed(layers):
        layer.free()


def _finish(bev: BufferEvent, timeout: Optional[float]) -> None:
    """Close ``bev`` as a socket's close would, then free it.

    Filters a handler stacked on ``bev`` are finished first.  A pair end
    hands its partner everything queued and then EOF, without waiting; a
    filter finishes its output (``shutdown_write``); then what is left is
    sent, bounded by ``timeout`` (or CLOSE_DRAIN_TIMEOUT) per layer.
    Unsent bytes are logged."""
    if bev.freed:
        _free_stack(bev)  # filters a handler stacked on it, if any
        return
    try:
        upper = bev._upper
        if upper is not None and not upper.freed:
            # The handler stacked a filter on bev: what it wrote through
            # that filter goes first (its trailer included), then bev's own
            # output.  (Each layer gets the timeout anew.)
            _finish(upper, timeout)
            if bev.freed:
                return
        if isinstance(bev, PairBufferEvent):
            # What a socket's close does: everything queued goes to the
            # peer, whether it reads yet or not, and then EOF.  A pair end
            # does not tell its partner anything on free by itself.
            if bev.get_partner() is not None:
                bev.flush(EV_WRITE, FlushMode.FINISHED)
            return
        if isinstance(bev, FilterBufferEvent):
            bev.shutdown_write()  # the output filter's trailer, then EOF
        if len(bev.output) or not bev._kind_output_settled():
            bev.drain(timeout=CLOSE_DRAIN_TIMEOUT if timeout is None else timeout)
    except (BufferEventError, TimeoutError) as exc:
        logger.warning(
            "%r: closing with %d unsent bytes: %s", bev, len(bev.output), exc
        )
    finally:
        bev.free()


class Server:
    """A running ``serve()``: one handler greenlet per connection.

    Attributes:
        address: the bound address (the real port when 0 was asked for).
    """

    def __init__(
        self,
        address: Any,
        handler: Callable[[BufferEvent], Any],
        max_connections: Optional[int],
        base: Optional[EventBase],
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if max_connections is not None and (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be an int >= 1, got {max_connections!r}"
            )
        self._handler = handler
        self._max = max_connections
        self._handlers = Group()
        self._listener = Listener(self._accepted, address, base=base)
        self.address = self._listener.getsockname()
        self._base = self._listener.base

    def __repr__(self) -> str:
        return f"<Server {self.address!r} connections={len(self._handlers)}>"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._handlers)

    def _accepted(self, listener: Listener, sock: Any, address: Any, ctx: Any) -> None:
        bev = socket_new(sock, Option.CLOSE_ON_FREE, base=self._base)
        bev.enable(EV_READ | EV_WRITE)
        self._handlers.spawn(self._run_handler, bev)
        if self._max is not None and len(self._handlers) >= self._max:
            listener.disable()

    def _run_handler(self, bev: BufferEvent) -> None:
        try:
            self._handler(bev)
        except gevent.GreenletExit:
            # stop() gave up waiting: close at once, do not drain.
            _free_stack(bev)
            raise
        except Exception:
            self._base.hub.handle_error(self._handler, *sys.exc_info())
        finally:
            _finish(bev, None)
            if self._max is not None and not self._listener.freed:
                # This greenlet is still counted until it returns.
                if len(self._handlers) - 1 < self._max:
                    self._listener.enable()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, wait up to ``timeout`` seconds for the running
        handlers, then kill the ones still running (their bufferevents are
        freed)."""
        self._listener.free()
        self._handlers.join(timeout=timeout)
        self._handlers.kill(block=True, timeout=1.0)


def serve(
    address: Any,
    handler: Callable[[BufferEvent], Any],
    *,
    ssl: Any = None,
    rate_limit: Any = None,
    group: Any = None,
    max_connections: Optional[int] = None,
    base: Optional[EventBase] = None,
) -> Server:
    """Listen on ``address`` and run ``handler(bev)`` per connection.

    Each handler runs in its own greenlet with reading and writing enabled;
    when it returns, what it left in the output is sent (bounded by
    ``CLOSE_DRAIN_TIMEOUT``) and the bufferevent is freed.  An exception in
    a handler goes to the hub's error handler and closes that connection.
    With ``max_connections``, accepting pauses while that many handlers run.

    Raises:
        UnsupportedOperation: ``ssl``, ``rate_limit`` or ``group`` given
            (not available in this version).
        OSError: binding failed.
    """
    _not_yet("ssl", ssl)
    _not_yet("rate_limit", rate_limit)
    _not_yet("group", group)
    return Server(address, handler, max_connections, base)


class BufferEventSocket:
    """A socket-compatible object over any bufferevent.

    Legacy code written for sockets (``recv``, ``sendall``, ``makefile``,
    timeouts) runs unchanged on top of a socket, pair, filter or TLS
    bufferevent.  Errors are raised the way a socket raises them: the
    transport's ``OSError`` itself, ``socket.timeout`` on timeouts and
    ``BlockingIOError`` in non-blocking mode.  As with a socket, ``close()``
    takes effect once the last file from ``makefile()`` is closed too; then
    what is queued is sent (bounded by the timeout, or
    ``CLOSE_DRAIN_TIMEOUT``) and the bufferevent is freed.

    Attributes:
        bev: the bufferevent underneath.
    """

    def __init__(self, bev: BufferEvent) -> None:
        if not isinstance(bev, BufferEvent):
            raise TypeError(f"bev must be a BufferEvent, got {type(bev).__name__}")
        self.bev = bev
        self._timeout: Optional[float] = None
        self._closed = False
        self._io_refs = 0  # open makefile() files, as socket.socket counts
        self._write_shut = False

    def __repr__(self) -> str:
        return f"<BufferEventSocket {self.bev!r}>"

    def __enter__(self) -> BufferEventSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def settimeout(self, timeout: Optional[float]) -> None:
        """Seconds each blocking call may take (None: forever; 0: never
        block, as ``setblocking(False)``)."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be seconds or None, got {timeout!r}")
            if not timeout >= 0:  # also refuses nan
                raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
            timeout = float(timeout)
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        """The timeout set by ``settimeout``, in seconds (None: blocking)."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0.0)``, as for sockets."""
        self._timeout = None if flag else 0.0

    def _call(
        self, fn: Callable[..., Any], *args: Any, timeout: Any = _OWN_TIMEOUT
    ) -> Any:
        # The bufferevent is freed only when the socket is really closed
        # (close() with no makefile() file left open).
        if self.bev.freed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if timeout is _OWN_TIMEOUT:
            timeout = self._timeout
        try:
            return fn(*args, timeout=timeout)
        except TimeoutError as exc:
            if self._timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "operation would block") from None
            if isinstance(exc, socket.timeout):  # Python 3.10+: the same class
                raise
            raise socket.timeout(str(exc)) from None
        except BufferEventError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError):
                raise cause from exc
            if self.bev.freed:
                raise OSError(errno.EBADF, "Bad file descriptor") from exc
            if self.bev._stranded_reason() is not None:
                # The other end is gone (a freed pair partner): what a
                # socket whose peer closed answers.
                if fn == self.bev.read_some:
                    return b""
                raise BrokenPipeError(errno.EPIPE, str(exc)) from exc
            raise

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes; b"" at EOF."""
        if flags:
            raise ValueError("recv flags are not supported")
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        return self._call(self.bev.read_some, bufsize)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Read into ``buffer``; returns the byte count (0 at EOF)."""
        view = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = self.recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue ``data`` once the output has room; returns ``len(data)``.

        Like a socket's send buffer, the output takes data while it holds
        less than SEND_BUFFER bytes; past that, ``send`` waits (bounded by
        the timeout).  When it raises (``socket.timeout``,
        ``BlockingIOError``) nothing was queued, so a retry sends no byte
        twice.
        """
        return self._send(_bytes_like(data), flags, _OWN_TIMEOUT)

    def _send(self, data: bytes, flags: int, timeout: Any) -> int:
        if flags:
            raise ValueError("send flags are not supported")
        if self._write_shut:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        self._call(self.bev._wait_output_below, SEND_BUFFER, timeout=timeout)
        if self._write_shut:  # shut down while we waited for room
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        self.bev.write(data)
        if not self.bev.get_enabled() & EV_WRITE:
            # A write timeout (set_timeouts) or the user turned writing
            # off: queued bytes must still go out, as with write_all.
            self.bev.enable(EV_WRITE)
        return len(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Send all of ``data``: queue it in pieces as the output has room.

        The timeout bounds the whole call, as for a socket.  On a timeout
        the pieces queued so far stay queued (a socket's ``sendall`` does
        not say how much it sent either).
        """
        view = memoryview(_bytes_like(data))
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        offset = 0
        while True:
            timeout: Any = _OWN_TIMEOUT
            if deadline is not None:
                timeout = max(deadline - time.monotonic(), 0.0)
                if timeout == 0.0:
                    raise socket.timeout("timed out")
            piece = view[offset : offset + SEND_BUFFER]
            self._send(bytes(piece), flags, timeout)
            offset += len(piece)
            if offset >= len(view):
                return

    def shutdown(self, how: int) -> None:
        """SHUT_WR: send EOF after the queued output; SHUT_RD: stop reading."""
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"how must be SHUT_RD, SHUT_WR or SHUT_RDWR, got {how!r}")
        if self.bev.freed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self.bev.disable(EV_READ)
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._write_shut = True
            self.bev.shutdown_write()

    def close(self) -> None:
        """Close; the connection ends once no ``makefile()`` file is open."""
        if self._closed:
            return
        self._closed = True
        if self._io_refs <= 0:
            _finish(self.bev, self._timeout)

    def _decref_socketios(self) -> None:
        # Called by socket.SocketIO when a makefile() file is closed.
        self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            _finish(self.bev, self._timeout)

    def fileno(self) -> int:
        """The descriptor of the transport, or -1 (pairs, freed)."""
        return self.bev.fileno()

    def getpeername(self) -> Any:
        """The peer's address, as the transport reports it."""
        return self._sockcall("getpeername")

    def getsockname(self) -> Any:
        """The local address, as the transport reports it."""
        return self._sockcall("getsockname")

    def _sockcall(self, name: str) -> Any:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        # A filter has no socket of its own: ask the layers below it.
        layer: Optional[BufferEvent] = self.bev
        while layer is not None:
            fn = getattr(layer, name, None)
            if fn is not None:
                return fn()
            layer = layer.get_underlying()
        raise OSError(f"{type(self.bev).__name__} has no {name}")

    def makefile(
        self,
        mode: str = "r",
        buffering: Optional[int] = None,
        *,
        encoding: Optional[str] = None,
        errors: Optional[str] = None,
        newline: Optional[str] = None,
    ) -> Any:
        """A file object reading and/or writing through this adapter, with
        the semantics of ``socket.socket.makefile`` (timeouts and errors as
        ``recv``/``send`` raise them; the adapter stays open until the file
        is closed)."""
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing  # as socket.makefile
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        # socket.SocketIO only needs recv_into, send and _decref_socketios.
        raw = socket.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if reading and writing:
            buffered: Any = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffered = io.BufferedReader(raw, buffering)
        else:
            buffered = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(buffered, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text
