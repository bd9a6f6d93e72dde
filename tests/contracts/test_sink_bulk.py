"""Sink contract, the bulk paths, over every sink: lines and tenders shredded in SQL from the
stored body (SQLite) or COPYed (PostgreSQL) read back exactly as the POS's decimal text says,
whatever the figures' form; staging survives a failed page; a page of a thousand sales.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from tests.contracts.sinks import STORE, Backend, make_batch, make_sale
from worker.errors import SinkError
from worker.records import Sale, SaleLine, Tender
from worker.sinks.base import ClientBook
from worker.sinks.sql_rows import money_text

pytest_plugins = ["tests.plugins.postgres"]


def _plain(value: Decimal) -> Decimal:
    """What a sink keeps of a figure: its exact decimal text without an exponent."""
    return Decimal(money_text(value))


def _expected_lines(sale: Sale) -> list[dict[str, Any]]:
    out = []
    for ln in sale.lines:
        kept = msgspec.structs.replace(
            ln,
            quantity=_plain(ln.quantity),
            unit_price=_plain(ln.unit_price),
            discount=_plain(ln.discount),
            tax=_plain(ln.tax),
        )
        out.append(msgspec.to_builtins(kept))
    return out


def _expected_tenders(sale: Sale) -> list[dict[str, Any]]:
    return [
        msgspec.to_builtins(msgspec.structs.replace(t, amount=_plain(t.amount)))
        for t in sale.tenders
    ]


def _odd_sales() -> list[Sale]:
    """Figures in every form a POS may send, and text that looks like an exponent."""
    exponent = make_sale(
        "exp-1",
        "100",
        lines=[
            SaleLine(quantity=Decimal("1E+2"), unit_price=Decimal("1"), sku="A"),
            SaleLine(
                quantity=Decimal("1"),
                unit_price=Decimal("1.5E-7"),
                discount=Decimal("1.5E-7"),
                sku="B",
            ),
        ],
        tenders=[Tender(method="cash", amount=Decimal("1.00E+2"))],
    )
    looks_like_one = make_sale(
        "gift-1",
        "25.50",
        lines=[
            SaleLine(
                quantity=Decimal("-1.000"),
                unit_price=Decimal("25.50"),
                description='E-gift "card" \\ 10% off, caf\u00e9 \u2603',
                line_kind="gift_card",
                restock=True,
                line_id="L-E+1",
            ),
            SaleLine(quantity=Decimal("0"), unit_price=Decimal("0.00"), restock=False),
        ],
        tenders=[
            Tender(method="E-wallet", amount=Decimal("25.50"), method_id="E+", reference=None)
        ],
    )
    many = make_sale(
        "many-1",
        "7.00000000",
        lines=[
            SaleLine(
                quantity=Decimal("0.125"),
                unit_price=Decimal(f"{k}.10"),
                tax=Decimal("0.000"),
                product_id=f"p{k}",
                category="rings",
                employee_id="e9",
                original_line_id=f"o{k}",
            )
            for k in range(12)
        ],
        tenders=[
            Tender(method="card", amount=Decimal("3.5")),
            Tender(method="card", amount=Decimal("3.50000000"), reference="r2"),
        ],
    )
    return [exponent, looks_like_one, many, make_sale("plain-1", "10.00")]


async def test_lines_and_tenders_read_back_as_the_pos_figures(sink: ClientBook) -> None:
    sales = _odd_sales()
    outcome = await sink.commit_sales(make_batch("odd", sales))
    assert outcome.inserted == len(sales)
    for sale in sales:
        got = await sink.get_sale(STORE, sale.id)
        assert got is not None
        assert got["lines"] == _expected_lines(sale), sale.id
        assert got["tenders"] == _expected_tenders(sale), sale.id
        assert got["record"] == msgspec.to_builtins(sale)


async def test_newer_version_replaces_the_children_through_the_bulk_path(
    sink: ClientBook,
) -> None:
    v1 = _odd_sales()[2]
    v2 = msgspec.structs.replace(_odd_sales()[0], id=v1.id, version=2)
    await sink.commit_sales(make_batch("b1", [v1]))
    await sink.commit_sales(make_batch("b2", [v2]))
    got = await sink.get_sale(STORE, v1.id)
    assert got is not None
    assert got["lines"] == _expected_lines(v2)
    assert got["tenders"] == _expected_tenders(v2)
    counts = await sink.counts()
    assert (counts["sale_lines"], counts["tenders"]) == (len(v2.lines), len(v2.tenders))


async def test_a_failed_page_leaves_nothing_staged_for_the_next(
    backend: Backend, sink: ClientBook
) -> None:
    first = [make_sale(f"a{k}", "1.00") for k in range(3)]
    second = [make_sale(f"b{k}", "2.00") for k in range(4)]
    await backend.fail_inserts_into("tenders")
    with pytest.raises(SinkError):
        await sink.commit_sales(make_batch("p1", first))
    await backend.heal("tenders")
    assert (await sink.counts())["sales"] == 0
    await sink.commit_sales(make_batch("p2", second))
    await sink.commit_sales(make_batch("p1", first))
    counts = await sink.counts()
    assert (counts["sales"], counts["sale_lines"], counts["tenders"]) == (7, 7, 7)
    for sale in [*first, *second]:
        got = await sink.get_sale(STORE, sale.id)
        assert got is not None
        assert got["tenders"] == _expected_tenders(sale)


async def test_a_page_of_a_thousand_sales_lands_whole(sink: ClientBook) -> None:
    sales = [
        make_sale(
            f"k{k:04d}",
            f"{k}.{k % 100:02d}",
            lines=[
                SaleLine(quantity=Decimal(1), unit_price=Decimal(f"{k}.00"), sku=f"S{k}"),
                SaleLine(quantity=Decimal(1), unit_price=Decimal(f"0.{k % 100:02d}")),
            ],
        )
        for k in range(1000)
    ]
    outcome = await sink.commit_sales(make_batch("big", sales))
    assert outcome.inserted == 1000
    counts = await sink.counts()
    assert (counts["sales"], counts["sale_lines"], counts["tenders"]) == (1000, 2000, 1000)
    got = await sink.get_sale(STORE, "k0999")
    assert got is not None
    assert [ln["sku"] for ln in got["lines"]] == ["S999", None]
    assert got["lines"][1]["unit_price"] == "0.99"
