"""The HTTP push source: `POST /v1/push/{source}/{store}` -> intake -> 202.

A push is authenticated from its headers before its body is read (the store's own token,
or for a signed source a configured secret and the signature header); body limits are
enforced from Content-Length before reading and again while reading, so an oversized body
is never held whole. Every error is JSON `{"error", "field"}` with a precise status
(`worker.web`). A canonical push of sales and voids only is spooled as the lean rows of
`worker.sources.push_parse` and answered with cached bytes; anything else goes through
`Intake.ingest`. The 202 body (`outcome_json`) is shared with file uploads and the inbox.
Reads, admin and health live in `worker.api`; the route table in `worker.api.routes`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from worker import keys
from worker.intake import Envelope, IngestOutcome, check_headers, rejections_json
from worker.sources.push_parse import lean_rows
from worker.web import bearer, json_bytes, json_response, media_type, read_body


def outcome_json(out: IngestOutcome) -> dict[str, Any]:
    """The 202 body: the first MAX_REJECTIONS rejections itemized, all of them counted."""
    return {
        "accepted": out.accepted,
        "duplicates": out.duplicates,
        "rejected": rejections_json(out.rejected),
        "rejected_count": out.rejected_count,
        "dropped": out.dropped,
        "visible_at": out.visible_at.isoformat() if out.visible_at else None,
    }


async def push(request: web.Request) -> web.Response:
    """POST /v1/push/{source}/{store}: credentials first (from headers), then the body."""
    app = request.app
    intake = app[keys.INTAKE]
    source = request.match_info["source"]
    # aiohttp's read-only, case-insensitive view: no per-request copy of the headers.
    headers = request.headers
    # Before a byte of the body is read: the store's token (or, for a signed source, a
    # signature header and a configured secret). An unknown store answers exactly like a
    # wrong token, so store ids cannot be enumerated.
    store = intake.admit(source, request.match_info["store"], headers, bearer(request))
    check_headers(headers)
    body = await read_body(request, app[keys.CONFIG].http.max_body_bytes)
    content_type = media_type(request)
    if source == "canonical":
        # The thin path (`worker.sources.push_parse`): sales and voids decoded once and
        # spooled as rows; None for anything else, which `ingest` decides as it always has.
        lean = lean_rows(body, content_type)
        if lean is not None:
            accepted, duplicates = await intake.append_lean(store, source, lean)
            return web.Response(
                body=_clean_outcome(accepted, duplicates, intake.windows.visible_at(store)),
                status=202,
                headers=_JSON_HEADERS.copy(),
            )
    query = request.query if request.query_string else _NO_QUERY
    out = await intake.ingest(
        Envelope(
            source=source,
            store=store.id,
            body=body,
            content_type=content_type,
            headers=headers,
            topic=headers.get("X-Shopify-Topic") or query.get("topic"),
            filename=query.get("filename"),
            authorized=True,
        )
    )
    if out.rejected_count or out.dropped:
        return json_response(outcome_json(out), status=202)
    return web.Response(
        body=_clean_outcome(out.accepted, out.duplicates, out.visible_at),
        status=202,
        headers=_JSON_HEADERS.copy(),
    )


_NO_QUERY: Mapping[str, str] = {}
# The headers `json_response` sets, built once (a copy per answer: aiohttp adds to them).
_JSON_HEADERS = CIMultiDict({hdrs.CONTENT_TYPE: "application/json"})


@functools.lru_cache(maxsize=1024)
def _clean_outcome(accepted: int, duplicates: int, visible_at: datetime | None) -> bytes:
    """The 202 body of a push with nothing rejected or dropped (the common case), encoded once.

    It depends only on these three values; `visible_at` moves at each window of the store.
    """
    return json_bytes(
        outcome_json(
            IngestOutcome(
                accepted=accepted,
                duplicates=duplicates,
                rejected=[],
                dropped={},
                visible_at=visible_at,
            )
        )
    )
