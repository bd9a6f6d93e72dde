"""Sink contract, read side, over every sink: detail, Sales Log, report and trigger
listings; money exact; the faithful model's fields (optional SKU, tender method ids,
warnings, body-only figures) round-trip and read the same on every sink.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tests.contracts.sinks import (
    DAY,
    STORE,
    T0,
    PostgresBackend,
    SqliteBackend,
    batch_of,
    canonical,
    faithful_sale,
    make_batch,
    make_sale,
    make_trigger,
    make_void,
    report_row,
    subset,
)
from worker.api.format import sale_detail
from worker.batch import SaleRow
from worker.records import Customer, Product, Sale, SaleLine
from worker.sinks.base import SALE_LOG_COLUMNS, ClientBook

if TYPE_CHECKING:
    # Imported by pytest as a plugin (each suite's pytest_plugins); importing it at run
    # time here first would skip its assertion rewriting.
    from tests.plugins.postgres import PostgresServer


pytest_plugins = ["tests.plugins.postgres"]


# -- reads ----------------------------------------------------------------------------------


async def test_reads_are_json_able_and_none_when_missing(sink: ClientBook) -> None:
    customer = Customer(
        id="c1",
        first_name="Ann",
        birth_date=date(1990, 2, 3),
        tags=["vip"],
        updated_at=T0,
    )
    product = Product(
        id="p1", name="Ring", price=Decimal("1999.99"), attributes={"metal": "gold"}, version=3
    )
    await sink.upsert_entities(STORE, [customer, product])
    sale = make_sale("s-1", customer_id="c1")
    await sink.commit_sales(make_batch("b1", [sale], triggers=[make_trigger(sale, T0)]))
    got_c = await sink.get_customer(STORE, "c1")
    got_p = await sink.get_product(STORE, "p1")
    got_s = await sink.get_sale(STORE, "s-1")
    for value in (
        got_c,
        got_p,
        got_s,
        await sink.sales_log(STORE, DAY),
        await sink.list_triggers(STORE),
    ):
        assert value
        json.dumps(value)
    assert got_c is not None and got_p is not None
    assert subset(got_c, msgspec.to_builtins(customer)) == {
        **msgspec.to_builtins(customer),
        "version": customer.effective_version,
    }
    assert subset(got_p, msgspec.to_builtins(product)) == msgspec.to_builtins(product)
    assert await sink.get_customer(STORE, "nope") is None
    assert await sink.get_product(STORE, "nope") is None
    assert await sink.get_sale(STORE, "nope") is None
    assert await sink.sales_log(STORE, DAY + timedelta(days=1)) == []
    assert await sink.list_triggers("other") == []


async def test_decimal_money_round_trips_exactly(sink: ClientBook) -> None:
    lines = [
        SaleLine(sku="A", quantity=Decimal(1), unit_price=Decimal("0.1")),
        SaleLine(sku="B", quantity=Decimal(1), unit_price=Decimal("0.2")),
        SaleLine(
            sku="C",
            quantity=Decimal("1.5"),
            unit_price=Decimal("1.23456"),
            discount=Decimal("0.00000001"),
        ),
    ]
    odd = make_sale("odd", "2.15183999", lines=lines)
    tenths = [make_sale(f"t-{i}", "0.1") for i in range(10)]
    await sink.commit_sales(make_batch("b1", [odd, *tenths]))
    got = await sink.get_sale(STORE, "odd")
    assert got is not None
    assert [ln["unit_price"] for ln in got["lines"]] == ["0.1", "0.2", "1.23456"]
    assert got["lines"][2]["quantity"] == "1.5"
    assert Decimal(got["lines"][2]["discount"]) == Decimal("0.00000001")
    assert got["total"] == "2.15183999"
    assert [r["total"] for r in await sink.sales_log(STORE, DAY) if r["id"] == "odd"] == [
        "2.15183999"
    ]
    (row,) = await sink.sales_report(STORE, DAY, DAY)
    # Each total at its minor unit as the log shows it (2.15), then summed: ten times 0.10
    # is exactly 1.00 (a float sum would give 0.9999999999999999).
    assert row.gross == Decimal("3.15")
    assert row.net == row.gross
    assert isinstance(row.gross, Decimal)


async def test_sales_report_per_business_date(sink: ClientBook) -> None:
    day2, day3 = DAY + timedelta(days=1), DAY + timedelta(days=2)
    await sink.commit_sales(
        make_batch(
            "b1",
            [
                make_sale("a", "10.00"),
                make_sale("b", "-3.50"),
                make_sale("c", "7.25"),
                make_sale("d", "0.00"),
                make_sale("e", "20.00", day=day2),
                make_sale("f", "99.00", day=day3),
            ],
            voids=[make_void("c")],
        )
    )
    await sink.commit_sales(make_batch("other-b1", [make_sale("a", "500.00")], store="other"))
    assert await sink.sales_report(STORE, DAY, day2) == [
        # date, currency, count, gross, returns, returns_count, net, voided
        report_row(DAY, "USD", 3, "10.00", "3.50", 1, "6.50", 1),
        report_row(day2, "USD", 1, "20.00", "0", 0, "20.00", 0),
    ]
    assert await sink.sales_report(STORE, day3 + timedelta(days=1), day3 + timedelta(days=9)) == []
    assert [r.gross for r in await sink.sales_report("other", DAY, DAY)] == [Decimal("500.00")]


# -- the faithful model: optional SKU, tender method ids, warnings, body-only figures --------


async def test_a_line_without_sku_keeps_none_and_tender_method_ids_round_trip(
    sink: ClientBook,
) -> None:
    sale = faithful_sale()
    await sink.commit_sales(make_batch("b1", [sale]))
    got = await sink.get_sale(STORE, "f-1")
    assert got is not None
    assert [ln["sku"] for ln in got["lines"]] == ["RING-1", None]
    assert got["lines"][1]["quantity"] == "2.500"
    assert [(t["method"], t["method_id"], t["amount"], t["reference"]) for t in got["tenders"]] == [
        ("Visa", "pm-7", "200.00", "ch_1"),
        ("Cash", "1", "72.98000", None),
    ]
    # The canonical record as stored, exactly: the body's own lines and figures.
    assert got["record"] == canonical(sale)
    assert got["record"]["lines"][1]["sku"] is None
    assert got["record"]["tenders"][1]["amount"] == "72.98000"


async def test_warnings_round_trip_through_detail_and_log(sink: ClientBook) -> None:
    warned = SaleRow(
        sale=make_sale("w-1"),
        version=1,
        warnings=("tenders.sum: tenders sum to 9.98, total is 10.00", "customer.hold: c9"),
    )
    quiet = SaleRow(sale=make_sale("w-2"), version=1)
    await sink.commit_sales(batch_of("b1", [warned, quiet]))
    got = await sink.get_sale(STORE, "w-1")
    assert got is not None and got["warnings"] == list(warned.warnings)
    log = {r["id"]: r for r in await sink.sales_log(STORE, DAY)}
    assert log["w-1"]["warnings"] == list(warned.warnings)
    assert log["w-2"]["warnings"] == []
    assert "warning" not in log["w-1"]


async def test_sales_log_carries_the_body_only_figures(sink: ClientBook) -> None:
    plain = make_sale("p-1")
    await sink.commit_sales(make_batch("b1", [faithful_sale(), plain]))
    log = {r["id"]: r for r in await sink.sales_log(STORE, DAY)}
    assert list(log["f-1"]) == [*(c for c in SALE_LOG_COLUMNS if c != "warning"), "warnings"]
    f = log["f-1"]
    assert (f["discount"], f["rounding"], f["tax_included"]) == ("30.00", "-0.02", False)
    assert (f["subtotal"], f["shipping"], f["total"], f["line_count"]) == (
        "245.00",
        "10.00",
        "272.98",
        2,
    )
    # No discount stated: none, not an invented zero; the model's default rounding.
    assert (log["p-1"]["discount"], log["p-1"]["rounding"]) == (None, "0")


async def test_report_per_date_and_currency_counts_returns(sink: ClientBook) -> None:
    def in_currency(sale: Sale, currency: str) -> Sale:
        return msgspec.structs.replace(sale, currency=currency)

    unlinked = msgspec.structs.replace(make_sale("r-2", "-15.00"), original_id="never-seen")
    await sink.commit_sales(
        make_batch(
            "b1",
            [
                make_sale("u-1", "100.00"),
                make_sale("r-1", "-40.00"),
                unlinked,
                make_sale("r-3", "-5.00"),  # voided below: neither summed nor counted
                in_currency(make_sale("j-1", "1200"), "JPY"),
                in_currency(make_sale("j-2", "-300"), "JPY"),
            ],
            voids=[make_void("r-3")],
        )
    )
    assert await sink.sales_report(STORE, DAY, DAY) == [
        report_row(DAY, "JPY", 2, "1200", "300", 1, "900", 0),
        report_row(DAY, "USD", 3, "100.00", "55.00", 2, "45.00", 1),
    ]


async def test_trigger_listing_names_the_sale_currency(sink: ClientBook) -> None:
    sale = faithful_sale(currency="CHF")
    await sink.commit_sales(make_batch("b1", [sale], triggers=[make_trigger(sale, T0)]))
    (item,) = await sink.list_triggers(STORE)
    assert (item["currency"], item["total"]) == ("CHF", "272.98")


async def test_detail_log_report_and_triggers_are_equal_across_sinks(
    tmp_path: Path, postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    sale = faithful_sale()
    rows = [
        SaleRow(sale=sale, version=1, warnings=("tenders.sum: a warning",)),
        SaleRow(sale=make_sale("r-1", "-40.00"), version=1, customer_linked=False),
    ]
    batch = msgspec.structs.replace(
        batch_of("b1", rows), voids=[make_void("r-1")], triggers=[make_trigger(sale, T0)]
    )
    seen: list[tuple[Any, ...]] = []
    for backend in (
        SqliteBackend(tmp_path),
        PostgresBackend(tmp_path, postgres_server, postgres_dsn),
    ):
        async with backend.open() as opened:
            await opened.commit_sales(batch)
            details = []
            for sid in ("f-1", "r-1"):
                got = await opened.get_sale(STORE, sid)
                assert got is not None
                assert got.pop("committed_at")  # the commit instant differs, nothing else
                details.append(got)
                shown = sale_detail({**got, "committed_at": None}, "canonical")
                json.dumps(shown)
                details.append(shown)
            log = await opened.sales_log(STORE, DAY)
            for item in log:
                assert item.pop("committed_at")
            seen.append(
                (
                    details,
                    log,
                    await opened.sales_report(STORE, DAY, DAY),
                    await opened.list_triggers(STORE),
                )
            )
    sqlite_view, postgres_view = seen
    assert sqlite_view == postgres_view
    (f1, f1_shown, r1, _) = sqlite_view[0]
    assert f1["warnings"] == ["tenders.sum: a warning"]
    assert (r1["voided"], r1["customer_linked"]) == (True, False)
    assert f1_shown["total"] == "272.98" and f1_shown["tenders"][1]["amount"] == "72.98"
