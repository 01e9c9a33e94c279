"""Fixtures for the end-to-end tests: relay subprocesses and thread backends.

Everything here talks to 127.0.0.1 (or ::1) only.  Subprocesses are
stopped by pid in the fixture finalizers; backend threads are daemons that
poll a stop flag, so a failing test never leaves anything running.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from loopback_helpers import (
    REPO_ROOT,
    free_port,
    read_line_with_timeout,
    stop_process,
    subprocess_env,
)

MIB = 1 << 20


def wait_until_accepting(address: tuple, timeout: float = 10.0) -> None:
    """Poll ``address`` with connects until one succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RelayProcess:
    """A running ``python -m geventbev relay``.

    Attributes:
        proc: the Popen object.
        address: ``(host, port)`` the relay listens on, from its first line.
        banner: that first stdout line.
        stderr_path: the file its stderr (the log) goes to.
    """

    def __init__(self, proc: subprocess.Popen, banner: str, stderr_path: Path) -> None:
        self.proc = proc
        self.banner = banner
        self.stderr_path = stderr_path
        match = re.match(r"relay listening on (\[[^\]]+\]|[^:]+):(\d+) -> ", banner)
        assert match, f"unexpected first line: {banner!r}"
        self.address = (match.group(1).strip("[]"), int(match.group(2)))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the relay wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list:
        """Poll the log until ``pattern`` (multiline) matches ``count`` times;
        return the matches."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(matches) >= count:
                return matches
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} x {pattern!r} not logged within {timeout} s; "
                    f"log:\n{self.log()}"
                )
            time.sleep(0.02)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A client connection to the relay with ``timeout`` on each call."""
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.settimeout(timeout)
        return sock


RelayStarter = Callable[..., RelayProcess]


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[RelayStarter]:
    """Start relays as subprocesses: ``start_relay(target, *args, listen=...)``.

    ``target`` is ``(host, port)`` of the backend; ``args`` are extra relay
    options such as ``"--idle-timeout", "0.5"``; ``global_args`` go before
    the command (``--log-level``); ``path_prefix`` directories go first on
    the child's PYTHONPATH (for a test's own sitecustomize.py).
    """
    started: list = []

    def start(
        target: tuple,
        *args: str,
        listen: str = "127.0.0.1:0",
        global_args: tuple = (),
        path_prefix: tuple = (),
    ) -> RelayProcess:
        host, port = target
        connect = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        stderr_path = tmp_path / f"relay{len(started)}.log"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "geventbev",
                    *global_args,
                    "relay",
                    "--listen",
                    listen,
                    "--connect",
                    connect,
                    *args,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=subprocess_env(*path_prefix),
                cwd=str(REPO_ROOT),
            )
        started.append(proc)
        banner = read_line_with_timeout(proc, timeout=15.0)
        if not banner:
            proc.wait(timeout=5)
            raise AssertionError(
                f"relay exited with {proc.returncode} before listening: "
                f"{stderr_path.read_text()}"
            )
        return RelayProcess(proc, banner, stderr_path)

    yield start
    for proc in started:
        stop_process(proc)


class Backend:
    """A thread-per-connection TCP server on loopback, run by ``handler``.

    Attributes:
        address: ``(host, port)`` it listens on.
        errors: exceptions raised by handlers (a test should check it).
        progress: a dict handlers may use to publish counters.
    """

    def __init__(
        self,
        handler: Callable[[socket.socket, Backend], Any],
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.handler = handler
        self.errors: list = []
        self.progress: dict = {}
        self._stop = threading.Event()
        self._threads: list = []
        self._conns: list = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.address = self._sock.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(20.0)
            self._conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except Exception as exc:  # reported through .errors
            if not self._stop.is_set():
                self.errors.append(exc)
        finally:
            conn.close()

    @property
    def stopping(self) -> bool:
        """True once ``close()`` began; long-running handlers should return."""
        return self._stop.is_set()

    def close(self) -> None:
        """Stop accepting, close every connection and join the threads."""
        self._stop.set()
        self._acceptor.join(timeout=2)
        self._sock.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2)


@pytest.fixture
def start_backend() -> Iterator[Callable[..., Backend]]:
    """Start thread backends: ``start_backend(handler, port=0, host=...)``."""
    backends: list = []

    def start(
        handler: Callable[[socket.socket, Backend], Any],
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> Backend:
        backend = Backend(handler, port, host)
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        backend.close()


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port that nothing listened on a moment ago."""
    return free_port()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple]:
    """``python -m http.server`` on 127.0.0.1 serving a 50 MiB file.

    Yields ``((host, port), file name, sha256 hex of the file)``.
    """
    root = tmp_path / "www"
    root.mkdir()
    block = random.Random(50).randbytes(MIB)
    digest = hashlib.sha256()
    with open(root / "blob.bin", "wb") as out:
        for i in range(50):
            # Rotate the block so no two MiB are equal: a dropped or
            # repeated MiB changes the hash.
            piece = block[i * 997 :] + block[: i * 997]
            out.write(piece)
            digest.update(piece)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until_accepting(("127.0.0.1", port), timeout=15)
        yield ("127.0.0.1", port), "blob.bin", digest.hexdigest()
    finally:
        stop_process(proc)


@pytest.fixture
def full_backlog_address() -> Iterator[tuple]:
    """A loopback listener that never accepts, with its accept queue full:
    the kernel drops further SYNs, so a connect to it hangs (skips if the
    kernel keeps completing connects)."""
    import gevent.socket

    listener = socket.socket()
    fillers: list = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(8):
            filler = gevent.socket.socket()
            fillers.append(filler)
            filler.settimeout(0.3)
            try:
                filler.connect(address)
            except socket.timeout:
                break
        else:
            pytest.skip("the kernel never stopped completing connects")
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
