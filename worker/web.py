"""Shared web plumbing: JSON answers, the error middleware, body reading, bearer tokens.

Every handler (the sources' in `worker.sources`, the API's in `worker.api`) answers errors
through here, so one place decides what an error looks like:

* a precise status and a JSON body `{"error", "field"}` naming the header or field and the
  rule it broke, never the value it carried (no PII, no token, in answers or logs);
* bytes that are not what a header or body claims (non-UTF-8 `Authorization`, a body that
  is not the `Content-Encoding` it says) are a 4xx, never a 500;
* credentials are checked from the headers before any body is read (`read_body` is only
  called by a handler once it has authenticated the caller).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from worker import keys
from worker.adapters import adapter_for
from worker.config import StoreConfig
from worker.errors import (
    AuthError,
    PayloadTooLarge,
    PossyncError,
    RecordInvalid,
)
from worker.logs import REQUEST_ID

log = logging.getLogger("possync.http")

_JSON = msgspec.json.Encoder(decimal_format="string")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_bytes(data: Any) -> bytes:
    """`data` as the JSON every answer uses (msgspec; Decimals as strings, datetimes ISO-8601)."""
    return _JSON.encode(data)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded by msgspec (Decimals as strings, datetimes ISO-8601)."""
    return web.Response(
        body=json_bytes(data), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: PossyncError) -> web.Response:
    """The JSON error body with its status (and Retry-After where it applies)."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="possync"'
    body = exc.to_json()
    if body.get("field") is not None:
        # Header names are multidict `istr`s; the JSON encoder takes plain text only.
        body["field"] = str(body["field"])
    return json_response(body, status=exc.status, headers=headers)


_HTTP_FIELDS = {413: "body", 415: "Content-Type", 405: "method", 404: "path"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to a JSON body; count requests and latency."""
    metrics = request.app[keys.METRICS]
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    t0 = time.perf_counter()
    rid = _request_id(request)
    token = REQUEST_ID.set(rid)
    field: str | None = None
    try:
        resp = await handler(request)
    except PossyncError as exc:
        resp = error_response(exc)
        field = exc.field
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = json_response(
            {
                "error": exc.reason
                if exc.status != 413
                else f"body larger than {request.app[keys.CONFIG].http.max_body_bytes} bytes",
                "field": _HTTP_FIELDS.get(exc.status),
            },
            status=exc.status,
        )
    except web.RequestPayloadError:
        # A body read outside `read_body` (e.g. by a library) that is not what it claims.
        resp = error_response(body_error(request))
    except UnicodeError:
        # Text from the request (a header, a path segment) that is not UTF-8 and reached
        # code expecting text: the client's bytes, so a 400, not a 500.
        resp = json_response(
            {"error": "request carries bytes that are not UTF-8", "field": "request"},
            status=400,
        )
    except Exception as exc:  # noqa: BLE001 - logged below, answered as a 500
        # The exception's text can carry request values (msgspec and the stdlib quote
        # input): log its type and where it was raised, never its message.
        log.error(  # noqa: TRY400 - the traceback text is what must not be logged
            "unhandled error on %s %s: %s at %s",
            request.method,
            route,
            type(exc).__name__,
            _where(exc),
        )
        resp = json_response({"error": "internal error", "field": None}, status=500)
    finally:
        REQUEST_ID.reset(token)
    _no_lingering_through_a_decoder(request)
    if resp.status >= 400 and route.startswith(_INTAKE_ROUTES):
        _log_refusal(request, route, resp.status, field, rid)
    resp.headers["X-Request-Id"] = rid
    metrics.child(metrics.requests, route, str(resp.status)).inc()
    metrics.child(metrics.request_seconds, route).observe(time.perf_counter() - t0)
    return resp


def _no_lingering_through_a_decoder(request: web.Request) -> None:
    """Answered with a compressed body still unread (a refused caller, a 413): close after
    the answer instead of aiohttp's lingering close.

    Lingering (aiohttp reads and drops what is left of the body for up to 10 s, so the
    client sees the answer rather than a reset) reads through the decompressor: eleven
    0.5 MiB gzip bombs (512 MiB inflated) sent with a wrong token cost ~14 s of event-loop
    CPU and held /healthz ~12 s (tests/chaos/test_probe.py). An unread plain body still lingers: dropping bytes is cheap.
    `_lingering_time` is aiohttp's per-connection setting (RequestHandler internals, as
    worker.app's `_idle`); with it 0 the connection closes once the answer is written.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity") or request.content.is_eof():
        return
    request.protocol._lingering_time = 0.0


_INTAKE_ROUTES = ("/v1/push/", "/v1/files/", "/v1/backfill/")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(request: web.Request) -> str:
    """The caller's `X-Request-Id` when it is a plain token, else a new one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and _SAFE_ID.match(given):
        return given
    # A correlation id, not a secret (a caller may send its own): the process's Mersenne
    # Twister, seeded from the OS once, instead of a getrandom(2) call per request.
    return f"{random.getrandbits(64):016x}"


def _log_refusal(
    request: web.Request, route: str, status: int, field: str | None, rid: str
) -> None:
    """One `push.refused` event: status and field, never a value (store only if configured)."""
    store = request.match_info.get("store")
    known = request.app[keys.INTAKE].knows(store)
    log.info(
        "refused %s with %d (field %s)",
        route,
        status,
        field,
        extra={
            "event": "push.refused",
            "status": status,
            "field": field,
            "route": route,
            "store": store if known else None,
            "source": request.match_info.get("source") if known else None,
            "request_id": rid,
        },
    )


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame (enough to find the bug, nothing of the input)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def bearer(request: web.Request) -> str | None:
    """The bearer token of `Authorization`, or None when absent, not Bearer, or not UTF-8.

    A token that is not UTF-8 cannot equal any configured token, so it is treated as no
    token (401), never as an error that would tell a caller more.
    """
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    token = auth[7:].strip()
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return token


def token_ok(given: str | None, expected: str) -> bool:
    """Constant-time token comparison; an empty expected token never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def require_admin(request: web.Request) -> None:
    """401 unless the admin token is presented."""
    if not token_ok(bearer(request), request.app[keys.CONFIG].http.admin_token):
        raise AuthError("admin token required", field="Authorization")


def route_source(request: web.Request, store: StoreConfig) -> str:
    """The route's `{source}`: 404 naming `source` unless it is a known adapter and the
    store's own source (or `canonical`, which every store takes)."""
    source = request.match_info["source"]
    adapter_for(source, store)
    return source


def body_error(request: web.Request) -> RecordInvalid:
    """The 400 for a body aiohttp could not read: bad Content-Encoding data, bad framing."""
    encoding = request.headers.get("Content-Encoding")
    if encoding and encoding.strip().lower() not in ("", "identity"):
        return RecordInvalid(
            "body is not valid data for its Content-Encoding", field="Content-Encoding"
        )
    return RecordInvalid("body is truncated or badly framed", field="body")


# `Expect: 100-continue` (RFC 9110 10.1.1). aiohttp's default expect handler sends
# "100 Continue" before the handler runs, so a client with a wrong token is invited to send
# its body; and it answers any other expectation with a text/plain 417 that echoes the
# header. The route table gives every route one of the two handlers below instead.
_CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _expects_continue(request: web.Request) -> bool | None:
    """True for `100-continue`, False for no expectation, None for one we do not meet."""
    expect = request.headers.get("Expect")
    if expect is None:
        return False
    return True if expect.strip().lower() == "100-continue" else None


def _expectation_failed() -> web.Response:
    return json_response(
        {"error": "unsupported expectation: only 100-continue is met", "field": "Expect"},
        status=417,
    )


async def expect_now(request: web.Request) -> web.StreamResponse | None:
    """Routes with no body or no credentials: "100 Continue" at once (aiohttp's way)."""
    wants = _expects_continue(request)
    if wants is None:
        return _expectation_failed()
    if wants and request.version >= (1, 1):
        await request.writer.write(_CONTINUE_LINE)
    return None


async def expect_after_credentials(request: web.Request) -> web.StreamResponse | None:
    """Routes whose handler authenticates, then reads the body through `read_body`.

    "100 Continue" waits for `read_body`, which only runs once the caller is authenticated:
    a refused caller gets its final 401 instead, and is never asked for the body.
    """
    wants = _expects_continue(request)
    if wants is None:
        return _expectation_failed()
    if wants and request.version >= (1, 1):
        request[keys.CONTINUE_PENDING] = True
    return None


async def expect_admin(request: web.Request) -> web.StreamResponse | None:
    """Admin routes that stream their body themselves (backfill): "100 Continue" only for
    the admin token; any other caller gets no invitation, and the handler's own 401."""
    wants = _expects_continue(request)
    if wants is None:
        return _expectation_failed()
    admin = request.app[keys.CONFIG].http.admin_token
    if wants and request.version >= (1, 1) and token_ok(bearer(request), admin):
        await request.writer.write(_CONTINUE_LINE)
    return None


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing (413) from Content-Length or as soon as `limit` is passed.

    With `Content-Encoding: gzip|deflate`, aiohttp decompresses while reading: `limit` is
    applied to the decompressed size, and bytes that are not that encoding are a 400
    naming `Content-Encoding`. A deferred "100 Continue" is sent here (after the size check:
    a body over the limit is refused without being asked for).
    """
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes", field="body")
    if request.get(keys.CONTINUE_PENDING):
        request[keys.CONTINUE_PENDING] = False
        await request.writer.write(_CONTINUE_LINE)
    if length is not None and _identity(request):
        # The common push: a plain body of a known length within the limit is read in one
        # call (the parser stops at Content-Length, so no more than `length` can arrive).
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            return exc.partial  # what the chunk loop returns for a body cut short
        except web.RequestPayloadError:
            raise body_error(request) from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body larger than {limit} bytes", field="body")
            chunks.append(chunk)
    except web.RequestPayloadError:
        raise body_error(request) from None
    return b"".join(chunks)


def _identity(request: web.Request) -> bool:
    """True when the body is sent as it is (no Content-Encoding, or `identity`)."""
    encoding = request.headers.get("Content-Encoding")
    return encoding is None or encoding.strip().lower() in ("", "identity")


def media_type(request: web.Request) -> str:
    """The request's media type, lower-case, without parameters ("" when absent).

    Parsed here rather than with `request.content_type`, whose stdlib e-mail parser raises
    IndexError on some malformed headers (found by the long fuzz run): a bad header must be
    a 415, never a 500.
    """
    raw = request.headers.get("Content-Type", "")
    return raw.split(";", 1)[0].strip().lower()
