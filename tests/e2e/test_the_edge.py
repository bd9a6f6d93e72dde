"""The Edge end to end (issue 9): EDT exports dropped into the real drop folder of a running
server, the store's window on the fake clock, then the Sales Log, the sale detail and the
report. Every figure is checked against the export's own line figures (read from the fixture
files here, not copied into the test); tenders are unknown, nothing is quarantined, and the
customers come back with their addresses, attributes and consent as the export states them.

The drop folder is scanned by the watcher's own timer: `scan` moves the fake clock one scan
interval and waits for that scan to finish. Nothing sleeps.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.appserver import Harness
from tests.e2e.harness import (
    NOW,
    STORE,
    TOKEN,
    customer,
    quarantine,
    report,
    run_window,
    sale_detail,
    sales_log,
    store_app,
)
from worker.sources.inbox import INBOX

FIXTURES = Path(__file__).parent.parent / "fixtures" / "the_edge"
CUSTOMERS = "2026-03-14-11-21-13-CustomerList.json"
ITEMS = "2026-03-14-11-21-13-FULL-FullItemList.json"
PARTS = ("1-2026-03-14-12-00-Transaction.json", "2-2026-03-14-12-00-Transaction.json")
JOBS = "2026-03-14-12-00-JobList.json"
UPLOAD = "2026-11-02-06-00-Transaction.json"
DAY = date(2026, 3, 14)
INTERVAL = 5.0
CENT = Decimal("0.01")
LAYAWAY = "001-00013"


def edge_app(tmp_path: Path, now: datetime = NOW) -> AbstractAsyncContextManager[Harness]:
    """The real app with store S1 of source `the_edge` and its drop folder watched."""
    return store_app(
        tmp_path,
        "the_edge",
        now=now,
        config={"inbox": {"scan_interval_s": INTERVAL, "stable_s": INTERVAL}},
    )


async def scan(h: Harness) -> None:
    """One scan interval on the fake clock, and the scan it triggers."""
    watcher = h.app[INBOX]
    await watcher.idle.wait()
    n = watcher.scans
    h.clock.advance(INTERVAL)
    await watcher.wait_scans(n + 1)


def drop(where: Path, names: Iterable[str]) -> None:
    """Copy EDT files in under their own names, each followed by its `.done` marker."""
    for name in names:
        shutil.copy(FIXTURES / name, where / name)
        (where / f"{name}.done").write_bytes(b"")


def outcome(where: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((where / "processed" / f"{name}.result.json").read_bytes())
    return doc


def cents(value: Decimal) -> str:
    """USD at its minor unit, as the read API shows money."""
    return str(value.quantize(CENT))


def export_sales(*names: str) -> dict[str, list[dict[str, Any]]]:
    """The fixture's SaleLines rows per sale key (layaways left out: they are not sales)."""
    sales: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for row in json.loads((FIXTURES / name).read_bytes())["SaleLines"]:
            sales.setdefault(row["SalelineSaleKey"], []).append(row)
    return {k: v for k, v in sales.items() if not any(r.get("SalelineEnvKey") for r in v)}


def figures(rows: list[dict[str, Any]]) -> tuple[Decimal, Decimal, Decimal]:
    """(subtotal, tax, total) as sums of the export's own SalelineAmount / SalelineEstTax."""
    amount = sum((Decimal(r["SalelineAmount"]) for r in rows), start=Decimal(0))
    tax = sum((Decimal(r.get("SalelineEstTax", "0")) for r in rows), start=Decimal(0))
    return amount, tax, amount + tax


async def test_edt_drop_folder_to_sales_log_detail_and_report(tmp_path: Path) -> None:
    async with edge_app(tmp_path) as h:
        await h.app[INBOX].idle.wait()
        where = tmp_path / "inbox" / "the_edge" / STORE
        assert where.is_dir()
        drop(where, (CUSTOMERS, ITEMS, *PARTS, JOBS))
        await scan(h)

        # Every file was taken; each result is the push response of that file.
        assert sorted(p.name for p in where.iterdir() if p.is_file()) == []
        expected = export_sales(*PARTS)
        per_part = [export_sales(part) for part in PARTS]
        assert outcome(where, CUSTOMERS)["accepted"] == 2
        assert outcome(where, ITEMS)["accepted"] == 2
        first, second = (outcome(where, part) for part in PARTS)
        assert (first["accepted"], first["rejected"], first["dropped"]) == (
            len(per_part[0]),
            [],
            {"layaway": 1},
        )
        assert (second["accepted"], second["rejected"]) == (len(per_part[1]), [])
        assert outcome(where, JOBS)["dropped"] == {"ignored_file": 1}

        # Customers are real time: stored before any window, as the export says.
        await check_customers(h)
        assert await sales_log(h, DAY) == []  # sales wait for the window

        result = await run_window(h)
        assert (result.committed, result.quarantined, result.held) == (len(expected), 0, 0)
        assert await quarantine(h) == []

        log = {s["id"]: s for s in await sales_log(h, DAY)}
        assert set(log) == set(expected) and LAYAWAY not in log
        for sale_id, rows in expected.items():
            subtotal, tax, total = figures(rows)
            logged = log[sale_id]
            assert (logged["subtotal"], logged["tax"], logged["total"]) == (
                cents(subtotal),
                cents(tax),
                cents(total),
            ), sale_id
            assert (logged["line_count"], logged["business_date"]) == (len(rows), DAY.isoformat())
            assert (logged["discount"], logged["currency"], logged["voided"]) == (
                None,
                "USD",
                False,
            )
            assert logged["warnings"] == []
            await check_detail(h, sale_id, rows)
        assert log["001-00010"]["total"] == "1312.13"  # 1199.00 + 25.00 + 86.33 + 1.80
        assert [log[k]["kind"] for k in ("001-00010", "001-00011", "001-00012")] == [
            "sale",
            "return",
            "exchange",
        ]
        assert log["001-00015"]["customer_id"] is None  # SalelineCustKey "0": a walk-in

        totals = [figures(rows)[2] for rows in expected.values()]
        gross = sum((t for t in totals if t > 0), start=Decimal(0))
        returns = -sum((t for t in totals if t < 0), start=Decimal(0))
        ((row,),) = [await report(h, DAY)]
        assert row == {
            "date": DAY.isoformat(),
            "currency": "USD",
            "count": len(expected),
            "gross": cents(gross),
            "returns": cents(returns),
            "returns_count": sum(1 for t in totals if t < 0),
            "net": cents(gross - returns),
            "voided": 0,
        }


async def check_detail(h: Harness, sale_id: str, rows: list[dict[str, Any]]) -> None:
    """The sale detail: lines, tax, tenders unknown, the exact record, attributes kept."""
    detail = await sale_detail(h, sale_id)
    subtotal, tax, total = figures(rows)
    assert (detail["source"], detail["tenders_known"], detail["tenders"]) == (
        "the_edge",
        False,
        [],
    )
    assert (detail["adjustments"], detail["tax_included"]) == ([], False)
    lines = sorted(rows, key=lambda r: int(r["SalelineLineNo"]))
    got = [
        (ln["line_id"], ln["product_id"], ln["sku"], ln["description"], ln["tax"])
        for ln in detail["lines"]
    ]
    assert got == [
        (
            r["Key"],
            r["SalelineItemKey"],
            None,
            r.get("SalelineDesc"),
            cents(Decimal(r.get("SalelineEstTax", "0"))),
        )
        for r in lines
    ]
    for ln, r in zip(detail["lines"], lines, strict=True):
        amount = Decimal(r["SalelineAmount"])
        net = Decimal(ln["quantity"]) * Decimal(ln["unit_price"]) - Decimal(ln["discount"])
        assert net == amount and (Decimal(ln["quantity"]) < 0) == (amount < 0), sale_id
    record = detail["record"]
    # The stored record keeps the POS's digits exactly.
    assert (record["subtotal"], record["tax"], record["total"]) == (
        str(subtotal),
        str(tax),
        str(total),
    )
    assert [ln["tax"] for ln in record["lines"]] == [r.get("SalelineEstTax", "0") for r in lines]
    assert record["tenders_known"] is False and record["tz_assumed"] is True
    # Fields without a canonical slot are attributes, keyed by their EDT names.
    costs = {r["SalelineCost"] for r in lines}
    if len(costs) == 1:
        assert detail["attributes"]["SalelineCost"] == costs.pop()
    else:
        for r in lines:
            assert detail["attributes"][f"SalelineCost.{r['SalelineLineNo']}"] == r["SalelineCost"]
    assert detail["attributes"]["SalelineCustAccountKey"] == lines[0]["SalelineCustAccountKey"]


async def check_customers(h: Harness) -> None:
    """Customers with every address, the attributes and the consent the export states."""
    export = json.loads((FIXTURES / CUSTOMERS).read_bytes())["Customer"]
    bill = await customer(h, "001-00001")
    source = export[0]
    kinds = [a["AddressType"] for a in source["Address"]]
    assert [a["kind"] for a in bill["addresses"]] == kinds
    assert [(a["line1"], a.get("line2"), a["postal_code"]) for a in bill["addresses"]] == [
        (a["AddressStreet1"], a.get("AddressStreet2") or None, a["AddressZip"])
        for a in source["Address"]
    ]
    assert bill["address"]["kind"] == source["CustomerPrefMail"]
    assert (bill["email"], bill["phone"]) == ("bill.bagwell@example.com", "919-555-0199")
    # No consent field in EDT: unknown, never an opt-in made up from "not blocked".
    assert (bill["marketing_email"], bill["marketing_sms"]) == ("unknown", "unknown")
    attributes = bill["attributes"]
    for field in ("CustomerCoupleName", "CustomerGender", "CustomerAcquisition", "CustomerImage"):
        assert attributes[field] == source[field]
    assert attributes["CustomerTransfer.WebTransferWebID"] == "web-4471"
    assert attributes["Email.0.EmailAddress"] == source["Email"][0]["EmailAddress"]
    ann = await customer(h, "001-00002")
    assert (ann["linked_customer_id"], ann["status"]) == ("001-00001", "inactive")
    assert [a["kind"] for a in ann["addresses"]] == ["Home"]
    assert ann["attributes"]["CustomerCoupleName"] == "Bill & Ann Bagwell"


async def test_edt_file_upload_over_http(tmp_path: Path) -> None:
    # The file's sales are from March and November 2026: run the app the morning after.
    async with edge_app(tmp_path, datetime(2026, 11, 2, 12, 0, tzinfo=UTC)) as h:
        body = (FIXTURES / UPLOAD).read_bytes()
        resp = await h.client.post(
            f"/v1/files/the_edge/{STORE}",
            data=body,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Disposition": f'attachment; filename="{UPLOAD}"',
            },
        )
        out = await resp.json()
        expected = export_sales(UPLOAD)
        assert resp.status == 202, out
        assert (out["accepted"], out["rejected"]) == (len(expected), [])
        result = await run_window(h)
        assert (result.committed, result.quarantined) == (len(expected), 0)
        assert await quarantine(h) == []
        days = {date(2026, 3, 8), date(2026, 11, 1)}  # the store-local dates the lines state
        seen: dict[str, dict[str, Any]] = {}
        for day in sorted(days):
            seen.update({s["id"]: s for s in await sales_log(h, day)})
        assert set(seen) == set(expected)
        for sale_id, rows in expected.items():
            assert seen[sale_id]["total"] == cents(figures(rows)[2])
            detail = await sale_detail(h, sale_id)
            assert (detail["tenders_known"], detail["source"]) == (False, "the_edge")
        # Again: the same file is a duplicate, nothing doubles.
        resp = await h.client.post(
            f"/v1/files/the_edge/{STORE}?filename={UPLOAD}",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        again = await resp.json()
        assert resp.status == 202 and again["accepted"] == 0, again
