"""An echo server in libevent's callback style, and a client that uses it.

The server is written the way a libevent program is: a Listener whose
callback wraps each socket in a bufferevent, a read callback that moves the
input to the output, and an event callback that frees the bufferevent on
EOF or error.  The client talks to it in the blocking style.

Run: python examples/echo_callbacks.py
"""

from __future__ import annotations

import geventbev
from geventbev import EV_READ, EV_WRITE, Event, Option


def echo_read(bev, ctx):
    # Move every received byte to the output without copying it.
    bev.output.add_buffer(bev.input)


def echo_event(bev, events, ctx):
    if events & (Event.EOF | Event.ERROR):
        bev.free()


def accept(listener, sock, address, ctx):
    bev = geventbev.socket_new(sock, Option.CLOSE_ON_FREE)
    bev.setcb(echo_read, None, echo_event)
    bev.enable(EV_READ | EV_WRITE)


def main() -> None:
    listener = geventbev.Listener(accept, ("127.0.0.1", 0))
    client = geventbev.connect(listener.getsockname(), timeout=5)
    for word in (b"alpha", b"beta", b"gamma"):
        client.write_all(word + b"\r\n", timeout=5)
        print("echoed:", client.read_line(timeout=5).decode())
    client.free()
    listener.free()


if __name__ == "__main__":
    main()
