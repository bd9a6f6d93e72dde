"""HTTP API (aiohttp): pushes, reads, admin, health.

Every error is JSON `{"error": ..., "field": ...}` with a precise status; nothing on input
returns a 500 (the shared plumbing is `worker.web`). A push is authenticated from its
headers before its body is read; body limits are enforced from Content-Length before
reading and again while reading, so an oversized body is never held whole.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web

from worker import api_format, keys, pages
from worker.buffers.base import QuarantineFilter, QuarantineItem
from worker.committer import WindowResult
from worker.config import POLICY_RULES, StoreConfig
from worker.errors import NotFound, RecordInvalid
from worker.intake import Envelope, IngestOutcome, check_headers, rejections_json
from worker.records import DECODE_ERRORS, SPOOLED_DECODER, Spooled, invalid_from
from worker.sinks.base import TRIGGER_STATES
from worker.status_page import attention_order
from worker.web import bearer, json_response, media_type, read_body, require_admin

log = logging.getLogger("possync.http")


def _store(request: web.Request) -> StoreConfig:
    return request.app[keys.INTAKE].store(request.match_info["store"])


def outcome_json(out: IngestOutcome) -> dict[str, Any]:
    """The 202 body: the first MAX_REJECTIONS rejections itemized, all of them counted."""
    return {
        "accepted": out.accepted,
        "duplicates": out.duplicates,
        "rejected": rejections_json(out.rejected),
        "rejected_count": len(out.rejected),
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


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: spool writable, sink healthy, background tasks alive."""
    require_admin(request)
    checks = await request.app[keys.HEALTH].run()
    failing = {k: v for k, v in checks.items() if v != "ok"}
    body: dict[str, Any] = {
        "ready": not failing,
        "checks": checks,
        "notes": request.app[keys.HEALTH].current_notes(),
    }
    if failing:
        name = next(iter(failing))
        body["error"] = f"{name}: {failing[name]}"
        body["field"] = name
        return json_response(body, status=503)
    return json_response(body)


STATUS_STORES_DEFAULT = 200
STATUS_STORES_MAX = 2000


async def status(request: web.Request) -> web.Response:
    """GET /status[?page=N&limit=M]: everything an operator wants, stores paged.

    `summary` covers every store; `stores` holds one page of them in attention order
    (failed windows, quarantine, paused, oldest pending first), so a sidecar with thousands of
    stores answers in one small body. `next` is the following page, absent on the last.
    """
    require_admin(request)
    limit = _int_param(request, "limit", STATUS_STORES_DEFAULT, STATUS_STORES_MAX)
    page = _int_param(request, "page", 1, 1_000_000)
    body = await status_body(request.app)
    stores: dict[str, dict[str, Any]] = body["stores"]
    order = attention_order(stores)
    shown = order[(page - 1) * limit : page * limit]
    body["stores"] = {sid: stores[sid] for sid in shown}
    body["summary"] = {
        "stores": len(order),
        "pending": sum(int(st["pending"]) for st in stores.values()),
        "quarantined": sum(int(st["quarantine"]) for st in stores.values()),
        "stores_with_quarantine": sum(1 for st in stores.values() if st["quarantine"]),
        "paused": sum(1 for st in stores.values() if st["paused"]),
        "failed_last_window": sum(
            1 for st in stores.values() if (st["last_window"] or {}).get("error")
        ),
        "oldest_pending_age_s": max(
            (st["oldest_pending_age_s"] or 0.0 for st in stores.values()), default=0.0
        ),
    }
    body["page"] = {"page": page, "limit": limit, "stores": len(shown)}
    if page * limit < len(order):
        body["next"] = f"/status?page={page + 1}&limit={limit}"
    return json_response(body)


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise RecordInvalid(f"{name} must be an integer from 1 to {maximum}", field=name)
    return int(raw)


async def status_body(app: web.Application) -> dict[str, Any]:
    """The /status body (the status page at `/` renders the same data)."""
    cfg = app[keys.CONFIG]
    spool = app[keys.SPOOL]
    committer = app[keys.COMMITTER]
    clock = app[keys.CLOCK]
    now = clock.now()
    stores = {}
    # Two hops to the spool's reader for every store at once (not two per store: with
    # thousands of stores, per-store queries made /status slow and pushes wait behind it).
    with_pending = [s.id for s in cfg.stores if spool.stats(s.id).pending]
    oldest_of = await spool.oldest_many(with_pending)
    quarantine_of = await spool.quarantined.counts()
    for s in cfg.stores:
        st = spool.stats(s.id)
        oldest = oldest_of.get(s.id)
        last = committer.last.get(s.id)
        stores[s.id] = {
            "source": s.source,
            "timezone": str(cfg.store_zone(s)),
            "pending": st.pending,
            "pending_bytes": st.bytes,
            "oldest_pending_age_s": round(now.timestamp() - oldest, 3)
            if oldest is not None
            else None,
            "next_window": committer.visible_at(s).isoformat(),
            "last_window": _last_json(last),
            "quarantine": quarantine_of.get(s.id, 0),
            "paused": s.id in committer.paused,
        }
    extra = app.get(keys.STATUS_EXTRA)
    body: dict[str, Any] = {
        "version": __import__("worker").__version__,
        "now": now.isoformat(),
        "stores": stores,
        "spool": {
            "path": str(spool.path),
            "pending": spool.total_pending(),
            "groups_committed": spool.groups,
            "last_error": spool.last_error,
            "recovered_from": spool.recovered_from,
            "integrity": spool.integrity,
            "writer_alive": spool.writer_alive,
        },
        "sink": {
            "kind": app[keys.SINK].name,
            "last_error": committer.sink_error,
            "recovered_from": getattr(app[keys.SINK], "recovered_from", None),
        },
        "health": await app[keys.HEALTH].run(),
        "notes": app[keys.HEALTH].current_notes(),
    }
    if extra:
        for name, fn in extra.items():
            body[name] = fn()
    return body


def _last_json(last: WindowResult | None) -> dict[str, Any] | None:
    return None if last is None else msgspec.to_builtins(last)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition."""
    require_admin(request)
    m = request.app[keys.METRICS]
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


async def get_customer(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/customers/{id}."""
    require_admin(request)
    store = _store(request)
    got = await request.app[keys.SINK].get_customer(store.id, request.match_info["id"])
    if got is None:
        raise NotFound(
            f"no customer {request.match_info['id']!r} in store {store.id!r}", field="id"
        )
    return json_response(got)


async def get_product(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/products/{id}."""
    require_admin(request)
    store = _store(request)
    got = await request.app[keys.SINK].get_product(store.id, request.match_info["id"])
    if got is None:
        raise NotFound(f"no product {request.match_info['id']!r} in store {store.id!r}", field="id")
    return json_response(api_format.product_json(got))


async def get_spool(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/spool: pending count and oldest age."""
    require_admin(request)
    store = _store(request)
    spool = request.app[keys.SPOOL]
    st = spool.stats(store.id)
    oldest = await spool.oldest(store.id) if st.pending else None
    now = request.app[keys.CLOCK].now().timestamp()
    return json_response(
        {
            "store": store.id,
            "pending": st.pending,
            "bytes": st.bytes,
            "oldest_pending_age_s": round(now - oldest, 3) if oldest is not None else None,
            "next_window": request.app[keys.COMMITTER].visible_at(store).isoformat(),
        }
    )


def _date_param(request: web.Request, name: str) -> date:
    raw = request.query.get(name)
    if raw is None:
        raise RecordInvalid(f"query parameter {name!r} is required (YYYY-MM-DD)", field=name)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise RecordInvalid(
            f"{name} must be a date YYYY-MM-DD, got {raw[:40]!r}", field=name
        ) from None


def _text_param(request: web.Request, name: str) -> str | None:
    """An optional id-like filter: 1 to 256 characters (never echoed back in an error)."""
    raw = request.query.get(name)
    if raw is not None and not 0 < len(raw) <= 256:
        raise RecordInvalid(f"{name} must be 1 to 256 characters", field=name)
    return raw


def _pager(
    request: web.Request, name: str, filters: pages.Filters, shape: tuple[type, ...]
) -> pages.Pager:
    """The list request's paging: `limit`, `cursor` (bound to this list and its filters)."""
    return pages.Pager(
        secret=request.app[keys.CONFIG].http.admin_token,
        name=name,
        path=request.rel_url.raw_path,
        query=request.query,
        filters=filters,
        shape=shape,
    )


async def sales_log(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/sales?date=YYYY-MM-DD[&customer=][&limit=&cursor=]: one page
    of the Sales Log in (occurred_at, id) order, `count` of the whole date, `next`."""
    require_admin(request)
    store = _store(request)
    day = _date_param(request, "date")
    customer = _text_param(request, "customer")
    pager = _pager(request, "sales", {"date": day.isoformat(), "customer": customer}, (str, str))
    sink = request.app[keys.SINK]
    rows = await sink.sales_log(
        store.id, day, pager.fetch, after=pager.text_key(), customer=customer
    )
    count = await sink.count_sales(store.id, day, customer=customer)
    body: dict[str, Any] = {"store": store.id, "date": day.isoformat(), "count": count}
    if customer is not None:
        body["customer"] = customer
    return json_response(
        pager.answer(
            body, "sales", rows, api_format.sale_log_item, lambda r: (r["occurred_at"], r["id"])
        )
    )


async def get_sale(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/sales/{id}: one committed sale, figures at the minor unit."""
    require_admin(request)
    store = _store(request)
    got = await request.app[keys.SINK].get_sale(store.id, request.match_info["id"])
    if got is None:
        # The id is the caller's own input: named as the field, never echoed back.
        raise NotFound("no committed sale with this id in the store", field="id")
    return json_response(api_format.sale_detail(got, store.source))


async def sales_report(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/report?from=&to=: the Sales Report."""
    require_admin(request)
    store = _store(request)
    start, end = _date_param(request, "from"), _date_param(request, "to")
    if end < start:
        raise RecordInvalid("`to` is before `from`", field="to")
    if (end - start).days > 3660:
        raise RecordInvalid("range longer than ten years", field="to")
    rows = await request.app[keys.SINK].sales_report(store.id, start, end)
    return json_response(
        {
            "store": store.id,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "rows": api_format.report_rows(rows),
        }
    )


async def list_triggers(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/triggers[?state=&trigger=&limit=&cursor=]: one page of the
    store's trigger events, newest first by (created_at, event_id), and `next`."""
    require_admin(request)
    store = _store(request)
    state = request.query.get("state")
    if state is not None and state not in TRIGGER_STATES:
        raise RecordInvalid(f"state must be one of {', '.join(TRIGGER_STATES)}", field="state")
    trigger = _text_param(request, "trigger")
    pager = _pager(request, "triggers", {"state": state, "trigger": trigger}, (str, str))
    events = await request.app[keys.SINK].list_triggers(
        store.id,
        pager.fetch,
        before=pager.text_key(),
        state=state,
        trigger=trigger,
        now=request.app[keys.CLOCK].now(),
    )
    body: dict[str, Any] = {"store": store.id}
    return json_response(
        pager.answer(
            body,
            "events",
            events,
            api_format.trigger_item,
            lambda e: (e["created_at"], e["event_id"]),
        )
    )


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
    return json_response(await request.app[keys.COMMITTER].preview(_store(request)))


async def admin_pause(request: web.Request) -> web.Response:
    """POST /v1/admin/stores/{store}/pause | resume."""
    require_admin(request)
    store = _store(request)
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
    pager = _pager(request, "quarantine", filters, (int,))
    wanted = QuarantineFilter(store=store, rule=rule, since=since, until=until)
    items, count = await request.app[keys.SPOOL].quarantined.page(
        wanted, pager.fetch, pager.int_key()
    )

    def item(i: QuarantineItem) -> dict[str, Any]:
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

    body: dict[str, Any] = {"count": count}
    return json_response(pager.answer(body, "items", items, item, lambda i: (i.qid,)))


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
            "visible_at": committer.visible_at(store).isoformat(),
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
            "visible_at": committer.visible_at(store).isoformat(),
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
    pager = _pager(request, "audit", {}, (int,))
    entries = await request.app[keys.SPOOL].quarantined.audit_log(pager.fetch, before=pager.int_key())
    body: dict[str, Any] = {}
    return json_response(pager.answer(body, "entries", entries, dict, lambda e: (e["id"],)))


def add_routes(app: web.Application) -> None:
    """Register every route."""
    r = app.router
    r.add_post("/v1/push/{source}/{store}", push)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/status", status)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/stores/{store}/customers/{id}", get_customer)
    r.add_get("/v1/stores/{store}/products/{id}", get_product)
    r.add_get("/v1/stores/{store}/spool", get_spool)
    r.add_get("/v1/stores/{store}/sales", sales_log)
    r.add_get("/v1/stores/{store}/sales/{id}", get_sale)
    r.add_get("/v1/stores/{store}/report", sales_report)
    r.add_get("/v1/stores/{store}/triggers", list_triggers)
    r.add_post("/v1/admin/commit", admin_commit)
    r.add_get("/v1/admin/stores/{store}/preview", admin_preview)
    r.add_post("/v1/admin/stores/{store}/{action:pause|resume}", admin_pause)
    r.add_get("/v1/admin/quarantine", quarantine_list)
    r.add_post("/v1/admin/quarantine/release", quarantine_release_rule)
    r.add_post("/v1/admin/quarantine/{id}/release", quarantine_release)
    r.add_delete("/v1/admin/quarantine/{id}", quarantine_delete)
    r.add_get("/v1/admin/audit", audit)
