"""The admin API (admin token): commit now, preview, pause/resume, the quarantine and the
audit log.

What it changes goes through the committer and the spool, never around them: a release
re-validates the record as its window would and puts it back in the spool (audited), a
discard leaves an audit entry, a manual commit is the window's own commit with a deadline.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web

from worker import keys
from worker.api.params import pager, store_of
from worker.buffers.base import QuarantineFilter, QuarantineItem
from worker.config import POLICY_RULES
from worker.errors import NotFound, RecordInvalid
from worker.records import DECODE_ERRORS, SPOOLED_DECODER, Spooled, invalid_from
from worker.web import json_response, read_body, require_admin


async def admin_commit(request: web.Request) -> web.Response:
    """POST /v1/admin/commit[?store=]: run the window now."""
    require_admin(request)
    cfg = request.app[keys.CONFIG]
    committer = request.app[keys.COMMITTER]
    wanted = request.query.get("store")
    stores = [request.app[keys.INTAKE].store(wanted)] if wanted else list(cfg.stores)
    now = request.app[keys.CLOCK].now()
    # A failing sink is retried until this deadline, then its error is the answer (507 disk
    # full, 503 + Retry-After gone or busy) and the rows stay pending for the next window.
    deadline = now + timedelta(seconds=cfg.windows.admin_commit_timeout_s)
    out: dict[str, Any] = {}
    for store in stores:
        res = await committer.commit_store(store, now, force=True, deadline=deadline)
        out[store.id] = {
            "committed": res.committed,
            "quarantined": res.quarantined,
            "held": res.held,
            "triggers": res.triggers,
            "voids": res.voids,
            "skipped": res.skipped,
        }
    return json_response({"window_at": now.isoformat(), "stores": out})


async def admin_preview(request: web.Request) -> web.Response:
    """GET /v1/admin/stores/{store}/preview: dry-run validation of what is pending."""
    require_admin(request)
    return json_response(await request.app[keys.COMMITTER].preview(store_of(request)))


async def admin_pause(request: web.Request) -> web.Response:
    """POST /v1/admin/stores/{store}/pause | resume."""
    require_admin(request)
    store = store_of(request)
    paused = request.match_info["action"] == "pause"
    await request.app[keys.COMMITTER].set_paused(store, paused)
    return json_response({"store": store.id, "paused": paused})


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _epoch_text(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat()


def _bound(request: web.Request, name: str) -> tuple[str | None, float | None]:
    """`from` / `to` on quarantined_at: a date (UTC day; `to` includes the whole day) or
    an instant with an offset (`to` excluded). Canonical text and unix seconds."""
    raw = request.query.get(name)
    if raw is None:
        return None, None
    rule = f"{name} must be a date YYYY-MM-DD or an ISO-8601 instant with an offset"
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            edge = start + timedelta(days=1) if name == "to" else start
            return day.isoformat(), edge.timestamp()
        at = datetime.fromisoformat(raw) if len(raw) <= 40 else None
        if at is None or at.tzinfo is None:
            raise RecordInvalid(rule, field=name)
        return _utc_text(at), at.timestamp()
    except (ValueError, OverflowError):  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise RecordInvalid(rule, field=name) from None


def _rule_param(request: web.Request) -> str | None:
    rule = request.query.get("rule")
    if rule is not None and not (
        0 < len(rule) <= 64 and rule.isascii() and all(c.isalnum() or c in "._-" for c in rule)
    ):
        raise RecordInvalid("rule must be a rule id (e.g. total.sum)", field="rule")
    return rule


def _quarantine_item(i: QuarantineItem) -> dict[str, Any]:
    return {
        "id": i.qid,
        "store": i.store,
        "type": i.kind,
        "record_id": i.rid,
        "version": i.version,
        "received_at": _epoch_text(i.received_at),
        "quarantined_at": _epoch_text(i.quarantined_at),
        "reasons": i.reasons,
        "record": msgspec.json.decode(i.body),
    }


async def quarantine_list(request: web.Request) -> web.Response:
    """GET /v1/admin/quarantine[?store=&rule=&from=&to=&limit=&cursor=]: one page of the
    quarantine, newest first by id, `count` of all that match the filters, and `next`."""
    require_admin(request)
    store = request.query.get("store")
    if store is not None:
        request.app[keys.INTAKE].store(store)
    rule = _rule_param(request)
    since_text, since = _bound(request, "from")
    until_text, until = _bound(request, "to")
    if since is not None and until is not None and until <= since:
        raise RecordInvalid("`to` is not after `from`", field="to")
    filters = {"store": store, "rule": rule, "from": since_text, "to": until_text}
    page = pager(request, "quarantine", filters, (int,))
    wanted = QuarantineFilter(store=store, rule=rule, since=since, until=until)
    items, count = await request.app[keys.SPOOL].quarantined.page(
        wanted, page.fetch, page.int_key()
    )
    body: dict[str, Any] = {"count": count}
    return json_response(page.answer(body, "items", items, _quarantine_item, lambda i: (i.qid,)))


_MAX_QID = 2**63 - 1  # SQLite's INTEGER: a larger id cannot exist (and cannot be bound)


def _qid(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= _MAX_QID:
        raise NotFound("quarantine id must be an integer from 1 to 2**63-1", field="id")
    return int(raw)


async def quarantine_release(request: web.Request) -> web.Response:
    """POST /v1/admin/quarantine/{id}/release [corrected record]: re-validate, back to the spool."""
    require_admin(request)
    spool = request.app[keys.SPOOL]
    qid = _qid(request)
    item = await spool.quarantined.get(qid)
    if item is None:
        raise NotFound(f"no quarantined record {qid}", field="id")
    body = await read_body(request, request.app[keys.CONFIG].http.max_body_bytes)
    raw = body if body.strip() else item.body
    try:
        record: Spooled = SPOOLED_DECODER.decode(raw)
    except DECODE_ERRORS as exc:
        raise invalid_from(exc) from None
    if record.id != item.rid:
        raise RecordInvalid(
            f"corrected record id {record.id!r} differs from {item.rid!r}", field="$.id"
        )
    committer = request.app[keys.COMMITTER]
    store = request.app[keys.INTAKE].store(item.store)
    failures = await committer.recheck(store, record)
    if failures:
        return json_response(
            {
                "error": "record is still invalid",
                "field": failures[0].field,
                "reasons": [msgspec.structs.asdict(f) for f in failures],
            },
            status=422,
        )
    await spool.quarantined.release(qid, record, actor="admin")
    return json_response(
        {
            "released": qid,
            "store": item.store,
            "visible_at": request.app[keys.WINDOWS].visible_at(store).isoformat(),
        }
    )


_RELEASE_RULES = frozenset((*POLICY_RULES, "schema"))


async def quarantine_release_rule(request: web.Request) -> web.Response:
    """POST /v1/admin/quarantine/release?store=&rule=: re-validate one rule's quarantine.

    Every quarantined record of the store that failed `rule` is validated again as its
    window would (the store's current rule policy); those now valid go back to the spool
    (audited, one by one), the rest stay with their fresh reasons.
    """
    require_admin(request)
    store_id = request.query.get("store")
    if not store_id:
        raise RecordInvalid("query parameter 'store' is required", field="store")
    store = request.app[keys.INTAKE].store(store_id)
    rule = request.query.get("rule")
    if not rule:
        raise RecordInvalid("query parameter 'rule' is required", field="rule")
    if rule not in _RELEASE_RULES:
        raise RecordInvalid("not a window rule id (see worker.config.POLICY_RULES)", field="rule")
    spool = request.app[keys.SPOOL]
    committer = request.app[keys.COMMITTER]
    released: list[int] = []
    released_records: list[str] = []
    still_invalid: list[dict[str, Any]] = []
    for item in await spool.quarantined.by_rule(store.id, rule):
        try:
            record: Spooled = SPOOLED_DECODER.decode(item.body)
        except DECODE_ERRORS as exc:
            err = invalid_from(exc)
            reasons = [{"rule": "schema", "field": err.field, "message": err.message}]
        else:
            failures = await committer.recheck(store, record)
            reasons = [msgspec.structs.asdict(f) for f in failures]
        if reasons:
            still_invalid.append({"id": item.qid, "record_id": item.rid, "reasons": reasons})
        elif await spool.quarantined.release(item.qid, record, actor="admin"):
            released.append(item.qid)
            released_records.append(item.rid)
    return json_response(
        {
            "store": store.id,
            "rule": rule,
            "released": released,
            "released_records": released_records,
            "still_invalid": still_invalid,
            "visible_at": request.app[keys.WINDOWS].visible_at(store).isoformat(),
        }
    )


async def quarantine_delete(request: web.Request) -> web.Response:
    """DELETE /v1/admin/quarantine/{id}: discard with an audit entry."""
    require_admin(request)
    qid = _qid(request)
    reason = request.query.get("reason", "")[:500]
    if not await request.app[keys.SPOOL].quarantined.discard(qid, actor="admin", reason=reason):
        raise NotFound(f"no quarantined record {qid}", field="id")
    return json_response({"discarded": qid})


async def audit(request: web.Request) -> web.Response:
    """GET /v1/admin/audit[?limit=&cursor=]: one page of the audit log, newest first by
    id (`at` ISO-8601 UTC), and `next`."""
    require_admin(request)
    page = pager(request, "audit", {}, (int,))
    entries = await request.app[keys.SPOOL].quarantined.audit_log(page.fetch, before=page.int_key())
    body: dict[str, Any] = {}
    return json_response(page.answer(body, "entries", entries, dict, lambda e: (e["id"],)))
