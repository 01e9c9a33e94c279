"""Unchanged socket code running over a bufferevent.

``fetch_greeting`` below is ordinary code written against the socket
module (sendall, makefile, readline).  ``BufferEventSocket`` lets it run on
a geventbev bufferevent without a single change, so a program can move to
bufferevents one function at a time.

Run: python examples/legacy_socket.py
"""

from __future__ import annotations

import geventbev
from geventbev import EOL


def fetch_greeting(sock, name: str) -> str:
    """Legacy code: knows nothing about bufferevents."""
    sock.sendall(f"HELLO {name}\n".encode())
    with sock.makefile("rb") as reader:
        return reader.readline().decode().strip()


def greeter(bev) -> None:
    # A serve() handler in the blocking style: one greenlet per connection.
    line = bev.read_line(EOL.LF, limit=1024, timeout=5)
    bev.write_all(b"welcome, " + line.split(b" ", 1)[1] + b"\n")


def main() -> None:
    server = geventbev.serve(("127.0.0.1", 0), greeter)
    bev = geventbev.connect(server.address, timeout=5)
    with geventbev.BufferEventSocket(bev) as sock:
        sock.settimeout(5)
        print(fetch_greeting(sock, "legacy code"))
    server.stop(timeout=1)


if __name__ == "__main__":
    main()
