"""Tests for ``python -m geventbev``: argument errors, startup errors, demo.

Argument parsing runs in-process (argparse exits before any logging or
networking is set up); everything that starts the program runs it as a
subprocess with a timeout.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from geventbev import cli
from geventbev.relay import format_hostport, parse_hostport

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_program(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``python -m geventbev ARGS`` with the repo on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return subprocess.run(
        [sys.executable, "-m", "geventbev", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(REPO_ROOT),
        stdin=subprocess.DEVNULL,
    )


def parse_error(capsys: pytest.CaptureFixture, argv: list) -> str:
    """Parse ``argv`` only (never runs the program); assert argparse exits
    with 2 and return its stderr."""
    with pytest.raises(SystemExit) as excinfo:
        cli.build_parser().parse_args(argv)
    assert excinfo.value.code == 2
    return capsys.readouterr().err


# -- argument errors ---------------------------------------------------------


def test_missing_connect_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    err = parse_error(capsys, ["relay", "--listen", "127.0.0.1:0"])
    assert "the following arguments are required: --connect" in err
    assert err.startswith("usage:")


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    err = parse_error(capsys, [])
    assert "required: COMMAND" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nocolon", r"must be HOST:PORT, got 'nocolon'"),
        ("host:99999", r"port must be in [01]\.\.65535, got 99999"),
        ("host:-1", r"port must be in [01]\.\.65535, got -1"),
        ("host:abc", r"bad port 'abc'"),
        ("host:", r"bad port ''"),
        ("::1:80", r"write IPv6 addresses as \[ADDR\]:PORT, got '::1:80'"),
        (":80", r"has no host"),
        ("[]:80", r"has no host"),
    ],
)
@pytest.mark.parametrize("option", ["--listen", "--connect"])
def test_bad_host_port_is_a_usage_error_naming_option(
    capsys: pytest.CaptureFixture, option: str, text: str, message: str
) -> None:
    good = "127.0.0.1:0" if option == "--connect" else "127.0.0.1:9"
    other = "--connect" if option == "--listen" else "--listen"
    err = parse_error(capsys, ["relay", option, text, other, good])
    assert f"argument {option}: " in err
    assert re.search(message, err), err


@pytest.mark.parametrize("target", ["127.0.0.1:0", "localhost:0"])
def test_connect_port_zero_is_a_usage_error(
    capsys: pytest.CaptureFixture, target: str
) -> None:
    err = parse_error(capsys, ["relay", "--listen", "127.0.0.1:0", "--connect", target])
    assert "argument --connect: " in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", r"must be > 0, got '0'"),
        ("-1", r"must be > 0, got '-1'"),
        ("0.0", r"must be > 0, got '0.0'"),
        ("nan", r"must be > 0, got 'nan'"),
        ("soon", r"not a number: 'soon'"),
    ],
)
@pytest.mark.parametrize("option", ["--idle-timeout", "--stats-interval"])
def test_bad_seconds_are_a_usage_error(
    capsys: pytest.CaptureFixture, option: str, value: str, message: str
) -> None:
    err = parse_error(
        capsys,
        ["relay", "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9", option, value],
    )
    assert f"argument {option}: " in err
    assert re.search(message, err), err


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    err = parse_error(capsys, ["--log-level", "LOUD", "demo"])
    assert "argument --log-level: must be one of DEBUG, INFO, WARNING, ERROR" in err
    assert "'LOUD'" in err


def test_log_level_is_case_insensitive() -> None:
    args = cli.build_parser().parse_args(
        [
            "relay",
            "--log-level",
            "debug",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
        ]
    )
    assert args.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["relay", "--log-level", "DEBUG"], "DEBUG"),
        (["--log-level", "ERROR", "relay"], "ERROR"),
        (["--log-level", "ERROR", "relay", "--log-level", "WARNING"], "WARNING"),
        (["relay"], "INFO"),
    ],
)
def test_log_level_before_or_after_the_command(argv: list, level: str) -> None:
    """``relay ... --log-level L`` (the documented form) and the global one."""
    args = cli.build_parser().parse_args(
        [*argv, "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9"]
    )
    assert args.log_level == level


# -- addresses that parse ----------------------------------------------------


def test_relay_arguments_parse_into_addresses_and_seconds() -> None:
    args = cli.build_parser().parse_args(
        [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "backend.test:8080",
            "--idle-timeout",
            "2.5",
            "--stats-interval",
            "1",
        ]
    )
    assert args.listen == ("127.0.0.1", 0)
    assert args.connect == ("backend.test", 8080)
    assert args.idle_timeout == 2.5
    assert args.stats_interval == 1.0
    assert args.log_level == "INFO"


def test_optional_seconds_default_to_off() -> None:
    args = cli.build_parser().parse_args(
        ["relay", "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9"]
    )
    assert args.idle_timeout is None
    assert args.stats_interval is None


def test_bracketed_ipv6_parses() -> None:
    """``[::1]:0`` parses; test_relay.py runs the relay on it."""
    args = cli.build_parser().parse_args(
        ["relay", "--listen", "[::1]:0", "--connect", "[::1]:65535"]
    )
    assert args.listen == ("::1", 0)
    assert args.connect == ("::1", 65535)


@pytest.mark.parametrize(
    "address", [("127.0.0.1", 80), ("::1", 0), ("fe80::1", 65535), ("example.test", 1)]
)
def test_format_hostport_round_trips(address: tuple) -> None:
    assert parse_hostport(format_hostport(address)) == address


def test_parse_hostport_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^backend must be HOST:PORT"):
        parse_hostport("nope", name="backend")


# -- startup errors ------------------------------------------------------------


def test_listen_address_in_use_exits_1_with_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_program(
            "relay",
            "--listen",
            f"127.0.0.1:{port}",
            "--connect",
            "127.0.0.1:9",
            timeout=20,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_from_the_command_line_exits_2() -> None:
    result = run_program("relay", "--listen", "nocolon", "--connect", "127.0.0.1:9")
    assert result.returncode == 2
    assert "argument --listen: address must be HOST:PORT" in result.stderr


# -- demo ----------------------------------------------------------------------


def test_demo_passes_and_prints_a_row_per_client() -> None:
    result = run_program("demo", "--clients", "3", "--mib", "4", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("demo passed")
    rows = re.findall(
        r"^\s*(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(\S+)$", result.stdout, re.MULTILINE
    )
    assert sorted(rows) == [(str(i), str(4 << 20), "ok") for i in range(3)]
    assert "relay connections closed: 3" in result.stdout
    assert "relayed down 12582912 bytes" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "0"], "argument --clients: must be between 1 and 256, got 0"),
        (["--mib", "0"], "argument --mib: must be between 1 and 4096, got 0"),
        (["--mib", "100000"], "argument --mib: must be between 1 and 4096"),
        (["--clients", "two"], "argument --clients: not a whole number: 'two'"),
    ],
)
def test_demo_rejects_sizes_out_of_range(
    capsys: pytest.CaptureFixture, argv: list, message: str
) -> None:
    err = parse_error(capsys, ["demo", *argv])
    assert message in err


# -- compression flags ------------------------------------------------------


def test_compress_flags_default_to_off() -> None:
    args = cli.build_parser().parse_args(
        ["relay", "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9"]
    )
    assert (args.compress_connect, args.compress_listen) == (False, False)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--compress-connect"], (True, False)),
        (["--compress-listen"], (False, True)),
        (["--compress-listen", "--compress-connect"], (True, True)),
    ],
)
def test_compress_flags_parse(flags: list, expected: tuple) -> None:
    args = cli.build_parser().parse_args(
        ["relay", "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:9", *flags]
    )
    assert (args.compress_connect, args.compress_listen) == expected


def test_compress_flags_take_no_value(capsys: pytest.CaptureFixture) -> None:
    err = parse_error(
        capsys,
        [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            "--compress-connect=yes",
        ],
    )
    assert "argument --compress-connect: ignored explicit argument 'yes'" in err


@pytest.mark.parametrize(
    ("flags", "note", "clause"),
    [
        ([], "", ""),
        (
            ["--compress-connect"],
            " (zlib on the backend side)",
            "; zlib link to backend: wire up 0 bytes, down 0 bytes, - of payload",
        ),
        (
            ["--compress-listen", "--compress-connect"],
            " (zlib on the client side and backend side)",
            "; zlib links to both sides: wire up 0 bytes, down 0 bytes, - of payload",
        ),
    ],
)
def test_compress_flags_reach_the_relay(flags: list, note: str, clause: str) -> None:
    """The banner names the zlib sides and the final line adds wire bytes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geventbev",
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:9",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
    )
    try:
        # The banner is one print; wait for it with a bound, then read it.
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        assert ready, "no banner within 15 s"
        banner = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    expected = (
        rf"relay listening on 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:9{re.escape(note)}"
    )
    assert re.fullmatch(expected + "\n", banner), banner
    assert err.rstrip().endswith(
        "relay stopped: 0 connections, up 0 bytes, down 0 bytes" + clause
    )
