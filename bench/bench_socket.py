"""Raw gevent sockets, geventbev and asyncio streams, side by side.

Usage (from the repository root)::

    python bench/bench_socket.py [--bulk-mib 256] [--roundtrips 100000]
        [--repeat 3] [--impl raw,geventbev,geventbev-blocking,asyncio]
        [--cpu 0 | --cpu none] [--profile DIR] [--trace-switches]

Each row runs as a pair of processes (server and client, started here with
subprocess, both pinned with ``taskset -c CPU`` unless ``--cpu none``) over
127.0.0.1, once per workload and repetition; the best run of each row is
kept.  The workloads and the checks that keep a broken implementation from
posting a number are described in ``socket_impls.py``.

``--profile DIR`` runs every child under cProfile (CPU-time clock), writes
one ``.prof`` file per process to DIR and prints the heaviest functions;
``--trace-switches`` counts greenlet switches per chunk / round trip;
``--wrap-child CMD`` runs each child under an outside tool (a sampling
profiler such as py-spy, ``strace -c -f``, ``perf stat``).  All of them slow
the children down, so the table they print is not a benchmark result.
Every run also prints each process's CPU time per chunk / round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Measure the library of this checkout, not some installed copy.
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_common  # noqa: E402
import socket_impls  # noqa: E402

MIB = 1 << 20
TARGET_BULK = 0.85
TARGET_RTT = 0.75


def _time_limit(test: str, size: int) -> float:
    """Seconds one process may take: generous (2 MiB/s, 1 ms per round trip)."""
    if test == "bulk":
        return 30.0 + size / (2 * MIB)
    return 30.0 + size / 1000.0


# -- child processes -----------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    """Run one server or client half and print ``RESULT <json>``."""
    limit = _time_limit(args.test, args.size)
    # Last resort if everything else hangs: SIGALRM's default action kills.
    signal.alarm(int(limit) + 30)
    server, client, uses_gevent, _ = socket_impls.IMPLS[args.impl]
    counter: Dict[str, int] = {"switches": 0}
    if args.trace_switches and uses_gevent:
        import greenlet

        def trace(event: str, _args: Any) -> None:
            if event in ("switch", "throw"):
                counter["switches"] += 1

        greenlet.settrace(trace)

    def announce(port: int) -> None:
        print(f"PORT {port}", flush=True)

    if args.child == "server":
        call: Any = (server, args.test, args.size, limit, announce)
    else:
        call = (client, args.test, args.size, args.port, limit)
    # Import what the workload needs first, so the CPU time below is the
    # workload's own and not the import of gevent.
    for module in socket_impls.IMPORTS[args.impl]:
        __import__(module)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.profile:
        import cProfile

        # CPU time, not wall time: with both processes on one CPU, wall
        # time would charge the peer's work to whichever call was running
        # (a send that wakes the peer) or waiting (the hub's poll).
        profiler = cProfile.Profile(time.process_time)
        result = profiler.runcall(*call)
        name = f"{args.impl}_{args.test}_{args.child}.prof"
        profiler.dump_stats(os.path.join(args.profile, name))
    else:
        result = call[0](*call[1:])
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    # The whole call, connection setup included (small next to the workload).
    result["cpu"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result["cpu_sys"] = cpu1.ru_stime - cpu0.ru_stime
    if args.trace_switches and uses_gevent:
        result["switches"] = counter["switches"]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the driver ----------------------------------------------------------------


class RunFailed(Exception):
    """One server/client pair did not finish or gave wrong numbers."""


def _pin_prefix(cpu: Optional[str]) -> List[str]:
    if cpu is None:
        return []
    taskset = shutil.which("taskset")
    if taskset is None:
        return []
    return [taskset, "-c", cpu]


def _read_port(proc: subprocess.Popen, timeout: float) -> tuple:
    """Read the server's ``PORT <n>`` line; return (port, bytes read after it)."""
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    data = b""
    deadline = time.monotonic() + timeout
    # A wrapping tool (--wrap-child) may print lines of its own first.
    while not data.startswith(b"PORT ") or b"\n" not in data:
        if b"\n" in data and not data.startswith(b"PORT "):
            data = data.partition(b"\n")[2]
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunFailed(f"server announced no port within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        piece = os.read(fd, 4096)
        if not piece:
            raise RunFailed("server exited before announcing its port")
        data += piece
    line, _, rest = data.partition(b"\n")
    return int(line.split()[1]), rest


def _parse_result(who: str, out: bytes, err: bytes, code: int) -> Dict[str, Any]:
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            if code != 0:
                break
            return json.loads(line[len("RESULT ") :])
    tail = err.decode(errors="replace").strip().splitlines()[-15:]
    raise RunFailed(f"{who} exited {code} without a result:\n  " + "\n  ".join(tail))


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def run_pair(
    impl: str, test: str, size: int, opts: argparse.Namespace
) -> Dict[str, Any]:
    """Run one server/client pair; return the checked client result."""
    limit = _time_limit(test, size) + 30
    base = [sys.executable, os.path.abspath(__file__), "--child"]
    common = ["--impl", impl, "--test", test, "--size", str(size)]
    if opts.profile:
        common += ["--profile", opts.profile]
    if opts.trace_switches:
        common.append("--trace-switches")

    def prefix(role: str) -> List[str]:
        wrap = []
        if opts.wrap_child:
            text = opts.wrap_child.format(impl=impl, test=test, role=role)
            wrap = shlex.split(text)
        return _pin_prefix(opts.cpu) + wrap

    server = subprocess.Popen(
        prefix("server") + base + ["server"] + common,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = None
    try:
        port, early = _read_port(server, 30)
        client = subprocess.Popen(
            prefix("client") + base + ["client"] + common + ["--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            cout, cerr = client.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"client still running after {limit:.0f} s") from None
        try:
            sout, serr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise RunFailed("server did not finish 30 s after the client") from None
    finally:
        if client is not None:
            _kill(client)
        _kill(server)
    res = _parse_result("client", cout, cerr, client.returncode)
    sres = _parse_result("server", early + sout, serr, server.returncode)
    _check(test, size, res, sres)
    res["server"] = sres
    return res


def _check(test: str, size: int, res: Dict[str, Any], sres: Dict[str, Any]) -> None:
    """Refuse a run whose byte counts or echoes are wrong."""
    if sres.get("error"):
        raise RunFailed(f"server reported: {sres['error']}")
    if test == "bulk":
        if res.get("ack") != size:
            raise RunFailed(f"server acknowledged {res.get('ack')} of {size} bytes")
        if sres["received"] != size:
            raise RunFailed(f"server received {sres['received']} of {size} bytes")
        return
    want = size * socket_impls.MSG_SIZE
    if res["roundtrips"] != size:
        raise RunFailed(f"client finished {res['roundtrips']} of {size} round trips")
    if res["mismatches"] or not (res["first_ok"] and res["last_ok"]):
        raise RunFailed(f"{res['mismatches']} echoes differ from what was sent")
    if sres["received"] != want or sres["echoed"] != want:
        raise RunFailed(
            f"server received {sres['received']} and echoed {sres['echoed']} "
            f"of {want} bytes"
        )


def _versions() -> str:
    import gevent
    import greenlet

    import geventbev

    return (
        f"Python {platform.python_version()}, gevent {gevent.__version__} "
        f"(loop: {gevent.config.loop.__module__}), "
        f"greenlet {greenlet.__version__}, geventbev {geventbev.__version__}"
        f"{bench_common.git_revision()}"
    )


def _machine_lines(opts: argparse.Namespace, pinned: bool) -> List[str]:
    cores = os.cpu_count()
    pin = (
        f"both processes pinned with taskset -c {opts.cpu}"
        if pinned
        else "not pinned"
        + (" (taskset not found)" if opts.cpu is not None else " (--cpu none)")
    )
    command = " ".join(
        shlex.quote(a)
        for a in [sys.executable, os.path.relpath(__file__)] + sys.argv[1:]
    )
    return [
        f"machine: {bench_common.cpu_model()}, {cores} cores, {platform.system()} "
        f"{platform.release()}; {pin}",
        f"software: {_versions()}",
        f"command: {command}",
    ]


def _fmt_ratio(value: Optional[float], ref: Optional[float]) -> str:
    if value is None or not ref:
        return "-"
    return f"{value / ref:.2f}x"


class Row:
    """Every finished run of one implementation, per workload."""

    def __init__(self) -> None:
        self.scores: Dict[str, List[float]] = {"bulk": [], "rtt": []}
        self.cpu: Dict[str, List[float]] = {"bulk": [], "rtt": []}
        self.failed: Dict[str, int] = {"bulk": 0, "rtt": 0}

    def best(self, test: str) -> Optional[float]:
        return max(self.scores[test]) if self.scores[test] else None

    def least_cpu(self, test: str) -> Optional[float]:
        return min(self.cpu[test]) if self.cpu[test] else None


HEADER = [
    "implementation",
    "bulk MiB/s",
    "vs raw",
    "round trips/s",
    "µs/RT",
    "vs raw",
    "CPU µs/64 KiB",
    "CPU µs/RT",
]


def _cell(row: Row, test: str, text: str) -> str:
    if row.best(test) is not None:
        return text
    return "failed" if row.failed[test] else "-"


def _rows(results: Dict[str, Row]) -> List[List[str]]:
    raw = results.get("raw", Row())
    rows = []
    for impl, row in results.items():
        mibs, rts = row.best("bulk"), row.best("rtt")
        cpu_bulk, cpu_rtt = row.least_cpu("bulk"), row.least_cpu("rtt")
        rows.append(
            [
                impl,
                _cell(row, "bulk", f"{mibs or 0:,.0f}"),
                _fmt_ratio(mibs, raw.best("bulk")),
                _cell(row, "rtt", f"{rts or 0:,.0f}"),
                _cell(row, "rtt", f"{1e6 / (rts or 1):.1f}"),
                _fmt_ratio(rts, raw.best("rtt")),
                _cell(row, "bulk", f"{cpu_bulk or 0:.1f}"),
                _cell(row, "rtt", f"{cpu_rtt or 0:.1f}"),
            ]
        )
    return rows


def _text_table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate([HEADER] + rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(HEADER) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _targets(results: Dict[str, Row]) -> List[str]:
    """One line per geventbev row: its ratios against the issue's targets."""
    raw = results.get("raw")
    if raw is None:
        return []
    lines = []
    for impl, row in results.items():
        if not impl.startswith("geventbev"):
            continue
        parts = []
        for test, target, label in (
            ("bulk", TARGET_BULK, "bulk"),
            ("rtt", TARGET_RTT, "round trips"),
        ):
            mine, ref = row.best(test), raw.best(test)
            if mine and ref:
                ratio = mine / ref
                verdict = "met" if ratio >= target else "MISSED"
                parts.append(f"{label} {ratio:.2f}x (target >= {target}x: {verdict})")
        if parts:
            lines.append(f"targets, {impl}: " + "; ".join(parts))
    return lines


def _print_profiles(directory: str, top: int) -> None:
    import pstats

    for name in sorted(os.listdir(directory)):
        if not name.endswith(".prof"):
            continue
        print(f"\n== profile {name} (top {top} by own time) ==")
        stats = pstats.Stats(os.path.join(directory, name))
        stats.sort_stats("tottime").print_stats(top)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bulk-mib", type=int, default=256, help="MiB per bulk run")
    p.add_argument("--roundtrips", type=int, default=100_000, help="per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; best kept")
    p.add_argument(
        "--impl",
        type=lambda text: bench_common.parse_impls(text, socket_impls.IMPLS),
        default=list(socket_impls.IMPLS),
        help="comma-separated rows: " + ", ".join(socket_impls.IMPLS),
    )
    p.add_argument(
        "--cpu",
        type=bench_common.parse_cpu,
        default="0",
        help="taskset -c list for both processes (default 0; 'none': no pinning)",
    )
    p.add_argument("--profile", metavar="DIR", help="cProfile every child into DIR")
    p.add_argument("--profile-top", type=int, default=25, help=argparse.SUPPRESS)
    p.add_argument(
        "--trace-switches",
        action="store_true",
        help="count greenlet switches per chunk / round trip",
    )
    p.add_argument(
        "--wrap-child",
        metavar="CMD",
        help="run each child under CMD (after taskset); {impl}, {test} and "
        "{role} are replaced, e.g. 'py-spy record -r 5000 -f raw "
        "-o /tmp/{impl}-{test}-{role}.txt --'",
    )
    # The child side (used by the driver itself).
    p.add_argument("--child", choices=["server", "client"], help=argparse.SUPPRESS)
    p.add_argument("--test", choices=["bulk", "rtt"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p


def _run_all(opts: argparse.Namespace, sizes: Dict[str, int]) -> Dict[str, Row]:
    """Every repetition of every row; repetitions interleave the rows."""
    results = {impl: Row() for impl in opts.impl}
    for rep in range(opts.repeat):
        for impl in opts.impl:
            for test in ("bulk", "rtt"):
                tag = f"[{rep + 1}/{opts.repeat}] {impl} {test}"
                try:
                    res = run_pair(impl, test, sizes[test], opts)
                except RunFailed as exc:
                    results[impl].failed[test] += 1
                    print(f"{tag}: FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                line = _record(results[impl], test, sizes[test], res)
                print(f"{tag}: {line}", file=sys.stderr, flush=True)
    return results


def _record(row: Row, test: str, size: int, res: Dict[str, Any]) -> str:
    """Store one run's numbers in ``row``; return them as a progress line."""
    if test == "bulk":
        ops = size / socket_impls.CHUNK
        unit = "chunk"
        score = size / MIB / res["elapsed"]
        line = f"{score:,.0f} MiB/s"
    else:
        ops = size
        unit = "RT"
        score = size / res["elapsed"]
        line = f"{score:,.0f} RT/s ({1e6 / score:.1f} µs)"
    server = res["server"]
    row.scores[test].append(score)
    row.cpu[test].append((res["cpu"] + server["cpu"]) / ops * 1e6)
    for who, r in (("client", res), ("server", server)):
        line += (
            f"; {who} CPU {r['cpu'] / ops * 1e6:.1f} µs/{unit}"
            f" ({r['cpu_sys'] / ops * 1e6:.1f} sys)"
        )
        if "switches" in r:
            line += f", {r['switches'] / ops:.1f} greenlet switches/{unit}"
    return line


def _report(
    opts: argparse.Namespace, results: Dict[str, Row], pinned: bool, load: Any
) -> None:
    rows = _rows(results)
    lines = _machine_lines(opts, pinned)
    notes = [
        f"best of {opts.repeat}; bulk: {opts.bulk_mib} MiB in 64 KiB writes; "
        f"round trips: {opts.roundtrips:,} x 64 bytes; CPU columns: user+sys "
        f"of both processes per 64 KiB / per round trip, least of the runs",
    ]
    if load is not None and load >= 0.5:
        notes.append(
            f"warning: load average {load:.2f} at start: other processes "
            f"shared the CPU, so wall-clock numbers are noisy (CPU columns less so)"
        )
    if opts.profile or opts.trace_switches or opts.wrap_child:
        notes.append("NOTE: profiled / traced / wrapped children: not a benchmark")
    descriptions = [(impl, socket_impls.IMPLS[impl][3]) for impl in results]

    print()
    print("\n".join(lines + notes))
    print()
    print(_text_table(rows))
    print()
    for impl, text in descriptions:
        print(f"  {impl}: {text}")
    for line in _targets(results):
        print(line)
    if opts.profile:
        _print_profiles(opts.profile, opts.profile_top)
    print("\nMarkdown:\n")
    for line in lines + notes:
        print(f"{line}  ")
    print()
    print(_markdown_table(rows))
    print()
    for impl, text in descriptions:
        print(f"- `{impl}`: {text}")


def main(argv: Optional[List[str]] = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.child:
        opts.impl = opts.impl[0]
        return _child(opts)
    if opts.bulk_mib < 1 or opts.roundtrips < 1 or opts.repeat < 1:
        print("--bulk-mib, --roundtrips and --repeat must be >= 1", file=sys.stderr)
        return 2
    if opts.profile:
        os.makedirs(opts.profile, exist_ok=True)
        opts.profile = os.path.abspath(opts.profile)
    pinned = bool(_pin_prefix(opts.cpu))
    if opts.cpu is not None and not pinned:
        print("warning: taskset not found; running unpinned", file=sys.stderr)
    try:
        import twisted  # noqa: F401
    except ImportError:
        print("twisted: not installed, no Twisted row", file=sys.stderr)
    else:
        print("twisted: installed, but there is no Twisted row", file=sys.stderr)
    load = bench_common.load_average()
    sizes = {"bulk": opts.bulk_mib * MIB, "rtt": opts.roundtrips}
    results = _run_all(opts, sizes)
    _report(opts, results, pinned, load)
    failed = any(n for row in results.values() for n in row.failed.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
