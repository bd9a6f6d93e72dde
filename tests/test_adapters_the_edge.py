"""The Edge EDT adapter: customers, items, SaleLines grouped into sales, naive local times."""

from __future__ import annotations

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
from worker.records import Address, Customer, Product, Sale

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
    assert (bill.assigned_employee_id, bill.linked_customer_id) == ("12", None)
    assert bill.tags == ["VIP", "Ring size 10"]
    assert (bill.status, ann.status) == ("active", "inactive")
    assert ann.linked_customer_id == "001-00001"  # spouse record points at the primary


def test_every_address_is_kept_with_its_kind() -> None:
    bill, ann = load(CUSTOMERS).records
    assert isinstance(bill, Customer) and isinstance(ann, Customer)
    home = Address(line1="12 Elm St", city="Raleigh", region="NC", postal_code="27601", kind="Home")
    work = Address(
        line1="400 Fayetteville St",
        line2="Suite 1200",
        city="Raleigh",
        region="NC",
        postal_code="27601-1770",
        country_code="USA",  # as the export writes it, not an ISO code made up here
        kind="Work",
    )
    assert bill.addresses == [home, work]
    assert bill.address == home  # CustomerPrefMail = Home
    assert ann.addresses == [home] and ann.address == home  # a lone object, not a list


def test_customer_fields_without_a_slot_are_attributes() -> None:
    bill, ann = load(CUSTOMERS).records
    assert isinstance(bill, Customer) and isinstance(ann, Customer)
    assert bill.attributes == {
        "Customerid": "1",
        "CustomerAccountKey": "001-00001",  # its own key: no link, kept as the POS wrote it
        "CustomerCoupleName": "Bill & Ann Bagwell",
        "CustomerGender": "M",
        "CustomerMarried": "True",
        "CustomerCreditLimit": "2500.00",
        "CustomerAcquisition": "Walk-in",
        "CustomerImage": "bagwell-1.jpg|bagwell-2.jpg",
        "CustomerKey1": "VIP",
        "CustomerKey3": "Ring size 10",
        "CustomerPrefMail": "Home",
        "CustomerPrefHome": "Home",
        "CustomerPrefPhone": "Cell",
        "Address.0.Key": "Home",
        "Address.1.Key": "Work",
        "Email.0.Key": "Work",
        "Email.0.EmailType": "Work",
        "Email.0.EmailAddress": "bill@bagwell-law.example",  # the other e-mail is not dropped
        "Email.1.Key": "Home",
        "Email.1.EmailType": "Home",
        "Phone.0.Key": "Home",
        "Phone.0.PhoneType": "Home",
        "Phone.0.PhoneNumber": "919-555-0100",
        "Phone.1.Key": "Cell",
        "Phone.1.PhoneType": "Cell",
        "CustomerTransfer.WebTransferWebID": "web-4471",
    }
    # CustomerAccountKey became linked_customer_id; null and blank fields carry nothing.
    assert ann.attributes == {
        "Customerid": "2",
        "CustomerGender": "F",
        "CustomerCoupleName": "Bill & Ann Bagwell",
        "Address.Key": "Home",
    }


def test_consent_is_unknown_unless_the_export_says_so() -> None:
    bill, _ = load(CUSTOMERS).records
    assert isinstance(bill, Customer)
    # The EDT dictionary has no consent field: nothing is inferred.
    assert (bill.marketing_email, bill.marketing_sms) == ("unknown", "unknown")
    mapping = {"fields": {"email_opt_in": "MailOptIn", "sms_opt_out": "NoTexts"}}
    got = []
    for opt_in, no_texts in [("True", "False"), ("False", "True"), (False, False), (None, None)]:
        row = {"CustomerKey": "001-00009", "CustomerFirstName": "Kim", "MailOptIn": opt_in}
        (c,) = push(
            {"Customer": [{**row, "NoTexts": no_texts}]}, CUSTOMERS, mapping=mapping
        ).records
        assert isinstance(c, Customer) and c.attributes == {}  # the flags were read
        got.append((c.marketing_email, c.marketing_sms))
    assert got == [
        ("opted_in", "unknown"),  # a false "no texts" flag is "not blocked": unknown
        ("unknown", "opted_out"),  # a false opt-in is not an opt-out
        ("unknown", "unknown"),
        ("unknown", "unknown"),  # null flags
    ]


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
        "ItemDescMemo": "1.2ct oval",  # also in the name; kept exactly as written
        "CategoryId": "12",
        "CategoryCategoryType": "J",
        "ItemCatId": "12",
        "ItemRetailPrice": "1399.00",  # the price is ItemCurrentPrice (after markdown)
        "ItemCost": "480.00",
        "ItemCostReplacement": "505.00",
        "ItemDateEntered": "11/03/2025 09:12:00",
        "ItemDetail_1": "14K White",
        "Stones.0.StoneType": "Sapphire",
        "Stones.0.StoneShape": "Oval",
        "Stones.0.StoneWeight": "1.20",
        "Stones.1.StoneType": "Diamond",
        "Stones.1.StoneShape": "Round",
        "Stones.1.StoneWeight": "0.30",
    }
    assert studs.attributes == {}
    assert (studs.status, studs.price) == ("sold", Decimal(180))


def test_full_snapshot_never_deletes() -> None:
    parsed = load(ITEMS)
    products = [p for p in parsed.records if isinstance(p, Product)]
    assert len(products) == 2
    assert all(p.status != "deleted" for p in products)  # absence is not deletion
    assert parsed.dropped == {}


# -- sales -------------------------------------------------------------------------------


def test_sale_lines_grouped_by_sale_key() -> None:
    parsed = load(TX1)
    s = sale(parsed, "001-00010")
    assert s.occurred_at == datetime(2026, 3, 14, 15, 5, tzinfo=UTC)  # 11:05 EDT
    assert (s.business_date, s.tz_assumed) == (date(2026, 3, 14), True)
    ring, cloth = s.lines
    assert (ring.line_id, ring.product_id, ring.sku, ring.quantity) == (
        "001-000101",
        "R-10442",
        None,  # EDT lines name the item, not a SKU: none is invented
        Decimal(1),
    )
    # The POS's figures, digit for digit (not 1199 or 86.330).
    assert (str(ring.unit_price), str(ring.tax), str(ring.net)) == ("1199.00", "86.33", "1199.00")
    assert (cloth.quantity, cloth.unit_price, cloth.net) == (
        Decimal(2),
        Decimal("12.5"),
        Decimal("25.00"),
    )
    assert (s.customer_id, s.employee_id, s.location_id) == ("001-00001", "12", "001")
    assert s.updated_at == datetime(2026, 3, 14, 16, 0, tzinfo=UTC)


def test_figures_are_sums_of_the_pos_line_figures_and_tenders_are_unknown() -> None:
    for name in (TX1, TX2):
        for s in by_type(load(name))["sale"]:
            assert isinstance(s, Sale)
            rows = [r for r in json.loads(fixture("the_edge", name))["SaleLines"]]
            mine = [r for r in rows if r["SalelineSaleKey"] == s.id]
            amounts = sum((Decimal(r["SalelineAmount"]) for r in mine), start=Decimal(0))
            taxes = sum((Decimal(r.get("SalelineEstTax", "0")) for r in mine), start=Decimal(0))
            assert (s.subtotal, s.tax, s.total) == (amounts, taxes, amounts + taxes), s.id
            assert [ln.net for ln in s.lines] == [Decimal(r["SalelineAmount"]) for r in mine]
            assert [ln.tax for ln in s.lines] == [
                Decimal(r.get("SalelineEstTax", "0")) for r in mine
            ]
            # No payment rows in EDT: "tenders unknown", so tenders.sum cannot quarantine it.
            assert (s.tenders, s.tenders_known) == ([], False)
            assert (s.discount, s.adjustments, s.tax_included) == (None, [], False)
            assert_consistent(s)
    s = sale(load(TX1), "001-00010")
    assert (str(s.subtotal), str(s.tax), str(s.total)) == ("1224.00", "88.13", "1312.13")


def test_sale_line_fields_without_a_slot_are_attributes() -> None:
    s = sale(load(TX1), "001-00010")
    assert s.attributes == {
        # the same on every line: one key
        "SalelineCustAccountKey": "001-00001",
        "SalelineccBatchKey": "0314-01",
        # different per line: keyed by SalelineLineNo
        "SalelineCost.1": "480.00",
        "SalelineCost.2": "4.20",
        "SalelineAge.1": "131",
        "SalelineAge.2": "40",
        "SalelineBonusPct.1": "2.50",
        "SalelineItemType.1": "I",
        "SalelineItemType.2": "B",
        "SalelineInstanceOf.2": "B-CLOTH",
    }
    walk_in = sale(load(TX2), "001-00015")
    assert walk_in.customer_id is None  # SalelineCustKey "0" is no customer
    assert walk_in.attributes == {"SalelineCost": "31.00", "SalelineCustAccountKey": "0"}


def test_lines_that_disagree_on_a_sale_level_field_keep_each_value() -> None:
    doc = json.loads(fixture("the_edge", TX1))
    lines = [r for r in doc["SaleLines"] if r["SalelineSaleKey"] == "001-00010"]
    lines[1]["SalelineDate"] = "03/14/2026 11:07:00"
    s = sale(push({"SaleLines": lines}, TX1), "001-00010")
    assert s.occurred_at == datetime(2026, 3, 14, 15, 5, tzinfo=UTC)  # the first line's
    assert s.attributes["SalelineDate.1"] == "03/14/2026 11:05:00"
    assert s.attributes["SalelineDate.2"] == "03/14/2026 11:07:00"


def test_long_card_data_is_kept_whole_across_keys() -> None:
    receipt = "".join(f"{i:05d}|" for i in range(1500))  # 9000 characters
    line = {
        "Key": "001-000901",
        "SalelineSaleKey": "001-00090",
        "SalelineLineNo": 1,
        "SalelineDate": "03/14/2026 09:00:00",
        "SalelineAmount": "10.00",
        "SalelineccReceiptData": receipt,
    }
    s = sale(push({"SaleLines": [line]}, TX1), "001-00090")
    parts = [s.attributes[k] for k in ("SalelineccReceiptData", "SalelineccReceiptData#2")]
    parts.append(s.attributes["SalelineccReceiptData#3"])
    assert "".join(parts) == receipt and all(len(p) <= 4096 for p in parts)


def test_too_many_unmapped_fields_reject_the_record_rather_than_drop_some() -> None:
    row = {"CustomerKey": "001-00009", **{f"Extra{i}": str(i) for i in range(257)}}
    parsed = push({"Customer": [row, {"CustomerKey": "001-00010"}]}, CUSTOMERS)
    assert [c.id for c in parsed.records] == ["001-00010"]
    (rejection,) = parsed.rejected
    assert (rejection.index, rejection.field) == (0, "$.Customer[0]")
    assert "257 fields without a canonical slot" in rejection.error


def test_a_quantity_that_does_not_divide_keeps_the_line_amount_exact() -> None:
    line = {
        "SalelineSaleKey": "001-00091",
        "SalelineDate": "03/14/2026 09:00:00",
        "SalelineAmount": "25.00",
        "SalelineQty": 3,
    }
    s = sale(push({"SaleLines": [line]}, TX1), "001-00091")
    (ln,) = s.lines
    assert ln.quantity == 3 and ln.net == Decimal("25.00") and s.subtotal == Decimal("25.00")
    assert abs(ln.discount) < Decimal("1e-7")  # the residue of 25/3 at 8 places, nothing more


def test_negative_amount_is_a_return_and_mixed_signs_an_exchange() -> None:
    parsed = load(TX1)
    ret = sale(parsed, "001-00011")
    assert ret.kind == "return" and ret.original_id is None  # EDT names no original sale
    assert (ret.lines[0].quantity, str(ret.lines[0].unit_price), ret.total) == (
        Decimal(-1),
        "180.00",
        Decimal("-192.96"),
    )
    exchange = sale(parsed, "001-00012")
    assert exchange.kind == "exchange"
    assert [ln.quantity for ln in exchange.lines] == [Decimal(-1), Decimal(1)]
    assert exchange.subtotal == Decimal("15.00")
    assert_consistent(ret)
    assert_consistent(exchange)


def test_layaway_is_dropped_and_counted() -> None:
    parsed = load(TX1)
    assert "001-00013" not in {r.id for r in parsed.records}
    assert parsed.dropped == {"layaway": 1}


def _continuation() -> dict[str, Any]:
    """Part 2 of an export whose sale 001-00014 started in part 1 (lines 1 and 2)."""
    doc = json.loads(fixture("the_edge", TX1))
    lines = [r for r in doc["SaleLines"] if r["SalelineSaleKey"] == "001-00014"]
    return {"SaleLines": [lines[2], *json.loads(fixture("the_edge", TX2))["SaleLines"]]}


def test_split_parts_hold_whole_sales() -> None:
    first, second = load(TX1), load(TX2)
    assert [r.id for r in first.records] == ["001-00010", "001-00011", "001-00012", "001-00014"]
    assert [r.id for r in second.records] == ["001-00015", "001-00016"]
    assert first.rejected == second.rejected == []
    assert [ln.line_id for ln in sale(first, "001-00014").lines] == [
        "001-000141",
        "001-000142",
        "001-000143",
    ]


def test_split_continuation_is_rejected_not_half_applied() -> None:
    parsed = push(_continuation(), TX2)
    assert [r.id for r in parsed.records] == ["001-00015", "001-00016"]
    (rejection,) = parsed.rejected
    assert rejection.index == 0 and "split" in rejection.error
    assert rejection.field == "$.SaleLines[0].SalelineLineNo"


def test_combined_parts_make_the_whole_sale() -> None:
    doc = json.loads(fixture("the_edge", TX1))
    part1 = {"SaleLines": doc["SaleLines"][:-1]}
    body = combine_parts([json.dumps(part1).encode(), json.dumps(_continuation()).encode()])
    parsed = push(body, TX1)
    s = sale(parsed, "001-00014")
    assert [ln.line_id for ln in s.lines] == ["001-000141", "001-000142", "001-000143"]
    assert (s.subtotal, s.tax) == (Decimal("185.00"), Decimal("13.32"))
    assert parsed.rejected == []


def test_naive_times_across_dst_changes() -> None:
    parsed = load(DST)
    at = {s.id: (s.occurred_at, s.business_date) for s in parsed.records if isinstance(s, Sale)}
    assert len(at) == 5
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


@given(
    extra=st.dictionaries(
        st.from_regex(r"Customer[A-Z][a-zA-Z]{2,12}", fullmatch=True).filter(
            lambda k: k not in json.loads(fixture("the_edge", CUSTOMERS))["Customer"][0]
        ),
        st.text(min_size=1, max_size=40).filter(str.strip),
        max_size=6,
    )
)
def test_any_field_without_a_slot_comes_back_as_written(extra: dict[str, str]) -> None:
    doc = json.loads(fixture("the_edge", CUSTOMERS))
    doc["Customer"][0].update(extra)
    (bill, _) = push(doc, CUSTOMERS).records
    assert isinstance(bill, Customer)
    for key, value in extra.items():
        assert bill.attributes[key] == value
