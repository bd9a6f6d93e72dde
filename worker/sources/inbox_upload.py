"""`POST /v1/files/{source}/{store}`: one export file uploaded, ingested like a drop-folder file.

    POST /v1/files/{source}/{store}?filename=NAME   (store token or admin; body = the file)
        -> Intake.ingest(Envelope(priority="bulk", authorized=True))
        -> 202 {"accepted", "duplicates", "rejected", "dropped", "visible_at"}

Also home of what the drop folders and the uploads share: the size limit and the content
type a file name implies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from worker import keys
from worker.config import Config
from worker.intake import Envelope, check_headers
from worker.sources.http import outcome_json
from worker.web import bearer, json_response, media_type, read_body, route_source

if TYPE_CHECKING:
    from worker.sources.inbox import Inbox

CONTENT_TYPES: Mapping[str, str] = {
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".txt": "text/plain",
}
# A file is parsed whole by its adapter (as a push is), so it is held in memory a few times
# over: cap it at this many push bodies (and never above `http.max_backfill_bytes`).
FILE_BODIES = 16
LIMIT_HINT = f"{FILE_BODIES} x http.max_body_bytes, at most http.max_backfill_bytes"

INBOX: web.AppKey[Inbox] = web.AppKey("inbox")


def file_limit(cfg: Config) -> int:
    """Largest file (bytes) taken from a drop folder or accepted by `POST /v1/files`."""
    return min(cfg.http.max_backfill_bytes, FILE_BODIES * cfg.http.max_body_bytes)


def content_type_for(name: str) -> str:
    """The media type a file name implies ("" when the extension says nothing)."""
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "")


def upload_filename(request: web.Request) -> str | None:
    """`?filename=`, else the Content-Disposition filename; a bare name (no directories)."""
    raw = request.query.get("filename")
    if not raw:
        disposition = request.headers.get("Content-Disposition")
        if disposition:
            _, params = parse_content_disposition(disposition)
            raw = content_disposition_filename(params, "filename")
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    return name if name not in ("", ".", "..") else None


def upload_content_type(request: web.Request, filename: str | None) -> str:
    """The Content-Type header, unless absent or generic; then the file name's extension."""
    given = media_type(request)
    if given in ("", "application/octet-stream") and filename:
        return content_type_for(filename) or given
    return given


async def upload(request: web.Request) -> web.Response:
    """POST /v1/files/{source}/{store}: ingest one export file, answered like a push."""
    app = request.app
    intake = app[keys.INTAKE]
    # Authenticate before reading a body that may be large (signed sources included: a file
    # upload carries no webhook signature). An unknown store is the same 401 as a bad token.
    store = intake.authorized_store(request.match_info["store"], bearer(request))
    source = route_source(request, store)
    headers = dict(request.headers)
    check_headers(headers)
    filename = upload_filename(request)
    body = await read_body(request, file_limit(app[keys.CONFIG]))
    out = await intake.ingest(
        Envelope(
            source=source,
            store=store.id,
            body=body,
            content_type=upload_content_type(request, filename),
            headers=headers,
            topic=request.query.get("topic"),
            filename=filename,
            priority="bulk",
            authorized=True,
        )
    )
    inbox = app.get(INBOX)
    if inbox is not None:
        inbox.stats[store.id].uploads += 1
    return json_response(outcome_json(out), status=202)
