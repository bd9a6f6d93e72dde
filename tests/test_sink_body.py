"""The window stores the spooled bytes as the sale's body (issue 11: no second encode).

`records.localized_body` fills `business_date` into the spooled canonical JSON in place; the
property: for any sale, the result is byte for byte `encode(localize(sale))`, whatever its
strings hold. The SQLite sink's specialised line parameters equal the generic conversion.
End to end, the body in the sink is exactly the canonical encoding of the committed sale.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.appserver import make_config, push_records, running
from tests.factories import sale_dict
from worker.batch import SaleRow
from worker.records import SPOOLED_DECODER, Sale, SaleLine, Tender, encode, localize, localized_body
from worker.sinks.sql_rows import line_values
from worker.sinks.sqlite_rows import _text, line_params

ZONES = [ZoneInfo("America/New_York"), ZoneInfo("Pacific/Kiritimati"), ZoneInfo("UTC")]
# Strings that look like the pattern, quotes, backslashes, non-ASCII: what a POS may send.
TRICKY = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ['"business_date":null', 'x","business_date":null,"y', "\\", '"', "Zürich ☃", ""]
    ),
)
MONEY = st.decimals(
    min_value=Decimal("-99999"), max_value=Decimal("99999"), places=2, allow_nan=False
).map(lambda d: d.normalize() if d.is_finite() and d == d.to_integral() else d)


@st.composite
def sales(draw: st.DrawFn) -> Sale:
    lines = [
        SaleLine(
            quantity=draw(st.sampled_from([Decimal(1), Decimal("-2"), Decimal("1.5")])),
            unit_price=draw(MONEY),
            sku=draw(st.none() | st.text(min_size=1, max_size=10)),
            description=draw(st.none() | TRICKY),
            restock=draw(st.sampled_from([None, True, False])),
            line_id=draw(st.none() | st.just("L-1")),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    offset = timezone(timedelta(hours=draw(st.integers(-12, 14))))
    at = datetime(2026, 11, 25, draw(st.integers(0, 23)), 30, tzinfo=offset)
    return Sale(
        id=draw(st.text(min_size=1, max_size=12)),
        occurred_at=at,
        currency="USD",
        lines=lines,
        subtotal=draw(MONEY),
        tax=draw(MONEY),
        total=draw(MONEY),
        tenders=[Tender(method=draw(TRICKY) or "Cash", amount=draw(MONEY))],
        attributes=draw(st.dictionaries(TRICKY, TRICKY, max_size=3)),
        display_number=draw(st.none() | TRICKY),
        business_date=draw(st.none() | st.just(date(2026, 11, 24))),
    )


@settings(max_examples=300, deadline=None)
@given(sale=sales(), zone=st.sampled_from(ZONES))
def test_filled_body_is_the_encoding_of_the_localized_sale(sale: Sale, zone: ZoneInfo) -> None:
    body = encode(sale)
    after = localize(sale, zone)
    filled = localized_body(body, sale, after)
    if sale.business_date is not None:
        assert filled is None  # nothing filled: the body's form cannot be told, encode again
        return
    assert filled is not None  # a canonical body always has the key exactly once
    assert filled == encode(after)
    assert SPOOLED_DECODER.decode(filled) == after
    # localize copies and sets the one field: what `replace` (re-running every check) gives.
    assert after == msgspec.structs.replace(sale, business_date=after.business_date)
    assert sale.business_date is None  # the original is left as it was


def test_a_body_without_the_key_is_encoded_again() -> None:
    sale = SPOOLED_DECODER.decode(encode(SPOOLED_DECODER.decode(_canonical())))
    assert isinstance(sale, Sale)
    after = localize(sale, ZONES[0])
    # A body spooled by an encoding without the field (or with it twice) is not patched.
    assert localized_body(encode(sale).replace(b'"business_date":null,', b""), sale, after) is None
    assert localized_body(b'{"business_date":null,"business_date":null}', sale, after) is None
    # A backfilled body (default fields left out, business date set at intake) is not reused.
    lean = msgspec.json.Encoder(decimal_format="string")
    dated = localize(sale, ZONES[0])
    assert localized_body(lean.encode(dated), dated, localize(dated, ZONES[0])) is None
    row = SaleRow(sale=after, version=0, body=None)
    assert row.body_text() == encode(after).decode()


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(sales(), min_size=1, max_size=4))
def test_line_params_equal_the_generic_conversion(batch: list[Sale]) -> None:
    rows = [SaleRow(sale=s, version=0) for s in batch]
    assert list(line_params("S1", rows)) == [("S1", *_text(v)) for v in line_values(rows)]


def _canonical() -> bytes:
    return encode(SPOOLED_DECODER.decode(_json(sale_dict("B-1"))))


def _json(d: dict[str, object]) -> bytes:
    import orjson

    return orjson.dumps(d)


NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize("route", ["push", "backfill"])
async def test_the_sink_body_is_the_canonical_encoding_of_the_committed_sale(
    tmp_path: Path, route: str
) -> None:
    """Pushed (business date filled at the window) or backfilled (set at intake, spooled
    without default fields): the sink holds the full canonical encoding either way."""
    cfg = make_config(tmp_path)
    pushed = sale_dict("B-7", at=NOW, attributes={"note": '"business_date":null'})
    async with running(cfg, NOW) as h:
        if route == "push":
            await push_records(h, pushed)
        else:
            resp = await h.client.post(
                "/v1/backfill/canonical/S1",
                data=_json(pushed),
                headers={**h.admin(), "Content-Type": "application/x-ndjson"},
            )
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["spooled"] == 1
        h.clock.advance(1)
        resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
        assert (await resp.json())["stores"]["S1"]["committed"] == 1
    path = getattr(cfg.sink, "path", "") or str(Path(cfg.data_dir) / "clientbook.db")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (stored,) = db.execute("SELECT body FROM sales WHERE id = 'B-7'").fetchone()
    finally:
        db.close()
    sale = SPOOLED_DECODER.decode(_json(pushed))
    assert isinstance(sale, Sale)
    if route == "backfill":
        sale = msgspec.structs.replace(sale, origin="backfill")
    expected = localize(sale, cfg.store_zone(cfg.stores[0]))
    assert expected.business_date is not None
    assert stored == encode(expected).decode()
