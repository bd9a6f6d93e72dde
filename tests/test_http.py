"""The HTTP API against the real app on an ephemeral port: happy paths and every error status."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.appserver import ADMIN, S1_TOKEN, S2_TOKEN, Harness, make_config, running
from tests.factories import sale_dict
from worker.api.routes import add_routes
from worker.app import build_app

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 in New York
URL = "/v1/push/canonical/S1"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path), NOW) as harness:
        yield harness


async def push(
    h: Harness,
    body: object,
    *,
    token: str = S1_TOKEN,
    url: str = URL,
    ctype: str = "application/json",
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await h.client.post(url, data=data, headers={**h.store(token), "Content-Type": ctype})
    out: dict[str, Any] = await resp.json()
    return resp.status, out


async def test_sale_is_spooled_with_visible_at(h: Harness) -> None:
    status, body = await push(h, sale_dict("T-1", at=NOW))
    assert status == 202, body
    assert body["accepted"] == 1 and body["duplicates"] == 0 and body["rejected"] == []
    # Next window of S1: 14:00 New York = 19:00 UTC on the same day.
    assert body["visible_at"] == "2026-11-20T19:00:00+00:00"
    assert h.spool.stats("S1").pending == 1
    # Not visible in the sales log before the window.
    resp = await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
    assert (await resp.json())["sales"] == []


async def test_duplicate_push_is_counted(h: Harness) -> None:
    await push(h, sale_dict("T-1", at=NOW))
    status, body = await push(h, [sale_dict("T-1", at=NOW), sale_dict("T-2", at=NOW)])
    assert status == 202
    assert (body["accepted"], body["duplicates"]) == (1, 1)


async def test_customers_sync_in_real_time_and_never_go_back(h: Harness) -> None:
    new = {
        "type": "customer",
        "id": "C1",
        "first_name": "Ada",
        "email": "ada@example.com",
        "version": 5,
    }
    old = {**new, "first_name": "Old", "version": 4}
    assert (await push(h, new))[0] == 202
    status, body = await push(h, old)
    assert status == 202 and body["duplicates"] == 1
    resp = await h.client.get("/v1/stores/S1/customers/C1", headers=h.admin())
    assert resp.status == 200
    got = await resp.json()
    assert got["first_name"] == "Ada" or got.get("record", {}).get("first_name") == "Ada"


async def test_ndjson_with_a_bad_line_in_the_middle(h: Harness) -> None:
    lines = [
        orjson.dumps(sale_dict("A", at=NOW)),
        b'{"type":"sale","id":"B"}',
        b"{not json",
        orjson.dumps(sale_dict("C", at=NOW)),
    ]
    status, body = await push(h, b"\n".join(lines), ctype="application/x-ndjson")
    assert status == 202
    assert body["accepted"] == 2
    rejected = body["rejected"]
    assert [r["index"] for r in rejected] == [1, 2]
    assert rejected[0]["field"] == "$.occurred_at"
    assert rejected[1]["field"] == "$"


async def test_nothing_acceptable_is_400_naming_the_field(h: Harness) -> None:
    bad = sale_dict("A", at=NOW)
    bad["lines"][0]["unit_price"] = "12,50"
    status, body = await push(h, bad)
    assert status == 400
    assert body["field"] == "$.lines[0].unit_price"
    assert h.spool.stats("S1").pending == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "$"),
        (b"{", "$"),
        (b"[]", "$"),
        (b"42", "$"),
        (
            b'{"type":"sale","id":"x","occurred_at":"2026-11-20T10:00:00Z","currency":"usd","lines":[],"subtotal":0,"tax":0,"total":0}',
            "$.currency",
        ),
        (
            b'{"type":"sale","id":"x","occurred_at":"2026-11-20T10:00:00Z","currency":"USD","lines":[],"subtotal":"NaN","tax":0,"total":0}',
            "$.subtotal",
        ),
        (
            b'{"type":"sale","id":"x","occurred_at":"2026-11-20T10:00:00Z","currency":"USD","lines":[],"subtotal":1e400,"tax":0,"total":0}',
            "$.subtotal",
        ),
        (b'{"type":"nope","id":"x"}', "$.type"),
        (b'{"type":"customer","id":"x","shoe_size":44}', "$"),
        (b'\xff\xfe{"type":"customer"}', "$"),
    ],
)
async def test_bad_bodies(h: Harness, payload: bytes, field: str) -> None:
    status, body = await push(h, payload)
    assert status == 400, body
    assert body["field"] == field, body
    assert "error" in body


async def test_auth_errors(h: Harness) -> None:
    assert (await push(h, sale_dict("A", at=NOW), token="wrong"))[0] == 401
    # A store token only works for its own store.
    status, body = await push(h, sale_dict("A", at=NOW), token=S2_TOKEN)
    assert status == 401 and body["field"] == "Authorization"
    resp = await h.client.post(URL, data=b"{}", headers={"Content-Type": "application/json"})
    assert resp.status == 401
    # Read and admin endpoints want the admin token, not a store token.
    for path in ("/status", "/readyz", "/metrics", "/v1/stores/S1/spool", "/v1/admin/quarantine"):
        resp = await h.client.get(path, headers=h.store())
        assert resp.status == 401, path
    assert (await h.client.get("/healthz")).status == 200


async def test_unknown_store_and_source(h: Harness) -> None:
    # An unknown store answers exactly like a wrong token (issue 12): no store enumeration.
    status, body = await push(h, sale_dict("A", at=NOW), url="/v1/push/canonical/NOPE")
    _, wrong = await push(h, sale_dict("A", at=NOW), token="not-a-token")
    assert status == 401 and body == wrong and body["field"] == "Authorization"
    status, body = await push(h, sale_dict("A", at=NOW), url="/v1/push/teletype/S1")
    assert status == 404 and body["field"] == "source"
    resp = await h.client.get("/no/such/path")
    assert resp.status == 404 and (await resp.json())["field"] == "path"


async def test_wrong_content_type_is_415(h: Harness) -> None:
    status, body = await push(h, sale_dict("A", at=NOW), ctype="text/csv")
    assert status == 415 and body["field"] == "Content-Type"


@pytest.mark.parametrize("ctype", ["a';T*", "text/plain;x*", ";*", "application/json;*"])
async def test_malformed_content_type_is_never_a_500(h: Harness, ctype: str) -> None:
    # The stdlib parser behind aiohttp's request.content_type raises IndexError on these
    # (found by the long fuzz run); the media type is parsed by possync instead.
    status, body = await push(h, sale_dict("A", at=NOW), ctype=ctype)
    assert status in (202, 415), body
    assert status == 202 or body["field"] == "Content-Type"


async def test_oversized_body_is_413_before_reading(h: Harness) -> None:
    huge = b"[" + orjson.dumps(sale_dict("S", at=NOW)) + b"]" + b" " * (1024 * 1024)
    resp = await h.client.post(
        URL, data=io.BytesIO(huge), headers={**h.store(), "Content-Type": "application/json"}
    )
    assert resp.status == 413 and (await resp.json())["field"] == "body"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    resp = await h.client.post(
        URL, data=chunks(), headers={**h.store(), "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert h.spool.stats("S1").pending == 0


async def test_spool_full_is_503_with_retry_after(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, spool={"max_records_per_store": 2, "retry_after_s": 42})
    async with running(cfg, NOW) as h:
        assert (await push(h, [sale_dict("A", at=NOW), sale_dict("B", at=NOW)]))[0] == 202
        resp = await h.client.post(
            URL,
            data=orjson.dumps(sale_dict("C", at=NOW)),
            headers={**h.store(), "Content-Type": "application/json"},
        )
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "42"
        assert (await resp.json())["field"] == "store"


async def test_window_commit_makes_sales_visible_and_fires_triggers(h: Harness) -> None:
    await push(h, {"type": "customer", "id": "C1", "first_name": "Ada"})
    await push(h, [sale_dict("A", at=NOW, customer_id="C1"), sale_dict("B", at=NOW)])
    resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    assert resp.status == 200
    out = (await resp.json())["stores"]["S1"]
    assert out["committed"] == 2 and out["quarantined"] == 0
    log = await (
        await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
    ).json()
    assert sorted(s["id"] for s in log["sales"]) == ["A", "B"]
    report = await (
        await h.client.get("/v1/stores/S1/report?from=2026-11-20&to=2026-11-20", headers=h.admin())
    ).json()
    # Two sales of 79.97 + 6.40 tax; money at the minor unit, a zero as "0.00".
    assert report["rows"] == [
        {
            "date": "2026-11-20",
            "currency": "USD",
            "count": 2,
            "gross": "172.74",
            "returns": "0.00",
            "returns_count": 0,
            "net": "172.74",
            "voided": 0,
        }
    ]
    assert {s["total"] for s in log["sales"]} == {"86.37"}
    assert {(s["discount"], s["rounding"], s["fees"]) for s in log["sales"]} == {
        (None, "0.00", "0.00")
    }
    trig = await (await h.client.get("/v1/stores/S1/triggers", headers=h.admin())).json()
    names = sorted((e["sale_id"], e["trigger"]) for e in trig["events"])
    assert ("A", "thank-you") in names and ("A", "follow-up") in names
    assert {e["total"] for e in trig["events"]} == {"86.37"}
    detail = await (await h.client.get("/v1/stores/S1/sales/A", headers=h.admin())).json()
    assert (detail["id"], detail["total"], detail["record"]["total"]) == ("A", "86.37", "86.37")
    assert [ln["quantity"] for ln in detail["lines"]] == ["1", "2"]
    assert h.spool.stats("S1").pending == 0


async def test_manual_sale_commits_at_once(h: Harness) -> None:
    status, body = await push(h, sale_dict("M-1", at=NOW, origin="manual"))
    assert status == 202 and body["accepted"] == 1
    assert h.spool.stats("S1").pending == 0
    log = await (
        await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
    ).json()
    assert [s["id"] for s in log["sales"]] == ["M-1"]
    bad = sale_dict("M-2", at=NOW, origin="manual", total="1.00")
    status, body = await push(h, bad)
    assert status == 400 and body["field"].startswith("$.total")


async def test_invalid_sale_is_quarantined_then_released(h: Harness) -> None:
    bad = sale_dict("Q-1", at=NOW, subtotal="1.00")
    await push(h, bad)
    out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
    assert out["stores"]["S1"]["quarantined"] == 1
    items = (await (await h.client.get("/v1/admin/quarantine?store=S1", headers=h.admin())).json())[
        "items"
    ]
    assert len(items) == 1 and items[0]["reasons"][0]["rule"] == "subtotal.sum"
    qid = items[0]["id"]
    # Released unchanged it is still invalid: 422 naming the field.
    resp = await h.client.post(f"/v1/admin/quarantine/{qid}/release", headers=h.admin())
    assert resp.status == 422
    fixed = sale_dict("Q-1", at=NOW)
    resp = await h.client.post(
        f"/v1/admin/quarantine/{qid}/release", data=orjson.dumps(fixed), headers=h.admin()
    )
    assert resp.status == 200, await resp.text()
    out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
    assert out["stores"]["S1"]["committed"] == 1
    resp = await h.client.delete(f"/v1/admin/quarantine/{qid}", headers=h.admin())
    assert resp.status == 404


async def test_pause_skips_windows_but_accepts_pushes(h: Harness) -> None:
    assert (await h.client.post("/v1/admin/stores/S1/pause", headers=h.admin())).status == 200
    assert (await push(h, sale_dict("P-1", at=NOW)))[0] == 202
    await h.app[__import__("worker.keys", fromlist=["COMMITTER"]).COMMITTER].commit_store(
        h.app[__import__("worker.keys", fromlist=["CONFIG"]).CONFIG].stores[0], NOW
    )
    assert h.spool.stats("S1").pending == 1
    assert (await h.client.post("/v1/admin/stores/S1/resume", headers=h.admin())).status == 200
    status = await (await h.client.get("/status", headers=h.admin())).json()
    assert status["stores"]["S1"]["paused"] is False
    assert status["stores"]["S1"]["pending"] == 1


async def test_health_status_metrics(h: Harness) -> None:
    resp = await h.client.get("/readyz", headers=h.admin())
    body = await resp.json()
    assert resp.status == 200, body
    assert (
        body["checks"]["spool"] == "ok"
        and body["checks"]["sink"] == "ok"
        and body["checks"]["task:scheduler"] == "ok"
    )
    status = await (await h.client.get("/status", headers=h.admin())).json()
    assert set(status["stores"]) == {"S1", "S2"}
    assert status["stores"]["S1"]["next_window"] == "2026-11-20T19:00:00+00:00"
    resp = await h.client.get("/metrics", headers=h.admin())
    assert resp.status == 200 and "possync_http_requests_total" in await resp.text()


async def test_bad_query_params(h: Harness) -> None:
    resp = await h.client.get("/v1/stores/S1/sales?date=yesterday", headers=h.admin())
    assert resp.status == 400 and (await resp.json())["field"] == "date"
    resp = await h.client.get(
        "/v1/stores/S1/report?from=2026-01-02&to=2026-01-01", headers=h.admin()
    )
    assert resp.status == 400 and (await resp.json())["field"] == "to"
    resp = await h.client.get("/v1/stores/S1/customers/none", headers=h.admin())
    assert resp.status == 404 and (await resp.json())["field"] == "id"
    resp = await h.client.get("/v1/stores/S9/spool", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 404


def _table(app: web.Application) -> list[tuple[str, str]]:
    return [
        (r.method, r.resource.canonical if r.resource is not None else "")
        for r in app.router.routes()
    ]


def test_the_app_serves_exactly_the_route_table(tmp_path: Path) -> None:
    """Every route of the app is registered by `add_routes`, once, in its order: no other
    module adds a route of its own."""
    bare = web.Application()
    add_routes(bare)
    table = _table(bare)
    assert _table(build_app(make_config(tmp_path))) == table
    assert len(set(table)) == len(table)
    for route in [
        ("POST", "/v1/push/{source}/{store}"),
        ("POST", "/v1/backfill/{source}/{store}"),
        ("POST", "/v1/files/{source}/{store}"),
        ("GET", "/"),
        ("GET", "/status"),
        ("GET", "/v1/stores/{store}/sales/{id}"),
        ("DELETE", "/v1/admin/quarantine/{id}"),
        ("GET", "/openapi.json"),
    ]:
        assert route in table
