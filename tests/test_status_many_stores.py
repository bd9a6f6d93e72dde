"""/status with thousands of stores: a summary of all, one page of stores in attention order,
`next` through the rest (issue 12, "At scale"); the spool is read in two hops, not per store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.appserver import make_config, running
from tests.factories import sale_dict

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
N = 2000


def _stores() -> list[dict[str, Any]]:
    return [
        {"id": f"ST{i:04d}", "source": "canonical", "timezone": "UTC", "token": f"tok-{i:04d}"}
        for i in range(N)
    ]


async def test_status_pages_thousands_of_stores(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, stores=_stores()), NOW) as h:
        # One store with pending sales, one with a quarantined sale: both lead the order.
        for sid, body in (
            ("ST1500", sale_dict("P1")),
            ("ST0700", {**sale_dict("Q1"), "total": "1"}),
        ):
            resp = await h.client.post(
                f"/v1/push/canonical/{sid}",
                data=json.dumps(body),
                headers={
                    "Authorization": f"Bearer tok-{sid[2:]}",
                    "Content-Type": "application/json",
                },
            )
            assert resp.status == 202
        await h.client.post("/v1/admin/commit?store=ST0700", headers=h.admin())
        first = await (await h.client.get("/status", headers=h.admin())).json()
        assert first["summary"]["stores"] == N
        assert first["summary"]["pending"] == 1 and first["summary"]["quarantined"] == 1
        assert first["summary"]["stores_with_quarantine"] == 1
        assert list(first["stores"])[:2] == ["ST0700", "ST1500"]
        assert first["page"] == {"page": 1, "limit": 200, "stores": 200}
        seen = list(first["stores"])
        url = first.get("next")
        while url:
            body = await (await h.client.get(url, headers=h.admin())).json()
            seen.extend(body["stores"])
            url = body.get("next")
        assert len(seen) == N and len(set(seen)) == N


async def test_status_limit_is_checked(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), NOW) as h:
        for bad in ("0", "-1", "x", "99999", "²"):
            resp = await h.client.get(f"/status?limit={bad}", headers=h.admin())
            assert resp.status == 400
            assert (await resp.json())["field"] == "limit"
        one = await (await h.client.get("/status?limit=1", headers=h.admin())).json()
        assert len(one["stores"]) == 1 and one["next"] == "/status?page=2&limit=1"
