"""Health and status: `/healthz`, `/readyz`, `/status` (and its body), `/metrics`.

`/healthz` answers anyone (the process is up); the rest take the admin token. `/readyz` is
503 naming the first failing check (spool writable, sink healthy, owned tasks alive).
`status_body` is the one source of the operator's view: `/status` pages it, the status page
at `/` renders it, and `possync status` reads it; all three order stores by
`attention_order`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

import worker
from worker import keys
from worker.api.params import int_param
from worker.committer import WindowResult
from worker.locks import instance_id
from worker.scheduler import owned_stores
from worker.web import json_response, require_admin

STATUS_STORES_DEFAULT = 200
STATUS_STORES_MAX = 2000


def attention_order(stores: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Store ids by what needs attention: failed windows, quarantine, paused, oldest pending,
    most pending."""

    def key(item: tuple[str, Mapping[str, Any]]) -> tuple[int, int, int, float, int, str]:
        sid, st = item
        last = st.get("last_window") or {}
        failed = 1 if last.get("error") else 0
        return (
            -failed,
            -int(st.get("quarantine") or 0),
            -int(bool(st.get("paused"))),
            -float(st.get("oldest_pending_age_s") or 0.0),
            -int(st.get("pending") or 0),
            sid,
        )

    return [sid for sid, _ in sorted(stores.items(), key=key)]


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


async def status(request: web.Request) -> web.Response:
    """GET /status[?page=N&limit=M]: everything an operator wants, stores paged.

    `summary` covers every store; `stores` holds one page of them in attention order
    (failed windows, quarantine, paused, oldest pending first), so a sidecar with thousands of
    stores answers in one small body. `next` is the following page, absent on the last.
    """
    require_admin(request)
    limit = int_param(request, "limit", STATUS_STORES_DEFAULT, STATUS_STORES_MAX)
    page = int_param(request, "page", 1, 1_000_000)
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
    lock = committer.window_lock
    owned = owned_stores(cfg)
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
            "next_window": app[keys.WINDOWS].visible_at(s).isoformat(),
            "last_window": _last_json(last),
            "quarantine": quarantine_of.get(s.id, 0),
            "paused": s.id in committer.paused,
            "owned": s.id in owned,
            "lock": "held" if s.id in lock.held else "waiting" if s.id in lock.waiting else None,
        }
    extra = app.get(keys.STATUS_EXTRA)
    body: dict[str, Any] = {
        "version": worker.__version__,
        "now": now.isoformat(),
        "instance": {
            "id": instance_id(cfg),
            "owns": sorted(owned),
            "lock": lock.kind,
            # Stores whose window lock this instance holds right now, and those waiting for
            # another instance's (a wait is visible, never silent).
            "locks_held": sorted(lock.held),
            "locks_waiting": sorted(lock.waiting),
        },
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
    outputs = getattr(app[keys.SINK], "outputs_status", None)  # with [[outputs]] only
    if outputs is not None:
        body["outputs"] = await outputs()
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
