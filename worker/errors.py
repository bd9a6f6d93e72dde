"""Errors with behaviour flags: each carries its HTTP status and its retry decision.

Contract (the way aiokafka's errors carry `retriable`): every transport decides transience
from the error itself, never from its type or status.

* `status`: the HTTP status of the JSON body `{"error", "field"}` (`web.error_response`).
* `retriable`: the same request may succeed later, unchanged (our side or a dependency is
  at fault). MQTT holds the message and retries it, the inbox leaves the file in place, the
  window retries the sink. False: the input itself is refused (rejected topic, failed/).
* `retry_after_s`: when set, the seconds a client should wait (HTTP `Retry-After`; the MQTT
  and inbox backoff never waits less). None: no hint.
"""

from __future__ import annotations

import re

# A quoted value inside a message (Python's repr quotes, or msgspec's "Invalid enum value
# 'x'"): an opening quote at the start or after a space or bracket, a closing one at the end
# or before a space or punctuation, so prose apostrophes ("store's") are left alone.
_QUOTED = re.compile(
    r"""(?:(?<=^)|(?<=[\s(\[{=:,]))(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?=$|[\s)\]},.;:!?])"""
)
_REDACTED = "<value>"


def scrub(message: str) -> str:
    """`message` with every quoted value replaced by `<value>` (no input reaches a log)."""
    return _QUOTED.sub(_REDACTED, message)


class PossyncError(Exception):
    """Base of every error possync raises on purpose."""

    status: int = 500
    retriable: bool = False
    retry_after_s: int | None = None

    def __init__(
        self, message: str, field: str | None = None, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, object]:
        """The JSON error body: `{"error": ..., "field": ...}`."""
        return {"error": self.message, "field": self.field}


class RecordInvalid(PossyncError):
    """A record (or payload) failed decoding or validation; carries the field path.

    Its message names the field and the rule, never the value: adapters and msgspec quote
    the offending input ("not an ISO-8601 date: 'ann@example.com'"), so every quoted value
    is scrubbed here, once, for the HTTP answer, the log and the MQTT rejected topic alike.
    """

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(scrub(message), field)


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
    retriable = True
    retry_after_s = 5


class StorageFull(PossyncError):
    """The disk under the spool is full: nothing was written."""

    status = 507
    retriable = True


class Unavailable(PossyncError):
    """A dependency (sink, spool writer) is down; retry later."""

    status = 503
    retriable = True
    retry_after_s = 5


class SpoolDamaged(Unavailable):
    """A page of the spool file could not be read (SQLite: corrupt, not a database). The
    file is flagged, so the next start moves it aside and salvages every row that still
    reads; until then the window cannot lease. 503 with `field` = "spool"."""

    retry_after_s = 30

    def __init__(self, message: str) -> None:
        super().__init__(message, field="spool")


class SinkError(PossyncError):
    """The sink refused or failed a write; `retriable` (per error: the driver's code decides
    it) drives the window's backoff."""

    status = 503

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        field: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, field, retry_after_s=retry_after_s)
        self.retriable = retriable


class SinkUnavailable(SinkError, Unavailable):
    """The sink cannot take writes now but may again without a restart (locked, busy, its
    file vanished): 503 with Retry-After, `field` = "sink"; the window retries."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        # Retry-After is Unavailable's (the MRO puts SinkError's status, 503, first).
        super().__init__(message, retriable=True, field="sink", retry_after_s=retry_after_s)


class SinkFull(SinkError):
    """The sink's disk is full (SQLite SQLITE_FULL, PostgreSQL 53100): nothing was written.
    507 with `field` = "sink"; the window retries with backoff until space returns."""

    status = 507

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True, field="sink")


class ConfigError(PossyncError):
    """The configuration is invalid; names the offending key."""

    status = 500
