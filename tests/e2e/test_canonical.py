"""Canonical pushes end to end: the figures a POS sends come back from the Sales Log, the sale
detail and the report exactly; returns of unknown sales, walk-ins, policies and cash rounding
behave as issue 9 says."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from tests.e2e import harness as e2e
from worker import keys

DAY = date(2026, 3, 14)


def order(sale_id: str = "1001", **over: Any) -> dict[str, Any]:
    """An order as a POS states it: a 20.00 order-level discount no line carries, shipping."""
    body: dict[str, Any] = {
        "type": "sale",
        "id": sale_id,
        "occurred_at": "2026-03-14T12:30:00-05:00",
        "currency": "USD",
        "customer_id": "C1",
        "lines": [
            {"sku": "RING-1", "quantity": "1", "unit_price": "199.95", "category": "Rings"},
            {"sku": "CHAIN-2", "quantity": "2", "unit_price": "107.50", "discount": "0"},
        ],
        "adjustments": [
            {"kind": "discount", "amount": "-20.00", "code": "SPRING20", "description": "Spring"}
        ],
        "subtotal": "394.95",
        "discount": "20.00",
        "tax": "0.00",
        "shipping": "10.00",
        "total": "404.95",
        "tenders": [{"method": "Visa", "method_id": "pt-7", "amount": "404.95", "reference": "t1"}],
        "attributes": {"financial_status": "paid", "note": "gift wrap"},
    }
    body.update(over)
    return body


def one_line_order(
    sale_id: str, line: dict[str, Any], total: str, tenders: list[dict[str, Any]], **over: Any
) -> dict[str, Any]:
    """An order of one line and no order-level figure (no discount, adjustment or shipping):
    its subtotal is its total."""
    return order(
        sale_id,
        lines=[line],
        adjustments=[],
        discount=None,
        subtotal=total,
        shipping="0",
        total=total,
        tenders=tenders,
        **over,
    )


CUSTOMER = {"type": "customer", "id": "C1", "first_name": "Ada", "marketing_email": "unknown"}


async def test_order_figures_come_back_exactly(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, json.dumps([CUSTOMER, order()]).encode())
        assert await e2e.sales_log(h, DAY) == []  # nothing visible before the window
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.held) == (1, 0, 0)
        assert result.triggers == 2  # thank-you and follow-up
        ((logged,),) = [await e2e.sales_log(h, DAY)]
        assert {k: logged[k] for k in ("subtotal", "discount", "shipping", "tax", "total")} == {
            "subtotal": "394.95",
            "discount": "20.00",
            "shipping": "10.00",
            "tax": "0.00",
            "total": "404.95",
        }
        sale = await e2e.sale_detail(h, "1001")
        assert sale["total"] == "404.95" and sale["source"] == "canonical"
        assert [(ln["sku"], ln["quantity"], ln["unit_price"]) for ln in sale["lines"]] == [
            ("RING-1", "1", "199.95"),
            ("CHAIN-2", "2", "107.50"),
        ]
        assert sale["adjustments"] == [
            {
                "kind": "discount",
                "amount": "-20.00",
                "description": "Spring",
                "code": "SPRING20",
                "reference": None,
            }
        ]
        (tender,) = sale["tenders"]
        assert (tender["method"], tender["method_id"], tender["amount"]) == (
            "Visa",
            "pt-7",
            "404.95",
        )
        assert sale["tenders_known"] is True
        assert sale["attributes"] == {"financial_status": "paid", "note": "gift wrap"}
        assert sale["warnings"] == [] and sale["customer_linked"] is True
        assert sale["record"]["total"] == "404.95"
        (row,) = await e2e.report(h, DAY)
        assert (row["count"], row["gross"], row["returns"], row["net"]) == (
            1,
            "404.95",
            "0.00",
            "404.95",
        )
        assert await e2e.quarantine(h) == []


async def test_return_of_a_sale_never_seen_is_held_then_committed_unlinked(
    tmp_path: Path,
) -> None:
    # Sold before the integration started: the original never reaches possync (issue 9.5).
    ret = one_line_order(
        "R-77",
        {"sku": "RING-1", "quantity": "-1", "unit_price": "199.95"},
        "-199.95",
        [{"method": "Visa", "amount": "-199.95"}],
        kind="return",
        original_id="SOLD-IN-2019",
    )
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, json.dumps([CUSTOMER, ret]).encode())
        for _ in range(2):  # hold_windows = 2
            result = await e2e.run_window(h)
            assert (result.committed, result.held, result.quarantined) == (0, 1, 0)
        result = await e2e.run_window(h)
        assert (result.committed, result.held, result.quarantined) == (1, 0, 0)
        assert result.triggers == 0  # nobody is thanked for a return
        sale = await e2e.sale_detail(h, "R-77")
        assert sale["kind"] == "return" and sale["original_id"] == "SOLD-IN-2019"
        (warning,) = sale["warnings"]
        assert warning.startswith("return.original: original sale 'SOLD-IN-2019' unknown")
        (row,) = await e2e.report(h, DAY)
        assert (row["returns"], row["returns_count"], row["gross"], row["net"]) == (
            "199.95",
            1,
            "0.00",
            "-199.95",
        )
        assert await e2e.quarantine(h) == []


async def test_walk_in_sale_commits_without_trigger_events_and_says_so(tmp_path: Path) -> None:
    walk_in = order("W-1", customer_id=None)
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, json.dumps(walk_in).encode())
        result = await e2e.run_window(h)
        assert result.committed == 1 and result.triggers == 0
        assert result.triggers_skipped == {"no_customer": 2}
        resp = await h.client.get("/v1/stores/S1/triggers", headers=h.admin())
        assert (await resp.json())["events"] == []
        status = await (await h.client.get("/status", headers=h.admin())).json()
        assert status["stores"]["S1"]["last_window"]["triggers_skipped"] == {"no_customer": 2}
        metrics = await (await h.client.get("/metrics", headers=h.admin())).text()
        assert (
            'possync_trigger_events_skipped_total{reason="no_customer",store="S1"} 2.0' in metrics
        )


async def test_store_policy_warn_commits_a_tender_mismatch_with_its_warning(
    tmp_path: Path,
) -> None:
    short = order("P-1", tenders=[{"method": "Visa", "amount": "400.00"}])
    async with e2e.store_app(tmp_path, "canonical", rules={"tenders.sum": "warn"}) as h:
        await e2e.push(h, json.dumps([CUSTOMER, short]).encode())
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.warnings) == (1, 0, 1)
        sale = await e2e.sale_detail(h, "P-1")
        assert sale["warnings"] == ["tenders.sum: tenders sum to 400.00, total is 404.95"]
        assert sale["total"] == "404.95"  # the POS's figure, not the tenders'


async def test_without_the_policy_the_same_sale_is_quarantined_with_both_figures(
    tmp_path: Path,
) -> None:
    short = order("P-1", tenders=[{"method": "Visa", "amount": "400.00"}])
    async with e2e.store_app(tmp_path, "canonical") as h:
        await e2e.push(h, json.dumps([CUSTOMER, short]).encode())
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (0, 1)
        (item,) = await e2e.quarantine(h)
        assert item["reasons"] == [
            {
                "rule": "tenders.sum",
                "field": "$.tenders",
                "message": "tenders sum to 400.00, total is 404.95",
            }
        ]


async def test_cash_rounding_in_chf_commits_with_a_rounding_warning(tmp_path: Path) -> None:
    cash = one_line_order(
        "Z-1",
        {"sku": "UHR", "quantity": "1", "unit_price": "10.02"},
        "10.02",
        [{"method": "Bargeld", "amount": "10.00"}],
        occurred_at="2026-03-14T13:00:00+01:00",
        currency="CHF",
    )
    async with e2e.store_app(tmp_path, "canonical", timezone="Europe/Zurich") as h:
        await e2e.push(h, json.dumps([CUSTOMER, cash]).encode())
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (1, 0)
        sale = await e2e.sale_detail(h, "Z-1")
        (warning,) = sale["warnings"]
        assert "within cash rounding to 0.05 CHF" in warning
        assert sale["total"] == "10.02" and sale["tenders"][0]["amount"] == "10.00"
        assert h.app[keys.CONFIG].stores[0].cash_rounding is None  # the currency's default
