"""The HTTP output: POST pages of committed events to the clienteling app's API.

Wire format: `POST <url>` with `Content-Type: application/json`, body
`{"events": [{"event_id", "kind", "store", "at", "body"}, ...]}` (one page, in outbox order),
`Idempotency-Key: <hex>` derived from the page's event ids (the same page retried carries
the same key), `Authorization: Bearer <token>` when a token is set.

Answers: 2xx delivered; 429 and 5xx retriable (429 and 503 honour `Retry-After`, seconds or
an HTTP date); a timeout (`timeout_s` for the whole exchange) or a connection failure
retriable; any other status fatal (the page is parked). Error messages name the status and
the rule, never the receiver's body (it may quote the events). The page size and the
concurrency (pages in flight, order per store kept) are the outbox's (`worker.sinks.outbox`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import msgspec

from worker.config import Config, HttpOutputConfig, OutputConfig
from worker.errors import SinkError
from worker.sinks.outputs import OutEvent

log = logging.getLogger("possync.output.http")

_ENCODER = msgspec.json.Encoder()
RETRY_AFTER_MAX_S = 3600


class _Page(msgspec.Struct, frozen=True):
    events: Sequence[OutEvent]


def idempotency_key(events: Sequence[OutEvent]) -> str:
    """The page's key: sha256 of its event ids in order (stable across retries and restarts)."""
    h = hashlib.sha256()
    for ev in events:
        h.update(ev.event_id.encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """`Retry-After` as whole seconds (delta-seconds or an HTTP date), capped; None if absent
    or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(int(text), RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0, min(int(seconds + 0.999), RETRY_AFTER_MAX_S))


class HttpOutput:
    """One HTTP destination on one aiohttp ClientSession."""

    def __init__(self, cfg: HttpOutputConfig, session: aiohttp.ClientSession) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)

    async def deliver(self, events: Sequence[OutEvent]) -> None:
        """POST one page; return once the receiver answered 2xx, else raise SinkError."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key(events)}
        if self.cfg.token:
            headers["Authorization"] = f"Bearer {self.cfg.token}"
        body = _ENCODER.encode(_Page(events))
        where = f"output {self.name}"
        try:
            async with self._session.post(
                self.cfg.url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                await resp.read()  # drain, so the connection is reused
                status = resp.status
                hint = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise SinkError(
                f"{where}: no answer within {self.cfg.timeout_s:g} s (timeout: retriable)",
                retriable=True,
                field="outputs.url",
            ) from None
        except aiohttp.ClientError as exc:
            raise SinkError(
                f"{where}: request failed ({type(exc).__name__}: retriable)",
                retriable=True,
                field="outputs.url",
            ) from None
        if 200 <= status < 300:
            return
        if status == 429 or status >= 500:
            raise SinkError(
                f"{where}: HTTP {status} (retriable)",
                retriable=True,
                field="outputs.url",
                retry_after_s=hint if status in (429, 503) else None,
            )
        raise SinkError(
            f"{where}: HTTP {status} (fatal: a 4xx other than 429 parks the page)",
            retriable=False,
            field="outputs.url",
        )


@asynccontextmanager
async def open_http_output(cfg: Config, out: OutputConfig) -> AsyncIterator[HttpOutput]:
    """One ClientSession for the life of the output; closed on exit."""
    assert isinstance(out, HttpOutputConfig)  # the registry maps kind "http" here only
    connector = aiohttp.TCPConnector(limit=max(out.concurrency, 1))
    async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
        yield HttpOutput(out, session)
