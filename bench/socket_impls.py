"""The server and client halves of each implementation bench_socket.py runs.

Every implementation does the same two workloads over 127.0.0.1:

* ``bulk``: the client sends ``size`` bytes in 64 KiB application writes;
  the server counts what it receives and, once it has ``size`` bytes,
  answers with the count as an 8-byte big-endian integer.  The client
  times from "connected" to "count received" and checks the count.  The
  server keeps reading until EOF, so extra bytes would show in its total.
* ``rtt``: the client sends ``size`` messages of 64 bytes, one at a time;
  the server echoes whatever arrives; the client waits for all 64 bytes of
  the echo before sending the next message.  Message ``i`` starts with
  ``i`` as an 8-byte integer, and the client compares every echo with what
  it sent, so a broken implementation cannot post a number.

A server prints ``PORT <n>`` once it listens; both halves return a dict
that the driver prints as ``RESULT <json>``.  Imports are local to each
implementation so that the asyncio processes never load gevent and the
raw gevent processes never load geventbev.

No per-call timeouts: gevent creates a timer for every blocking socket call
that has one, which would tax exactly what is measured.  Instead each half
runs under one overall deadline (``limit`` seconds), the driver kills a
process that outlives it, and each process arms SIGALRM as a last resort.
"""

from __future__ import annotations

import struct
import sys
import time
from typing import Any, Callable, Dict

CHUNK = 64 * 1024
MSG_SIZE = 64
_PAD = bytes(range(MSG_SIZE - 8))
_ACK = struct.Struct(">Q")

#: One 64 KiB application write: a recognisable pattern, same for everyone.
PAYLOAD = bytes(range(256)) * (CHUNK // 256)

Result = Dict[str, Any]
Announce = Callable[[int], None]


def message(i: int) -> bytes:
    """The 64-byte message of round trip ``i`` (the echo must equal it)."""
    return i.to_bytes(8, "big") + _PAD


def _chunks(size: int) -> list:
    """The application writes of a bulk transfer of ``size`` bytes."""
    full, rest = divmod(size, CHUNK)
    return [PAYLOAD] * full + ([PAYLOAD[:rest]] if rest else [])


class _Echoes:
    """Checks each echo against the message sent; counts the mismatches."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.mismatches = 0
        self.first_ok = False
        self.last_ok = False

    def check(self, i: int, echo: Any) -> None:
        ok = echo == message(i)
        if not ok:
            self.mismatches += 1
        if i == 0:
            self.first_ok = ok
        if i == self.total - 1:
            self.last_ok = ok
        self.done = i + 1

    def result(self, elapsed: float) -> Result:
        return {
            "elapsed": elapsed,
            "roundtrips": self.done,
            "mismatches": self.mismatches,
            "first_ok": self.first_ok,
            "last_ok": self.last_ok,
        }


class _Counter:
    """Server-side bookkeeping shared by every implementation."""

    def __init__(self) -> None:
        self.received = 0
        self.echoed = 0
        self.first: float = 0.0
        self.last: float = 0.0

    def got(self, n: int) -> None:
        if not self.received:
            self.first = time.perf_counter()
        self.received += n
        self.last = time.perf_counter()

    def result(self) -> Result:
        return {
            "received": self.received,
            "echoed": self.echoed,
            "first_to_last": self.last - self.first,
        }


# -- raw gevent sockets: the ceiling ------------------------------------------


def raw_server(test: str, size: int, limit: float, announce: Announce) -> Result:
    """gevent sockets: recv_into one reusable 64 KiB buffer, sendall."""
    import socket

    import gevent
    import gevent.socket

    counter = _Counter()
    with gevent.Timeout(limit):
        lsock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        announce(lsock.getsockname()[1])
        conn, _ = lsock.accept()
        lsock.close()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        recv_into = conn.recv_into
        if test == "bulk":
            acked = False
            while True:
                n = recv_into(buf)
                if not n:
                    break
                counter.got(n)
                if not acked and counter.received >= size:
                    acked = True
                    conn.sendall(_ACK.pack(counter.received))
        else:
            sendall = conn.sendall
            while True:
                n = recv_into(buf)
                if not n:
                    break
                counter.received += n
                sendall(view[:n])
                counter.echoed += n
        conn.close()
    return counter.result()


def _raw_recv_exactly(conn: Any, view: memoryview, n: int) -> None:
    got = 0
    while got < n:
        k = conn.recv_into(view[got:n])
        if not k:
            raise EOFError(f"EOF after {got} of {n} bytes")
        got += k


def raw_client(test: str, size: int, port: int, limit: float) -> Result:
    """gevent sockets: sendall, then recv_into until the reply is whole."""
    import socket

    import gevent
    import gevent.socket

    with gevent.Timeout(limit):
        conn = gevent.socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(MSG_SIZE)
        view = memoryview(buf)
        if test == "bulk":
            chunks = _chunks(size)
            t0 = time.perf_counter()
            for chunk in chunks:
                conn.sendall(chunk)
            _raw_recv_exactly(conn, view, _ACK.size)
            elapsed = time.perf_counter() - t0
            result = {"elapsed": elapsed, "ack": _ACK.unpack(buf[: _ACK.size])[0]}
        else:
            echoes = _Echoes(size)
            sendall = conn.sendall
            t0 = time.perf_counter()
            for i in range(size):
                sendall(message(i))
                _raw_recv_exactly(conn, view, MSG_SIZE)
                echoes.check(i, buf)
            result = echoes.result(time.perf_counter() - t0)
        conn.close()
    return result


# -- geventbev -----------------------------------------------------------------


def geventbev_server(test: str, size: int, limit: float, announce: Announce) -> Result:
    """A Listener and a socket bufferevent with default settings, callbacks."""
    import gevent.event

    from geventbev import EV_READ, Event, Listener, Option, socket_new

    counter = _Counter()
    finished = gevent.event.Event()
    state: Dict[str, Any] = {"acked": False, "error": None, "bev": None}

    def bulk_readcb(bev: Any, ctx: Any) -> None:
        inp = bev.input
        n = len(inp)
        inp.drain(n)
        counter.got(n)
        if not state["acked"] and counter.received >= size:
            state["acked"] = True
            bev.write(_ACK.pack(counter.received))

    def echo_readcb(bev: Any, ctx: Any) -> None:
        n = len(bev.input)
        counter.received += n
        bev.output.add_buffer(bev.input)
        counter.echoed += n

    def eventcb(bev: Any, events: int, ctx: Any) -> None:
        if events & Event.ERROR:
            state["error"] = repr(bev.get_error())
        if events & (Event.EOF | Event.ERROR):
            finished.set()

    def on_accept(listener: Any, sock: Any, address: Any, ctx: Any) -> None:
        listener.free()
        bev = socket_new(sock, Option.CLOSE_ON_FREE)
        bev.setcb(bulk_readcb if test == "bulk" else echo_readcb, None, eventcb)
        bev.enable(EV_READ)
        state["bev"] = bev

    listener = Listener(on_accept, ("127.0.0.1", 0))
    announce(listener.getsockname()[1])
    ok = finished.wait(limit)
    if state["bev"] is not None:
        state["bev"].free()
    if not listener.freed:
        listener.free()
    result = counter.result()
    if not ok:
        result["error"] = f"server gave up after {limit:.0f} s"
    elif state["error"]:
        result["error"] = state["error"]
    return result


def geventbev_client(test: str, size: int, port: int, limit: float) -> Result:
    """Callback style: the writecb/readcb drive the transfer, as in libevent."""
    import gevent.event

    from geventbev import EV_READ, Event, Option, socket_new

    finished = gevent.event.Event()
    chunks = _chunks(size)
    echoes = _Echoes(size)
    state: Dict[str, Any] = {"next": 0, "t0": 0.0, "t1": 0.0, "ack": None}

    def fail(reason: str) -> None:
        state.setdefault("error", reason)
        finished.set()

    def send_next_chunk(bev: Any) -> None:
        i = state["next"]
        if i < len(chunks):
            state["next"] = i + 1
            bev.write(chunks[i])

    def bulk_writecb(bev: Any, ctx: Any) -> None:
        # Output fell to the write low watermark (0): queue the next write.
        send_next_chunk(bev)

    def bulk_readcb(bev: Any, ctx: Any) -> None:
        if len(bev.input) >= _ACK.size:
            state["t1"] = time.perf_counter()
            state["ack"] = _ACK.unpack(bev.input.remove(_ACK.size))[0]
            finished.set()

    def rtt_readcb(bev: Any, ctx: Any) -> None:
        inp = bev.input
        while len(inp) >= MSG_SIZE:
            i = echoes.done
            echoes.check(i, inp.remove(MSG_SIZE))
            if i + 1 == size:
                state["t1"] = time.perf_counter()
                finished.set()
                return
            bev.write(message(i + 1))

    def eventcb(bev: Any, events: int, ctx: Any) -> None:
        if events & Event.CONNECTED:
            state["t0"] = time.perf_counter()
            if test == "bulk":
                send_next_chunk(bev)
            else:
                bev.write(message(0))
        elif events & (Event.EOF | Event.ERROR):
            fail(f"event {events!r}: {bev.get_error()!r}")

    bev = socket_new(None, Option.CLOSE_ON_FREE)
    if test == "bulk":
        bev.setcb(bulk_readcb, bulk_writecb, eventcb)
    else:
        bev.setcb(rtt_readcb, None, eventcb)
    bev.enable(EV_READ)
    bev.connect(("127.0.0.1", port))
    ok = finished.wait(limit)
    bev.free()
    if not ok:
        raise TimeoutError(f"client gave up after {limit:.0f} s")
    if "error" in state:
        raise RuntimeError(state["error"])
    elapsed = state["t1"] - state["t0"]
    if test == "bulk":
        return {"elapsed": elapsed, "ack": state["ack"]}
    return echoes.result(elapsed)


def geventbev_blocking_client(test: str, size: int, port: int, limit: float) -> Result:
    """Blocking style from the main greenlet: write_all and read_exactly."""
    import gevent

    from geventbev import Option, socket_new

    with gevent.Timeout(limit):
        bev = socket_new(None, Option.CLOSE_ON_FREE)
        bev.connect(("127.0.0.1", port))
        bev.wait_connected()
        if test == "bulk":
            chunks = _chunks(size)
            t0 = time.perf_counter()
            for chunk in chunks:
                bev.write_all(chunk)
            ack = _ACK.unpack(bev.read_exactly(_ACK.size))[0]
            result = {"elapsed": time.perf_counter() - t0, "ack": ack}
        else:
            echoes = _Echoes(size)
            write_all = bev.write_all
            read_exactly = bev.read_exactly
            t0 = time.perf_counter()
            for i in range(size):
                write_all(message(i))
                echoes.check(i, read_exactly(MSG_SIZE))
            result = echoes.result(time.perf_counter() - t0)
        bev.free()
    return result


# -- asyncio streams ---------------------------------------------------------


def _asyncio_run(coro: Any, limit: float) -> Any:
    import asyncio

    # The stdlib loop, whatever policy a site module may have installed.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    if "uvloop" in sys.modules:
        raise RuntimeError("uvloop is loaded; this row must use the stdlib loop")
    return asyncio.run(asyncio.wait_for(coro, limit))


def asyncio_server(test: str, size: int, limit: float, announce: Announce) -> Result:
    """asyncio streams: reader.read(65536), writer.write + drain."""
    import asyncio

    counter = _Counter()

    async def handle(reader: Any, writer: Any, finished: Any) -> None:
        try:
            acked = False
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if test == "bulk":
                    counter.got(len(data))
                    if not acked and counter.received >= size:
                        acked = True
                        writer.write(_ACK.pack(counter.received))
                        await writer.drain()
                else:
                    counter.received += len(data)
                    writer.write(data)
                    await writer.drain()
                    counter.echoed += len(data)
            writer.close()
        finally:
            finished.set_result(None)

    async def main() -> str:
        finished = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(
            lambda r, w: handle(r, w, finished), "127.0.0.1", 0
        )
        announce(server.sockets[0].getsockname()[1])
        await finished
        server.close()
        await server.wait_closed()
        return type(asyncio.get_running_loop()).__name__

    loop_name = _asyncio_run(main(), limit)
    return dict(counter.result(), loop=loop_name)


def asyncio_client(test: str, size: int, port: int, limit: float) -> Result:
    """asyncio streams: write + drain, readexactly."""
    import asyncio

    async def main() -> Result:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if test == "bulk":
            chunks = _chunks(size)
            t0 = time.perf_counter()
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            ack = _ACK.unpack(await reader.readexactly(_ACK.size))[0]
            result = {"elapsed": time.perf_counter() - t0, "ack": ack}
        else:
            echoes = _Echoes(size)
            t0 = time.perf_counter()
            for i in range(size):
                writer.write(message(i))
                await writer.drain()
                echoes.check(i, await reader.readexactly(MSG_SIZE))
            result = echoes.result(time.perf_counter() - t0)
        writer.close()
        await writer.wait_closed()
        result["loop"] = type(asyncio.get_running_loop()).__name__
        return result

    return _asyncio_run(main(), limit)


#: Row name -> (server, client, uses gevent, description for the table note).
IMPLS: Dict[str, tuple] = {
    "raw": (
        raw_server,
        raw_client,
        True,
        "gevent sockets, sendall / recv_into a reusable buffer (the ceiling)",
    ),
    "geventbev": (
        geventbev_server,
        geventbev_client,
        True,
        "socket bufferevents, default settings, callbacks on both sides",
    ),
    "geventbev-blocking": (
        geventbev_server,
        geventbev_blocking_client,
        True,
        "same callback server; client in blocking style (write_all / read_exactly)",
    ),
    "asyncio": (
        asyncio_server,
        asyncio_client,
        False,
        "asyncio streams on the stdlib event loop (no uvloop)",
    ),
}

#: What each row imports, so the driver can load it before measuring CPU time.
IMPORTS: Dict[str, tuple] = {
    "raw": ("gevent", "gevent.socket"),
    "geventbev": ("gevent", "gevent.event", "geventbev"),
    "geventbev-blocking": ("gevent", "gevent.event", "geventbev"),
    "asyncio": ("asyncio",),
}
