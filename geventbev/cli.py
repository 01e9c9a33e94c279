"""``python -m geventbev``: the relay, and a demo that runs it end to end.

``relay`` forwards every connection accepted on ``--listen`` to
``--connect``, with watermark backpressure and half-close passed through,
and logs one line per connection when it closes.  ``--compress-connect``
and ``--compress-listen`` make either side a zlib link, so that two relays
form a compressed tunnel.  ``demo`` starts a local
backend, a relay in front of it and several clients, all on loopback in
this process, and prints what each client moved and how fast.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import time
from typing import Any, Optional, Sequence

import gevent
import gevent.event

from .bufferevent import BufferEvent
from .constants import EOL
from .filter import wait_lingering
from .highlevel import connect, serve
from .relay import Relay, format_hostport, parse_hostport

logger = logging.getLogger("geventbev.cli")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _hostport(text: str) -> tuple:
    """A listening address: port 0 picks a free port."""
    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _target(text: str) -> tuple:
    """A connect address: port 0 is not a port one can connect to."""
    try:
        return parse_hostport(text, allow_port_zero=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {low} and {high}, got {value}"
            )
        return value

    return parse


def _level(text: str) -> str:
    level = text.upper()
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(_LEVELS)}, got {text!r}"
        )
    return level


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geventbev",
        description="A TCP relay built on geventbev bufferevents.",
    )
    log_help = "logging level: DEBUG, INFO, WARNING or ERROR (default: INFO)"
    parser.add_argument("--log-level", default="INFO", type=_level, help=log_help)
    # Also accepted after the command (`relay ... --log-level DEBUG`);
    # SUPPRESS keeps the top-level default when it is not given there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, type=_level, help=log_help
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    relay = sub.add_parser(
        "relay",
        parents=[common],
        help="relay TCP connections to a backend",
        description="Relay every TCP connection accepted on --listen to "
        "--connect, with backpressure (1 MiB per direction) and half-close "
        "passed through.  One INFO line per connection on close gives the "
        "bytes moved up (client to backend) and down (backend to client), "
        "and with --compress-* also the compressed bytes on the wire.  "
        "SIGINT or SIGTERM stops it (exit 0); open connections are closed, "
        "at once or after --drain-timeout.",
    )
    relay.add_argument(
        "--listen",
        required=True,
        type=_hostport,
        metavar="HOST:PORT",
        help="address to accept clients on; [ADDR]:PORT for IPv6; "
        "port 0 picks a free port (the bound address is printed)",
    )
    relay.add_argument(
        "--connect",
        required=True,
        type=_target,
        metavar="HOST:PORT",
        help="backend to relay each client to (a host name is resolved "
        "for each connection)",
    )
    relay.add_argument(
        "--idle-timeout",
        type=_positive_float,
        metavar="S",
        help="close a connection after S seconds in which no bytes moved "
        "either way (default: never)",
    )
    relay.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="close a client whose backend connect takes longer than S "
        "seconds (default: 10)",
    )
    relay.add_argument(
        "--drain-timeout",
        type=_positive_float,
        metavar="S",
        help="on SIGINT/SIGTERM, stop accepting and give open connections "
        "up to S seconds to finish; a second signal closes them at once "
        "(default: close them at once)",
    )
    relay.add_argument(
        "--compress-connect",
        action="store_true",
        help="zlib-compress the connection to --connect; the backend must "
        "be a relay run with --compress-listen",
    )
    relay.add_argument(
        "--compress-listen",
        action="store_true",
        help="accepted clients speak zlib: each must be a relay run with "
        "--compress-connect (anything else is closed with an error)",
    )
    relay.add_argument(
        "--stats-interval",
        type=_positive_float,
        metavar="S",
        help="log connection and byte counts every S seconds, at INFO (default: never)",
    )

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the relay on an embedded example",
        description="Start a local backend and a relay in front of it on "
        "127.0.0.1, download through the relay with several clients at "
        "once, check every byte, and print a table; exit 0 when all match.",
    )
    demo.add_argument(
        "--clients",
        type=_int_in(1, 256),
        default=4,
        help="number of concurrent clients, 1-256 (default: 4)",
    )
    demo.add_argument(
        "--mib",
        type=_int_in(1, 4096),
        default=16,
        help="MiB each client downloads, 1-4096 (default: 16)",
    )
    return parser


def _install_stop_signals(stop: gevent.event.Event) -> list:
    handlers = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        handlers.append(gevent.signal_handler(signum, stop.set))
    return handlers


def run_relay(args: argparse.Namespace) -> int:
    # Handlers first: a supervisor may signal as soon as it sees the banner.
    stop = gevent.event.Event()
    all_closed = gevent.event.Event()  # set when the last connection ends
    handlers = _install_stop_signals(stop)
    try:
        relay = Relay(
            args.listen,
            args.connect,
            idle_timeout=args.idle_timeout,
            connect_timeout=args.connect_timeout,
            compress_connect=args.compress_connect,
            compress_listen=args.compress_listen,
            on_close=lambda conn: relay.connections or all_closed.set(),
        )
    except OSError as exc:
        print(
            f"error: cannot listen on {format_hostport(args.listen)}: {exc}",
            file=sys.stderr,
        )
        for handler in handlers:
            handler.cancel()
        return 1
    # The one line scripts wait for: where we listen (port 0 resolved).
    print(
        f"relay listening on {format_hostport(relay.address)} -> "
        f"{format_hostport(args.connect)}{_zlib_note(relay)}",
        flush=True,
    )
    stats = None
    if args.stats_interval:
        stats = gevent.spawn(_log_stats_forever, relay, args.stats_interval)
    try:
        stop.wait()
        if args.drain_timeout:
            # Let the open connections finish; a second signal, or the
            # deadline, closes what is left.
            deadline = time.monotonic() + args.drain_timeout
            relay.stop_accepting()
            all_closed.clear()
            stop.clear()
            if relay.connections:
                logger.info(
                    "stopping: waiting up to %.1f s for %d open connection(s)",
                    args.drain_timeout,
                    len(relay.connections),
                )
                gevent.wait([stop, all_closed], timeout=args.drain_timeout, count=1)
            if not stop.is_set():
                # Closed connections over zlib links may still be sending
                # their last bytes (and trailers).
                wait_lingering(max(0.0, deadline - time.monotonic()), stop)
    finally:
        # The handlers stay installed until the end, so a second signal
        # during shutdown is absorbed instead of killing the process.
        if stats is not None:
            stats.kill()
        relay.close()
        totals = relay.stats()
        logger.info(
            "relay stopped: %d connection%s, up %d bytes, down %d bytes%s",
            totals["accepted"],
            "" if totals["accepted"] == 1 else "s",
            totals["up"],
            totals["down"],
            _wire_clause(relay, totals),
        )
        for handler in handlers:
            handler.cancel()
    return 0


def _zlib_note(relay: Relay) -> str:
    """The banner's note on which sides are zlib links ('' for none)."""
    sides = [
        name
        for name, on in (
            ("client side", relay.compress_listen),
            ("backend side", relay.compress_connect),
        )
        if on
    ]
    return f" (zlib on the {' and '.join(sides)})" if sides else ""


def _wire_clause(relay: Relay, totals: dict) -> str:
    """'; <wire bytes>' for the stats lines of a compressing relay."""
    if not relay.compressing:
        return ""
    return "; " + relay.wire_summary(
        totals["up"], totals["down"], totals["wire_up"], totals["wire_down"]
    )


def _log_stats_forever(relay: Relay, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        totals = relay.stats()
        logger.info(
            "stats: %d active, %d accepted, up %d bytes, down %d bytes%s",
            totals["active"],
            totals["accepted"],
            totals["up"],
            totals["down"],
            _wire_clause(relay, totals),
        )


# -- demo -------------------------------------------------------------------


_BLOCK = 1 << 16


def _pattern_blocks(size: int, seed: int) -> Any:
    """``size`` bytes of a seed-dependent pattern, 64 KiB at a time."""
    block = hashlib.sha256(str(seed).encode()).digest() * (_BLOCK // 32)
    for offset in range(0, size, _BLOCK):
        yield block[: min(_BLOCK, size - offset)]


def _pattern_digest(size: int, seed: int) -> bytes:
    digest = hashlib.sha256()
    for block in _pattern_blocks(size, seed):
        digest.update(block)
    return digest.digest()


def _demo_backend(bev: BufferEvent) -> None:
    """Answer ``GET <bytes> <seed>\\n`` with that many pattern bytes."""
    request = bev.read_line(EOL.LF, limit=100, timeout=10)
    if not request:
        return
    _, size_text, seed_text = request.decode().split()
    for block in _pattern_blocks(int(size_text), int(seed_text)):
        bev.write_all(block, timeout=30)


def _demo_client(address: Any, index: int, size: int) -> dict:
    started = time.monotonic()
    bev = connect(address, timeout=10)
    try:
        bev.write_all(f"GET {size} {index}\n".encode(), timeout=10)
        digest = hashlib.sha256()
        received = 0
        while True:
            chunk = bev.read_some(timeout=30)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
    finally:
        bev.free()
    seconds = time.monotonic() - started
    ok = digest.digest() == _pattern_digest(size, index)
    return {"client": index, "bytes": received, "seconds": seconds, "ok": ok}


def run_demo(args: argparse.Namespace) -> int:
    closed: list = []
    backend = serve(("127.0.0.1", 0), _demo_backend)
    relay = Relay(
        ("127.0.0.1", 0), backend.address, on_close=closed.append, idle_timeout=30
    )
    print(
        f"backend on {format_hostport(backend.address)}, relay on "
        f"{format_hostport(relay.address)}; {args.clients} clients x {args.mib} MiB"
    )
    size = args.mib << 20
    jobs = [
        gevent.spawn(_demo_client, relay.address, i, size) for i in range(args.clients)
    ]
    gevent.joinall(jobs, timeout=300)
    results = [job.value for job in jobs if job.successful()]
    failures = [job.exception for job in jobs if job.ready() and not job.successful()]
    gevent.sleep(0.2)  # let the relay log its closes
    relay.close()
    backend.stop(timeout=1)

    print(f"{'client':>6} {'bytes':>12} {'seconds':>8} {'MiB/s':>8}  sha256")
    for row in results:
        rate = row["bytes"] / row["seconds"] / (1 << 20) if row["seconds"] else 0.0
        print(
            f"{row['client']:>6} {row['bytes']:>12} {row['seconds']:>8.3f} "
            f"{rate:>8.1f}  {'ok' if row['ok'] else 'MISMATCH'}"
        )
    print(
        f"relay connections closed: {len(closed)}; relayed down "
        f"{sum(c.down for c in closed)} bytes, up {sum(c.up for c in closed)} bytes"
    )
    good = len(results) == args.clients and all(
        r["ok"] and r["bytes"] == size for r in results
    )
    for exc in failures:
        print(f"client failed: {exc!r}", file=sys.stderr)
    print("demo " + ("passed" if good else "FAILED"))
    return 0 if good else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "relay":
        return run_relay(args)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
