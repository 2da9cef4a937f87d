"""Errors that reach the user: what happened and what to do."""

from __future__ import annotations


class DemoAIError(Exception):
    """An error with a message for the user and, optionally, what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class NotFoundError(DemoAIError):
    """Something the user named does not exist."""

    exit_code = 2


class WorkspaceError(DemoAIError):
    """The workspace folder or its database cannot be used."""

    exit_code = 3


class ConfigError(DemoAIError):
    """A configuration or parameter is invalid; nothing was started."""

    exit_code = 2


#: Messages of allocators that ran out: torch's CUDA and CPU allocators, the C library.
_OOM_MESSAGES = (
    "out of memory",
    "not enough memory",
    "can't allocate memory",
    "cannot allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is an allocation failure.

    Python's ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA), and the
    ``RuntimeError`` of torch's CPU allocator ("DefaultCPUAllocator: can't
    allocate memory" on Linux, "not enough memory" on Windows).
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)
