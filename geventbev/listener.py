"""Listener: libevent's evconnlistener on a gevent server socket.

One greenlet accepts connections and hands each new socket to the user's
callback.  Disabling the listener parks that greenlet; the listening
socket stays open, so the kernel keeps queueing connections in the backlog
until the listener is enabled again.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Any, Callable, Optional

import gevent
import gevent.socket
from gevent import getcurrent

from .base import EventBase, get_default_base
from .errors import BufferEventError
from .sock import _family_for, _Wakeup

logger = logging.getLogger(__name__)

__all__ = ["Listener"]

AcceptCallback = Callable[["Listener", Any, Any, Any], None]

# accept() failures that concern one connection or a passing shortage,
# not the listening socket itself: keep accepting (after a pause for the
# resource ones, so an fd shortage does not turn into a busy loop).
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_TRANSIENT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_RESOURCE_PAUSE = 0.1


class Listener:
    """Accept stream connections and pass each to ``cb``.

    ``cb(listener, sock, address, ctx)`` runs in the listener's accept
    greenlet for each connection; ``sock`` is a connected gevent socket the
    callback now owns (typically it calls ``socket_new(sock,
    Option.CLOSE_ON_FREE)``).  An exception in ``cb`` is reported through
    the hub's error handler and accepting goes on; the socket is left to
    whoever holds it (the callback may have handed it on already), and is
    closed when nothing references it any more.

    Args:
        cb: the accept callback.
        address: where to listen: ``(host, port)`` (port 0 picks a free
            one), an IPv6 4-tuple, or a filesystem path for AF_UNIX.
        ctx: passed to ``cb`` unchanged.
        backlog: the kernel's queue of not-yet-accepted connections.
        reuse_address: set SO_REUSEADDR (TCP only).
        base: the EventBase (default: ``get_default_base()``).

    Raises:
        TypeError / ValueError: bad arguments, naming the argument.
        OSError: binding or listening failed.
    """

    def __init__(
        self,
        cb: AcceptCallback,
        address: Any,
        ctx: Any = None,
        *,
        backlog: int = 128,
        reuse_address: bool = True,
        base: Optional[EventBase] = None,
    ) -> None:
        if not callable(cb):
            raise TypeError(f"cb must be callable, got {cb!r}")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be an int >= 1, got {backlog!r}")
        family = _family_for(address)
        self.base = base if base is not None else get_default_base()
        self._cb = cb
        self._ctx = ctx
        sock = gevent.socket.socket(family, socket.SOCK_STREAM)
        try:
            if reuse_address and family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._enabled = True
        self._freed = False
        self._dead = False  # the accept loop ended on a fatal error
        self._wake = _Wakeup(self.base.hub)
        self._acceptor = gevent.spawn(self._accept_loop)
        self.base._register(self)
        logger.debug("%r: listening", self)

    def __repr__(self) -> str:
        where = "freed" if self._freed else repr(self._sock.getsockname())
        return f"<Listener {where}>"

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.free()

    @property
    def freed(self) -> bool:
        """True once ``free()`` was called."""
        return self._freed

    def _has_pending_work(self) -> bool:
        return self._enabled and not self._freed and not self._dead

    def getsockname(self) -> Any:
        """The bound address (with the real port when 0 was asked for)."""
        self._check_alive()
        return self._sock.getsockname()

    def fileno(self) -> int:
        """The listening socket's descriptor (-1 after free)."""
        return -1 if self._freed else self._sock.fileno()

    def enable(self) -> None:
        """Resume accepting."""
        self._check_alive()
        self._enabled = True
        self._wake.set()

    def disable(self) -> None:
        """Stop accepting; pending connections wait in the kernel backlog."""
        self._check_alive()
        self._enabled = False
        self.base._poke()

    def set_cb(self, cb: AcceptCallback, ctx: Any = None) -> None:
        """Replace the accept callback and its context."""
        if not callable(cb):
            raise TypeError(f"cb must be callable, got {cb!r}")
        self._cb, self._ctx = cb, ctx

    def free(self) -> None:
        """Stop accepting and close the listening socket (idempotent)."""
        if self._freed:
            return
        self._freed = True
        acceptor = self._acceptor
        if acceptor is not getcurrent() and not acceptor.dead:
            acceptor.kill(block=False)
        self._sock.close()
        self.base._unregister(self)
        logger.debug("listener freed")

    def _check_alive(self) -> None:
        if self._freed:
            raise BufferEventError("Listener has been freed")

    def _accept_loop(self) -> None:
        short_of_resources = False
        while not self._freed:
            if not self._enabled:
                self._wake.wait()
                continue
            try:
                conn, address = self._sock.accept()
            except OSError as exc:
                if self._freed:
                    return
                if exc.errno in _RESOURCE_ERRORS:
                    # One warning per shortage, not one per retry.
                    log = logger.debug if short_of_resources else logger.warning
                    log(
                        "accept failed (%s); retrying every %.1fs", exc, _RESOURCE_PAUSE
                    )
                    short_of_resources = True
                    gevent.sleep(_RESOURCE_PAUSE)
                    continue
                if exc.errno in _TRANSIENT_ERRORS:
                    continue
                # Nobody to raise to: the listening socket itself broke.
                logger.error("accept failed on %r, listener stops: %s", self, exc)
                self._dead = True
                self.base._poke()
                return
            if short_of_resources:
                logger.info("accepting again after a resource shortage")
                short_of_resources = False
            try:
                self._cb(self, conn, address, self._ctx)
            except Exception:
                # The socket is not closed here: the callback may already
                # have handed it to a bufferevent, which would then hold a
                # closed (soon recycled) descriptor number.  Whoever holds
                # it closes it; if nobody does, it closes when collected.
                self.base.hub.handle_error(self, *sys.exc_info())
            del conn
