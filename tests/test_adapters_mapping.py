"""The declarative mapping adapter: Rain family, KWI, Logicmate, TOML loading, parsing rules."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from tests.adapter_helpers import (
    KWI_AVA_ATTRIBUTES,
    RECEIVED_AT,
    assert_consistent,
    by_type,
    fixture,
    make_ctx,
    sale,
)
from worker.adapters import ADAPTERS, MAPPING_SOURCES, get_adapter
from worker.adapters.base import Parsed, Rejection
from worker.adapters.mapping import (
    MappingAdapter,
    MappingSpec,
    Numbers,
    builtin_names,
    compile_spec,
    iter_csv_rows,
    iter_items,
    load_mapping,
    parse_decimal,
    parse_when,
)
from worker.config import Config, StoreConfig, decode
from worker.errors import ConfigError, RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Sale, Void
from worker.validation import ValidationContext, validate_sale

CHICAGO = "America/Chicago"


def push(source: str, name: str | None, body: bytes | None = None, **kw: Any) -> Parsed:
    adapter = get_adapter(source)
    assert adapter is not None
    raw = body if body is not None else fixture(source, name or "")
    kw.setdefault("content_type", "text/csv")
    return adapter.parse(raw, make_ctx(source, filename=name, **kw))


def config(stores: list[dict[str, Any]], mappings: dict[str, Any] | None = None) -> Config:
    return decode({"stores": stores, "mappings": mappings or {}})


# -- registry ----------------------------------------------------------------------------


def test_every_mapping_source_is_registered_with_a_builtin() -> None:
    assert set(MAPPING_SOURCES) <= set(ADAPTERS)
    assert set(MAPPING_SOURCES) <= set(builtin_names())
    for name in MAPPING_SOURCES:
        adapter = get_adapter(name)
        assert isinstance(adapter, MappingAdapter) and adapter.name == name


def test_rain_brands_share_the_rain_mapping() -> None:
    cfg = config(
        [{"id": s, "source": s} for s in ("rain", "like_sew", "jewel360", "music_shop_360")]
    )
    specs = {s.id: load_mapping(cfg, s) for s in cfg.stores}
    assert {k: v.brand for k, v in specs.items()} == {
        "rain": "rain",
        "like_sew": "like_sew",
        "jewel360": "jewel360",
        "music_shop_360": "music_shop_360",
    }
    assert len({msgspec.json.encode(v.sale) for v in specs.values()}) == 1  # one platform


# -- Rain --------------------------------------------------------------------------------


def test_rain_transactions() -> None:
    parsed = push("rain", "transactions.csv")
    s = sale(parsed, "T1001")
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)  # 3:22:09 PM CDT
    assert (s.business_date, s.tz_assumed, s.kind) == (date(2026, 3, 14), True, "sale")
    fq, machine = s.lines
    assert (fq.sku, fq.quantity, fq.unit_price, fq.tax, fq.description) == (
        "QLT-FQ-BLU",
        Decimal(4),
        Decimal("3.50"),
        Decimal("1.16"),
        "Fat quarter, blue",
    )
    assert (machine.unit_price, machine.discount) == (Decimal("1250.00"), Decimal("75.00"))
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("1189.00"),
        Decimal("98.10"),
        Decimal("1287.10"),
    )
    # each line row repeats the payment: kept once
    assert [(t.method, t.amount, t.reference) for t in s.tenders] == [
        ("Visa", Decimal("1287.10"), "AUTH-1")
    ]
    assert (s.customer_id, s.employee_id, s.location_id, s.register_id, s.display_number) == (
        "C-77",
        "emma",
        "1",
        "2",
        "R-1001",
    )
    assert s.source_ref == "rain:transactions.csv:row0"
    assert s.updated_at == RECEIVED_AT  # no version column: the push's time
    assert_consistent(s)


def test_rain_return_and_exchange_by_line_signs() -> None:
    parsed = push("rain", "transactions.csv")
    ret = sale(parsed, "T1002")
    assert (ret.kind, ret.original_id) == ("return", "T1001")
    (ln,) = ret.lines
    assert (ln.quantity, ln.unit_price, ln.tax, ln.restock) == (
        Decimal(-1),
        Decimal("3.50"),
        Decimal("-0.29"),
        True,
    )
    assert [t.amount for t in ret.tenders] == [Decimal("-3.79")]
    exchange = sale(parsed, "T1003")
    assert exchange.kind == "exchange"
    assert [ln.restock for ln in exchange.lines] == [False, None]
    assert exchange.total == Decimal("3.25")
    assert exchange.customer_id is None
    for s in (ret, exchange):
        assert_consistent(s)


def test_rain_void_and_suspended() -> None:
    parsed = push("rain", "transactions.csv")
    (void,) = by_type(parsed)["void"]
    assert isinstance(void, Void) and void.id == "T1004"
    assert parsed.dropped == {"open": 1}
    assert {s.id for s in by_type(parsed)["sale"]} == {"T1001", "T1002", "T1003"}


def test_rain_customers_and_products() -> None:
    grace, ada = push("rain", "customers.csv").records
    assert isinstance(grace, Customer) and isinstance(ada, Customer)
    assert (grace.id, grace.email, grace.birth_date) == (
        "C-77",
        "grace@example.com",
        date(1956, 12, 9),
    )
    # "Email Opt In" Yes is an opt-in; "Text Opt In" No is no opt-out: unknown
    assert (grace.marketing_email, grace.marketing_sms) == ("opted_in", "unknown")
    assert grace.address is not None and (grace.address.city, grace.address.region) == (
        "Durham",
        "NC",
    )
    assert [(a.kind, a.line1) for a in grace.addresses] == [("primary", "1 Bobbin Ln")]
    assert grace.attributes == {"Loyalty Points": "1250"}  # no canonical field: kept as is
    assert ada.attributes == {}  # empty cells are not kept
    assert grace.updated_at == datetime(2026, 3, 14, 20, 30, tzinfo=UTC)
    assert (ada.company, ada.anniversary_date, ada.address, ada.addresses) == (
        "Analytical Sewing Co",
        date(2010, 6, 2),
        None,
        [],
    )
    assert (ada.marketing_email, ada.marketing_sms) == ("unknown", "unknown")  # empty cells
    machine, fq = push("rain", "products.csv").records
    assert isinstance(machine, Product) and isinstance(fq, Product)
    assert (machine.attributes, fq.attributes) == ({"Reorder Point": "2"}, {})
    assert (machine.id, machine.sku, machine.price, machine.barcode) == (
        "P-12",
        "SEW-BRO-9",
        Decimal("1250.00"),
        "012502655019",
    )


@pytest.mark.parametrize(
    ("brand", "sale_id", "total"),
    [
        ("like_sew", "LS-501", "751.43"),
        ("jewel360", "J-9001", "5160.00"),
        ("music_shop_360", "M-300", "17.30"),
    ],
)
def test_rain_brands(brand: str, sale_id: str, total: str) -> None:
    parsed = push(brand, "transactions.csv")
    s = sale(parsed, sale_id)
    assert s.total == Decimal(total)
    assert s.source_ref is not None and s.source_ref.startswith(f"{brand}:")
    assert_consistent(s)


def test_jewel360_return_with_parenthesised_amounts() -> None:
    s = sale(push("jewel360", "transactions.csv"), "J-9002")
    assert (s.kind, s.total, s.tenders[0].amount) == (
        "return",
        Decimal("-5160.00"),
        Decimal("-5160.00"),
    )


# -- KWI ---------------------------------------------------------------------------------


def test_kwi_documented_customer_columns() -> None:
    ava, ben = push("kwi", "customers.csv", zone="America/New_York").records
    assert isinstance(ava, Customer) and isinstance(ben, Customer)
    assert (ava.id, ava.email, ava.first_name, ava.phone) == (
        "100234",
        "ava.lee@example.com",
        "Ava",
        "843-555-0100",
    )
    assert ava.created_at == datetime(2026, 3, 14, 4, 0, tzinfo=UTC)  # "03/14/26", local midnight
    assert (ava.assigned_employee_id, ava.marketing_email) == ("88", "opted_in")
    # every documented column with no canonical field, under its own header, text as is
    assert ava.attributes == KWI_AVA_ATTRIBUTES
    assert ava.tags == []
    assert ben.attributes == {
        "Home Store": "012",
        "Store Purchased": "014",
        "Total Net Sales": "$0.00",
    }
    assert ava.address is not None and (
        ava.address.line1,
        ava.address.line2,
        ava.address.postal_code,
    ) == (
        "55 King St",
        None,
        "29401",
    )
    assert ben.created_at == datetime(
        1999, 11, 30, 5, 0, tzinfo=UTC
    )  # two-digit year, last century
    # "Email Opt-In" N: the customer did not opt in, which is not an opt-out
    assert (ben.email, ben.marketing_email) == (None, "unknown")
    assert [a.kind for a in ava.addresses] == ["primary"] and ben.addresses == []


def test_kwi_orders_guess_and_training_mode() -> None:
    parsed = push("kwi", "orders.csv", zone="America/New_York")
    s = sale(parsed, "500771")
    assert (s.business_date, s.total, s.lines[0].discount) == (
        date(2026, 3, 14),
        Decimal("339.04"),
        Decimal("34.80"),
    )
    assert [t.method for t in s.tenders] == ["AMEX"]
    assert (s.subtotal, s.discount, s.tax) == (
        Decimal("313.20"),
        Decimal("34.80"),
        Decimal("25.84"),
    )
    assert s.attributes == {"Customer Email": "ava.lee@example.com"}  # documented, no slot
    assert parsed.dropped == {"open": 1}  # training-mode transaction is not a purchase
    assert_consistent(s)


# -- Logicmate (generic default) ---------------------------------------------------------


def test_logicmate_generic_csv() -> None:
    parsed = push("logicmate", "sales.csv")
    s = sale(parsed, "LM-1")
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    ret = sale(parsed, "LM-2")
    assert (ret.kind, ret.original_id, ret.total) == ("return", "LM-1", Decimal("-642.60"))
    (c,) = push("logicmate", "customers.csv").records
    assert isinstance(c, Customer)
    assert (c.birth_date, c.anniversary_date, c.marketing_email, c.marketing_sms) == (
        date(1988, 4, 12),
        date(2015, 9, 19),
        "opted_in",
        "unknown",  # "no" in an opt-in column
    )
    assert c.updated_at == datetime(2026, 3, 14, 20, 0, tzinfo=UTC)
    assert [(a.kind, a.line1, a.city) for a in c.addresses] == [
        ("primary", "12 Elm St", "Austin"),
        ("shipping", "400 Congress Ave", "Austin"),
    ]
    assert c.address is not None and c.address.line1 == "12 Elm St"
    assert c.attributes == {"loyalty_tier": "Gold"}
    for x in (s, ret):
        assert_consistent(x)


def test_logicmate_order_level_figures_are_the_files_own() -> None:
    s = sale(push("logicmate", "sales.csv"), "LM-3")
    assert (s.subtotal, s.discount, s.tax, s.shipping, s.total, s.currency) == (
        Decimal("90.00"),
        Decimal("20.00"),
        Decimal("7.20"),
        Decimal("12.00"),
        Decimal("109.20"),
        "USD",
    )
    assert [(t.method, t.method_id, t.amount, t.reference) for t in s.tenders] == [
        ("Visa", "VI", Decimal("60.00"), "auth-57"),
        ("Gift Card", "GC", Decimal("49.20"), "GC-0099"),
    ]
    # order-level "receipt_note" once; "engraving" only on the first line
    assert s.attributes == {"receipt_note": "Gift wrap", "lines[0].engraving": "IC"}
    assert validate_sale(s, vctx()) == []


def test_stated_figures_are_not_recomputed_and_a_mismatch_fails_the_window() -> None:
    header = fixture("logicmate", "sales.csv").decode().splitlines()[0]
    row = "LM-9,2026-03-14 15:00:00,,,,,completed,USD,100.00,,8.00,,110.00,"
    row += "1,A,A,A,,1,100.00,0,8.00,Cash,,110.00,,,"
    s = sale(push("logicmate", "sales.csv", body=f"{header}\n{row}\n".encode()), "LM-9")
    # the file says 110.00 where its own subtotal and tax make 108.00: kept, not corrected
    assert (s.subtotal, s.tax, s.total) == (Decimal("100.00"), Decimal("8.00"), Decimal("110.00"))
    (failure,) = validate_sale(s, vctx())
    assert failure.rule == "total.sum"
    assert "110.00" in failure.message and "108.00" in failure.message  # both figures


def vctx() -> ValidationContext:
    return ValidationContext(
        store="S1",
        zone=ZoneInfo(CHICAGO),
        now=RECEIVED_AT,
        existing_customers=frozenset({"LC-1"}),
        existing_sales=frozenset({"LM-1"}),
        pending_sale_ids=frozenset(),
        hold_windows=2,
    )


# -- faithful reading: attributes, tenders, consent ----------------------------------------


def test_rain_sale_keeps_unmapped_columns_order_level_and_per_line() -> None:
    s = sale(push("rain", "transactions.csv"), "T1001")
    assert s.attributes == {"Source": "In Store", "lines[1].Serial #": "BRO-9-0042317"}
    assert (s.discount, s.tenders_known, s.rounding, s.tax_included) == (
        Decimal("75.00"),
        True,
        Decimal(0),
        False,
    )


def test_line_attributes_can_be_dropped() -> None:
    mapping = {**load_spec("rain"), "line_attributes": "drop"}
    s = sale(push("rain", "transactions.csv", mapping=mapping), "T1001")
    assert s.attributes == {"Source": "In Store"}


def test_no_payment_columns_means_tenders_unknown_never_invented() -> None:
    s = sale(push("music_shop_360", "transactions.csv", body=NO_PAYMENTS), "M-1")
    assert (s.tenders, s.tenders_known, s.total) == ([], False, Decimal("17.30"))
    assert [f.rule for f in validate_sale(s, vctx())] == []  # tenders.sum is skipped


def test_empty_payment_cells_are_known_to_be_none() -> None:
    body = NO_PAYMENTS.replace(b"Tax\n", b"Tax,Payment Type,Payment Amount\n").replace(
        b"$1.32\n", b"$1.32,,\n"
    )
    s = sale(push("music_shop_360", "transactions.csv", body=body), "M-1")
    assert (s.tenders, s.tenders_known) == ([], True)


def test_a_discount_the_export_has_no_column_for_is_not_stated() -> None:
    s = sale(push("like_sew", "transactions.csv"), "LS-501")
    assert (s.discount, s.lines[0].discount) == (None, Decimal(0))


def test_sku_absent_is_none_not_empty() -> None:
    body = b"Transaction ID,Date,Qty,Price,Description\nT1,03/14/2026 10:00:00 AM,1,5,Repair\n"
    s = sale(push("jewel360", "transactions.csv", body=body), "T1")
    assert s.lines[0].sku is None and s.lines[0].description == "Repair"


NO_PAYMENTS = (
    b"Transaction ID,Date,Customer ID,Qty,SKU,Price,Tax\n"
    b"M-1,03/14/2026 10:00:00 AM,M-C1,2,STR-EB-10,$7.99,$1.32\n"
)


@pytest.mark.parametrize(
    ("flag", "cell", "expected"),
    [
        ("opt_in", "Y", "opted_in"),
        ("opt_in", "N", "unknown"),
        ("opt_in", "", "unknown"),
        ("opt_in", "opted_out", "opted_out"),
        ("blocked", "Y", "opted_out"),
        ("blocked", "false", "unknown"),  # "not blocked" is not an opt-in
        ("blocked", "opted_in", "opted_in"),
    ],
)
def test_consent_is_three_valued(flag: str, cell: str, expected: str) -> None:
    mapping = load_spec("kwi")
    mapping["customer"]["marketing_email"] = {"column": "Email Opt-In", "flag": flag}
    body = f"Cust Num,Email Opt-In\n1,{cell}\n".encode()
    (c,) = push("kwi", "customers.csv", body=body, mapping=mapping).records
    assert isinstance(c, Customer) and c.marketing_email == expected


def test_topic_names_the_record_type_when_there_is_no_file_name() -> None:
    (c,) = push(
        "rain", None, body=fixture("rain", "customers.csv")[:400], topic="customers"
    ).records
    assert isinstance(c, Customer)


def test_json_leftovers_are_flattened_paths() -> None:
    table = {
        "name": "j",
        "format": "json",
        "record": "customer",
        "customer": {"id": "id", "first_name": "name.first"},
    }
    body = b'[{"id": "1", "name": {"first": "A", "last": "B"}, "tier": {"code": "G"}, "x": null, "codes": [1, 2]}]'
    (c,) = push(
        "logicmate", None, body=body, mapping=table, content_type="application/json"
    ).records
    assert isinstance(c, Customer)
    assert c.attributes == {"name.last": "B", "tier.code": "G", "codes[0]": "1", "codes[1]": "2"}


def test_a_made_up_tender_fallback_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        compile_spec({**load_spec("rain"), "tender_fallback": "total"}, "m")
    assert err.value.field == "m.tender_fallback"


def load_spec(name: str) -> dict[str, Any]:
    cfg = config([{"id": "S1", "source": name}])
    return load_mapping(cfg, cfg.stores[0]).as_context()


# -- decimals and dates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.50", "12.50"),
        ("$1,234.50", "1234.50"),
        ("  $ 1 234.50 ", "1234.50"),
        ("(12.00)", "-12.00"),
        ("($1,000.01)", "-1000.01"),
        ("12.00-", "-12.00"),
        ("-$5", "-5"),
        ("USD 12", "12"),
        ("12.00USD", "12.00"),
        ("€7", "7"),
        (".5", "0.5"),
        ("0.00000001", "0.00000001"),
        ("", None),
        ("$", None),
    ],
)
def test_decimal_cells(text: str, expected: str | None) -> None:
    value = parse_decimal(text, Numbers(), "Price")
    assert value == (None if expected is None else Decimal(expected))
    if expected is not None:
        assert format(value, "f") == expected  # exact digits, nothing through float


def test_decimal_comma() -> None:
    numbers = Numbers(thousands=".", decimal_point=",")
    assert parse_decimal("1.234,56 €", numbers, "Preis") == Decimal("1234.56")


@pytest.mark.parametrize(
    "text", ["abc", "1e5", "12..5", "1,2,3.4.5", "--3", "0.000000001", "9" * 13, "NaN", "inf"]
)
def test_bad_decimal_cells_name_the_column(text: str) -> None:
    with pytest.raises(RecordInvalid) as err:
        parse_decimal(text, Numbers(), "Price")
    assert err.value.field == "Price"


def test_dates_two_digit_years_iso_and_zones() -> None:
    zone = ZoneInfo(CHICAGO)
    fmts = ["%m/%d/%y", "%m/%d/%Y %H:%M:%S"]
    assert parse_when("05/12/55", fmts, zone, RECEIVED_AT, "Birthday")[2] == date(1955, 5, 12)
    assert parse_when("03/14/26", fmts, zone, RECEIVED_AT, "Date")[2] == date(2026, 3, 14)
    assert parse_when("03/23/26", fmts, zone, RECEIVED_AT, "Date")[2] == date(
        2026, 3, 23
    )  # tomorrow: fine
    instant, assumed, day = parse_when("03/08/2026 02:30:00", fmts, zone, RECEIVED_AT, "Date")
    assert (instant, assumed, day) == (
        datetime(2026, 3, 8, 8, 30, tzinfo=UTC),
        True,
        date(2026, 3, 8),
    )
    instant, assumed, day = parse_when("2026-03-14T23:30:00-05:00", fmts, zone, RECEIVED_AT, "Date")
    assert (instant, assumed, day) == (
        datetime(2026, 3, 15, 4, 30, tzinfo=UTC),
        False,
        date(2026, 3, 14),
    )
    with pytest.raises(RecordInvalid) as err:
        parse_when("14.03.2026", fmts, zone, RECEIVED_AT, "Date")
    assert err.value.field == "Date"


def test_two_digit_leap_day_a_century_back() -> None:
    received = datetime(2026, 3, 22, tzinfo=UTC)
    assert parse_when("02/29/28", ["%m/%d/%y"], ZoneInfo(CHICAGO), received, "D")[2] == date(
        1928, 2, 29
    )


# -- loading and validating mappings -----------------------------------------------------


def test_load_builtin_by_source_and_brand_from_store() -> None:
    cfg = config([{"id": "S1", "source": "rain", "brand": "rain_retail"}])
    spec = load_mapping(cfg, cfg.stores[0])
    assert spec.name == "rain" and spec.brand == "rain"  # the built-in's own brand stays


def test_config_table_extends_a_builtin() -> None:
    cfg = config(
        [{"id": "S1", "source": "rain", "mapping": "quilt_corner"}],
        {
            "quilt_corner": {
                "extends": "rain",
                "date_formats": ["%d/%m/%Y %H:%M"],
                "sale": {"id": "Invoice", "occurred_at": "When"},
                "line": {"unit_price": {"column": "Unit", "default": "0"}},
            }
        },
    )
    spec = load_mapping(cfg, cfg.stores[0])
    assert spec.name == "quilt_corner" and spec.brand == "rain"
    assert spec.sale["id"].column == "Invoice"
    assert spec.sale["customer_id"].column == "Customer ID"  # inherited
    assert spec.line["unit_price"].default == "0"
    body = b"Invoice,When,Qty,Unit\nQ-1,14/03/2026 09:30,2,5.25\n"
    parsed = push("rain", "transactions.csv", body=body, mapping=spec.as_context())
    s = sale(parsed, "Q-1")
    assert (s.total, s.occurred_at) == (Decimal("10.50"), datetime(2026, 3, 14, 14, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"extends": "rain", "colour": "blue"}, "$.mappings.m.colour"),
        ({"extends": "rain", "sale": {"flavour": "Col"}}, "$.mappings.m.sale.flavour"),
        ({"extends": "rain", "date_formats": ["%Q"]}, "$.mappings.m.date_formats"),
        (
            {"extends": "rain", "sale": {"status": {"column": "S", "values": {"X": "lost"}}}},
            "$.mappings.m.sale.status",
        ),
        (
            {"extends": "rain", "sale": {"id": {"column": "A", "value": "B"}}},
            "$.mappings.m.sale.id",
        ),
        (
            {"record": "sale", "sale": {"id": "A"}, "line": {"unit_price": "P"}},
            "$.mappings.m.sale.occurred_at",
        ),
        (
            {"record": "sale", "sale": {"id": "A", "occurred_at": "B"}},
            "$.mappings.m.line.unit_price",
        ),
        ({"sale": {"id": "A"}}, "$.mappings.m.record"),
        ({"extends": "rain", "currency": "dollars"}, "$.mappings.m.currency"),
        ({"extends": "rain", "encoding": "klingon"}, "$.mappings.m.encoding"),
        ({"extends": "rain", "delimiter": ";;"}, "$.mappings.m.delimiter"),
        ({"extends": "rain", "format": "xml"}, "$.mappings.m.format"),
        ({"extends": "nowhere"}, "$.mappings.m.extends"),
        ({"extends": "m"}, "$.mappings.m.extends"),
        (
            {"extends": "rain", "customer": {"email": {"column": "E", "flag": "blocked"}}},
            "$.mappings.m.customer.email",
        ),
        ({"extends": "rain", "tender_fallback": "total"}, "$.mappings.m.tender_fallback"),
        (
            {"extends": "rain", "customer_addresses": {"billing": {"street": "S"}}},
            "$.mappings.m.customer_addresses.billing.street",
        ),
        (
            {"extends": "rain", "customer_addresses": {"billing": {}}},
            "$.mappings.m.customer_addresses.billing",
        ),
        ({"extends": "rain", "line_attributes": "some"}, "$.mappings.m.line_attributes"),
    ],
)
def test_bad_mappings_raise_config_error_naming_the_key(table: dict[str, Any], field: str) -> None:
    cfg = config([{"id": "S1", "source": "rain", "mapping": "m"}], {"m": table})
    with pytest.raises(ConfigError) as err:
        load_mapping(cfg, cfg.stores[0])
    assert err.value.field == field, err.value.message


def test_unknown_mapping_name_names_the_store_key() -> None:
    cfg = config(
        [
            {"id": "S1", "source": "rain", "mapping": "nope"},
            {"id": "S2", "source": "shopify", "secret": "s"},
        ]
    )
    with pytest.raises(ConfigError) as err:
        load_mapping(cfg, cfg.stores[0])
    assert err.value.field == "$.stores[0].mapping"
    with pytest.raises(ConfigError) as err:
        load_mapping(cfg, cfg.stores[1])
    assert err.value.field == "$.stores[1].source"


def test_every_builtin_compiles() -> None:
    for name in builtin_names():
        cfg = config([{"id": "S1", "source": name}])
        assert isinstance(load_mapping(cfg, cfg.stores[0]), MappingSpec)


def test_as_context_round_trips() -> None:
    cfg = config([{"id": "S1", "source": "kwi"}])
    spec = load_mapping(cfg, cfg.stores[0])
    assert compile_spec(spec.as_context()) == spec


# -- reading rules -----------------------------------------------------------------------


def test_missing_required_column_rejects_the_file() -> None:
    body = b"Date,SKU,Qty,Price\n03/14/2026 10:00:00 AM,A,1,5\n"
    with pytest.raises(RecordInvalid) as err:
        push("rain", "transactions.csv", body=body)
    assert err.value.field == "Transaction ID"


def test_single_bad_row_raises_naming_the_column() -> None:
    body = b"Transaction ID,Date,Qty,Price\nT1,03/14/2026 10:00:00 AM,one,5\n"
    with pytest.raises(RecordInvalid) as err:
        push("rain", "transactions.csv", body=body)
    assert err.value.field == "Qty"


def test_bad_rows_are_rejected_by_index_others_kept() -> None:
    body = (
        b"Transaction ID,Date,Qty,Price\n"
        b"T1,03/14/2026 10:00:00 AM,1,5\n"
        b"T2,someday,1,5\n"
        b",03/14/2026 10:00:00 AM,1,5\n"
        b"T3,03/14/2026 10:00:00 AM,1,(abc)\n"
    )
    parsed = push("rain", "transactions.csv", body=body)
    assert [s.id for s in by_type(parsed)["sale"]] == ["T1"]
    assert [(r.index, r.field) for r in parsed.rejected] == [
        (1, "Date"),
        (2, "Transaction ID"),
        (3, "Price"),
    ]


def test_file_record_type_by_name_and_unknown_name() -> None:
    parsed = push("kwi", "daily_cust_export.csv", body=fixture("kwi", "customers.csv"))
    assert len(by_type(parsed)["customer"]) == 2
    with pytest.raises(RecordInvalid) as err:
        push("kwi", "mystery.csv", body=fixture("kwi", "customers.csv"))
    assert err.value.field == "filename"


def test_record_type_per_column() -> None:
    spec = compile_spec(
        {
            "name": "mixed",
            "record_column": "Kind",
            "record_values": {"C": "customer", "P": "product", "X": "skip"},
            "customer": {"id": "Id", "first_name": "Name"},
            "product": {"id": "Id", "name": "Name", "price": "Price"},
        }
    )
    body = b"Kind,Id,Name,Price\nC,1,Ann,\nP,SKU-1,Ring,$10\nX,,,\nQ,2,?,\n"
    parsed = push("logicmate", None, body=body, mapping=spec.as_context())
    assert [type(r).__name__ for r in parsed.records] == ["Customer", "Product"]
    assert parsed.dropped == {"skipped_row": 1}
    assert [(r.index, r.field) for r in parsed.rejected] == [(3, "Kind")]


def test_json_mapping_with_paths() -> None:
    spec = compile_spec(
        {
            "name": "json_pos",
            "format": "json",
            "rows": "data.lines",
            "record": "sale",
            "currency": "CAD",
            "sale": {"id": "sale.id", "occurred_at": "sale.at", "customer_id": "sale.customer.id"},
            "line": {
                "sku": "item.sku",
                "quantity": "qty",
                "unit_price": "price",
                "tax": "taxes[0].amount",
            },
        }
    )
    body = (
        b'{"data": {"lines": ['
        b'{"sale": {"id": 7, "at": "2026-03-14T10:00:00-05:00", "customer": {"id": "c9"}},'
        b' "item": {"sku": "A"}, "qty": 2, "price": 1.10, "taxes": [{"amount": "0.29"}]},'
        b'{"sale": {"id": 7}, "item": {"sku": "B"}, "qty": 1, "price": "3", "taxes": []}'
        b"]}}"
    )
    parsed = push(
        "logicmate", None, body=body, mapping=spec.as_context(), content_type="application/json"
    )
    s = sale(parsed, "7")
    assert (s.currency, s.customer_id, s.tz_assumed) == ("CAD", "c9", False)
    assert [ln.sku for ln in s.lines] == ["A", "B"]
    assert s.lines[0].unit_price == Decimal("1.10")  # a JSON number, exact
    assert s.total == Decimal("5.49")


def test_amount_only_lines_and_signed_amounts() -> None:
    spec = compile_spec(
        {
            "name": "amounts",
            "record": "sale",
            "sale": {"id": "Ticket", "occurred_at": "Date"},
            "line": {"quantity": "Qty", "amount": "Ext"},
        }
    )
    body = b"Ticket,Date,Qty,Ext\nA,03/14/2026,3,10.00\nA,03/14/2026,1,-4.00\n"
    s = sale(push("logicmate", None, body=body, mapping=spec.as_context()), "A")
    third, returned = s.lines
    assert (third.quantity, third.unit_price, third.net) == (
        Decimal(3),
        Decimal("3.33333333"),
        Decimal("10.00"),
    )
    assert (returned.quantity, returned.net) == (Decimal(-1), Decimal("-4.00"))
    assert s.kind == "exchange" and s.subtotal == Decimal("6.00")
    assert_consistent(s)


def test_encoding_errors_and_cp1252() -> None:
    body = "Customer ID,First Name\nC1,Zoë\n".encode("cp1252")
    with pytest.raises(RecordInvalid) as err:
        push("rain", "customers.csv", body=body)
    assert err.value.field == "$"
    cfg = config(
        [{"id": "S1", "source": "rain", "mapping": "w"}],
        {"w": {"extends": "rain", "encoding": "cp1252"}},
    )
    spec = load_mapping(cfg, cfg.stores[0])
    (c,) = push("rain", "customers.csv", body=body, mapping=spec.as_context()).records
    assert isinstance(c, Customer) and c.first_name == "Zoë"


def test_wrong_content_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        push("rain", "transactions.csv", content_type="application/pdf")


def test_header_only_file_is_empty_not_an_error() -> None:
    parsed = push("rain", "transactions.csv", body=b"Transaction ID,Date,Qty,Price\n")
    assert (parsed.records, parsed.rejected) == ([], [])


# -- streaming ---------------------------------------------------------------------------


def test_streaming_reads_row_by_row() -> None:
    consumed: list[int] = []

    def lines() -> Iterator[str]:
        yield "Customer ID,First Name\n"
        for i in range(1000):
            consumed.append(i)
            yield f"C{i},Name{i}\n"

    cfg = config([{"id": "S1", "source": "rain"}])
    spec = load_mapping(cfg, cfg.stores[0])
    ctx = make_ctx("rain", filename="customers.csv")
    items = iter_items(iter_csv_rows(lines(), spec), spec, ctx)
    first = next(items)
    assert isinstance(first, Customer) and first.id == "C0"
    assert len(consumed) <= 2  # the rest of the file has not been read
    assert sum(1 for _ in items) == 999


def test_streaming_needs_adjacent_sale_rows() -> None:
    cfg = config([{"id": "S1", "source": "rain"}])
    spec = load_mapping(cfg, cfg.stores[0])
    text = (
        "Transaction ID,Date,Qty,Price\n"
        "T1,03/14/2026 10:00:00 AM,1,5\n"
        "T2,03/14/2026 10:00:00 AM,1,5\n"
        "T1,03/14/2026 10:00:00 AM,1,7\n"
    )
    ctx = make_ctx("rain", filename="transactions.csv")
    items = list(iter_items(iter_csv_rows(io.StringIO(text), spec), spec, ctx))
    sales = [i for i in items if isinstance(i, Sale)]
    assert [(s.id, s.total) for s in sales] == [("T1", Decimal(5)), ("T2", Decimal(5))]
    (rejection,) = [i for i in items if isinstance(i, Rejection)]
    assert (rejection.index, rejection.field) == (2, "Transaction ID")
    # the whole-file parse groups them instead
    whole = push("rain", "transactions.csv", body=text.encode())
    assert sale(whole, "T1").total == Decimal(12)


def test_store_config_defaults_are_usable() -> None:
    # StoreConfig without a mapping: the adapter falls back to the built-in of its name
    store = StoreConfig(id="S9", source="logicmate")
    assert store.mapping is None
    assert len(push("logicmate", "sales.csv").records) == 3


@pytest.mark.parametrize("source", MAPPING_SOURCES)
def test_snapshot_exports_keep_voids_of_sales_never_seen(source: str) -> None:
    # A voided transaction is in a snapshot export only as voided (docs/adapters.md)
    adapter = get_adapter(source)
    assert adapter is not None
    assert dict(adapter.rule_defaults) == {"void.target": "warn"}
    assert dict(get_adapter("canonical").rule_defaults) == {}  # type: ignore[union-attr]


def test_attributes_stay_within_the_record_limits() -> None:
    extra = [f"Col {i}" for i in range(300)]
    header = "Cust Num," + ",".join(extra)
    row = "1," + ",".join("x" * 5000 if i == 0 else str(i) for i in range(300))
    (c,) = push("kwi", "customers.csv", body=f"{header}\n{row}\n".encode()).records
    assert isinstance(c, Customer)
    assert len(c.attributes) == 256 and len(c.attributes["Col 0"]) == 4096
    assert c.attributes["Col 255"] == "255"


def test_split_tender_rows_and_their_own_columns() -> None:
    body = (
        b"Transaction ID,Date,Qty,SKU,Price,Payment Type,Payment Amount,Card Last4\n"
        b"T1,03/14/2026 10:00:00 AM,1,A,$60.00,,,\n"
        b"T1,03/14/2026 10:00:00 AM,,,,Visa,$50.00,4242\n"
        b"T1,03/14/2026 10:00:00 AM,,,,Cash,$10.00,\n"
    )
    s = sale(push("rain", "transactions.csv", body=body), "T1")
    assert len(s.lines) == 1
    assert [(t.method, t.amount) for t in s.tenders] == [
        ("Visa", Decimal("50.00")),
        ("Cash", Decimal("10.00")),
    ]
    assert s.attributes == {"rows[1].Card Last4": "4242"}  # a row with no line: by position


def test_streaming_keeps_attributes_too() -> None:
    spec = load_mapping(*_one_store("kwi"))
    ctx = make_ctx("kwi", filename="customers.csv", zone="America/New_York")
    stream = io.StringIO(fixture("kwi", "customers.csv").decode(), newline="")
    ava, _ = list(iter_items(iter_csv_rows(stream, spec), spec, ctx))
    assert isinstance(ava, Customer) and ava.attributes["Last Purchase Date"] == "03/20/26"


def _one_store(source: str) -> tuple[Config, StoreConfig]:
    cfg = config([{"id": "S1", "source": source}])
    return cfg, cfg.stores[0]
