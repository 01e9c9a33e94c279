"""Every program in examples/ runs to completion and prints what it promises."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Each example's stdout, line by line: a string matches exactly, a
#: compiled pattern must match the whole line (byte counts that depend on
#: the zlib version).
EXPECTED = {
    "echo_callbacks.py": ["echoed: alpha", "echoed: beta", "echoed: gamma"],
    "legacy_socket.py": ["welcome, legacy code"],
    "self_tunnel.py": [
        "channel 1: ALPHA (5 letters) | BETA (4 letters)",
        "channel 2: GAMMA (5 letters)",
        "channel 3: DELTA (5 letters) | EPSILON (7 letters)",
        "3 connections over one pair: 8 frames out, 8 back",
    ],
    "zlib_filter.py": [
        re.compile(r"received 'hello, filter': \d+ bytes on the pair"),
        re.compile(r"received 'hello, filter': \d+ bytes on the pair"),
        re.compile(r"received 'hello, zlib': \d+ bytes on the pair"),
        "then 111200 bytes until EOF, intact: True",
        re.compile(r"111240 bytes written, \d+ crossed the pair"),
    ],
}


def run_example(name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_every_example_is_listed():
    """A new example must be added to EXPECTED so that it is run here."""
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    result = run_example(name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(EXPECTED[name]), result.stdout
    for line, expected in zip(lines, EXPECTED[name]):
        if isinstance(expected, re.Pattern):
            assert expected.fullmatch(line), line
        else:
            assert line == expected


def test_zlib_filter_example_compresses():
    """Each flushed line costs a few bytes; a line zlib has seen costs
    less than a new one; the whole run shrinks to a small fraction."""
    result = run_example("zlib_filter.py")
    assert result.returncode == 0, result.stderr
    per_line = [int(n) for n in re.findall(r": (\d+) bytes on the pair", result.stdout)]
    assert len(per_line) == 3
    assert all(0 < n < 40 for n in per_line)
    assert per_line[1] < per_line[0]  # the repeat
    total = int(re.search(r"written, (\d+) crossed", result.stdout).group(1))
    assert total < 111240 // 20
