"""Errors with behaviour flags: each maps to one HTTP status or one retry decision."""

from __future__ import annotations


class PossyncError(Exception):
    """Base of every error possync raises on purpose."""

    status: int = 500

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, object]:
        """The JSON error body: `{"error": ..., "field": ...}`."""
        return {"error": self.message, "field": self.field}


class RecordInvalid(PossyncError):
    """A record (or payload) failed decoding or validation; carries the field path."""

    status = 400


class AuthError(PossyncError):
    """Missing or wrong credential."""

    status = 401


class NotFound(PossyncError):
    """Unknown store, source, record or route."""

    status = 404


class PayloadTooLarge(PossyncError):
    """Body over `http.max_body_bytes`."""

    status = 413


class UnsupportedMediaType(PossyncError):
    """Content type we cannot read."""

    status = 415


class Conflict(PossyncError):
    """The request conflicts with current state (e.g. releasing a released record)."""

    status = 409


class SpoolFull(PossyncError):
    """The store's spool is over its cap; the client should retry later."""

    status = 503

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


class StorageFull(PossyncError):
    """The disk under the spool is full: nothing was written."""

    status = 507


class Unavailable(PossyncError):
    """A dependency (sink, spool writer) is down; retry later."""

    status = 503

    def __init__(self, message: str, field: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


class SinkError(PossyncError):
    """The sink refused or failed a write. `retriable` drives backoff."""

    status = 503

    def __init__(self, message: str, *, retriable: bool, field: str | None = None) -> None:
        super().__init__(message, field)
        self.retriable = retriable


class ConfigError(PossyncError):
    """The configuration is invalid; names the offending key."""

    status = 500
