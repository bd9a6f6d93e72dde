"""The read API against the real app: sale detail, Sales Log, Sales Report, triggers, products,
and releasing one rule's quarantine after a policy change and a restart.

Money is shown at the currency's minor unit everywhere; the exact POS figures stay in
`record`. Every sale is pushed through the canonical source and committed by the scheduler's
own window on the fake clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.e2e import harness as e2e
from tests.e2e.harness import STORE
from tests.factories import one_line_sale

DAY = date(2026, 3, 14)
AT = "2026-03-14T17:00:00Z"  # 12:00 in Chicago, before the 14:00 window


def body(*records: dict[str, Any]) -> bytes:
    """Canonical records as one JSON array."""
    return orjson.dumps(list(records))


def faithful_sale(sid: str = "R-1") -> dict[str, Any]:
    """A sale with every figure the faithful model carries, as a POS would state them."""
    return {
        "type": "sale",
        "id": sid,
        "occurred_at": AT,
        "currency": "USD",
        "customer_id": "C1",
        "lines": [
            {
                "sku": "RING-1",
                "quantity": "1",
                "unit_price": "250.00000",
                "discount": "25.00",
                "tax": "18.00",
                "product_id": "p1",
                "description": "Ring",
            },
            {"quantity": "2.500", "unit_price": "10", "product_id": "p2"},
        ],
        # 225 + 25 on the lines, minus the order-level loyalty discount of 5.
        "subtotal": "245.00",
        "discount": "30.00",
        "tax": "18.00",
        "shipping": "10.00",
        "total": "273.00000",
        "tenders": [
            {"method": "Visa", "method_id": "pm-7", "amount": "200.00", "reference": "ch_1"},
            {"method": "Cash", "method_id": "1", "amount": "73.00000"},
        ],
        "adjustments": [
            {"kind": "discount", "amount": "-5.00", "description": "Loyalty", "code": "LOYAL5"},
            {"kind": "shipping", "amount": "10.00", "description": "Courier"},
        ],
        "attributes": {"note": "gift wrap", "register.name": "Front"},
        "source_ref": "pos-order-991",
    }


def simple_sale(sid: str, total: str, currency: str = "USD", **extra: Any) -> dict[str, Any]:
    """A one-line sale whose figures agree (a negative total is a return of one item)."""
    back = total.startswith("-")
    keys = {**({"kind": "return"} if back else {}), **extra}
    quantity = "-1" if back else "1"
    return one_line_sale(
        sid,
        AT,
        sku=f"SKU-{sid}",
        quantity=quantity,
        price=total.lstrip("-"),
        currency=currency,
        **keys,
    )


async def admin_post(h: Any, path: str, expect: int = 200) -> dict[str, Any]:
    resp = await h.client.post(path, headers=h.admin())
    out: dict[str, Any] = await resp.json()
    assert resp.status == expect, (resp.status, out)
    return out


async def admin_get(h: Any, path: str, expect: int = 200) -> dict[str, Any]:
    resp = await h.client.get(path, headers=h.admin())
    out: dict[str, Any] = await resp.json()
    assert resp.status == expect, (resp.status, out)
    return out


async def test_sale_detail_shows_every_figure_at_the_minor_unit_and_keeps_the_record(
    tmp_path: Path,
) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, body({"type": "customer", "id": "C1", "first_name": "Ada"}))
        await e2e.push(h, body(faithful_sale()))
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (1, 0)

        sale = await e2e.sale_detail(h, "R-1")
        figures = {k: sale[k] for k in ("subtotal", "discount", "tax", "shipping", "fees")}
        assert figures == {
            "subtotal": "245.00",
            "discount": "30.00",
            "tax": "18.00",
            "shipping": "10.00",
            "fees": "0.00",
        }
        assert (sale["tip"], sale["rounding"], sale["total"]) == ("0.00", "0.00", "273.00")
        assert (sale["id"], sale["kind"], sale["currency"], sale["business_date"]) == (
            "R-1",
            "sale",
            "USD",
            "2026-03-14",
        )
        assert (sale["customer_id"], sale["customer_linked"]) == ("C1", True)
        assert (sale["tax_included"], sale["tenders_known"], sale["voided"]) == (
            False,
            True,
            False,
        )
        assert (sale["source"], sale["source_ref"], sale["warnings"]) == (
            "canonical",
            "pos-order-991",
            [],
        )
        assert isinstance(sale["version"], int)
        assert sale["committed_at"] and sale["batch_id"]

        first, second = sale["lines"]
        assert first == {
            "line_no": 1,
            "line_id": None,
            "sku": "RING-1",
            "product_id": "p1",
            "description": "Ring",
            "category": None,
            "line_kind": "item",
            "employee_id": None,
            "original_line_id": None,
            "restock": None,
            "quantity": "1",
            "unit_price": "250.00",
            "discount": "25.00",
            "tax": "18.00",
            "net": "225.00",
        }
        assert (second["sku"], second["quantity"], second["unit_price"], second["net"]) == (
            None,
            "2.5",
            "10.00",
            "25.00",
        )
        assert (second["discount"], second["tax"]) == ("0.00", "0.00")
        assert sale["line_count"] == 2
        assert sale["tenders"] == [
            {"method": "Visa", "method_id": "pm-7", "amount": "200.00", "reference": "ch_1"},
            {"method": "Cash", "method_id": "1", "amount": "73.00", "reference": None},
        ]
        assert sale["adjustments"] == [
            {
                "kind": "discount",
                "amount": "-5.00",
                "description": "Loyalty",
                "code": "LOYAL5",
                "reference": None,
            },
            {
                "kind": "shipping",
                "amount": "10.00",
                "description": "Courier",
                "code": None,
                "reference": None,
            },
        ]
        assert sale["attributes"] == {"note": "gift wrap", "register.name": "Front"}

        # The record is what the POS said, exactly.
        record = sale["record"]
        assert (record["total"], record["subtotal"]) == ("273.00000", "245.00")
        assert record["lines"][0]["unit_price"] == "250.00000"
        assert (record["lines"][1]["quantity"], record["lines"][1]["sku"]) == ("2.500", None)
        assert record["tenders"][1]["amount"] == "73.00000"
        assert record["adjustments"][0]["amount"] == "-5.00"

        # The Sales Log shows the same figures, one format.
        (item,) = await e2e.sales_log(h, DAY)
        assert {k: item[k] for k in ("subtotal", "discount", "rounding", "total")} == {
            "subtotal": "245.00",
            "discount": "30.00",
            "rounding": "0.00",
            "total": "273.00",
        }
        assert (item["tax"], item["shipping"], item["fees"], item["tip"]) == (
            "18.00",
            "10.00",
            "0.00",
            "0.00",
        )
        assert (item["warnings"], item["line_count"], item["voided"]) == ([], 2, False)

        # Trigger events carry the sale's total at the minor unit too.
        trig = await admin_get(h, f"/v1/stores/{STORE}/triggers")
        assert trig["events"]
        assert {(e["total"], e["currency"]) for e in trig["events"]} == {("273.00", "USD")}
        assert await e2e.customer(h, "C1")


async def test_unknown_sale_is_a_404_naming_id_without_echoing_it(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        secret = "ada.lovelace@example.com"
        out = await admin_get(h, f"/v1/stores/{STORE}/sales/{secret}", expect=404)
        assert out["field"] == "id"
        assert secret not in out["error"]
        out = await admin_get(h, "/v1/stores/NOPE/sales/R-1", expect=404)
        assert out["field"] == "store"
        resp = await h.client.get(f"/v1/stores/{STORE}/sales/R-1")
        assert resp.status == 401
        assert (await resp.json())["field"] == "Authorization"


async def test_report_rows_per_date_and_currency_with_returns(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(
            h,
            body(
                simple_sale("U-1", "100.00"),
                simple_sale("U-2", "59.99"),
                # A return of a sale possync never saw: held, then committed unlinked.
                simple_sale("RET-1", "-40.00", original_id="GHOST"),
                simple_sale("J-1", "1200", currency="JPY"),
                simple_sale("J-2", "-300", currency="JPY"),
                {"type": "void", "id": "U-2", "occurred_at": "2026-03-14T17:30:00Z"},
            ),
        )
        committed = 0
        for _ in range(5):
            committed += (await e2e.run_window(h)).committed
            if committed == 5:
                break
        assert committed == 5
        assert await e2e.quarantine(h) == []
        rows = await e2e.report(h, DAY)
        assert rows == [
            {
                "date": "2026-03-14",
                "currency": "JPY",
                "count": 2,
                "gross": "1200",
                "returns": "300",
                "returns_count": 1,
                "net": "900",
                "voided": 0,
            },
            {
                "date": "2026-03-14",
                "currency": "USD",
                "count": 2,
                "gross": "100.00",
                "returns": "40.00",
                "returns_count": 1,
                "net": "60.00",
                "voided": 1,
            },
        ]
        unlinked = await e2e.sale_detail(h, "RET-1")
        assert (unlinked["kind"], unlinked["original_id"], unlinked["total"]) == (
            "return",
            "GHOST",
            "-40.00",
        )
        assert [w.split(":", 1)[0] for w in unlinked["warnings"]] == ["return.original"]
        log = {s["id"]: s for s in await e2e.sales_log(h, DAY)}
        assert log["RET-1"]["warnings"] == unlinked["warnings"]
        assert (log["J-1"]["total"], log["J-1"]["subtotal"], log["J-1"]["tax"]) == (
            "1200",
            "1200",
            "0",
        )
        assert log["U-2"]["voided"] is True
        assert await e2e.report(h, DAY + timedelta(days=1)) == []


async def test_product_price_at_its_currency_with_the_exact_record(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(
            h,
            body(
                {"type": "product", "id": "P1", "price": "19.5", "currency": "USD"},
                {"type": "product", "id": "P2", "price": "1200.00", "currency": "JPY"},
                {"type": "product", "id": "P3", "name": "no price"},
            ),
        )
        p1 = await admin_get(h, f"/v1/stores/{STORE}/products/P1")
        assert (p1["price"], p1["record"]["price"]) == ("19.50", "19.5")
        p2 = await admin_get(h, f"/v1/stores/{STORE}/products/P2")
        assert (p2["price"], p2["record"]["price"]) == ("1200", "1200.00")
        p3 = await admin_get(h, f"/v1/stores/{STORE}/products/P3")
        assert p3["price"] is None


def mispriced(sale: dict[str, Any]) -> dict[str, Any]:
    """The sale with its one line at 9.00 under a subtotal of 10.00 (fails subtotal.sum)."""
    sale["lines"][0]["unit_price"] = "9.00"
    return sale


def short_tendered(sid: str) -> dict[str, Any]:
    """A sale of 10.00 whose tenders sum to 5.00 (fails tenders.sum)."""
    sale = simple_sale(sid, "10.00")
    sale["tenders"] = [{"method": "Visa", "amount": "5.00"}]
    return sale


async def test_release_a_rule_after_the_store_warns_on_it(tmp_path: Path) -> None:
    """Quarantined for tenders.sum; the operator sets the rule to warn, restarts, releases."""
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(
            h,
            body(
                short_tendered("T-1"),
                mispriced(short_tendered("T-2")),  # fails both
                mispriced(simple_sale("T-3", "10.00")),  # subtotal.sum only
                simple_sale("OK-1", "10.00"),
            ),
        )
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (1, 3)
        failed = {
            q["record_id"]: sorted(r["rule"] for r in q["reasons"]) for q in await e2e.quarantine(h)
        }
        assert failed == {
            "T-1": ["tenders.sum"],
            "T-2": ["subtotal.sum", "tenders.sum"],
            "T-3": ["subtotal.sum"],
        }
        # Under the old policy nothing is valid yet: it re-validates, never releases blindly.
        out = await e2e.release_rule(h, "tenders.sum")
        assert out["released"] == []
        assert sorted(i["record_id"] for i in out["still_invalid"]) == ["T-1", "T-2"]
        assert len(await e2e.quarantine(h)) == 3

    later = datetime(2026, 3, 14, 20, 0, tzinfo=UTC)
    async with e2e.store_app(tmp_path, "canonical", now=later, rules={"tenders.sum": "warn"}) as h:
        qids = {q["record_id"]: q["id"] for q in await e2e.quarantine(h)}
        out = await e2e.release_rule(h, "tenders.sum")
        assert (out["store"], out["rule"]) == (STORE, "tenders.sum")
        assert (out["released"], out["released_records"]) == ([qids["T-1"]], ["T-1"])
        (still,) = out["still_invalid"]
        assert (still["id"], still["record_id"]) == (qids["T-2"], "T-2")
        assert [r["rule"] for r in still["reasons"]] == ["subtotal.sum"]
        assert "9.00" in still["reasons"][0]["message"]  # both figures named
        assert out["visible_at"]
        assert sorted(q["record_id"] for q in await e2e.quarantine(h)) == ["T-2", "T-3"]

        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (1, 0)
        sale = await e2e.sale_detail(h, "T-1")
        (warning,) = sale["warnings"]
        assert warning.startswith("tenders.sum: ") and "5.00" in warning and "10.00" in warning
        assert [t["amount"] for t in sale["tenders"]] == ["5.00"]  # the POS's figure, kept
        (logged,) = [s for s in await e2e.sales_log(h, DAY) if s["id"] == "T-1"]
        assert logged["warnings"] == [warning]
        audit = await admin_get(h, "/v1/admin/audit")
        released = [e for e in audit["entries"] if e.get("action") == "quarantine.release"]
        assert len(released) == 1


async def test_release_by_rule_errors_name_the_field(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        base = "/v1/admin/quarantine/release"
        out = await admin_post(h, f"{base}?store={STORE}&rule=bogus.rule", expect=400)
        assert out["field"] == "rule" and "bogus" not in out["error"]
        out = await admin_post(h, f"{base}?store={STORE}", expect=400)
        assert out["field"] == "rule"
        out = await admin_post(h, f"{base}?rule=tenders.sum", expect=400)
        assert out["field"] == "store"
        out = await admin_post(h, f"{base}?store=NOPE&rule=tenders.sum", expect=404)
        assert out["field"] == "store"
        out = await admin_post(h, f"{base}?store={STORE}&rule=schema")
        assert (out["released"], out["still_invalid"]) == ([], [])
        resp = await h.client.post(f"{base}?store={STORE}&rule=tenders.sum")
        assert resp.status == 401


async def test_tax_included_cash_rounded_sale_without_payment_records(tmp_path: Path) -> None:
    """Prices include tax, the POS rounded cash, and the source carries no payments."""
    sale = {
        "type": "sale",
        "id": "CH-1",
        "occurred_at": AT,
        "currency": "CHF",
        "lines": [{"sku": "SCARF", "quantity": "1", "unit_price": "19.99", "tax": "1.43"}],
        "subtotal": "19.99",
        "tax": "1.43",
        "tax_included": True,
        "rounding": "0.01",
        "total": "20.00",
        "tenders_known": False,
        "adjustments": [{"kind": "rounding", "amount": "0.01"}],
    }
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, body(sale))
        assert (await e2e.run_window(h)).committed == 1
        detail = await e2e.sale_detail(h, "CH-1")
        assert (detail["tax_included"], detail["tenders_known"], detail["tenders"]) == (
            True,
            False,
            [],
        )
        assert (detail["subtotal"], detail["tax"], detail["rounding"], detail["total"]) == (
            "19.99",
            "1.43",
            "0.01",
            "20.00",
        )
        assert detail["adjustments"][0]["amount"] == "0.01"
        assert detail["warnings"] == []
        (item,) = await e2e.sales_log(h, DAY)
        assert (item["tax_included"], item["rounding"], item["discount"]) == (True, "0.01", None)
