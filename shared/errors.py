"""Errors that name their cause: the file, the config key, the client or the round."""

from __future__ import annotations

from pathlib import Path


class UnikdError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class ConfigError(UnikdError):
    def __init__(self, key: str, problem: str, file: str | Path | None = None):
        self.key, self.problem, self.file = key, problem, file
        where = f" in {file}" if file else ""
        super().__init__(f"config key '{key}'{where}: {problem}")


class DataError(UnikdError):
    def __init__(self, file: str | Path, problem: str):
        self.file, self.problem = Path(file), problem
        super().__init__(f"{file}: {problem}")


class ReplyError(UnikdError):
    """A client reply the server refuses; it is logged and dropped, never aggregated."""

    def __init__(self, client: str | int, round_: int, problem: str):
        self.client, self.round, self.problem = client, round_, problem
        super().__init__(f"client {client}, round {round_}: {problem}")
