"""Flags, modes and limits, with libevent's names and numeric values.

Every constant exists twice: as a member of a Python enum (``Event.EOF``)
and under its libevent name (``BEV_EVENT_EOF``), so code ported from C can
keep its spelling.  The numbers are libevent's own, which matters when a
program logs or compares raw flag values.
"""

from __future__ import annotations

import enum

__all__ = [
    "EV",
    "EV_TIMEOUT",
    "EV_READ",
    "EV_WRITE",
    "Event",
    "Option",
    "FlushMode",
    "FilterResult",
    "Trigger",
    "SSLState",
    "EOL",
    "EV_SSIZE_MAX",
    "EV_RATE_LIMIT_MAX",
    "MAX_SINGLE_READ_DEFAULT",
    "MAX_SINGLE_WRITE_DEFAULT",
    "LIBEVENT_MAX_SINGLE_DEFAULT",
]


class EV(enum.IntFlag):
    """I/O directions, as libevent's ``EV_*`` event bits."""

    TIMEOUT = 0x01
    READ = 0x02
    WRITE = 0x04


EV_TIMEOUT = EV.TIMEOUT
EV_READ = EV.READ
EV_WRITE = EV.WRITE


class Event(enum.IntFlag):
    """What an event callback is told (``BEV_EVENT_*``)."""

    READING = 0x01
    WRITING = 0x02
    EOF = 0x10
    ERROR = 0x20
    TIMEOUT = 0x40
    CONNECTED = 0x80


class Option(enum.IntFlag):
    """Construction options (``BEV_OPT_*``)."""

    CLOSE_ON_FREE = 1 << 0
    THREADSAFE = 1 << 1
    DEFER_CALLBACKS = 1 << 2
    UNLOCK_CALLBACKS = 1 << 3


class FlushMode(enum.IntEnum):
    """How hard ``flush`` pushes (``BEV_NORMAL``, ``BEV_FLUSH``, ``BEV_FINISHED``)."""

    NORMAL = 0
    FLUSH = 1
    FINISHED = 2


class FilterResult(enum.IntEnum):
    """What a filter function returns (``BEV_OK``, ``BEV_NEED_MORE``, ``BEV_ERROR``)."""

    OK = 0
    NEED_MORE = 1
    ERROR = 2


class Trigger(enum.IntFlag):
    """Options for ``trigger`` and ``trigger_event`` (``BEV_TRIG_*``)."""

    DEFER_CALLBACKS = 1 << 2  # the same bit as Option.DEFER_CALLBACKS
    IGNORE_WATERMARKS = 1 << 16


class SSLState(enum.IntEnum):
    """Initial state of a TLS bufferevent (``BUFFEREVENT_SSL_*``)."""

    OPEN = 0
    CONNECTING = 1
    ACCEPTING = 2


class EOL(enum.IntEnum):
    """End-of-line styles for ``readln`` and ``search_eol`` (``EVBUFFER_EOL_*``).

    ANY: any run of CR and LF bytes.  CRLF: LF, optionally preceded by one CR.
    CRLF_STRICT: exactly CR LF.  LF: LF only.  NUL: a single zero byte.
    """

    ANY = 0
    CRLF = 1
    CRLF_STRICT = 2
    LF = 3
    NUL = 4


#: The largest ``ssize_t`` on a 64-bit platform, libevent's EV_SSIZE_MAX.
EV_SSIZE_MAX = 2**63 - 1
#: The largest rate or burst a token bucket accepts, in bytes.
EV_RATE_LIMIT_MAX = EV_SSIZE_MAX
#: libevent's own default cap on one read or write, in bytes.
LIBEVENT_MAX_SINGLE_DEFAULT = 16384
#: The default cap on one read from the transport (and so on the bytes one
#: read callback sees), in bytes.  libevent uses 16 KiB, tuned for C, where
#: a read costs little more than its system call.  Here every read also
#: costs a pass through the reader greenlet and the callbacks: measured on
#: loopback (bench/bench_socket.py, callback rows, both processes on one
#: CPU), 16 KiB reads and writes spent 1.7x the CPU per byte of 64 KiB ones,
#: so geventbev uses 64 KiB, as Twisted does.  ``set_max_single_read(16384)``
#: restores libevent's value.
MAX_SINGLE_READ_DEFAULT = 65536
#: The default cap on one write to the transport, in bytes (see above).
MAX_SINGLE_WRITE_DEFAULT = 65536


def _export_libevent_aliases() -> None:
    """Publish each member under its libevent name (BEV_EVENT_EOF, ...)."""
    prefixes = {
        Event: "BEV_EVENT_",
        Option: "BEV_OPT_",
        Trigger: "BEV_TRIG_",
        SSLState: "BUFFEREVENT_SSL_",
        EOL: "EVBUFFER_EOL_",
    }
    namespace = globals()
    for enum_class, prefix in prefixes.items():
        for member in enum_class:
            namespace[prefix + member.name] = member
            __all__.append(prefix + member.name)
    for member in FlushMode:
        namespace["BEV_" + member.name] = member
        __all__.append("BEV_" + member.name)
    for member in FilterResult:
        namespace["BEV_" + member.name] = member
        __all__.append("BEV_" + member.name)


_export_libevent_aliases()
