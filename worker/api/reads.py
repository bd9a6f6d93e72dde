"""The read API (admin token): customers, products, the spool, the Sales Log, one sale, the
Sales Report and trigger events of one store.

Every answer is shaped by `worker.api.format` (money at the currency's minor unit, the exact
record under `record`); every list is one cursor page (`worker.api.pages`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from worker import keys
from worker.api.format import product_json, report_rows, sale_detail, sale_log_item, trigger_item
from worker.api.params import date_param, pager, store_of, text_param
from worker.errors import NotFound, RecordInvalid
from worker.sinks.base import TRIGGER_STATES, SinkReader
from worker.web import json_response, require_admin


def _reader(request: web.Request) -> SinkReader:
    """The sink's read side: all these handlers ask of it."""
    return request.app[keys.SINK]


async def get_customer(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/customers/{id}."""
    require_admin(request)
    store = store_of(request)
    got = await _reader(request).get_customer(store.id, request.match_info["id"])
    if got is None:
        raise NotFound(
            f"no customer {request.match_info['id']!r} in store {store.id!r}", field="id"
        )
    return json_response(got)


async def get_product(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/products/{id}."""
    require_admin(request)
    store = store_of(request)
    got = await _reader(request).get_product(store.id, request.match_info["id"])
    if got is None:
        raise NotFound(f"no product {request.match_info['id']!r} in store {store.id!r}", field="id")
    return json_response(product_json(got))


async def get_spool(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/spool: pending count and oldest age."""
    require_admin(request)
    store = store_of(request)
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
            "next_window": request.app[keys.WINDOWS].visible_at(store).isoformat(),
        }
    )


async def sales_log(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/sales?date=YYYY-MM-DD[&customer=][&limit=&cursor=]: one page
    of the Sales Log in (occurred_at, id) order, `count` of the whole date, `next`."""
    require_admin(request)
    store = store_of(request)
    day = date_param(request, "date")
    customer = text_param(request, "customer")
    page = pager(request, "sales", {"date": day.isoformat(), "customer": customer}, (str, str))
    sink = _reader(request)
    rows = await sink.sales_log(store.id, day, page.fetch, after=page.text_key(), customer=customer)
    count = await sink.count_sales(store.id, day, customer=customer)
    body: dict[str, Any] = {"store": store.id, "date": day.isoformat(), "count": count}
    if customer is not None:
        body["customer"] = customer
    return json_response(
        page.answer(body, "sales", rows, sale_log_item, lambda r: (r["occurred_at"], r["id"]))
    )


async def get_sale(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/sales/{id}: one committed sale, figures at the minor unit."""
    require_admin(request)
    store = store_of(request)
    got = await _reader(request).get_sale(store.id, request.match_info["id"])
    if got is None:
        # The id is the caller's own input: named as the field, never echoed back.
        raise NotFound("no committed sale with this id in the store", field="id")
    return json_response(sale_detail(got, store.source))


async def sales_report(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/report?from=&to=: the Sales Report."""
    require_admin(request)
    store = store_of(request)
    start, end = date_param(request, "from"), date_param(request, "to")
    if end < start:
        raise RecordInvalid("`to` is before `from`", field="to")
    if (end - start).days > 3660:
        raise RecordInvalid("range longer than ten years", field="to")
    rows = await _reader(request).sales_report(store.id, start, end)
    return json_response(
        {
            "store": store.id,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "rows": report_rows(rows),
        }
    )


async def list_triggers(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/triggers[?state=&trigger=&limit=&cursor=]: one page of the
    store's trigger events, newest first by (created_at, event_id), and `next`."""
    require_admin(request)
    store = store_of(request)
    state = request.query.get("state")
    if state is not None and state not in TRIGGER_STATES:
        raise RecordInvalid(f"state must be one of {', '.join(TRIGGER_STATES)}", field="state")
    trigger = text_param(request, "trigger")
    page = pager(request, "triggers", {"state": state, "trigger": trigger}, (str, str))
    events = await _reader(request).list_triggers(
        store.id,
        page.fetch,
        before=page.text_key(),
        state=state,
        trigger=trigger,
        now=request.app[keys.CLOCK].now(),
    )
    body: dict[str, Any] = {"store": store.id}
    return json_response(
        page.answer(
            body, "events", events, trigger_item, lambda e: (e["created_at"], e["event_id"])
        )
    )
