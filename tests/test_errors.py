"""Errors carry their own behaviour: HTTP status, whether a retry can succeed, Retry-After."""

from __future__ import annotations

import pytest

from worker.errors import (
    AuthError,
    ConfigError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PossyncError,
    RecordInvalid,
    SinkError,
    SinkFull,
    SinkUnavailable,
    SpoolFull,
    StorageFull,
    Unavailable,
    UnsupportedMediaType,
)
from worker.web import error_response

# (error, status, retriable, Retry-After header or None)
CASES: list[tuple[PossyncError, int, bool, str | None]] = [
    (RecordInvalid("bad", field="$.total"), 400, False, None),
    (AuthError("denied", field="Authorization"), 401, False, None),
    (NotFound("store", field="store"), 404, False, None),
    (Conflict("released", field="id"), 409, False, None),
    (PayloadTooLarge("big", field="body"), 413, False, None),
    (UnsupportedMediaType("xml", field="Content-Type"), 415, False, None),
    (ConfigError("bad key", field="$.sink.kind"), 500, False, None),
    (SpoolFull("full"), 503, True, "5"),
    (SpoolFull("full", retry_after_s=42), 503, True, "42"),
    (Unavailable("down"), 503, True, "5"),
    (Unavailable("busy", retry_after_s=1), 503, True, "1"),
    (StorageFull("disk"), 507, True, None),
    (SinkError("locked", retriable=True), 503, True, None),
    (SinkError("constraint", retriable=False), 503, False, None),
    (SinkUnavailable("file vanished"), 503, True, "5"),
    (SinkUnavailable("locked", retry_after_s=2), 503, True, "2"),
    (SinkFull("disk full"), 507, True, None),
]


@pytest.mark.parametrize(("exc", "status", "retriable", "retry_after"), CASES)
def test_error_flags_and_answer(
    exc: PossyncError, status: int, retriable: bool, retry_after: str | None
) -> None:
    assert exc.status == status
    assert exc.retriable is retriable
    resp = error_response(exc)
    assert resp.status == status
    assert resp.headers.get("Retry-After") == retry_after
    assert (exc.retry_after_s is None) == (retry_after is None)


def test_a_hint_on_one_error_does_not_change_its_class() -> None:
    assert SpoolFull("full", retry_after_s=42).retry_after_s == 42
    assert SpoolFull("full").retry_after_s == 5
    assert RecordInvalid("bad").retry_after_s is None


def test_sink_errors_name_the_sink() -> None:
    assert SinkUnavailable("gone").to_json() == {"error": "gone", "field": "sink"}
    assert SinkFull("full").to_json() == {"error": "full", "field": "sink"}
