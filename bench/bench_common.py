"""What the benchmark scripts share: the machine line and argument parsing.

Imported by ``bench_socket.py`` and ``bench_pair.py``, which put this
directory on ``sys.path`` first.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from typing import Iterable, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    """`` at <commit>`` (``+changes`` when geventbev/ differs), or ""."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "geventbev"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" at {head}{'+changes' if dirty else ''}"


def load_average() -> Optional[float]:
    """The one-minute load average, or None where there is none."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parse_impls(text: str, known: Iterable[str]) -> List[str]:
    """``--impl a,b`` as a list, each checked against ``known``."""
    known = list(known)
    impls = [s.strip() for s in text.split(",") if s.strip()]
    for impl in impls:
        if impl not in known:
            names = ", ".join(known)
            raise argparse.ArgumentTypeError(f"unknown impl {impl!r} (known: {names})")
    if not impls:
        raise argparse.ArgumentTypeError("no implementation given")
    return impls


def parse_cpu(text: str) -> Optional[str]:
    """``--cpu``: a taskset -c CPU list, or None for "none"/"no"/""."""
    return None if text.lower() in ("", "none", "no") else text
