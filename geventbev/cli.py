"""``python -m geventbev``: the relay, and a demo that runs it end to end.

``relay`` forwards every connection accepted on ``--listen`` to
``--connect``, with watermark backpressure and half-close passed through,
and logs one line per connection when it closes.  ``demo`` starts a local
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geventbev",
        description="A TCP relay built on geventbev bufferevents.",
    )
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=levels,
        help="logging level (default: INFO)",
    )
    # Also accepted after the command (`relay ... --log-level DEBUG`);
    # SUPPRESS keeps the top-level default when it is not given there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=levels,
        help="logging level (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    relay = sub.add_parser(
        "relay", parents=[common], help="relay TCP connections to a backend"
    )
    relay.add_argument(
        "--listen",
        required=True,
        type=_hostport,
        metavar="HOST:PORT",
        help="address to accept clients on "
        "(port 0 picks a free port; the bound address is printed)",
    )
    relay.add_argument(
        "--connect",
        required=True,
        type=_target,
        metavar="HOST:PORT",
        help="backend to relay each client to",
    )
    relay.add_argument(
        "--idle-timeout",
        type=_positive_float,
        metavar="S",
        help="close a connection after S seconds without traffic",
    )
    relay.add_argument(
        "--stats-interval",
        type=_positive_float,
        metavar="S",
        help="log connection and byte counts every S seconds",
    )

    demo = sub.add_parser(
        "demo", parents=[common], help="run the relay on an embedded example"
    )
    demo.add_argument(
        "--clients",
        type=int,
        default=4,
        help="number of concurrent clients (default: 4)",
    )
    demo.add_argument(
        "--mib", type=int, default=16, help="MiB each client downloads (default: 16)"
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
    handlers = _install_stop_signals(stop)
    try:
        relay = Relay(args.listen, args.connect, idle_timeout=args.idle_timeout)
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
        f"{format_hostport(args.connect)}",
        flush=True,
    )
    stats = None
    if args.stats_interval:
        stats = gevent.spawn(_log_stats_forever, relay, args.stats_interval)
    try:
        stop.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        if stats is not None:
            stats.kill()
        relay.close()
        totals = relay.stats()
        logger.info(
            "relay stopped: %d connections, up %d bytes, down %d bytes",
            totals["accepted"],
            totals["up"],
            totals["down"],
        )
    return 0


def _log_stats_forever(relay: Relay, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        totals = relay.stats()
        logger.info(
            "stats: %d active, %d accepted, up %d bytes, down %d bytes",
            totals["active"],
            totals["accepted"],
            totals["up"],
            totals["down"],
        )


# -- demo -------------------------------------------------------------------


def _pattern(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _demo_backend(bev: BufferEvent) -> None:
    """Answer ``GET <bytes> <seed>\\n`` with that many pattern bytes."""
    request = bev.read_line(EOL.LF, limit=100, timeout=10)
    if not request:
        return
    _, size_text, seed_text = request.decode().split()
    payload = _pattern(int(size_text), int(seed_text))
    for offset in range(0, len(payload), 1 << 18):
        bev.write_all(payload[offset : offset + (1 << 18)], timeout=30)


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
    ok = digest.digest() == hashlib.sha256(_pattern(size, index)).digest()
    return {"client": index, "bytes": received, "seconds": seconds, "ok": ok}


def run_demo(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.mib < 1:
        print("error: --clients and --mib must be >= 1", file=sys.stderr)
        return 2
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
