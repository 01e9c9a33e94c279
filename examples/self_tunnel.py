"""A program that tunnels its own connections through itself.

The motivating case for pairs: code written against a connection wants to
talk to another part of the same program, with no socket in between.
Here one pair is the "trunk" of a tunnel, and several logical connections
are multiplexed over it with a tiny framing protocol:

    channel id (2 bytes) | length (2 bytes) | payload; length 0 closes

Each logical connection is a pair too: the application holds one end and
uses it like a socket (write_all, read_line, shutdown_write); the tunnel
holds the other end and turns what the application writes into frames.
On the far side of the trunk, a new channel id makes a new pair whose
application end goes to a server greenlet.  Everything runs in one
process, in callbacks and greenlets.

Run: python examples/self_tunnel.py
"""

from __future__ import annotations

import struct

import gevent

import geventbev
from geventbev import EOL, EV_READ, EV_WRITE, Event

HEADER = struct.Struct("!HH")  # channel id, payload length


class TunnelEnd:
    """One side of the trunk: frames out of local channels, frames in."""

    def __init__(self, trunk, on_open=None):
        self.trunk = trunk
        self.channels = {}  # channel id -> the tunnel's end of its pair
        self.on_open = on_open  # makes a channel for an unknown id
        self.frames = 0
        trunk.setcb(self._trunk_read, None, None)
        trunk.enable(EV_READ | EV_WRITE)

    def open(self, channel):
        """A new logical connection; returns the application's end."""
        app, local = geventbev.pair_new()
        self.channels[channel] = local
        local.setcb(self._local_read, None, self._local_event, channel)
        local.enable(EV_READ | EV_WRITE)
        app.enable(EV_READ | EV_WRITE)
        return app

    def _send(self, channel, payload):
        self.trunk.write(HEADER.pack(channel, len(payload)) + payload)
        self.frames += 1

    def _local_read(self, local, channel):
        while len(local.input):
            self._send(channel, local.input.remove(0xFFFF))

    def _local_event(self, local, events, channel):
        if events & Event.EOF:  # the application shut down its side
            self._local_read(local, channel)
            self._send(channel, b"")

    def _trunk_read(self, trunk, ctx):
        buf = trunk.input
        while len(buf) >= HEADER.size:
            channel, length = HEADER.unpack(buf.copyout(HEADER.size))
            if len(buf) < HEADER.size + length:
                return  # the rest of the frame is still to come
            buf.drain(HEADER.size)
            if channel not in self.channels:
                self.on_open(self, channel)
            local = self.channels[channel]
            if length:
                local.write(buf.remove(length))
            else:
                local.shutdown_write()  # the application reads EOF


def server(bev):
    """Answer each line with its length and its letters upper-cased."""
    while (line := bev.read_line(EOL.LF, timeout=5)) is not None:
        word = line.decode()
        bev.write_all(f"{word.upper()} ({len(word)} letters)\n".encode(), timeout=5)
    bev.shutdown_write()


def client(tunnel, channel, words):
    app = tunnel.open(channel)
    replies = []
    for word in words:
        app.write_all(word.encode() + b"\n", timeout=5)
        replies.append(app.read_line(EOL.LF, timeout=5).decode())
    app.shutdown_write()
    assert app.read_until_eof(timeout=5) == b""  # the server closed too
    return replies


def main() -> None:
    near_trunk, far_trunk = geventbev.pair_new()
    near = TunnelEnd(near_trunk)
    far = TunnelEnd(
        far_trunk,
        on_open=lambda end, channel: gevent.spawn(server, end.open(channel)),
    )
    conversations = {1: ["alpha", "beta"], 2: ["gamma"], 3: ["delta", "epsilon"]}
    jobs = {
        channel: gevent.spawn(client, near, channel, words)
        for channel, words in conversations.items()
    }
    gevent.joinall(list(jobs.values()), timeout=5, raise_error=True)
    for channel, job in sorted(jobs.items()):
        print(f"channel {channel}: {' | '.join(job.value)}")
    print(
        f"{len(jobs)} connections over one pair: {near.frames} frames out, "
        f"{far.frames} back"
    )


if __name__ == "__main__":
    main()
