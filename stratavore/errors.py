"""The one error hierarchy of Stratavore.

    StratavoreError                 exit 1
     ├── InvalidInput               exit 2   bad name, bad value, ambiguous prefix
     │    └── Ambiguous
     ├── NotFound                   exit 3   unknown project or runner
     ├── Conflict                   exit 4   already exists, still active
     ├── QuotaExceeded              exit 5   a project or global runner limit is reached
     ├── LaunchFailed               exit 6   the command could not be started
     ├── DatabaseBusy               exit 7   the database stayed locked too long
     ├── ConfigError                exit 8   unreadable or invalid configuration
     └── DaemonError                exit 9   the daemon could not be started, stopped or reached

The CLI turns each into a one-line ``Error: ...`` and the exit code above; nothing else prints
tracebacks at users.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    INVALID_INPUT = 2
    NOT_FOUND = 3
    CONFLICT = 4
    QUOTA_EXCEEDED = 5
    LAUNCH_FAILED = 6
    DATABASE_BUSY = 7
    CONFIG_ERROR = 8
    DAEMON_ERROR = 9
    INTERRUPTED = 130


class StratavoreError(Exception):
    """Base of every error Stratavore reports to a user."""

    exit_code: ExitCode = ExitCode.ERROR


class InvalidInput(StratavoreError):
    """A name, value or argument is not acceptable."""

    exit_code = ExitCode.INVALID_INPUT


class Ambiguous(InvalidInput):
    """A prefix matches more than one runner."""


class NotFound(StratavoreError):
    """The named project or runner does not exist."""

    exit_code = ExitCode.NOT_FOUND


class Conflict(StratavoreError):
    """The change clashes with what exists (a duplicate name, an active runner)."""

    exit_code = ExitCode.CONFLICT


class QuotaExceeded(StratavoreError):
    """Launching would exceed a project or global runner limit."""

    exit_code = ExitCode.QUOTA_EXCEEDED


class LaunchFailed(StratavoreError):
    """The runner's command could not be started."""

    exit_code = ExitCode.LAUNCH_FAILED


class DatabaseBusy(StratavoreError):
    """The database stayed locked by another process for longer than the busy timeout."""

    exit_code = ExitCode.DATABASE_BUSY


class ConfigError(StratavoreError):
    """The configuration file or an environment setting is unreadable or invalid."""

    exit_code = ExitCode.CONFIG_ERROR


class DaemonError(StratavoreError):
    """The daemon could not be started, stopped or reached."""

    exit_code = ExitCode.DAEMON_ERROR
