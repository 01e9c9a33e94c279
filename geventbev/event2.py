"""libevent's C functions, one to one, with C return codes.

A libevent program can be ported to geventbev line by line with this module:
``bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE)`` keeps its name and
its argument order, and returns what the C function returns.  Everything
here wraps the Pythonic API (``Buffer``, ``BufferEvent``, ``EventBase``,
``Listener``), which raises; this module turns those exceptions into the C
failure value instead.

Conventions
-----------

* Return codes are libevent's: ``0`` for success and ``-1`` for failure
  where C returns an ``int``; ``None`` where C returns a pointer (NULL).
  The C failure value is also what a bad argument gets: a wrong type, a
  negative size, a freed bufferevent or listener.  These functions never
  raise for a bad argument.  Why a call failed is logged on this module's
  logger at DEBUG, which is where a porting user should look after an
  unexpected ``-1``.
* Calling with the wrong number of arguments does raise ``TypeError``: that
  is a porting mistake a C compiler would have rejected, not a bad value.
* Output parameters are dropped and become the return value:
  ``evbuffer_remove(buf, n)`` returns the bytes (or None on failure, where C
  returns -1), ``evbuffer_readln(buf, style)`` the line or None,
  ``evbuffer_search_eol(buf, start, style)`` a ``(pos, eol_len)`` pair,
  ``bufferevent_getcb(bev)`` a 4-tuple, ``bufferevent_getwatermark(bev,
  what)`` a ``(low, high)`` pair.
* A length that describes a data argument (``evbuffer_add(buf, data,
  datlen)``) may be passed as in C or left out (then all of ``data`` is
  used); it must not exceed ``len(data)``.  An ``evbuffer_ptr`` is an int
  position, and NULL (None) means the front.  A trailing ``socklen`` is
  accepted and ignored, since Python addresses carry their size.
* Times are seconds as ``float`` (or None) where C takes a ``timeval``.

Departures, where the Python objects cannot do what C does:

* ``evbuffer_reserve_space(buf, size)`` returns one writable memoryview (or
  None) instead of filling an iovec array, and ``evbuffer_commit_space(buf,
  n)`` takes the number of bytes written into it.
* The accept callback of ``evconnlistener_new_bind`` keeps libevent's shape,
  ``cb(listener, fd, address, socklen, ctx)``, but ``fd`` is the accepted
  socket object, which ``bufferevent_socket_new`` accepts in place of a
  descriptor; passing the object keeps one owner for the descriptor.
* ``bufferevent_socket_connect(bev, None)`` on a bufferevent with a socket
  (adopting a connect the caller started) is not supported and returns -1.
* Listener flags ``LEV_OPT_REUSEABLE_PORT`` and ``LEV_OPT_BIND_IPV6ONLY``
  are not supported (None); ``LEV_OPT_LEAVE_SOCKETS_BLOCKING``,
  ``CLOSE_ON_EXEC``, ``THREADSAFE`` and ``DEFERRED_ACCEPT`` are accepted and
  need nothing (Python sockets are already close-on-exec, gevent sockets
  are cooperative).  The listening socket is closed on free with or
  without ``LEV_OPT_CLOSE_ON_FREE``.
* A callback registered with ``evbuffer_add_cb`` that raises is reported
  to the hub's error handler; the buffer operation that ran it still
  returns success, as it would in C.

TLS and rate limits have no functions here yet.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import socket
import sys
from typing import Any, Callable, Optional, Tuple, TypeVar

import gevent

from . import constants as _constants
from .base import EventBase
from .buffer import Buffer
from .bufferevent import BufferEvent
from .constants import *  # noqa: F401,F403  (libevent's constant names)
from .constants import EOL, EV_READ, EV_SSIZE_MAX, EV_WRITE, Trigger
from .errors import BufferEventError
from .filter import FilterBufferEvent, filter_new
from .listener import Listener
from .pair import pair_new
from .sock import SocketBufferEvent

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: C's INT_MAX: ``bufferevent_set_max_single_read`` refuses more than this.
INT_MAX = 2**31 - 1


class ListenerOption(enum.IntFlag):
    """Flags of ``evconnlistener_new_bind`` (``LEV_OPT_*``)."""

    LEAVE_SOCKETS_BLOCKING = 1 << 0
    CLOSE_ON_FREE = 1 << 1
    CLOSE_ON_EXEC = 1 << 2
    REUSEABLE = 1 << 3
    THREADSAFE = 1 << 4
    DISABLED = 1 << 5
    DEFERRED_ACCEPT = 1 << 6
    REUSEABLE_PORT = 1 << 7
    BIND_IPV6ONLY = 1 << 8


LEV_OPT_LEAVE_SOCKETS_BLOCKING = ListenerOption.LEAVE_SOCKETS_BLOCKING
LEV_OPT_CLOSE_ON_FREE = ListenerOption.CLOSE_ON_FREE
LEV_OPT_CLOSE_ON_EXEC = ListenerOption.CLOSE_ON_EXEC
LEV_OPT_REUSEABLE = ListenerOption.REUSEABLE
LEV_OPT_THREADSAFE = ListenerOption.THREADSAFE
LEV_OPT_DISABLED = ListenerOption.DISABLED
LEV_OPT_DEFERRED_ACCEPT = ListenerOption.DEFERRED_ACCEPT
LEV_OPT_REUSEABLE_PORT = ListenerOption.REUSEABLE_PORT
LEV_OPT_BIND_IPV6ONLY = ListenerOption.BIND_IPV6ONLY

_ALL_LEV_OPTS = (1 << 9) - 1
_UNSUPPORTED_LEV_OPTS = LEV_OPT_REUSEABLE_PORT | LEV_OPT_BIND_IPV6ONLY
_TRIGGER_OPTS = Trigger.IGNORE_WATERMARKS | Trigger.DEFER_CALLBACKS

# -- the one place exceptions become C return codes ---------------------------

#: What the Pythonic layer raises for a bad argument or a refused operation.
#: OverflowError joins them because the socket module raises it for
#: out-of-range ports.
_C_FAILURES = (TypeError, ValueError, OverflowError, BufferEventError, OSError)


def _c_function(failure: Any) -> Callable[[_F], _F]:
    """Make a function return ``failure`` instead of raising a C-style error.

    A TypeError raised by the call itself (wrong number of arguments, an
    unknown keyword) still propagates: its traceback stops in the wrapper,
    because the function body never started.
    """

    def decorate(fn: _F) -> _F:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except _C_FAILURES as exc:
                tb = exc.__traceback__
                if tb is not None and tb.tb_next is None:
                    raise
                logger.debug("%s failed: %s: %s", name, type(exc).__name__, exc)
                return failure

        return wrapper  # type: ignore[return-value]

    return decorate


# -- argument helpers (they raise; the decorator converts) -------------------


def _base(base: Any) -> EventBase:
    if not isinstance(base, EventBase):
        raise TypeError(f"base must be an EventBase, not {type(base).__name__}")
    return base


def _buf(buf: Any, name: str = "buf") -> Buffer:
    if not isinstance(buf, Buffer):
        raise TypeError(f"{name} must be a Buffer, not {type(buf).__name__}")
    return buf


def _bev(bev: Any) -> BufferEvent:
    """Return ``bev`` if it is a live bufferevent, else raise."""
    if not isinstance(bev, BufferEvent):
        raise TypeError(f"bev must be a BufferEvent, not {type(bev).__name__}")
    if bev.freed:
        raise BufferEventError(f"{type(bev).__name__} has been freed")
    return bev


def _sock_bev(bev: Any) -> SocketBufferEvent:
    bev = _bev(bev)
    if not isinstance(bev, SocketBufferEvent):
        raise TypeError(f"bev must be a socket bufferevent, not {type(bev).__name__}")
    return bev


def _listener(lev: Any) -> Listener:
    if not isinstance(lev, Listener):
        raise TypeError(f"lev must be a Listener, not {type(lev).__name__}")
    if lev.freed:
        raise BufferEventError("Listener has been freed")
    return lev


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _size(value: Any, name: str) -> int:
    value = _int(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _pos(value: Any, name: str) -> int:
    """An ``evbuffer_ptr``: an int position, None meaning the front."""
    return 0 if value is None else _size(value, name)


def _sized(data: Any, datlen: Any, name: str = "datlen") -> Any:
    """Return ``data``, cut to ``datlen`` bytes when a length is given."""
    if datlen is None:
        return data
    datlen = _size(datlen, name)
    if isinstance(data, str):
        raise TypeError("data must be bytes-like, not str")
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if datlen > view.nbytes:
        raise ValueError(f"{name} ({datlen}) exceeds the data ({view.nbytes} bytes)")
    return data if datlen == view.nbytes else view[:datlen]


def _direction(what: Any, name: str = "what") -> int:
    """EV_READ, EV_WRITE, both, or 0 (which C accepts as a no-op)."""
    what = _int(what, name)
    # int() first: on Python 3.11+, ~ of an IntFlag flips only the flag's
    # own bits, so ~(EV_READ | EV_WRITE) would be EV_TIMEOUT alone.
    if what & ~int(EV_READ | EV_WRITE):
        raise ValueError(f"{name} must be a mix of EV_READ and EV_WRITE, got {what:#x}")
    return what


def _front_frozen(buf: Buffer) -> bool:
    # Buffer has no public query for this; event2 needs it only because C's
    # copyout refuses a front-frozen buffer while Buffer.copyout does not.
    return bool(buf._front_frozen)


# -- event_base ----------------------------------------------------------------


@_c_function(None)
def event_base_new() -> Optional[EventBase]:
    """Return a new EventBase on the current gevent hub."""
    return EventBase()


@_c_function(None)
def event_base_free(base: EventBase) -> None:
    """Free ``base`` (its queued deferred callbacks are dropped); returns None."""
    _base(base).free()


@_c_function(-1)
def event_base_dispatch(base: EventBase) -> int:
    """Run until loopexit/loopbreak (0), nothing is pending (1), or error (-1)."""
    base = _base(base)
    if gevent.getcurrent() is base.hub:
        raise ValueError("event_base_dispatch cannot block the gevent hub itself")
    return base.dispatch()


@_c_function(-1)
def event_base_loopexit(base: EventBase, tv: Optional[float] = None) -> int:
    """Make dispatch return after ``tv`` seconds (None: at once); 0 or -1."""
    if tv is not None and (isinstance(tv, bool) or not isinstance(tv, (int, float))):
        raise TypeError(f"tv must be seconds as a float or None, not {tv!r}")
    _base(base).loopexit(tv)
    return 0


@_c_function(-1)
def event_base_loopbreak(base: EventBase) -> int:
    """Make dispatch return as soon as possible; 0 or -1."""
    _base(base).loopbreak()
    return 0


@_c_function(-1)
def event_base_got_exit(base: EventBase) -> int:
    """1 if the last dispatch ended through loopexit, else 0; -1 on error."""
    return int(_base(base).got_exit())


@_c_function(-1)
def event_base_got_break(base: EventBase) -> int:
    """1 if the last dispatch ended through loopbreak, else 0; -1 on error."""
    return int(_base(base).got_break())


# -- evbuffer ------------------------------------------------------------------


class _ReportingBufferCb:
    """An evbuffer callback whose exceptions go to the hub, not the caller.

    In C a callback cannot make ``evbuffer_add`` fail; without this wrapper
    a raising callback would turn a completed add into a -1.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, buf: Buffer, info: Any, ctx: Any) -> None:
        try:
            self.fn(buf, info, ctx)
        except Exception:
            gevent.get_hub().handle_error(self.fn, *sys.exc_info())


@_c_function(None)
def evbuffer_new() -> Optional[Buffer]:
    """Return a new empty Buffer."""
    return Buffer()


@_c_function(None)
def evbuffer_free(buf: Buffer) -> None:
    """Release ``buf``: later calls on it fail (-1 / None); returns None."""
    _buf(buf).free()


@_c_function(-1)
def evbuffer_get_length(buf: Buffer) -> int:
    """Return the number of bytes in ``buf``; -1 for a non-Buffer."""
    return len(_buf(buf))


@_c_function(-1)
def evbuffer_get_contiguous_space(buf: Buffer) -> int:
    """Return the bytes in buf's first chunk; -1 for a non-Buffer."""
    return _buf(buf).get_contiguous_space()


@_c_function(-1)
def evbuffer_add(buf: Buffer, data: Any, datlen: Optional[int] = None) -> int:
    """Append data (its first datlen bytes); 0, or -1 (end frozen, bad args)."""
    _buf(buf).add(_sized(data, datlen))
    return 0


@_c_function(-1)
def evbuffer_prepend(buf: Buffer, data: Any, size: Optional[int] = None) -> int:
    """Insert data (its first size bytes) at the front; 0 or -1."""
    _buf(buf).prepend(_sized(data, size, "size"))
    return 0


@_c_function(-1)
def evbuffer_add_printf(buf: Buffer, fmt: Any, *args: Any) -> int:
    """Append ``fmt % args``; the number of bytes added, or -1."""
    return _buf(buf).add_printf(fmt, *args)


@_c_function(-1)
def evbuffer_add_buffer(outbuf: Buffer, inbuf: Buffer) -> int:
    """Move all of inbuf to the end of outbuf; 0 or -1."""
    _buf(outbuf, "outbuf").add_buffer(_buf(inbuf, "inbuf"))
    return 0


@_c_function(-1)
def evbuffer_prepend_buffer(dst: Buffer, src: Buffer) -> int:
    """Move all of src to the front of dst; 0 or -1."""
    _buf(dst, "dst").prepend_buffer(_buf(src, "src"))
    return 0


@_c_function(-1)
def evbuffer_remove_buffer(src: Buffer, dst: Buffer, datlen: int) -> int:
    """Move up to datlen bytes from src to dst; the count moved, or -1."""
    src, dst = _buf(src, "src"), _buf(dst, "dst")
    if _size(datlen, "datlen") == 0:
        return 0  # C answers before looking at freezing
    return src.remove_buffer(dst, datlen)


@_c_function(-1)
def evbuffer_drain(buf: Buffer, len: int) -> int:  # C's parameter name
    """Discard up to len bytes from the front; 0 or -1."""
    _buf(buf).drain(_size(len, "len"))
    return 0


@_c_function(None)
def evbuffer_remove(buf: Buffer, datlen: int) -> Optional[bytes]:
    """Remove and return up to datlen bytes; None where C returns -1."""
    buf = _buf(buf)
    n = min(_size(datlen, "datlen"), len(buf))
    return buf.remove(n) if n else b""


@_c_function(None)
def evbuffer_copyout(buf: Buffer, datlen: int) -> Optional[bytes]:
    """Return a copy of up to datlen front bytes; None where C returns -1."""
    return evbuffer_copyout_from(buf, None, datlen)


@_c_function(None)
def evbuffer_copyout_from(
    buf: Buffer, pos: Optional[int], datlen: int
) -> Optional[bytes]:
    """Return a copy of up to datlen bytes from pos; None where C gives -1."""
    buf = _buf(buf)
    pos = _pos(pos, "pos")
    datlen = _size(datlen, "datlen")
    if pos > len(buf):
        raise ValueError(f"pos ({pos}) is past the end ({len(buf)} bytes)")
    n = min(datlen, len(buf) - pos)
    if not n:
        return b""
    if _front_frozen(buf):
        raise BufferEventError("copyout refused: the buffer's front is frozen")
    return buf.copyout(n, pos)


@_c_function(None)
def evbuffer_pullup(buf: Buffer, size: int) -> Optional[memoryview]:
    """Return a view of the first size bytes (size < 0: all), or None."""
    return _buf(buf).pullup(_int(size, "size"))


@_c_function(None)
def evbuffer_readln(buf: Buffer, eol_style: int = EOL.CRLF) -> Optional[bytes]:
    """Remove and return one line without its EOL; None if none or on error."""
    return _buf(buf).readln(_int(eol_style, "eol_style"))


@_c_function(-1)
def evbuffer_search(
    buf: Buffer, what: Any, length: Optional[int] = None, start: Optional[int] = None
) -> int:
    """Return the position of what at or after start; -1 if absent or error."""
    return evbuffer_search_range(buf, what, length, start, None)


@_c_function(-1)
def evbuffer_search_range(
    buf: Buffer,
    what: Any,
    length: Optional[int] = None,
    start: Optional[int] = None,
    end: Optional[int] = None,
) -> int:
    """Return the position of what within [start, end); -1 if absent or error."""
    buf = _buf(buf)
    what = _sized(what, length, "length")
    stop = None if end is None else _size(end, "end")
    return buf.search(what, _pos(start, "start"), stop)


@_c_function((-1, 0))
def evbuffer_search_eol(
    buf: Buffer, start: Optional[int] = None, eol_style: int = EOL.CRLF
) -> Tuple[int, int]:
    """Return (pos, eol_len) of the next EOL at or after start, or (-1, 0)."""
    return _buf(buf).search_eol(_pos(start, "start"), _int(eol_style, "eol_style"))


@_c_function(-1)
def evbuffer_expand(buf: Buffer, datlen: int) -> int:
    """Prepare room for datlen more bytes; 0 or -1."""
    _buf(buf).expand(_size(datlen, "datlen"))
    return 0


@_c_function(None)
def evbuffer_reserve_space(buf: Buffer, size: int) -> Optional[memoryview]:
    """Return a writable view of size bytes to commit later, or None."""
    return _buf(buf).reserve_space(_size(size, "size"))


@_c_function(-1)
def evbuffer_commit_space(buf: Buffer, n: int) -> int:
    """Append the first n bytes of the reserved view; 0 or -1."""
    _buf(buf).commit_space(_size(n, "n"))
    return 0


@_c_function(-1)
def evbuffer_freeze(buf: Buffer, at_front: Any) -> int:
    """Refuse changes at the front (at_front true) or end; 0 or -1."""
    _buf(buf).freeze(bool(at_front))
    return 0


@_c_function(-1)
def evbuffer_unfreeze(buf: Buffer, at_front: Any) -> int:
    """Accept changes at the front (at_front true) or end again; 0 or -1."""
    _buf(buf).unfreeze(bool(at_front))
    return 0


@_c_function(None)
def evbuffer_add_cb(buf: Buffer, cb: Callable[..., Any], cbarg: Any = None) -> Any:
    """Run cb(buf, info, cbarg) after each change; the entry, or None."""
    buf = _buf(buf)
    if not callable(cb):
        raise TypeError(f"cb must be callable, not {type(cb).__name__}")
    return buf.add_cb(_ReportingBufferCb(cb), cbarg)


@_c_function(-1)
def evbuffer_remove_cb_entry(buf: Buffer, ent: Any) -> int:
    """Unregister the entry evbuffer_add_cb returned; 0 or -1."""
    _buf(buf).remove_cb(ent)
    return 0


@_c_function(-1)
def evbuffer_remove_cb(buf: Buffer, cb: Callable[..., Any], cbarg: Any = None) -> int:
    """Unregister the newest entry with this cb and cbarg; 0 or -1."""
    buf = _buf(buf)
    # Buffer keeps its entries newest first, the order C searches in.
    for entry in tuple(buf._cbs):
        fn = entry.cb.fn if isinstance(entry.cb, _ReportingBufferCb) else entry.cb
        if fn == cb and (entry.ctx is cbarg or entry.ctx == cbarg):
            buf.remove_cb(entry)
            return 0
    raise ValueError("no callback registered with this cb and cbarg")


# -- bufferevent: creation and connection ---------------------------------------


@_c_function(None)
def bufferevent_socket_new(
    base: Optional[EventBase], fd: Any, options: int
) -> Optional[SocketBufferEvent]:
    """Return a socket bufferevent on fd (a socket, a descriptor, -1/None)."""
    if base is not None:
        _base(base)
    sock = None if fd is None or (type(fd) is int and fd == -1) else fd
    return SocketBufferEvent(sock, _int(options, "options"), base=base)


@_c_function(None)
def bufferevent_pair_new(base: Optional[EventBase], options: int) -> Optional[list]:
    """Return ``[bev0, bev1]``, two bufferevents joined in memory, or None."""
    if base is not None:
        _base(base)
    return list(pair_new(_int(options, "options"), base=base))


@_c_function(None)
def bufferevent_filter_new(
    underlying: BufferEvent,
    input_filter: Any,
    output_filter: Any,
    options: int,
    free_context: Any,
    ctx: Any,
) -> Optional[FilterBufferEvent]:
    """Return a filter bufferevent over underlying, or None on bad input."""
    return filter_new(
        _bev(underlying),
        input_filter,
        output_filter,
        _int(options, "options"),
        free_context,
        ctx,
    )


@_c_function(-1)
def bufferevent_socket_connect(
    bev: SocketBufferEvent, address: Any, socklen: Optional[int] = None
) -> int:
    """Start connecting bev to address; 0 (CONNECTED or ERROR follows) or -1."""
    bev = _sock_bev(bev)
    if address is None:
        raise ValueError("address is required: adopting a connect is not supported")
    bev.connect(address)
    return 0


@_c_function(-1)
def bufferevent_socket_connect_hostname(
    bev: SocketBufferEvent, evdns_base: Any, family: int, hostname: str, port: int
) -> int:
    """Resolve hostname (evdns_base is ignored), then connect; 0 or -1."""
    _sock_bev(bev).connect_hostname(hostname, port, _int(family, "family"))
    return 0


@_c_function(-1)
def bufferevent_socket_get_dns_error(bev: SocketBufferEvent) -> int:
    """Return the last resolver error of connect_hostname (0: none); -1."""
    return _sock_bev(bev).get_dns_error()


@_c_function(None)
def bufferevent_free(bev: BufferEvent) -> None:
    """Free bev at once (pending output is not sent); returns None."""
    if not isinstance(bev, BufferEvent):
        raise TypeError(f"bev must be a BufferEvent, not {type(bev).__name__}")
    bev.free()


# -- bufferevent: callbacks and state ---------------------------------------------


@_c_function(None)
def bufferevent_setcb(
    bev: BufferEvent,
    readcb: Optional[Callable[..., Any]],
    writecb: Optional[Callable[..., Any]],
    eventcb: Optional[Callable[..., Any]],
    cbarg: Any = None,
) -> None:
    """Replace bev's three callbacks and their argument; returns None."""
    _bev(bev).setcb(readcb, writecb, eventcb, cbarg)


@_c_function(None)
def bufferevent_getcb(bev: BufferEvent) -> Optional[tuple]:
    """Return (readcb, writecb, eventcb, cbarg), or None on error."""
    return _bev(bev).getcb()


@_c_function(-1)
def bufferevent_enable(bev: BufferEvent, event: int) -> int:
    """Enable EV_READ and/or EV_WRITE; 0 or -1."""
    bev = _bev(bev)
    if _direction(event, "event"):
        bev.enable(event)
    return 0


@_c_function(-1)
def bufferevent_disable(bev: BufferEvent, event: int) -> int:
    """Disable EV_READ and/or EV_WRITE; 0 or -1."""
    bev = _bev(bev)
    if _direction(event, "event"):
        bev.disable(event)
    return 0


@_c_function(-1)
def bufferevent_get_enabled(bev: BufferEvent) -> int:
    """Return the enabled EV_READ/EV_WRITE mask, or -1 on error."""
    return _bev(bev).get_enabled()


@_c_function(None)
def bufferevent_get_input(bev: BufferEvent) -> Optional[Buffer]:
    """Return bev's input Buffer, or None on error."""
    return _bev(bev).get_input()


@_c_function(None)
def bufferevent_get_output(bev: BufferEvent) -> Optional[Buffer]:
    """Return bev's output Buffer, or None on error."""
    return _bev(bev).get_output()


@_c_function(None)
def bufferevent_get_base(bev: BufferEvent) -> Optional[EventBase]:
    """Return bev's EventBase, or None on error."""
    return _bev(bev).base


@_c_function(None)
def bufferevent_get_underlying(bev: BufferEvent) -> Optional[BufferEvent]:
    """Return the bufferevent under bev (None for sockets) or None."""
    return _bev(bev).get_underlying()


@_c_function(-1)
def bufferevent_getfd(bev: BufferEvent) -> int:
    """Return bev's file descriptor, or -1 when it has none or on error."""
    return _bev(bev).fileno()


@_c_function(None)
def bufferevent_pair_get_partner(bev: BufferEvent) -> Optional[BufferEvent]:
    """Return the other half of a pair; None for other kinds or on error."""
    get_partner = getattr(_bev(bev), "get_partner", None)
    return get_partner() if get_partner is not None else None


# -- bufferevent: data --------------------------------------------------------------


@_c_function(-1)
def bufferevent_write(bev: BufferEvent, data: Any, size: Optional[int] = None) -> int:
    """Queue data (its first size bytes) for sending; 0 or -1."""
    _bev(bev).write(_sized(data, size, "size"))
    return 0


@_c_function(-1)
def bufferevent_write_buffer(bev: BufferEvent, buf: Buffer) -> int:
    """Move all of buf into bev's output; 0 or -1."""
    _bev(bev).write_buffer(_buf(buf))
    return 0


@_c_function(b"")
def bufferevent_read(bev: BufferEvent, size: int) -> bytes:
    """Remove and return up to size input bytes; b"" when empty or on error."""
    return _bev(bev).read(_size(size, "size"))


@_c_function(-1)
def bufferevent_read_buffer(bev: BufferEvent, buf: Buffer) -> int:
    """Move bev's whole input into buf; 0 or -1."""
    _bev(bev).read_buffer(_buf(buf))
    return 0


# -- bufferevent: watermarks, timeouts, flush, trigger --------------------------


@_c_function(-1)
def bufferevent_set_timeouts(
    bev: BufferEvent, timeout_read: Optional[float], timeout_write: Optional[float]
) -> int:
    """Set read/write timeouts in seconds (None or 0: none); 0 or -1."""
    _bev(bev).set_timeouts(timeout_read, timeout_write)
    return 0


@_c_function(None)
def bufferevent_setwatermark(
    bev: BufferEvent, events: int, lowmark: int, highmark: int
) -> None:
    """Set the low/high watermarks of EV_READ and/or EV_WRITE; returns None."""
    bev = _bev(bev)
    if _direction(events, "events"):
        bev.setwatermark(events, lowmark, highmark)


@_c_function(-1)
def bufferevent_getwatermark(bev: BufferEvent, events: int) -> Any:
    """Return (low, high) for exactly EV_READ or EV_WRITE, else -1."""
    bev = _bev(bev)
    if _direction(events, "events") not in (EV_READ, EV_WRITE):
        raise ValueError(f"events must be exactly EV_READ or EV_WRITE, got {events:#x}")
    return bev.getwatermark(events)


@_c_function(-1)
def bufferevent_flush(bev: BufferEvent, iotype: int, mode: int) -> int:
    """Push buffered data through: 1 if some was produced, 0 if not, or -1."""
    bev = _bev(bev)
    if not _direction(iotype, "iotype"):
        _int(mode, "mode")
        return 0
    return bev.flush(iotype, mode)


@_c_function(None)
def bufferevent_trigger(bev: BufferEvent, iotype: int, options: int) -> None:
    """Run the read/write callback as if data moved; returns None."""
    bev = _bev(bev)
    # C ignores option bits it does not know.
    options = _int(options, "options") & _TRIGGER_OPTS
    if _direction(iotype, "iotype"):
        bev.trigger(iotype, options)


@_c_function(None)
def bufferevent_trigger_event(bev: BufferEvent, what: int, options: int) -> None:
    """Run the event callback with what, unchanged; returns None."""
    bev = _bev(bev)
    bev.trigger_event(_int(what, "what"), _int(options, "options") & _TRIGGER_OPTS)


@_c_function(-1)
def bufferevent_set_max_single_read(bev: BufferEvent, size: int) -> int:
    """Cap one read at size bytes (0: default); 0, or -1 if > INT_MAX."""
    bev = _bev(bev)
    bev.set_max_single_read(_size(size, "size"))
    # libevent stores the value, then refuses it for the input buffer's
    # int-sized max_read: the cap is in effect although -1 comes back.
    if INT_MAX < size <= EV_SSIZE_MAX:
        raise ValueError(f"size ({size}) exceeds INT_MAX")
    return 0


@_c_function(-1)
def bufferevent_set_max_single_write(bev: BufferEvent, size: int) -> int:
    """Cap one write at size bytes (0: default); 0 or -1."""
    _bev(bev).set_max_single_write(_size(size, "size"))
    return 0


@_c_function(-1)
def bufferevent_get_max_single_read(bev: BufferEvent) -> int:
    """Return the cap on one read in bytes, or -1 on error."""
    return _bev(bev).get_max_single_read()


@_c_function(-1)
def bufferevent_get_max_single_write(bev: BufferEvent) -> int:
    """Return the cap on one write in bytes, or -1 on error."""
    return _bev(bev).get_max_single_write()


# -- evconnlistener ------------------------------------------------------------------


def _socklen(family: int, address: Any) -> int:
    """The size C's accept() reports for ``address``, in bytes."""
    if family == socket.AF_INET:
        return 16  # sizeof(struct sockaddr_in)
    if family == socket.AF_INET6:
        return 28  # sizeof(struct sockaddr_in6)
    path = os.fsencode(address) if address else b""
    # sun_family, the path, and its NUL unless unnamed or abstract.
    return 2 + len(path) + (1 if path and path[:1] != b"\0" else 0)


def _accept_adapter(cb: Callable[..., Any]) -> Callable[..., Any]:
    """Turn Listener's cb(lev, sock, addr, ctx) into libevent's 5 arguments."""
    if not callable(cb):
        raise TypeError(f"cb must be callable, not {type(cb).__name__}")

    def accepted(lev: Listener, sock: Any, address: Any, ctx: Any) -> None:
        cb(lev, sock, address, _socklen(sock.family, address), ctx)

    return accepted


@_c_function(None)
def evconnlistener_new_bind(
    base: Optional[EventBase],
    cb: Callable[..., Any],
    ptr: Any,
    flags: int,
    backlog: int,
    address: Any,
    socklen: Optional[int] = None,
) -> Optional[Listener]:
    """Bind, listen and accept with cb(lev, sock, addr, socklen, ptr); or None."""
    if base is not None:
        _base(base)
    flags = _int(flags, "flags")
    if flags & ~_ALL_LEV_OPTS or flags & _UNSUPPORTED_LEV_OPTS:
        raise ValueError(f"flags {flags:#x} include unknown or unsupported options")
    backlog = _int(backlog, "backlog")
    if backlog == 0:
        raise ValueError("backlog 0 means an already listening socket")
    lev = Listener(
        _accept_adapter(cb),
        address,
        ptr,
        backlog=128 if backlog < 0 else backlog,
        reuse_address=bool(flags & LEV_OPT_REUSEABLE),
        base=base,
    )
    if flags & LEV_OPT_DISABLED:
        lev.disable()
    return lev


@_c_function(None)
def evconnlistener_free(lev: Listener) -> None:
    """Stop accepting and close the listening socket; returns None."""
    if not isinstance(lev, Listener):
        raise TypeError(f"lev must be a Listener, not {type(lev).__name__}")
    lev.free()


@_c_function(-1)
def evconnlistener_enable(lev: Listener) -> int:
    """Resume accepting; 0 or -1."""
    _listener(lev).enable()
    return 0


@_c_function(-1)
def evconnlistener_disable(lev: Listener) -> int:
    """Stop accepting (connections wait in the backlog); 0 or -1."""
    _listener(lev).disable()
    return 0


@_c_function(-1)
def evconnlistener_get_fd(lev: Listener) -> int:
    """Return the listening socket's descriptor, or -1."""
    return _listener(lev).fileno()


@_c_function(None)
def evconnlistener_get_base(lev: Listener) -> Optional[EventBase]:
    """Return the listener's EventBase, or None on error."""
    return _listener(lev).base


@_c_function(None)
def evconnlistener_set_cb(lev: Listener, cb: Callable[..., Any], arg: Any) -> None:
    """Replace the accept callback (libevent's 5 arguments); returns None."""
    _listener(lev).set_cb(_accept_adapter(cb), arg)


# Every C function defined above, then the constants.
__all__ = [
    name
    for name, value in list(globals().items())
    if callable(value)
    and not name.startswith("_")
    and name.split("_")[0] in ("event", "evbuffer", "bufferevent", "evconnlistener")
]
__all__ += ["INT_MAX", "ListenerOption", *_constants.__all__]
__all__ += [name for name in list(globals()) if name.startswith("LEV_OPT_")]
