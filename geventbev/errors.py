"""The exceptions geventbev raises, chosen by what a caller can do about them."""

from __future__ import annotations

__all__ = [
    "BufferEventError",
    "UnsupportedOperation",
    "IncompleteReadError",
    "LineTooLongError",
]


class BufferEventError(Exception):
    """Base class; raised for operations on a freed bufferevent or buffer,
    refused buffer changes (a frozen end), and by blocking calls that see an
    ERROR event.

    Attributes:
        events: the ``Event`` flags that caused the error, or 0 when the
            error did not come from an event.  The transport's own exception
            (an ``OSError`` or TLS error) is chained as ``__cause__``.
    """

    def __init__(self, message: str = "", events: int = 0) -> None:
        super().__init__(message)
        self.events = events


class UnsupportedOperation(BufferEventError):
    """Raised when this kind of bufferevent cannot do what was asked."""


class IncompleteReadError(BufferEventError, EOFError):
    """Raised by a blocking read that met EOF before it had enough bytes.

    Attributes:
        partial: the bytes that did arrive; they are no longer in the input.
        expected: how many bytes were wanted, or None when unbounded.
    """

    def __init__(self, partial: bytes, expected: int | None) -> None:
        wanted = "an end of line" if expected is None else f"{expected} bytes"
        super().__init__(
            f"EOF after {len(partial)} bytes while waiting for {wanted}", events=0x11
        )
        self.partial = partial
        self.expected = expected


class LineTooLongError(BufferEventError, ValueError):
    """Raised by ``read_line`` when no end of line comes within the limit.

    The bytes stay in the input, so the caller can still drain or inspect
    them.
    """
