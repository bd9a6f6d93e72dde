"""A window of many pages: references across pages resolve while pages are pipelined."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.appserver import make_config, running
from tests.factories import sale_dict

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


async def test_cross_page_return_and_void_commit_exactly_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, windows={"batch_size": 10})
    async with running(cfg, NOW) as h:
        records = [sale_dict(f"P-{i:03d}", at=NOW) for i in range(35)]
        # A return of P-001 and a void of P-002, both pages after their originals.
        ret = sale_dict("R-001", at=NOW, kind="return", original_id="P-001")
        for line in ret["lines"]:
            line["quantity"] = str(-int(line["quantity"]))
        for key in ("subtotal", "tax", "total"):
            ret[key] = "-" + ret[key]
        ret["tenders"][0]["amount"] = ret["total"]
        records.append(ret)
        records.append({"type": "void", "id": "P-002", "occurred_at": NOW.isoformat()})
        body = b"\n".join(orjson.dumps(r) for r in records)
        headers = {**h.store(), "Content-Type": "application/x-ndjson"}
        resp = await h.client.post("/v1/push/canonical/S1", data=body, headers=headers)
        assert resp.status == 202 and (await resp.json())["accepted"] == 37
        out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
        s1 = out["stores"]["S1"]
        assert (s1["committed"], s1["voids"], s1["quarantined"], s1["held"]) == (36, 1, 0, 0)
        log = await (
            await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
        ).json()
        ids = [s["id"] for s in log["sales"]]
        assert len(ids) == len(set(ids)) == 36
        voided = {s["id"] for s in log["sales"] if s.get("voided")}
        assert voided == {"P-002"}
        assert h.spool.stats("S1").pending == 0
