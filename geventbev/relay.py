"""A TCP relay built from socket bufferevents (the main job of the CLI).

Each accepted client gets a bufferevent for itself and one for a new
connection to the backend; bytes read on one side are moved, without
copying, into the other side's output.

Backpressure: when one side's output holds ``pause_above`` bytes, the
relay stops reading from the other side and sets a write low watermark of
half that on the slow side; its write callback re-enables reading once the
output has drained that far.  So a slow receiver costs at most about
``pause_above`` plus one read of memory per direction, and the rest waits
in the kernel (and, beyond that, at the sender).

Half-close: EOF from one side becomes a write shutdown on the other once
everything before it has been sent; the connection ends when both
directions have finished, or at once on an error (after passing on what
was already read, bounded by ``close_timeout``).

Compression: either side may be a zlib link (``compress_connect`` for the
backend side, ``compress_listen`` for the client side), so that two relays
form a compressed tunnel::

    client -> relay A (compress_connect) ==zlib==> relay B (compress_listen)
           -> backend

A zlib side is its socket bufferevent wrapped in a filter bufferevent
(``compress.zlib_filter_new``); the relay logic above runs unchanged on
the filter, which carries the backpressure (it stops feeding its socket
at 256 KiB, so its own output fills up) and turns a write shutdown into
the stream's trailer followed by the socket's shutdown.  The payload
counters ``up``/``down`` count decompressed bytes; ``wire_up`` and
``wire_down`` count what actually crossed the compressed socket(s), read
from the socket bufferevents' buffers.  A peer that sends anything but a
zlib stream ends its connection with an error naming zlib.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Optional

import gevent

from .base import EventBase, get_default_base
from .bufferevent import BufferEvent
from .compress import zlib_filter_new
from .constants import EV_READ, EV_WRITE, Event, Option
from .errors import BufferEventError
from .listener import Listener
from .sock import _is_ip_literal, socket_new

logger = logging.getLogger(__name__)

__all__ = ["Relay", "RelayConnection", "parse_hostport", "format_hostport"]

#: Bytes one side's output may hold before the relay stops reading the other.
DEFAULT_PAUSE_ABOVE = 1 << 20
#: The most inflated bytes a zlib link holds for the relay to move on.
INFLATE_AHEAD = 256 * 1024


def parse_hostport(
    text: str, *, name: str = "address", allow_port_zero: bool = True
) -> tuple:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT`` into ``(host, port)``.

    Port 0 ("pick a free port") only makes sense for listening; pass
    ``allow_port_zero=False`` for an address to connect to.

    Raises:
        ValueError: naming ``name`` when the text is not of that form.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"{name} must be HOST:PORT, got {text!r}")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{name}: write IPv6 addresses as [ADDR]:PORT, got {text!r}")
    if not host:
        raise ValueError(f"{name} has no host: {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{name} has a bad port {port_text!r} in {text!r}") from None
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"{name} port must be in {lowest}..65535, got {port}")
    return host, port


def format_hostport(address: Any) -> str:
    """The inverse of ``parse_hostport`` for a socket address."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class RelayConnection:
    """One client and its backend connection.

    Attributes:
        ident: a small number for log lines.
        client_address: the client's address.
        up: bytes moved client -> backend (payload: decompressed).
        down: bytes moved backend -> client (payload: decompressed).
        wire_up: compressed bytes of the up direction on the zlib link(s):
            received from the client with ``compress_listen``, sent to the
            backend with ``compress_connect`` (0 without compression).
        wire_down: likewise for the down direction.
        started: ``time.monotonic()`` at accept.
        reason: why it ended (None while open).
        client, backend: the bufferevents the relay reads and writes (a
            filter bufferevent on a zlib side).
        client_socket, backend_socket: the socket bufferevents under them
            (the same objects when that side is not compressed).
    """

    def __init__(self, relay: Relay, ident: int, sock: Any, address: Any) -> None:
        self.relay = relay
        self.ident = ident
        self.client_address = address
        self.up = 0
        self.down = 0
        self.wire_up = 0
        self.wire_down = 0
        self.started = time.monotonic()
        self.last_activity = self.started
        self.reason: Optional[str] = None
        self._eof_from: set = set()
        self._paused: set = set()
        base = relay.base
        self.client_socket = socket_new(sock, Option.CLOSE_ON_FREE, base=base)
        self.backend_socket = socket_new(None, Option.CLOSE_ON_FREE, base=base)
        self.client = self._wrap(self.client_socket, relay.compress_listen, True)
        self.backend = self._wrap(self.backend_socket, relay.compress_connect, False)
        self._peer = {self.client: self.backend, self.backend: self.client}
        for bev in (self.client, self.backend):
            bev.setcb(self._on_read, self._on_write, self._on_event, bev)
            if relay.idle_timeout:
                bev.set_timeouts(relay.idle_timeout, relay.idle_timeout)
        for sock_bev in (self.client_socket, self.backend_socket):
            # Every send on a socket is traffic, also while backpressure
            # keeps the output above its low watermark (no write callback
            # then), or while a filter is still compressing.
            sock_bev.output.add_cb(self._on_output_change)
        self.client.enable(EV_READ | EV_WRITE)
        self.backend.enable(EV_READ | EV_WRITE)
        self._connect_timer: Any = None
        if relay.connect_timeout:
            self._connect_timer = base.loop.timer(relay.connect_timeout)
            self._connect_timer.start(self._connect_timed_out)
        host, port = relay.target
        try:
            if _is_ip_literal(host):
                self.backend_socket.connect((host, port))
            else:
                self.backend_socket.connect_hostname(host, port)
        except (BufferEventError, ValueError, TypeError) as exc:
            # Reported by the accept path once the connection is tracked.
            self.reason = f"backend connect failed: {exc}"

    def _wrap(self, sock_bev: BufferEvent, compress: bool, client: bool) -> BufferEvent:
        """``sock_bev`` itself, or a zlib filter over it that counts the
        compressed bytes into ``wire_up``/``wire_down``."""
        if not compress:
            return sock_bev
        sock_bev.input.add_cb(self._count_wire_in, client)
        sock_bev.output.add_cb(self._count_wire_out, client)
        link = zlib_filter_new(sock_bev, Option.CLOSE_ON_FREE)
        # Inflate at most this much ahead of the other side: without a
        # bound, one read of compressed input (a zlib bomb: zeros compress
        # about 1000:1) would inflate into tens of MiB before backpressure
        # could look at it.
        link.setwatermark(EV_READ, 0, INFLATE_AHEAD)
        return link

    def _count_wire_in(self, buf: Any, info: Any, client: bool) -> None:
        # Received compressed bytes: the client's go up, the backend's down.
        if client:
            self.wire_up += info.n_added
        else:
            self.wire_down += info.n_added

    def _count_wire_out(self, buf: Any, info: Any, client: bool) -> None:
        # Sent compressed bytes (the socket drained them from its output).
        if client:
            self.wire_down += info.n_deleted
        else:
            self.wire_up += info.n_deleted

    def _on_output_change(self, buf: Any, info: Any, ctx: Any) -> None:
        if info.n_deleted:
            self.last_activity = time.monotonic()

    def _connect_timed_out(self) -> None:
        # Runs in the hub: close from a greenlet of its own.
        timer, self._connect_timer = self._connect_timer, None
        if timer is not None:
            timer.close()
        if self.reason is None and not self.backend.freed:
            gevent.spawn(
                self.close,
                f"backend connect timed out after {self.relay.connect_timeout} s",
            )

    def _name(self, bev: BufferEvent) -> str:
        return "client" if bev is self.client else "backend"

    def _on_read(self, src: BufferEvent, ctx: Any) -> None:
        dst = self._peer[src]
        moved = len(src.input)
        dst.output.add_buffer(src.input)
        self.last_activity = time.monotonic()
        if src is self.client:
            self.up += moved
        else:
            self.down += moved
        if len(dst.output) >= self.relay.pause_above and src not in self._paused:
            # The receiver is slower than the sender: stop reading until
            # dst's output has drained to half the mark.
            self._paused.add(src)
            src.disable(EV_READ)
            dst.setwatermark(EV_WRITE, self.relay.pause_above // 2, 0)

    def _on_write(self, dst: BufferEvent, ctx: Any) -> None:
        # The receiver took bytes: that is traffic too, even while the
        # other side's reading is paused and no read callback runs.
        self.last_activity = time.monotonic()
        src = self._peer[dst]
        if src in self._paused:
            self._paused.discard(src)
            dst.setwatermark(EV_WRITE, 0, 0)
            if src not in self._eof_from and not src.freed:
                src.enable(EV_READ)
        self._maybe_finish()

    def _on_event(self, bev: BufferEvent, events: int, ctx: Any) -> None:
        if events & Event.CONNECTED:
            logger.debug("#%d backend connected", self.ident)
            if self._connect_timer is not None:
                self._connect_timer.close()
                self._connect_timer = None
            return
        if events & Event.TIMEOUT:
            idle = time.monotonic() - self.last_activity
            if idle >= self.relay.idle_timeout * 0.99 or events & Event.WRITING:
                self.close(f"idle timeout on {self._name(bev)}")
            elif bev not in self._paused:
                bev.enable(EV_READ if events & Event.READING else EV_WRITE)
            return
        if events & Event.EOF and not events & Event.ERROR:
            self._eof_from.add(bev)
            peer = self._peer[bev]
            if len(bev.input):
                self._on_read(bev, ctx)
            if not peer.freed:
                peer.shutdown_write()
            self._maybe_finish()
            return
        # ERROR: pass on what we already have, then end the connection.
        error = bev.get_error()
        if bev is self.backend and not self.backend_socket.connected:
            self.close(f"backend connect failed: {error}")
            return
        if len(bev.input):
            self._on_read(bev, ctx)
        self.close(f"{self._name(bev)} error: {error}", drain=self._peer[bev])

    def _maybe_finish(self) -> None:
        if (
            self.reason is None
            and len(self._eof_from) == 2
            and not len(self.client.output)
            and not len(self.backend.output)
        ):
            self.close("closed by both sides", clean=True)

    def close(
        self, reason: str, drain: Optional[BufferEvent] = None, clean: bool = False
    ) -> None:
        """End the connection; ``drain`` is a side whose queued output is
        still sent (bounded by the relay's close_timeout) before it closes.

        A zlib side lets its socket send what the filter handed it (the
        stream's trailer) only on a ``clean`` close; otherwise its socket
        closes at once, like a plain side's."""
        if self.reason is not None:
            return
        self.reason = reason
        if self._connect_timer is not None:
            self._connect_timer.close()
            self._connect_timer = None
        sides = (
            (self.client, self.client_socket),
            (self.backend, self.backend_socket),
        )
        for bev, sock_bev in sides:
            if bev is not drain:
                bev.free()
                if not clean:
                    sock_bev.free()
        if drain is not None and not drain.freed:
            gevent.spawn(self._drain_then_free, drain)
        self.relay._closed(self)

    def _drain_then_free(self, bev: BufferEvent) -> None:
        bev.setcb(None, None, None)
        failed = bev._drain_and_free(self.relay.close_timeout)
        if failed is not None:  # an error or timeout: the peer is gone
            logger.debug(
                "#%d: could not send the last %d bytes: %s", self.ident, *failed
            )


class Relay:
    """Accept connections on ``listen`` and relay each to ``target``.

    Args:
        listen: ``(host, port)`` to listen on (port 0 picks one).
        target: ``(host, port)`` of the backend; host names are resolved
            per connection.
        idle_timeout: seconds without traffic after which a connection is
            closed (None: never).
        pause_above: output bytes at which reading from the other side
            pauses (backpressure).
        close_timeout: seconds allowed to send what is queued when one side
            fails.
        connect_timeout: seconds a backend connect may take before the
            client is closed (None: as long as the kernel tries).
        compress_connect: zlib-compress the connection to ``target`` (its
            peer must be a relay with ``compress_listen``).
        compress_listen: the accepted clients speak zlib (each must be a
            relay with ``compress_connect``).
        on_close: called with each RelayConnection when it ends.

    Attributes:
        address: the bound listening address.
        connections: the open RelayConnections.
        total_up, total_down: bytes relayed by connections that ended.
        total_wire_up, total_wire_down: compressed bytes on the zlib
            link(s) of connections that ended.
        compressing: True when either side is a zlib link.
    """

    def __init__(
        self,
        listen: tuple,
        target: tuple,
        *,
        idle_timeout: Optional[float] = None,
        pause_above: int = DEFAULT_PAUSE_ABOVE,
        close_timeout: float = 10.0,
        connect_timeout: Optional[float] = 10.0,
        compress_connect: bool = False,
        compress_listen: bool = False,
        on_close: Optional[Callable[[RelayConnection], None]] = None,
        base: Optional[EventBase] = None,
    ) -> None:
        parse_hostport(format_hostport(target), name="target", allow_port_zero=False)
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        if pause_above < 1:
            raise ValueError(f"pause_above must be >= 1 byte, got {pause_above!r}")
        self.base = base if base is not None else get_default_base()
        self.target = target
        self.idle_timeout = idle_timeout
        self.pause_above = pause_above
        self.close_timeout = close_timeout
        if connect_timeout is not None and connect_timeout <= 0:
            raise ValueError(
                f"connect_timeout must be > 0 seconds, got {connect_timeout!r}"
            )
        self.connect_timeout = connect_timeout
        self.compress_connect = bool(compress_connect)
        self.compress_listen = bool(compress_listen)
        self.compressing = self.compress_connect or self.compress_listen
        self.on_close = on_close
        self.connections: set = set()
        self.total_up = 0
        self.total_down = 0
        self.total_wire_up = 0
        self.total_wire_down = 0
        self.accepted = 0
        self._ids = itertools.count(1)
        self._listener = Listener(self._accept, listen, base=self.base)
        self.address = self._listener.getsockname()

    def _accept(self, listener: Listener, sock: Any, address: Any, ctx: Any) -> None:
        self.accepted += 1
        conn = RelayConnection(self, next(self._ids), sock, address)
        self.connections.add(conn)
        if conn.reason is not None:  # the backend connect failed at once
            reason, conn.reason = conn.reason, None
            conn.close(reason)
            return
        logger.debug("#%d accepted from %s", conn.ident, format_hostport(address))

    def _closed(self, conn: RelayConnection) -> None:
        self.connections.discard(conn)
        self.total_up += conn.up
        self.total_down += conn.down
        self.total_wire_up += conn.wire_up
        self.total_wire_down += conn.wire_down
        seconds = time.monotonic() - conn.started
        wire = ""
        if self.compressing:
            wire = "; " + self.wire_summary(
                conn.up, conn.down, conn.wire_up, conn.wire_down
            )
        logger.info(
            "#%d %s closed: up %d bytes, down %d bytes, %.3f s (%s)%s",
            conn.ident,
            format_hostport(conn.client_address),
            conn.up,
            conn.down,
            seconds,
            conn.reason,
            wire,
        )
        if self.on_close is not None:
            self.on_close(conn)

    def wire_summary(self, up: int, down: int, wire_up: int, wire_down: int) -> str:
        """The log-line clause comparing payload and zlib wire bytes ("" for
        a relay without compression)."""
        if not (self.compress_connect or self.compress_listen):
            return ""
        where = {
            (True, False): "zlib link to backend",
            (False, True): "zlib link to client",
            (True, True): "zlib links to both sides",
        }[(self.compress_connect, self.compress_listen)]
        payload = up + down
        if self.compress_connect and self.compress_listen:
            payload *= 2  # each byte crosses two compressed links
        share = f"{100.0 * (wire_up + wire_down) / payload:.1f}%" if payload else "-"
        return (
            f"{where}: wire up {wire_up} bytes, down {wire_down} "
            f"bytes, {share} of payload"
        )

    def stats(self) -> dict:
        """Counters for the stats line: connections and bytes so far.

        Returns:
            ``active``, ``accepted``, payload ``up`` and ``down`` bytes,
            and ``wire_up``/``wire_down``: the compressed bytes on the
            zlib link(s), 0 when the relay does not compress.
        """
        return {
            "active": len(self.connections),
            "accepted": self.accepted,
            "up": self.total_up + sum(c.up for c in self.connections),
            "down": self.total_down + sum(c.down for c in self.connections),
            "wire_up": self.total_wire_up + sum(c.wire_up for c in self.connections),
            "wire_down": self.total_wire_down
            + sum(c.wire_down for c in self.connections),
        }

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections go on."""
        if not self._listener.freed:
            self._listener.free()

    def close(self, reason: str = "relay shutting down") -> None:
        """Stop accepting and close every open connection."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close(reason)
