"""The one exception hierarchy of usagehub.

    UsagehubError
    ├── ConfigError            bad settings or profile; carries file, field and line
    │   └── ConfigErrors       every problem of one validation pass (``problems``), reported at once
    ├── DecodeError            device bytes that cannot be turned into events (quarantined)
    │   └── ValidationFailed   decoded, but a value is missing or out of range
    ├── AdapterError           a transport failed
    │   ├── TransientAdapterError   retry with backoff (broker down, timeout)
    │   └── PermanentAdapterError   do not retry (bad credentials, bad address)
    ├── StorageError           the database refused or failed
    │   ├── StorageUnavailable      connection-level failure, retryable
    │   └── IntegrityViolation      a constraint refused the write
    └── DomainError            a business rule said no; has a stable ``code``
"""

from __future__ import annotations


class UsagehubError(Exception):
    """Base of every error raised on purpose by usagehub."""

    code = "INTERNAL"


class ConfigError(UsagehubError):
    """A setting, config file or device profile is invalid; raised at start, never at 3 a.m."""

    code = "CONFIG"

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 line: int | None = None) -> None:
        self.file, self.field, self.line = file, field, line
        where = ":".join(str(p) for p in (file, line) if p is not None)
        # file:line: field: message — one line, the shape editors and CI annotate.
        super().__init__("".join(f"{part}: " for part in (where, field) if part) + message)
        self.message = message


class ConfigErrors(ConfigError):
    """Every problem one validation found, so a user fixes them all in one round; ``str`` has a line each."""

    def __init__(self, problems: list[ConfigError]) -> None:
        if not problems:
            raise ValueError("ConfigErrors needs at least one problem")
        first = problems[0]
        super().__init__(first.message, file=first.file, field=first.field, line=first.line)
        self.problems = problems
        self.args = ("\n".join(str(p) for p in problems),)

    def __str__(self) -> str:
        return str(self.args[0])


def problems_of(err: ConfigError) -> list[ConfigError]:
    """The single problems inside ``err`` (itself when it is one)."""
    return list(err.problems) if isinstance(err, ConfigErrors) else [err]


class DecodeError(UsagehubError):
    """Device bytes could not be decoded; the message goes to quarantine with this reason."""

    code = "DECODE"

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(reason if detail is None else f"{reason}: {detail}")


class ValidationFailed(DecodeError):
    """Decoded, but a required field is missing or a value is out of range."""

    code = "VALIDATION"


class AdapterError(UsagehubError):
    """A transport adapter failed."""

    code = "ADAPTER"


class TransientAdapterError(AdapterError):
    """A transport failure that may heal by itself: retry with backoff."""


class PermanentAdapterError(AdapterError):
    """A transport failure retrying will not fix (bad credentials, bad address)."""


class StorageError(UsagehubError):
    """The database failed or refused a request."""

    code = "STORAGE"


class StorageUnavailable(StorageError):
    """The database cannot be reached; the operation may be retried."""


class IntegrityViolation(StorageError):
    """A database constraint refused the write."""


class DomainError(UsagehubError):
    """A business rule refused an operation; ``code`` is stable and reaches API clients."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
