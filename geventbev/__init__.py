"""geventbev: libevent's bufferevents for gevent.

Buffered connections with read/write/event callbacks and watermarks, usable
through libevent's callback API or in a blocking style from greenlets.
Only the names listed in ``__all__`` are public; C-style functions with
libevent's return codes live in ``geventbev.event2``.
"""

from __future__ import annotations

from . import constants as _constants
from .base import EventBase, get_default_base
from .buffer import Buffer
from .bufferevent import BufferEvent
from .constants import *  # noqa: F401,F403  (enums and libevent aliases)
from .errors import (
    BufferEventError,
    IncompleteReadError,
    LineTooLongError,
    UnsupportedOperation,
)
from .filter import FilterBufferEvent, filter_new, wait_lingering
from .highlevel import BufferEventSocket, Server, connect, serve
from .listener import Listener
from .pair import PairBufferEvent, pair_new
from .sock import SocketBufferEvent, socket_new

__version__ = "0.1.0"

__all__ = [
    "Buffer",
    "BufferEvent",
    "BufferEventError",
    "BufferEventSocket",
    "EventBase",
    "FilterBufferEvent",
    "IncompleteReadError",
    "LineTooLongError",
    "Listener",
    "PairBufferEvent",
    "Server",
    "SocketBufferEvent",
    "UnsupportedOperation",
    "connect",
    "filter_new",
    "get_default_base",
    "pair_new",
    "serve",
    "socket_new",
    "wait_lingering",
    *_constants.__all__,
]
