"""The six mapping sources end to end: each fixture export goes in the way that POS delivers it
(a drop folder, a CSV push, MQTT), the window commits on the fake clock, and the Sales Log,
the sale detail, the report and the stored customers give back the file's own figures, words
and attributes.

Expected figures are the fixture's cells (`tests/fixtures/<source>/`): where the export states
no order-level figure, the sale's is the sum of its line cells (docs/adapters.md), and the
payment cell of the same file is the check that the sum is the POS's total.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.adapter_helpers import KWI_AVA_ATTRIBUTES, fixture
from tests.appserver import Harness
from tests.e2e import harness as e2e
from tests.e2e.harness import STORE
from worker import keys
from worker.sources.inbox import INBOX

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

SCAN_S = 5.0
INBOX_CONFIG = {"inbox": {"scan_interval_s": SCAN_S, "stable_s": SCAN_S}}
# After every fixture sale (the latest is 21 March 2026, store time).
AFTER = datetime(2026, 3, 22, 12, 0, tzinfo=UTC)
MARCH_14, MARCH_20, MARCH_21 = date(2026, 3, 14), date(2026, 3, 20), date(2026, 3, 21)
FIGURES = ("subtotal", "discount", "tax", "shipping", "total")


# -- delivery ----------------------------------------------------------------------------


async def drop(h: Harness, tmp_path: Path, source: str, *names: str) -> None:
    """Write fixture files (each with its `.done` marker) into the store's drop folder; scan."""
    where = tmp_path / "inbox" / source / STORE
    for name in names:
        (where / name).write_bytes(fixture(source, name))
        (where / f"{name}.done").write_bytes(b"")
    inbox = h.app[INBOX]
    await inbox.idle.wait()
    n = inbox.scans
    h.clock.advance(SCAN_S)
    await inbox.wait_scans(n + 1)
    for name in names:
        assert (where / "processed" / name).exists(), sorted(p.name for p in where.rglob("*"))


async def post_csv(h: Harness, source: str, name: str, body: bytes | None = None) -> Any:
    """POST /v1/push/{source}/S1?filename=NAME with a CSV body (the fixture by default)."""
    resp = await h.client.post(
        f"/v1/push/{source}/{STORE}",
        params={"filename": name},
        data=fixture(source, name) if body is None else body,
        headers={"Content-Type": "text/csv", **e2e.store_auth()},
    )
    out = await resp.json()
    assert resp.status == 202, (resp.status, out)
    return out


# -- reading back ------------------------------------------------------------------------


def figures(sale: dict[str, Any]) -> dict[str, Any]:
    return {k: sale[k] for k in FIGURES}


def lines(sale: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (ln["sku"], ln["quantity"], ln["unit_price"], ln["discount"], ln["tax"])
        for ln in sale["lines"]
    ]


def tenders(sale: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(t["method"], t["amount"], t["reference"]) for t in sale["tenders"]]


async def logged(h: Harness, day: date) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in await e2e.sales_log(h, day)}


async def report_row(h: Harness, day: date) -> dict[str, Any]:
    (row,) = await e2e.report(h, day)
    return row


# -- Rain: a drop folder with customers, products and the line-level transaction report ----


async def test_rain_drop_folder(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "rain", now=AFTER, config=INBOX_CONFIG) as h:
        await drop(h, tmp_path, "rain", "customers.csv", "products.csv", "transactions.csv")
        grace = await e2e.customer(h, "C-77")
        assert (grace["marketing_email"], grace["marketing_sms"]) == ("opted_in", "unknown")
        assert grace["attributes"] == {"Loyalty Points": "1250"}
        assert [(a["kind"], a["line1"], a["city"]) for a in grace["addresses"]] == [
            ("primary", "1 Bobbin Ln", "Durham")
        ]
        resp = await h.client.get(f"/v1/stores/{STORE}/products/P-12", headers=h.admin())
        machine = await resp.json()
        assert (machine["price"], machine["attributes"]) == ("1250.00", {"Reorder Point": "2"})
        result = await e2e.run_window(h)
        assert await e2e.quarantine(h) == []
        assert result.quarantined == 0

        first = await logged(h, MARCH_14)
        assert figures(first["T1001"]) == {
            "subtotal": "1189.00",  # 4 x 3.50 + 1250.00 - 75.00
            "discount": "75.00",
            "tax": "98.10",  # 1.16 + 96.94
            "shipping": "0.00",
            "total": "1287.10",  # = the file's Payment Amount
        }
        t1001 = await e2e.sale_detail(h, "T1001")
        assert lines(t1001) == [
            ("QLT-FQ-BLU", "4", "3.50", "0.00", "1.16"),
            ("SEW-BRO-9", "1", "1250.00", "75.00", "96.94"),
        ]
        assert tenders(t1001) == [("Visa", "1287.10", "AUTH-1")]
        assert t1001["tenders_known"] is True
        assert t1001["attributes"] == {"Source": "In Store", "lines[1].Serial #": "BRO-9-0042317"}
        assert (t1001["source"], t1001["customer_id"], t1001["display_number"]) == (
            "rain",
            "C-77",
            "R-1001",
        )

        later = await logged(h, MARCH_21)
        assert (later["T1002"]["kind"], later["T1002"]["total"]) == ("return", "-3.79")
        t1002 = await e2e.sale_detail(h, "T1002")
        assert t1002["original_id"] == "T1001" and t1002["lines"][0]["quantity"] == "-1"
        assert tenders(t1002) == [("Visa", "-3.79", "AUTH-9")]
        # T1003 exchanges thread bought before possync (T0950) for other thread: one sale
        t1003 = await e2e.sale_detail(h, "T1003")
        assert (t1003["kind"], t1003["total"], t1003["original_id"], tenders(t1003)) == (
            "exchange",
            "3.25",
            "T0950",
            [("Cash", "3.25", None)],
        )
        assert lines(t1003) == [
            ("THR-GUT-100", "-1", "12.00", "0.00", "-0.99"),
            ("THR-GUT-250", "1", "15.00", "0.00", "1.24"),
        ]
        assert [ln["restock"] for ln in t1003["lines"]] == [False, None]
        # the voided transaction never shows as a sale; the suspended one is not a sale yet
        assert "T1004" not in later and "T1005" not in later
        assert await e2e.quarantine(h) == []
        row = await report_row(h, MARCH_14)
        assert (row["currency"], row["count"], row["gross"]) == ("USD", 1, "1287.10")


# -- Like Sew and Jewel360: CSV pushed over HTTP -------------------------------------------


async def test_like_sew_csv_push(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "like_sew", now=AFTER) as h:
        await post_csv(h, "like_sew", "customers.csv")
        kim = await e2e.customer(h, "LS-C1")
        assert (kim["marketing_email"], kim["marketing_sms"]) == ("unknown", "opted_in")
        assert kim["attributes"] == {"Quilt Guild": "Hill Country Quilters"}
        await post_csv(h, "like_sew", "transactions.csv")
        assert (await e2e.run_window(h)).committed == 1
        (sale,) = await e2e.sales_log(h, MARCH_14)
        assert figures(sale) == {
            "subtotal": "699.00",
            "discount": None,  # the export has no discount column: none stated, none made up
            "tax": "52.43",
            "shipping": "0.00",
            "total": "751.43",  # = Payment Amount
        }
        detail = await e2e.sale_detail(h, "LS-501")
        assert lines(detail) == [("VAC-MIELE-C3", "1", "699.00", "0.00", "52.43")]
        assert tenders(detail) == [("Visa", "751.43", None)]
        assert detail["record"]["total"] == "751.43" and detail["source"] == "like_sew"
        assert detail["record"].get("discount") is None  # not made up
        assert await e2e.quarantine(h) == []
        row = await report_row(h, MARCH_14)
        assert (row["count"], row["gross"], row["net"]) == (1, "751.43", "751.43")


async def test_jewel360_sale_and_return_csv_push(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "jewel360", now=AFTER) as h:
        await post_csv(h, "jewel360", "customers.csv")
        rosa = await e2e.customer(h, "J-C1")
        assert (rosa["birth_date"], rosa["anniversary_date"]) == ("1985-07-04", "2010-06-21")
        assert (rosa["marketing_email"], rosa["attributes"]) == ("opted_in", {"Ring Size": "6.5"})
        await post_csv(h, "jewel360", "transactions.csv")
        await e2e.run_window(h)
        assert await e2e.quarantine(h) == []
        (sale,) = await e2e.sales_log(h, MARCH_14)
        assert (sale["id"], sale["total"], sale["tax"]) == ("J-9001", "5160.00", "360.00")
        returns = await logged(h, MARCH_20)
        assert "J-9002" in returns  # a return naming no original: committed as a return
        ret = await e2e.sale_detail(h, "J-9002")
        assert (ret["kind"], ret["subtotal"], ret["tax"], ret["total"]) == (
            "return",
            "-4800.00",
            "-360.00",
            "-5160.00",  # the file's "($5,160.00)"
        )
        assert tenders(ret) == [("Visa", "-5160.00", None)]
        assert await e2e.quarantine(h) == []
        assert (await report_row(h, MARCH_14))["gross"] == "5160.00"


# -- Music Shop 360 over MQTT: a real Mosquitto ------------------------------------------


async def test_music_shop_360_over_mqtt(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    mqtt = {"enabled": True, "port": mosquitto.port, "client_id": "possync-ms360"}
    async with e2e.store_app(tmp_path, "music_shop_360", now=AFTER, config={"mqtt": mqtt}) as h:
        source = h.app[keys.MQTT]
        await asyncio.wait_for(source.wait_for(lambda s: s.subscribed), 15)
        topic = f"pos/music_shop_360/{STORE}"
        # no file name over MQTT: the topic's last level says which file type it is
        for kind in ("customers", "transactions"):
            body = fixture("music_shop_360", f"{kind}.csv")
            await asyncio.to_thread(mosquitto.publish, f"{topic}/{kind}", body)
        # PUBACK only after the durable write: once acked, the sale is in the spool
        await asyncio.wait_for(source.wait_for(lambda s: s.acked >= 2), 15)
        assert source.state.rejected == 0
        assert h.spool.stats(STORE).pending == 1
        dave = await e2e.customer(h, "M-C1")
        assert (dave["marketing_email"], dave["marketing_sms"]) == ("unknown", "opted_in")
        assert dave["attributes"] == {"Instrument": "Bass guitar"}
        assert (await e2e.run_window(h)).committed == 1
        (sale,) = await e2e.sales_log(h, MARCH_14)
        assert figures(sale) == {
            "subtotal": "15.98",  # 2 x 7.99
            "discount": None,  # no discount column in this export
            "tax": "1.32",
            "shipping": "0.00",
            "total": "17.30",  # = the file's Payment Amount
        }
        detail = await e2e.sale_detail(h, "M-300")
        assert lines(detail) == [("STR-EB-10", "2", "7.99", "0.00", "1.32")]
        assert tenders(detail) == [("Cash", "17.30", None)]
        assert detail["customer_id"] == "M-C1" and detail["source"] == "music_shop_360"
        assert detail["record"].get("discount") is None
        assert await e2e.quarantine(h) == []
        row = await report_row(h, MARCH_14)
        assert (row["count"], row["gross"]) == (1, "17.30")


# -- KWI: the SFTP export's files in the drop folder --------------------------------------


async def test_kwi_drop_folder(tmp_path: Path) -> None:
    config = INBOX_CONFIG
    async with e2e.store_app(
        tmp_path, "kwi", timezone="America/New_York", now=AFTER, config=config
    ) as h:
        await drop(h, tmp_path, "kwi", "customers.csv", "orders.csv")
        ava = await e2e.customer(h, "100234")
        assert ava["attributes"] == KWI_AVA_ATTRIBUTES
        assert ava["marketing_email"] == "opted_in"  # "Email Opt-In" Y
        ben = await e2e.customer(h, "100235")
        assert ben["marketing_email"] == "unknown"  # "N" is not having opted in, not an opt-out
        assert ben["attributes"]["Total Net Sales"] == "$0.00"
        assert (await e2e.run_window(h)).committed == 1  # 500772 is a training transaction
        (sale,) = await e2e.sales_log(h, MARCH_14)
        assert figures(sale) == {
            "subtotal": "313.20",  # 348.00 - 34.80
            "discount": "34.80",
            "tax": "25.84",
            "shipping": "0.00",
            "total": "339.04",  # = Tender Amount
        }
        detail = await e2e.sale_detail(h, "500771")
        assert tenders(detail) == [("AMEX", "339.04", None)]
        assert detail["attributes"] == {"Customer Email": "ava.lee@example.com"}
        assert (detail["customer_id"], detail["customer_linked"]) == ("100234", True)
        assert await e2e.quarantine(h) == []
        assert (await report_row(h, MARCH_14))["gross"] == "339.04"


# -- Logicmate: the generic CSV, order-level figures stated by the file --------------------


async def test_logicmate_csv_push_with_order_level_figures(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "logicmate", now=AFTER) as h:
        await post_csv(h, "logicmate", "customers.csv")
        await post_csv(h, "logicmate", "sales.csv")
        iris = await e2e.customer(h, "LC-1")
        assert [(a["kind"], a["line1"]) for a in iris["addresses"]] == [
            ("primary", "12 Elm St"),
            ("shipping", "400 Congress Ave"),
        ]
        assert (iris["marketing_email"], iris["marketing_sms"]) == ("opted_in", "unknown")
        assert iris["attributes"] == {"loyalty_tier": "Gold"}
        await e2e.run_window(h)
        assert await e2e.quarantine(h) == []
        day = await logged(h, MARCH_14)
        assert figures(day["LM-3"]) == {  # the file's own columns, not our sums
            "subtotal": "90.00",
            "discount": "20.00",
            "tax": "7.20",
            "shipping": "12.00",
            "total": "109.20",
        }
        detail = await e2e.sale_detail(h, "LM-3")
        assert [(t["method"], t["method_id"], t["amount"]) for t in detail["tenders"]] == [
            ("Visa", "VI", "60.00"),
            ("Gift Card", "GC", "49.20"),
        ]
        assert detail["attributes"] == {"receipt_note": "Gift wrap", "lines[0].engraving": "IC"}
        assert lines(detail) == [
            ("BRC-SLV-7", "2", "50.00", "20.00", "6.40"),
            ("CLOTH-1", "1", "10.00", "0.00", "0.80"),
        ]
        ret = await e2e.sale_detail(h, "LM-2")
        assert (ret["kind"], ret["original_id"], ret["total"]) == ("return", "LM-1", "-642.60")
        row = await report_row(h, MARCH_14)
        assert (row["count"], row["gross"]) == (2, "751.80")  # 642.60 + 109.20


async def test_logicmate_total_that_disagrees_with_its_lines_is_quarantined(
    tmp_path: Path,
) -> None:
    header = fixture("logicmate", "sales.csv").decode().splitlines()[0]
    row = "LM-9,2026-03-14 15:00:00,,,,,completed,USD,100.00,,8.00,,110.00,"
    row += "1,A,A,A,,1,100.00,0,8.00,Cash,,110.00,,,"
    async with e2e.store_app(tmp_path, "logicmate", now=AFTER) as h:
        await post_csv(h, "logicmate", "sales.csv", f"{header}\n{row}\n".encode())
        assert (await e2e.run_window(h)).quarantined == 1
        (item,) = await e2e.quarantine(h)
        (reason,) = [r for r in item["reasons"] if r["rule"] == "total.sum"]
        assert "110.00" in reason["message"] and "108.00" in reason["message"]
        assert item["record"]["total"] == "110.00"  # what the file said, not corrected
        assert await e2e.sales_log(h, MARCH_14) == []
