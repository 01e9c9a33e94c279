"""Every program in examples/ runs to completion and prints what it promises."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED = {
    "echo_callbacks.py": ["echoed: alpha", "echoed: beta", "echoed: gamma"],
    "legacy_socket.py": ["welcome, legacy code"],
}


def test_every_example_is_listed():
    """A new example must be added to EXPECTED so that it is run here."""
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[name]
