"""Shared native-format helpers: exact decimals, bounded values, JSON decoding, key collapsing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from worker.adapters.native import (
    Obj,
    decode_json,
    divide,
    keep_last,
    prorate,
    sale_kind,
    tax_exclusive_unit,
    to_decimal,
    to_instant,
)
from worker.errors import RecordInvalid
from worker.records import Customer


def test_json_numbers_decode_to_exact_decimals() -> None:
    doc = decode_json(b'{"a": 1244.87, "b": 0.1, "c": 3}')
    assert doc == {"a": Decimal("1244.87"), "b": Decimal("0.1"), "c": 3}


@pytest.mark.parametrize("body", [b'"\x80"', b"[" * 100_000, b"{", b""])
def test_unreadable_json_is_record_invalid(body: bytes) -> None:
    with pytest.raises(RecordInvalid) as err:
        decode_json(body)
    assert err.value.field == "$"


@pytest.mark.parametrize(
    "value",
    ["1e400", Decimal("1E+99999"), 10**13, "1.000000001", True, None, "NaN", "12,50", [1]],
)
def test_out_of_bounds_or_wrong_type_amounts(value: object) -> None:
    with pytest.raises(RecordInvalid) as err:
        to_decimal(value, "$.x")
    assert err.value.field == "$.x"


def test_amount_forms() -> None:
    assert to_decimal("17.24625", "$") == Decimal("17.24625")
    assert to_decimal(" -12.5 ", "$") == Decimal("-12.5")
    assert to_decimal("1.500000000", "$") == Decimal("1.500000000")  # zeros only beyond 8 places
    assert to_decimal(0.1, "$") == Decimal("0.1")  # a float is read by its shortest repr


def test_division_and_proration() -> None:
    assert divide(Decimal("10.00"), Decimal(3)) == Decimal("3.33333333")
    assert divide(Decimal("25.00"), Decimal(2)) == Decimal("12.5")
    assert prorate(Decimal("2.06"), Decimal(1), Decimal(2)) == Decimal("1.03")
    assert tax_exclusive_unit(Decimal(1), Decimal("120.00"), Decimal("20.00")) == Decimal(100)


def test_sale_kind_by_signs() -> None:
    assert sale_kind([Decimal(1), Decimal(2)]) == "sale"
    assert sale_kind([Decimal(-1)]) == "return"
    assert sale_kind([Decimal(-1), Decimal(1)]) == "exchange"
    assert sale_kind([]) == "sale"


def test_instants() -> None:
    assert to_instant("2026-03-14T15:22:09-05:00", "$") == (
        datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC),
        False,
    )
    assert to_instant("2016-05-05 23:35:34", "$") == (
        datetime(2016, 5, 5, 23, 35, 34, tzinfo=UTC),
        True,
    )
    with pytest.raises(RecordInvalid):
        to_instant("yesterday", "$.t")


def test_paths_in_errors() -> None:
    o = Obj({"lines": [{"q": "x"}]}, "$")
    (line,) = o.objs("lines")
    with pytest.raises(RecordInvalid) as err:
        line.req_dec("q")
    assert err.value.field == "$.lines[0].q"


def test_keep_last_collapses_a_key_within_a_payload() -> None:
    a1, b, a2 = Customer(id="a", first_name="1"), Customer(id="b"), Customer(id="a", first_name="2")
    assert keep_last([a1, b, a2]) == [b, a2]
