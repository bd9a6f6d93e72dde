"""The HTTP push source: `POST /v1/push/{source}/{store}` -> intake -> 202.

A push is authenticated from its headers before its body is read (the store's own token,
or for a signed source a configured secret and the signature header); body limits are
enforced from Content-Length before reading and again while reading, so an oversized body
is never held whole. Every error is JSON `{"error", "field"}` with a precise status
(`worker.web`). The 202 body (`outcome_json`) is shared with file uploads and the inbox.
Reads, admin and health live in `worker.api`; the route table in `worker.api.routes`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from worker import keys
from worker.intake import Envelope, IngestOutcome, check_headers, rejections_json
from worker.web import bearer, json_response, media_type, read_body


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
    intake = request.app[keys.INTAKE]
    cfg = request.app[keys.CONFIG]
    source = request.match_info["source"]
    headers = dict(request.headers)
    # Before a byte of the body is read: the store's token (or, for a signed source, a
    # signature header and a configured secret). An unknown store answers exactly like a
    # wrong token, so store ids cannot be enumerated.
    store = intake.admit(source, request.match_info["store"], headers, bearer(request))
    check_headers(headers)
    body = await read_body(request, cfg.http.max_body_bytes)
    out = await intake.ingest(
        Envelope(
            source=source,
            store=store.id,
            body=body,
            content_type=media_type(request),
            headers=headers,
            topic=headers.get("X-Shopify-Topic") or request.query.get("topic"),
            filename=request.query.get("filename"),
            authorized=True,
        )
    )
    return json_response(outcome_json(out), status=202)
