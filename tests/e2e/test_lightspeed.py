"""Lightspeed end to end (issue 9): X-Series webhooks (form-encoded, the JSON in `payload`),
X API 2.0 JSON, a Vend 0.9 `register_sales` list, an X return of a sale committed earlier, an X
customer with its contact addresses, and the R-Series DisplayTemplate Sale 10; all pushed over
HTTP to the real server (store source `lightspeed`), committed by the store's window on the
fake clock, then read back through the Sales Log, the sale detail and the Sales Report.

Every figure is read from the fixture files here (JSON decoded with exact decimals), never
copied into the test: the API shows it at the currency's minor unit, the stored `record` keeps
the POS's digits. Tender names are the POS's own; nothing valid is quarantined.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.appserver import Harness
from tests.e2e import harness as e2e
from worker.money import show

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lightspeed"
FORM = "application/x-www-form-urlencoded"
# The Monday after the X sales of 2026-03-14 and the return of 2026-03-21 (Chicago).
X_NOW = datetime(2026, 3, 22, 12, 0, tzinfo=UTC)
X_DAY = date(2026, 3, 14)
RETURN_DAY = date(2026, 3, 21)
# The day after the R DisplayTemplate sample's sale (2021-06-21, its shop is in New York).
R_NOW = datetime(2021, 6, 22, 12, 0, tzinfo=UTC)
R_DAY = date(2021, 6, 21)
ZERO = Decimal(0)


def load(name: str) -> Any:
    """A fixture decoded with every number as an exact Decimal."""
    text = (FIXTURES / name).read_text()
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def form(payload_fixture: str, kind: str) -> bytes:
    """An X webhook delivery: the payload JSON string in the form field `payload`."""
    fields = {
        "payload": (FIXTURES / payload_fixture).read_text(),
        "environment": "prod",
        "domain_prefix": "lumenjewelers",
        "type": kind,
    }
    return urllib.parse.urlencode(fields).encode()


def usd(value: Decimal) -> str:
    return show(value, "USD")


def x_figures(doc: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    """(subtotal, tax, total) as X states them: `totals.*` or the sale's own fields."""
    totals = doc.get("totals") or doc
    subtotal, tax = Decimal(totals["total_price"]), Decimal(totals["total_tax"])
    return subtotal, tax, subtotal + tax


def x_tenders(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The tenders the API must show: the payment type's name as the retailer wrote it."""
    out = []
    for p in doc.get("payments") or doc.get("register_sale_payments") or []:
        retailer = p.get("retailer_payment_type") or {}
        out.append(
            {
                "method": retailer.get("name") or p["name"],
                "method_id": p["retailer_payment_type_id"],
                "amount": usd(Decimal(p["amount"])),
                "reference": p.get("id"),
            }
        )
    return out


def x_lines(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("line_items") or doc.get("register_sale_products") or [])


async def check_x_sale(h: Harness, doc: dict[str, Any], logged: dict[str, Any]) -> None:
    """One committed X sale: Sales Log row, detail, tenders, lines and the exact record."""
    subtotal, tax, total = x_figures(doc)
    assert (logged["subtotal"], logged["tax"], logged["total"]) == (
        usd(subtotal),
        usd(tax),
        usd(total),
    ), doc["id"]
    assert (logged["discount"], logged["warnings"], logged["voided"]) == (None, [], False)
    assert logged["line_count"] == len(x_lines(doc))
    detail = await e2e.sale_detail(h, doc["id"])
    assert (detail["source"], detail["tax_included"], detail["tenders_known"]) == (
        "lightspeed",
        False,
        True,
    )
    assert detail["tenders"] == x_tenders(doc)
    assert detail["adjustments"] == [] and detail["warnings"] == []
    for shown, line in zip(detail["lines"], x_lines(doc), strict=True):
        assert shown["sku"] == (line.get("sku") or None)  # absent: none, never ''
        assert shown["product_id"] == line["product_id"]
        assert shown["quantity"] == f"{Decimal(line['quantity']).normalize():f}"
        assert shown["net"] == usd(Decimal(line["price_total"]))
        assert shown["tax"] == usd(Decimal(line["tax_total"]))
    record = detail["record"]
    # The stored record keeps the POS's digits exactly ("70.43478", "81.00000").
    assert (record["subtotal"], record["tax"], record["total"]) == (
        str(subtotal),
        str(tax),
        str(total),
    )
    assert [ln["unit_price"] for ln in record["lines"]] == [
        str(Decimal(ln["price"])) for ln in x_lines(doc)
    ]


async def test_x_webhook_json_vend_list_return_and_customer(tmp_path: Path) -> None:
    hook = load("x_sale_webhook_payload.json")
    api = load("x_sale.json")["data"]
    returned = load("x_return.json")["data"]
    vend = load("vend_register_sales.json")["register_sales"]
    contact = load("x_customer_webhook.json")
    async with e2e.store_app(tmp_path, "lightspeed", now=X_NOW) as h:
        # An X customer.update webhook: real time, every address the POS holds.
        out = await e2e.push(
            h, form("x_customer_webhook.json", "customer.update"), content_type=FORM
        )
        assert (out["accepted"], out["rejected"]) == (1, [])
        await check_contact_customer(h, contact)
        # The sale.update webhook: the embedded (older) customer does not overwrite it.
        body = (FIXTURES / "x_sale_webhook.form").read_bytes()
        out = await e2e.push(h, body, content_type=FORM)
        assert out["rejected"] == [] and out["accepted"] >= 1
        await check_contact_customer(h, contact)
        # API 2.0 JSON: the customer, then the sale that is returned later.
        await e2e.push(h, (FIXTURES / "x_customer.json").read_bytes())
        out = await e2e.push(h, (FIXTURES / "x_sale.json").read_bytes())
        assert (out["accepted"], out["rejected"]) == (1, [])
        # A Vend 0.9 list response: each element one sale (both walk-ins).
        out = await e2e.push(h, (FIXTURES / "vend_register_sales.json").read_bytes())
        assert (out["accepted"], out["rejected"]) == (len(vend), [])
        assert await e2e.sales_log(h, X_DAY) == []  # sales wait for the window

        result = await e2e.run_window(h)
        expected = [hook, api, *vend]
        assert (result.committed, result.quarantined, result.held) == (len(expected), 0, 0)
        assert await e2e.quarantine(h) == []
        log = {s["id"]: s for s in await e2e.sales_log(h, X_DAY)}
        assert set(log) == {doc["id"] for doc in expected}
        for doc in expected:
            await check_x_sale(h, doc, log[doc["id"]])
        assert log[hook["id"]]["customer_id"] == contact["id"]
        assert log[hook["id"]]["customer_linked"] is True
        assert [log[doc["id"]]["customer_id"] for doc in vend] == [None, None]  # WALKIN, none
        detail = await e2e.sale_detail(h, hook["id"])
        assert [t["method"] for t in detail["tenders"]] == ["Cash", "EFTPOS"]
        assert detail["attributes"]["totals.total_payment"] == hook["totals"]["total_payment"]
        assert detail["record"]["tz_assumed"] is False

        # The return of the sale committed above: a new sale with return_for, negative lines.
        out = await e2e.push(h, (FIXTURES / "x_return.json").read_bytes())
        assert (out["accepted"], out["rejected"]) == (1, [])
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.held) == (1, 0, 0)
        (logged,) = await e2e.sales_log(h, RETURN_DAY)
        await check_x_sale(h, returned, logged)
        assert (logged["kind"], logged["original_id"]) == ("return", api["id"])
        assert await e2e.quarantine(h) == []

        totals = [x_figures(doc)[2] for doc in expected]
        ((day,),) = [await e2e.report(h, X_DAY)]
        assert day == {
            "date": X_DAY.isoformat(),
            "currency": "USD",
            "count": len(expected),
            "gross": usd(sum(totals, start=ZERO)),
            "returns": usd(ZERO),
            "returns_count": 0,
            "net": usd(sum(totals, start=ZERO)),
            "voided": 0,
        }
        refund = -x_figures(returned)[2]
        ((day,),) = [await e2e.report(h, RETURN_DAY)]
        assert (day["count"], day["gross"], day["returns"], day["returns_count"], day["net"]) == (
            1,
            usd(ZERO),
            usd(refund),
            1,
            usd(-refund),
        )


async def check_contact_customer(h: Harness, doc: dict[str, Any]) -> None:
    """The X customer with both contact addresses, unknown consent and kept attributes."""
    got = await e2e.customer(h, doc["id"])
    c = doc["contact"]

    def address(kind: str) -> tuple[Any, ...]:
        return (
            c[f"{kind}_address1"],
            c[f"{kind}_address2"] or None,
            c[f"{kind}_city"],
            c[f"{kind}_postcode"],
            c[f"{kind}_country_id"],
            kind,
        )

    assert [
        (a["line1"], a.get("line2"), a["city"], a["postal_code"], a["country_code"], a["kind"])
        for a in got["addresses"]
    ] == [address("physical"), address("postal")]
    assert got["address"]["kind"] == "physical"
    assert (got["email"], got["phone"]) == (doc["email"], doc["mobile"])
    # do_not_email false means "not blocked": unknown, never an opt-in
    assert (got["marketing_email"], got["marketing_sms"]) == ("unknown", "unknown")
    assert got["attributes"]["contact.physical_suburb"] == c["physical_suburb"]
    assert got["attributes"]["customer_code"] == doc["customer_code"]


async def test_r_sale_10_and_a_sale_without_relations(tmp_path: Path) -> None:
    doc = load("r_sale_10.json")["Sale"]
    async with e2e.store_app(
        tmp_path, "lightspeed", now=R_NOW, timezone="America/New_York", currency="CAD"
    ) as h:
        # Fetched without load_relations: refused at once, naming what is missing and how.
        body = (FIXTURES / "r_sale_no_relations.json").read_bytes()
        err = await e2e.push(h, body, expect=400)
        assert err["field"] == "$.Sale.SaleLines"
        assert "load_relations" in err["error"] and "SalePayments" in err["error"]

        out = await e2e.push(h, (FIXTURES / "r_sale_10.json").read_bytes())
        assert (out["accepted"], out["rejected"]) == (2, [])  # its Customer, then the Sale
        buyer = await e2e.customer(h, doc["customerID"])
        (where,) = buyer["addresses"]
        assert (where["city"], where["country_code"]) == ("Pergamino", "AR")
        assert buyer["marketing_email"] == "unknown"  # noEmail "false": not blocked

        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.held) == (1, 0, 0)
        assert await e2e.quarantine(h) == []
        (logged,) = await e2e.sales_log(h, R_DAY)
        subtotal = Decimal(doc["calcSubtotal"]) - Decimal(doc["calcDiscount"])
        tax, total = Decimal(doc["taxTotal"]), Decimal(doc["total"])
        # the sample's own figures: calcTax1 1.15 + calcTax2 2.29 = taxTotal 3.44
        assert Decimal(doc["calcTax1"]) + Decimal(doc["calcTax2"]) == tax
        assert (logged["subtotal"], logged["tax"], logged["total"]) == ("23.00", "3.44", "26.44")
        assert (logged["subtotal"], logged["tax"], logged["total"], logged["discount"]) == (
            show(subtotal, "CAD"),
            show(tax, "CAD"),
            show(total, "CAD"),
            show(Decimal(doc["calcDiscount"]), "CAD"),
        )
        assert (logged["currency"], logged["customer_id"], logged["customer_linked"]) == (
            "CAD",
            doc["customerID"],
            True,
        )
        assert logged["warnings"] == [] and logged["line_count"] == 1

        detail = await e2e.sale_detail(h, doc["saleID"])
        payment = doc["SalePayments"]["SalePayment"]  # one payment: an object, not a list
        assert detail["tenders"] == [
            {
                "method": payment["PaymentType"]["name"],
                "method_id": payment["paymentTypeID"],
                "amount": show(Decimal(payment["amount"]), "CAD"),
                "reference": payment["salePaymentID"],
            }
        ]
        assert detail["tenders_known"] is True and detail["tax_included"] is False
        line = doc["SaleLines"]["SaleLine"]
        (shown,) = detail["lines"]
        assert (shown["sku"], shown["description"], shown["quantity"]) == (
            line["Item"]["customSku"],
            line["Item"]["description"],
            line["unitQuantity"],
        )
        assert shown["tax"] == show(Decimal(line["calcTax1"]) + Decimal(line["calcTax2"]), "CAD")
        record = detail["record"]
        assert (record["subtotal"], record["tax"], record["total"]) == (
            str(subtotal),
            doc["taxTotal"],
            doc["total"],
        )
        assert record["lines"][0]["tax"] == str(
            Decimal(line["calcTax1"]) + Decimal(line["calcTax2"])
        )  # five places, as the line states
        assert detail["attributes"]["calcTax2"] == doc["calcTax2"]
        assert detail["attributes"]["TaxClassTotals.Tax.taxname2"] == "PST"

        ((day,),) = [await e2e.report(h, R_DAY)]
        assert (day["count"], day["currency"], day["gross"], day["returns"], day["net"]) == (
            1,
            "CAD",
            show(total, "CAD"),
            show(ZERO, "CAD"),
            show(total, "CAD"),
        )
