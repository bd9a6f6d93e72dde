"""The SQLite sink's written-out parameter builders equal the generic conversion.

`sale_params` and `tender_params` (worker/sinks/sqlite_rows.py) spell out, column by column,
what `(store, *_text(sale_values(row)), ...)` and `(store, *_text(v)) for v in
tender_values(rows)` build: a window builds one per sale with the GIL held, so the generic
form's tuple unpacking and per-value type dispatch were worth removing. This holds the two
equal for any sale (every value and its type), so the sink writes exactly what it wrote.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.batch import SaleRow
from worker.errors import SinkError
from worker.records import Sale, SaleLine, Tender, localize
from worker.sinks.sql_rows import sale_values, tender_values
from worker.sinks.sqlite_rows import _text, sale_params, tender_params

STORE = "S1"
ZONE = ZoneInfo("America/New_York")
TRICKY = st.one_of(
    st.text(max_size=20),
    st.sampled_from(['"business_date":null', "\\", '"', "Zürich ☃", "", "1E+2"]),
)
MONEY = st.decimals(
    min_value=Decimal("-9999"), max_value=Decimal("9999"), places=2, allow_nan=False
) | st.sampled_from([Decimal("1E+2"), Decimal("0.10"), Decimal("-0"), Decimal("12.345")])


@st.composite
def sales(draw: st.DrawFn, sale_id: str) -> Sale:
    lines = [
        SaleLine(
            quantity=draw(st.sampled_from([Decimal(1), Decimal("-2"), Decimal("1.5")])),
            unit_price=draw(MONEY),
            discount=draw(MONEY),
            sku=draw(st.none() | st.text(min_size=1, max_size=8)),
            description=draw(st.none() | TRICKY),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    offset = timezone(timedelta(hours=draw(st.integers(-12, 14))))
    at = datetime(2026, 11, 25, draw(st.integers(0, 23)), 30, 0, draw(st.integers(0, 9)), offset)
    return Sale(
        id=sale_id,
        # An instant already in UTC takes instant_text's short cut; any other offset not.
        occurred_at=draw(st.sampled_from([at, at.astimezone(UTC)])),
        currency="USD",
        lines=lines,
        subtotal=draw(MONEY),
        tax=draw(MONEY),
        total=draw(MONEY),
        tip=draw(MONEY),
        shipping=draw(MONEY),
        tenders=[
            Tender(
                method=draw(TRICKY) or "Cash",
                amount=draw(MONEY),
                reference=draw(st.none() | TRICKY),
                method_id=draw(st.none() | TRICKY),
            )
            for _ in range(draw(st.integers(0, 2)))
        ],
        kind=draw(st.sampled_from(["sale", "return"])),
        customer_id=draw(st.none() | st.just("C-1")),
        original_id=draw(st.none() | st.just("A-0")),
        display_number=draw(st.none() | TRICKY),
        business_date=draw(st.none() | st.just(date(2026, 11, 24))),
        version=draw(st.integers(1, 3)),
    )


@settings(max_examples=200, deadline=None)
@given(
    batch=st.lists(sales("A-1"), min_size=1, max_size=3),
    voided_at=st.none() | st.just("2026-11-25T23:00:00.000000+00:00"),
    linked=st.booleans(),
)
def test_written_out_parameters_equal_the_generic_conversion(
    batch: list[Sale], voided_at: str | None, linked: bool
) -> None:
    rows = [SaleRow(sale=localize(s, ZONE), version=1, customer_linked=linked) for s in batch]
    for row in rows:
        generic = (
            STORE,
            *_text(sale_values(row)),
            int(voided_at is not None),
            voided_at,
            row.warning_text(),
            "at",
            "b1",
            row.body_text(),
        )
        got = sale_params(STORE, row, voided_at, "at", "b1")
        assert got == generic
        assert [type(v) for v in got] == [type(v) for v in generic]
    tenders = list(tender_params(STORE, rows))
    assert tenders == [(STORE, *_text(v)) for v in tender_values(rows)]


def test_a_sale_without_business_date_is_refused_naming_the_field() -> None:
    sale = Sale(
        id="A-1",
        occurred_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
        currency="USD",
        lines=[],
        subtotal=Decimal(0),
        tax=Decimal(0),
        total=Decimal(0),
    )
    undated = SaleRow(sale=msgspec.structs.replace(sale, business_date=None), version=1)
    with pytest.raises(SinkError) as err:
        sale_params(STORE, undated, None, "at", "b1")
    assert err.value.field == "$.business_date"
    assert not err.value.retriable
