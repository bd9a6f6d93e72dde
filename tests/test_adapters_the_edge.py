"""The Edge EDT adapter: customers, items, SaleLines grouped into sales, naive local times."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.adapter_helpers import assert_consistent, by_type, fixture, make_ctx, sale
from worker.adapters import get_adapter
from worker.adapters.base import Parsed
from worker.adapters.the_edge import TheEdgeAdapter, combine_parts, file_info, is_full_snapshot
from worker.errors import RecordInvalid
from worker.records import Customer, Product

ADAPTER = TheEdgeAdapter()
ZONE = "America/New_York"
TX1 = "1-2026-03-14-12-00-Transaction.json"
TX2 = "2-2026-03-14-12-00-Transaction.json"
DST = "2026-11-02-06-00-Transaction.json"
CUSTOMERS = "2026-03-14-11-21-13-CustomerList.json"
ITEMS = "2026-03-14-11-21-13-FULL-FullItemList.json"


def push(body: bytes | Any, filename: str | None, **kw: Any) -> Parsed:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ADAPTER.parse(raw, make_ctx("the_edge", zone=ZONE, filename=filename, **kw))


def load(name: str) -> Parsed:
    return push(fixture("the_edge", name), name)


def test_registered_under_the_edge() -> None:
    assert isinstance(get_adapter("the_edge"), TheEdgeAdapter)


def test_file_names() -> None:
    ctx = make_ctx("the_edge", zone=ZONE)
    info = file_info(TX2, ctx)
    assert (info.kind, info.part, info.full) == ("sale", 2, False)
    assert info.stamp == datetime(2026, 3, 14, 16, 0, tzinfo=UTC)  # 12:00 EDT
    info = file_info(ITEMS, ctx)
    assert (info.kind, info.part, info.full) == ("item", None, True)
    assert info.stamp == datetime(2026, 3, 14, 15, 21, 13, tzinfo=UTC)
    assert is_full_snapshot(ITEMS) and not is_full_snapshot(TX1)


# -- customers ---------------------------------------------------------------------------


def test_customer_list() -> None:
    parsed = load(CUSTOMERS)
    bill, ann = parsed.records
    assert isinstance(bill, Customer) and isinstance(ann, Customer)
    assert (bill.id, bill.first_name, bill.last_name) == ("001-00001", "Bill", "Bagwell")
    assert (bill.birth_date, bill.anniversary_date) == (date(1961, 6, 18), date(1990, 6, 2))
    assert bill.created_at == datetime(2026, 3, 14, 14, 15, tzinfo=UTC)  # 10:15 EDT
    assert bill.updated_at == datetime(2026, 3, 14, 15, 21, 13, tzinfo=UTC)  # the file's stamp
    assert bill.email == "bill.bagwell@example.com"  # the preferred (Home) e-mail, not the first
    assert bill.phone == "919-555-0199"  # CustomerPrefPhone = Cell
    assert bill.address is not None and (bill.address.line1, bill.address.region) == (
        "12 Elm St",
        "NC",
    )
    assert (bill.assigned_employee_id, bill.linked_customer_id, bill.tags) == ("12", None, ["VIP"])
    assert (bill.status, ann.status) == ("active", "inactive")
    assert ann.linked_customer_id == "001-00001"  # spouse record points at the primary


def test_redelivered_older_file_has_an_older_version() -> None:
    new = push(fixture("the_edge", CUSTOMERS), CUSTOMERS).records[0]
    old_name = CUSTOMERS.replace("2026-03-14-11", "2026-03-13-11")
    old = push(fixture("the_edge", CUSTOMERS), old_name).records[0]
    assert old.effective_version < new.effective_version


def test_customer_missing_key_is_rejected_alone() -> None:
    doc = json.loads(fixture("the_edge", CUSTOMERS))
    del doc["Customer"][1]["CustomerKey"]
    parsed = push(doc, CUSTOMERS)
    assert [c.id for c in parsed.records] == ["001-00001"]
    assert [(r.index, r.field) for r in parsed.rejected] == [(1, "$.Customer[1].CustomerKey")]


# -- items (a FULL snapshot) -------------------------------------------------------------


def test_full_item_list() -> None:
    parsed = load(ITEMS)
    ring, studs = parsed.records
    assert isinstance(ring, Product) and isinstance(studs, Product)
    assert (ring.id, ring.sku, ring.price, ring.category) == (
        "R-10442",
        "LF-SH-65",
        Decimal("1199.00"),
        "Rings",
    )
    assert ring.name == "14K WG Sapphire Halo Ring 6.5 1.2ct oval"
    assert ring.is_unique_piece and ring.status == "active"
    assert ring.attributes == {
        "detail_1": "14K White",
        "retail_price": "1399.00",
        "category_id": "12",
    }
    assert (studs.status, studs.price) == ("sold", Decimal(180))


def test_full_snapshot_never_deletes() -> None:
    parsed = load(ITEMS)
    assert all(p.status != "deleted" for p in parsed.records)  # absence is not deletion
    assert parsed.dropped == {}


# -- sales -------------------------------------------------------------------------------


def test_sale_lines_grouped_by_sale_key() -> None:
    parsed = load(TX1)
    s = sale(parsed, "001-00010")
    assert s.occurred_at == datetime(2026, 3, 14, 15, 5, tzinfo=UTC)  # 11:05 EDT
    assert (s.business_date, s.tz_assumed) == (date(2026, 3, 14), True)
    ring, cloth = s.lines
    assert (ring.line_id, ring.quantity, ring.unit_price, ring.tax) == (
        "001-000101",
        Decimal(1),
        Decimal("1199.00"),
        Decimal("86.33"),
    )
    assert (cloth.quantity, cloth.unit_price, cloth.net) == (
        Decimal(2),
        Decimal("12.5"),
        Decimal("25.00"),
    )
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("1224.00"),
        Decimal("88.13"),
        Decimal("1312.13"),
    )
    assert (s.customer_id, s.employee_id, s.location_id) == ("001-00001", "12", "001")
    assert s.updated_at == datetime(2026, 3, 14, 16, 0, tzinfo=UTC)
    assert_consistent(s)


def test_negative_amount_is_a_return_and_mixed_signs_an_exchange() -> None:
    parsed = load(TX1)
    ret = sale(parsed, "001-00011")
    assert ret.kind == "return"
    assert (ret.lines[0].quantity, ret.lines[0].unit_price, ret.total) == (
        Decimal(-1),
        Decimal("180.00"),
        Decimal("-192.96"),
    )
    exchange = sale(parsed, "001-00012")
    assert exchange.kind == "exchange"
    assert exchange.subtotal == Decimal("15.00")
    assert_consistent(ret)
    assert_consistent(exchange)


def test_layaway_is_dropped_and_counted() -> None:
    parsed = load(TX1)
    assert "001-00013" not in {r.id for r in parsed.records}
    assert parsed.dropped == {"layaway": 1}


def test_split_continuation_is_rejected_not_half_applied() -> None:
    parsed = load(TX2)
    assert [r.id for r in parsed.records] == ["001-00015"]
    (rejection,) = parsed.rejected
    assert rejection.index == 0 and "split" in rejection.error
    assert rejection.field == "$.SaleLines[0].SalelineLineNo"
    assert sale(parsed, "001-00015").customer_id is None  # "0" is no customer


def test_combined_parts_make_the_whole_sale() -> None:
    body = combine_parts([fixture("the_edge", TX1), fixture("the_edge", TX2)])
    parsed = push(body, TX1)
    s = sale(parsed, "001-00014")
    assert [ln.line_id for ln in s.lines] == ["001-000141", "001-000142", "001-000133"]
    assert s.total == Decimal("195.00")
    assert parsed.rejected == []


def test_naive_times_across_dst_changes() -> None:
    parsed = load(DST)
    at = {s.id: (s.occurred_at, s.business_date) for s in by_type(parsed)["sale"]}
    # spring forward, 2026-03-08 02:00 EST -> 03:00 EDT
    assert at["001-00020"] == (datetime(2026, 3, 8, 6, 30, tzinfo=UTC), date(2026, 3, 8))
    # 02:30 does not exist: read with the offset before the change (EST), i.e. 03:30 EDT
    assert at["001-00021"] == (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), date(2026, 3, 8))
    assert at["001-00022"] == (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), date(2026, 3, 8))
    # fall back, 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice, the first one counts
    assert at["001-00023"] == (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), date(2026, 11, 1))
    # late evening local is still the same business date although UTC is the next day
    assert at["001-00024"] == (datetime(2026, 11, 2, 4, 30, tzinfo=UTC), date(2026, 11, 1))


def test_field_names_can_be_overridden_per_store() -> None:
    doc = {
        "SaleLines": [
            {
                "Key": "9-1",
                "SalelineSaleKey": "9",
                "TranWhen": "03/14/2026 09:00:00",
                "SalelineAmount": "5",
            }
        ]
    }
    with pytest.raises(RecordInvalid) as err:
        push(doc, TX1)
    assert err.value.field == "$.SaleLines[0].SalelineDate"  # a single sale: nothing returned
    parsed = push(doc, TX1, mapping={"fields": {"sale_date": "TranWhen"}})
    assert sale(parsed, "9").occurred_at == datetime(2026, 3, 14, 13, 0, tzinfo=UTC)


def test_kind_from_content_without_a_file_name() -> None:
    parsed = push(fixture("the_edge", CUSTOMERS), None)
    assert len(parsed.records) == 2
    parsed = push(
        [{"SalelineSaleKey": "1", "SalelineDate": "03/14/2026 09:00:00", "SalelineAmount": "5"}],
        None,
    )
    assert sale(parsed, "1").total == Decimal(5)


def test_job_list_is_acknowledged_and_ignored() -> None:
    parsed = load("2026-03-14-12-00-JobList.json")
    assert parsed.records == [] and parsed.dropped == {"ignored_file": 1}


def test_not_an_edt_file() -> None:
    with pytest.raises(RecordInvalid) as err:
        push({"hello": "world"}, "export.json")
    assert err.value.field == "$"


def test_bad_date_names_the_field() -> None:
    doc = {
        "SaleLines": [{"SalelineSaleKey": "1", "SalelineDate": "14.03.2026", "SalelineAmount": "5"}]
    }
    with pytest.raises(RecordInvalid) as err:
        push(doc, TX1)
    assert err.value.field == "$.SaleLines[0].SalelineDate"


def test_utf8_bom_is_accepted() -> None:
    parsed = push(b"\xef\xbb\xbf" + fixture("the_edge", CUSTOMERS), CUSTOMERS)
    assert len(parsed.records) == 2


# -- property tests ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=24),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    body=st.binary(max_size=512),
    name=st.sampled_from([TX1, CUSTOMERS, ITEMS, None, "x.json"]),
)
def test_arbitrary_bytes_only_raise_record_invalid(body: bytes, name: str | None) -> None:
    with contextlib.suppress(RecordInvalid):
        push(body, name)


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    doc[key] = _mutate(doc[key], path[1:], value)
    return doc


@given(
    name=st.sampled_from([TX1, TX2, DST, CUSTOMERS, ITEMS]),
    path=st.lists(st.integers(min_value=0, max_value=40), max_size=5),
    value=json_values,
)
def test_mutated_exports_parse_or_raise_record_invalid(
    name: str, path: list[int], value: Any
) -> None:
    doc = _mutate(json.loads(fixture("the_edge", name)), path, value)
    try:
        parsed = push(doc, name)
    except RecordInvalid as err:
        assert err.field
        return
    for rejection in parsed.rejected:
        assert rejection.field
