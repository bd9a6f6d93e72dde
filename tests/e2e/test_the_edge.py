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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.appserver import Harness
from tests.e2e import harness as e2e
from worker.sources.inbox import INBOX

FIXTURES = Path(__file__).parent.parent / "fixtures" / "the_edge"
CUSTOMERS = "2026-03-14-11-21-13-CustomerList.json"
ITEMS = "2026-03-14-11-21-13-FULL-FullItemList.json"
PARTS = ("1-2026-03-14-12-00-Transaction.json", "2-2026-03-14-12-00-Transaction.json")
EXPORT = "2026-03-14-12-00-Transaction.json"  # the split export's own name (no part number)
JOBS = "2026-03-14-12-00-JobList.json"
UPLOAD = "2026-11-02-06-00-Transaction.json"
DAY = date(2026, 3, 14)
INTERVAL = 5.0
CENT = Decimal("0.01")
LAYAWAY = "001-00013"


def edge_app(
    tmp_path: Path, now: datetime = e2e.NOW, **inbox: Any
) -> AbstractAsyncContextManager[Harness]:
    """The real app with store S1 of source `the_edge` and its drop folder watched."""
    return e2e.store_app(
        tmp_path,
        "the_edge",
        now=now,
        config={"inbox": {"scan_interval_s": INTERVAL, "stable_s": INTERVAL, **inbox}},
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


def left(where: Path) -> list[str]:
    """The files still in the drop folder."""
    return sorted(p.name for p in where.iterdir() if p.is_file())


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
        where = tmp_path / "inbox" / "the_edge" / e2e.STORE
        assert where.is_dir()
        drop(where, (CUSTOMERS, ITEMS, *PARTS, JOBS))
        await scan(h)
        # The single files are taken at once; the split export waits until no part of it
        # has appeared for the stable interval (a later part may still be coming).
        assert left(where) == sorted([*PARTS, *(f"{p}.done" for p in PARTS)])
        await scan(h)

        # Every file was taken; each result is the push response of that file, the split
        # export's one result (named after the export) that of its parts read together.
        assert left(where) == []
        expected = export_sales(*PARTS)
        assert outcome(where, CUSTOMERS)["accepted"] == 2
        assert outcome(where, ITEMS)["accepted"] == 2
        export = outcome(where, EXPORT)
        assert (export["accepted"], export["rejected"], export["dropped"]) == (
            len(expected),
            [],
            {"layaway": 1},
        )
        assert export["parts"] == [
            {
                "part": n,
                "file": part,
                "moved_to": f"processed/{part}",
                "bytes": (FIXTURES / part).stat().st_size,
                "rows": len(json.loads((FIXTURES / part).read_bytes())["SaleLines"]),
            }
            for n, part in enumerate(PARTS, start=1)
        ]
        assert outcome(where, JOBS)["dropped"] == {"ignored_file": 1}

        # Customers are real time: stored before any window, as the export says.
        await check_customers(h)
        assert await e2e.sales_log(h, DAY) == []  # sales wait for the window

        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.held) == (len(expected), 0, 0)
        assert await e2e.quarantine(h) == []

        log = {s["id"]: s for s in await e2e.sales_log(h, DAY)}
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
        ((row,),) = [await e2e.report(h, DAY)]
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
    detail = await e2e.sale_detail(h, sale_id)
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
    bill = await e2e.customer(h, "001-00001")
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
    ann = await e2e.customer(h, "001-00002")
    assert (ann["linked_customer_id"], ann["status"]) == ("001-00001", "inactive")
    assert [a["kind"] for a in ann["addresses"]] == ["Home"]
    assert ann["attributes"]["CustomerCoupleName"] == "Bill & Ann Bagwell"


async def test_edt_file_upload_over_http(tmp_path: Path) -> None:
    # The file's sales are from March and November 2026: run the app the morning after.
    async with edge_app(tmp_path, datetime(2026, 11, 2, 12, 0, tzinfo=UTC)) as h:
        body = (FIXTURES / UPLOAD).read_bytes()
        resp = await h.client.post(
            f"/v1/files/the_edge/{e2e.STORE}",
            data=body,
            headers={
                "Authorization": f"Bearer {e2e.TOKEN}",
                "Content-Disposition": f'attachment; filename="{UPLOAD}"',
            },
        )
        out = await resp.json()
        expected = export_sales(UPLOAD)
        assert resp.status == 202, out
        assert (out["accepted"], out["rejected"]) == (len(expected), [])
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (len(expected), 0)
        assert await e2e.quarantine(h) == []
        days = {date(2026, 3, 8), date(2026, 11, 1)}  # the store-local dates the lines state
        seen: dict[str, dict[str, Any]] = {}
        for day in sorted(days):
            seen.update({s["id"]: s for s in await e2e.sales_log(h, day)})
        assert set(seen) == set(expected)
        for sale_id, rows in expected.items():
            assert seen[sale_id]["total"] == cents(figures(rows)[2])
            detail = await e2e.sale_detail(h, sale_id)
            assert (detail["tenders_known"], detail["source"]) == (False, "the_edge")
        # Again: the same file is a duplicate, nothing doubles.
        resp = await h.client.post(
            f"/v1/files/the_edge/{e2e.STORE}?filename={UPLOAD}",
            data=body,
            headers={"Authorization": f"Bearer {e2e.TOKEN}"},
        )
        again = await resp.json()
        assert resp.status == 202 and again["accepted"] == 0, again


# -- split exports: the numbered parts of one Transaction export are one payload -------------

STRADDLE = ("1-2026-03-14-12-30-Transaction.json", "2-2026-03-14-12-30-Transaction.json")
STRADDLE_EXPORT = "2026-03-14-12-30-Transaction.json"
SPANNING = "001-00030"  # lines 1 and 2 in part 1, line 3 in part 2
GAP_WAIT = 30.0


def copy_in(where: Path, fixture: str, name: str | None = None, *, marker: bool = False) -> None:
    """Copy a fixture into the drop folder (under `name`), with a `.done` marker or without."""
    shutil.copy(FIXTURES / fixture, where / (name or fixture))
    if marker:
        (where / f"{name or fixture}.done").write_bytes(b"")


async def inbox_status(h: Harness) -> dict[str, Any]:
    """/status -> inbox -> stores -> S1."""
    resp = await h.client.get("/status", headers=h.admin())
    assert resp.status == 200
    doc: dict[str, Any] = (await resp.json())["inbox"]["stores"][e2e.STORE]
    return doc


async def check_spanning_sale(h: Harness) -> None:
    """The sale whose lines straddle the parts: whole in the Sales Log, detail and report."""
    expected = export_sales(*STRADDLE)
    assert {k: len(v) for k, v in expected.items()} == {"001-00029": 1, SPANNING: 3, "001-00031": 1}
    assert await e2e.quarantine(h) == []
    log = {s["id"]: s for s in await e2e.sales_log(h, DAY)}
    assert set(log) == set(expected)
    for sale_id, rows in expected.items():
        subtotal, tax, total = figures(rows)
        assert (log[sale_id]["subtotal"], log[sale_id]["tax"], log[sale_id]["total"]) == (
            cents(subtotal),
            cents(tax),
            cents(total),
        ), sale_id
        assert (log[sale_id]["line_count"], log[sale_id]["warnings"]) == (len(rows), [])
        await check_detail(h, sale_id, rows)
    # 2450.00 + 45.00 + 135.00 + 177.63 + 3.26 + 9.79: part 1's two lines alone were 2675.89.
    assert log[SPANNING]["total"] == "2820.68"
    detail = await e2e.sale_detail(h, SPANNING)
    assert detail["source_ref"] == f"the_edge:{STRADDLE_EXPORT}"
    assert [(ln["quantity"], ln["unit_price"]) for ln in detail["lines"]] == [
        ("1", "2450.00"),
        ("1", "45.00"),
        ("3", "45.00"),
    ]
    totals = [figures(rows)[2] for rows in expected.values()]
    gross = sum((t for t in totals if t > 0), start=Decimal(0))
    returns = -sum((t for t in totals if t < 0), start=Decimal(0))
    ((row,),) = [await e2e.report(h, DAY)]
    assert (row["count"], row["gross"], row["returns"], row["net"]) == (
        len(expected),
        cents(gross),
        cents(returns),
        cents(gross - returns),
    )


async def test_sale_whose_lines_straddle_two_parts_commits_whole(tmp_path: Path) -> None:
    async with edge_app(tmp_path) as h:
        await h.app[INBOX].idle.wait()
        where = tmp_path / "inbox" / "the_edge" / e2e.STORE
        copy_in(where, CUSTOMERS, marker=True)  # the sales' customers, so none is held
        for part in STRADDLE:  # no markers: the stable-size rule decides
            copy_in(where, part)
        await scan(h)
        assert left(where) == sorted(STRADDLE)  # first sight: not yet known to be stable
        await scan(h)
        assert left(where) == []
        result = outcome(where, STRADDLE_EXPORT)
        assert (result["accepted"], result["rejected"], result["dropped"]) == (3, [], {})
        assert [p["moved_to"] for p in result["parts"]] == [f"processed/{p}" for p in STRADDLE]
        processed = {p.name for p in (where / "processed").iterdir()}
        assert processed - {CUSTOMERS, f"{CUSTOMERS}.done", f"{CUSTOMERS}.result.json"} == {
            *STRADDLE,
            f"{STRADDLE_EXPORT}.result.json",
        }
        assert (await inbox_status(h))["processed"] == 3  # the customers' file and two parts

        window = await e2e.run_window(h)
        assert (window.committed, window.quarantined, window.held) == (3, 0, 0)
        await check_spanning_sale(h)


async def test_parts_arriving_one_by_one_across_scans(tmp_path: Path) -> None:
    async with edge_app(tmp_path, notify=False) as h:
        await h.app[INBOX].idle.wait()
        where = tmp_path / "inbox" / "the_edge" / e2e.STORE
        first, second = STRADDLE
        copy_in(where, CUSTOMERS, marker=True)
        copy_in(where, first, marker=True)
        await scan(h)
        # Marked, so part 1 itself is complete; the export is not known to be yet.
        assert left(where) == sorted([first, f"{first}.done"])
        copy_in(where, second, marker=True)
        await scan(h)
        # A new part appeared in this scan: the stable interval starts again.
        assert first in left(where) and second in left(where)
        await scan(h)
        assert left(where) == []
        assert outcome(where, STRADDLE_EXPORT)["accepted"] == 3
        window = await e2e.run_window(h)
        assert (window.committed, window.quarantined) == (3, 0)
        await check_spanning_sale(h)


async def test_gap_waits_then_fails_naming_the_missing_part(tmp_path: Path) -> None:
    async with edge_app(tmp_path, notify=False, gap_wait_s=GAP_WAIT) as h:
        await h.app[INBOX].idle.wait()
        where = tmp_path / "inbox" / "the_edge" / e2e.STORE
        third = f"3-{STRADDLE_EXPORT}"  # part 3 arrives; part 2 never does
        copy_in(where, STRADDLE[0], marker=True)
        copy_in(where, STRADDLE[1], third, marker=True)
        started = h.clock.now()
        await scan(h)
        seen_at = h.clock.now()  # the scan that first saw parts 1 and 3
        while h.clock.now() < seen_at + timedelta(seconds=GAP_WAIT - INTERVAL):
            await scan(h)
            assert STRADDLE[0] in left(where) and third in left(where), h.clock.now() - started
        status = await inbox_status(h)
        assert "part 2 (2-2026-03-14-12-30-Transaction.json) is missing" in status["last_error"]
        assert (status["processed"], status["failed"]) == (0, 0)
        await scan(h)  # gap_wait_s since the parts were first seen: reported
        assert left(where) == []
        assert sorted(p.name for p in (where / "failed").iterdir()) == sorted(
            [
                STRADDLE[0],
                f"{STRADDLE[0]}.done",
                third,
                f"{third}.done",
                f"{STRADDLE_EXPORT}.error.json",
            ]
        )
        report_doc = json.loads((where / "failed" / f"{STRADDLE_EXPORT}.error.json").read_bytes())
        assert (report_doc["status"], report_doc["type"], report_doc["field"]) == (
            422,
            "IncompleteExport",
            STRADDLE[1],
        )
        assert report_doc["missing"] == [STRADDLE[1]]
        assert "part 2 (2-2026-03-14-12-30-Transaction.json) is missing" in report_doc["error"]
        assert [(p["part"], p["moved_to"]) for p in report_doc["parts"]] == [
            (1, f"failed/{STRADDLE[0]}"),
            (3, f"failed/{third}"),
        ]
        status = await inbox_status(h)
        assert (status["processed"], status["failed"]) == (0, 2)
        # Nothing of the incomplete export reached the spool, so the window commits nothing.
        window = await e2e.run_window(h)
        assert (window.committed, window.quarantined) == (0, 0)
        assert await e2e.sales_log(h, DAY) == []


async def test_a_left_over_first_part_is_taken_again_as_duplicates(tmp_path: Path) -> None:
    # The parts move last first: a crash midway leaves parts 1..k, which read again are
    # duplicates of what the whole export already spooled (same ids, same version).
    async with edge_app(tmp_path, notify=False) as h:
        await h.app[INBOX].idle.wait()
        where = tmp_path / "inbox" / "the_edge" / e2e.STORE
        copy_in(where, CUSTOMERS, marker=True)
        for part in STRADDLE:
            copy_in(where, part, marker=True)
        await scan(h)
        await scan(h)
        assert outcome(where, STRADDLE_EXPORT)["accepted"] == 3
        copy_in(where, STRADDLE[0], marker=True)
        await scan(h)
        await scan(h)
        assert left(where) == []
        again = json.loads(
            (
                where / "processed" / f"{STRADDLE_EXPORT.removesuffix('.json')}."
                f"{h.clock.now():%Y%m%dT%H%M%SZ}.json.result.json"
            ).read_bytes()
        )
        assert (again["accepted"], again["duplicates"]) == (0, 2)
        window = await e2e.run_window(h)
        assert (window.committed, window.quarantined) == (3, 0)
        await check_spanning_sale(h)


async def test_an_upload_is_one_file_as_before(tmp_path: Path) -> None:
    # POST /v1/files does not group: part 2 alone cannot carry the spanning sale's line 3.
    async with edge_app(tmp_path) as h:
        resp = await h.client.post(
            f"/v1/files/the_edge/{e2e.STORE}?filename={STRADDLE[1]}",
            data=(FIXTURES / STRADDLE[1]).read_bytes(),
            headers={"Authorization": f"Bearer {e2e.TOKEN}"},
        )
        out = await resp.json()
        assert resp.status == 202, out
        assert out["accepted"] == 1
        ((rejected,),) = [out["rejected"]]
        assert rejected["field"].endswith(".SalelineLineNo")
        assert SPANNING in rejected["error"]
