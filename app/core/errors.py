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
