"""Issue 9 review of the money path: the tolerance is one minor unit of the sale's currency,
and every sink's Sales Report sums each total at its minor unit (the Sales Log's figure).

Why one minor unit: the tolerance exists because a POS rounds each figure it prints to its
currency's minor unit, so sums of rounded figures can differ from the rounded sum by a unit.
A fixed 0.01 is that unit only for two-place currencies: on KWD it let a POS disagree with
itself by nine fils unseen, on JPY it demanded agreement to a hundredth of a yen no receipt
carries.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from tests.adapter_helpers import sale as shopify_sale
from tests.contracts.sinks import backend, make_batch, make_sale, make_void, sink
from tests.shopify_helpers import ORDER_ID, order
from tests.shopify_helpers import push as shopify_push
from worker.config import TriggerConfig
from worker.money import at_minor, minor_unit_sql
from worker.records import Sale, SaleLine, Tender
from worker.sinks.base import ReportRow
from worker.triggers import trigger_matches
from worker.validation import (
    RULE_DISCOUNT_SUM,
    RULE_SUBTOTAL_SUM,
    RULE_TENDERS_SUM,
    RULE_TOTAL_SUM,
    Failure,
    ValidationContext,
    tolerance,
    validate_sale,
)

if TYPE_CHECKING:
    from worker.sinks.base import ClientBook

pytest_plugins = ["tests.plugins.postgres"]
__all__ = ["backend", "sink"]

D = Decimal
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
STORE = "s1"
DAY = date(2024, 5, 1)


def ctx(**over: Any) -> ValidationContext:
    base: dict[str, Any] = {
        "store": "S1",
        "zone": ZoneInfo("UTC"),
        "now": NOW,
        "existing_customers": frozenset(),
        "existing_sales": frozenset(),
        "pending_sale_ids": frozenset(),
        "hold_windows": 2,
    }
    base.update(over)
    return ValidationContext(**base)


def priced(currency: str, price: str, **over: Any) -> Sale:
    """A one-line sale at `price` whose figures agree exactly, then `over` applied."""
    amount = D(price)
    fields: dict[str, Any] = {
        "id": "T1",
        "occurred_at": datetime(2026, 3, 10, 3, 0, tzinfo=UTC),
        "currency": currency,
        "lines": [SaleLine(sku="A", quantity=D(1), unit_price=amount)],
        "subtotal": amount,
        "tax": D(0),
        "total": amount,
        "tenders": [Tender(method="Cash", amount=amount)],
    }
    fields.update(over)
    return Sale(**fields)


def rules(failures: list[Failure]) -> list[str]:
    return sorted(f.rule for f in failures)


def test_tolerance_is_the_currency_minor_unit() -> None:
    assert (tolerance("USD"), tolerance("JPY"), tolerance("KWD")) == (
        D("0.01"),
        D("1"),
        D("0.001"),
    )


@pytest.mark.parametrize(
    ("currency", "price", "off", "passes"),
    [
        ("USD", "10.00", "0.01", True),
        ("USD", "10.00", "0.011", False),
        # KWD has three places: two fils off is the POS disagreeing with itself.
        ("KWD", "10.000", "0.001", True),
        ("KWD", "10.000", "0.002", False),
        ("KWD", "10.000", "0.009", False),
        # JPY has none: one yen is its unit, two are a disagreement.
        ("JPY", "1200", "1", True),
        ("JPY", "1200", "0.5", True),
        ("JPY", "1200", "2", False),
    ],
)
def test_subtotal_and_total_tolerance_by_currency(
    currency: str, price: str, off: str, passes: bool
) -> None:
    s = priced(currency, price)
    moved_subtotal = msgspec.structs.replace(
        s,
        subtotal=s.subtotal + D(off),
        total=s.total + D(off),
        tenders=[Tender(method="Cash", amount=s.total + D(off))],
    )
    got = validate_sale(moved_subtotal, ctx())
    assert rules(got) == ([] if passes else [RULE_SUBTOTAL_SUM])
    moved_total = msgspec.structs.replace(
        s, total=s.total + D(off), tenders=[Tender(method="Cash", amount=s.total + D(off))]
    )
    assert rules(validate_sale(moved_total, ctx())) == ([] if passes else [RULE_TOTAL_SUM])
    short_tender = msgspec.structs.replace(
        s, tenders=[Tender(method="Cash", amount=s.total - D(off))]
    )
    assert rules(validate_sale(short_tender, ctx())) == ([] if passes else [RULE_TENDERS_SUM])
    stated = msgspec.structs.replace(s, discount=D(off))
    assert rules(validate_sale(stated, ctx())) == ([] if passes else [RULE_DISCOUNT_SUM])


def test_kwd_disagreement_names_both_figures() -> None:
    s = priced(
        "KWD", "10.000", total=D("10.005"), tenders=[Tender(method="Cash", amount=D("10.005"))]
    )
    (failure,) = validate_sale(s, ctx())
    assert failure.rule == RULE_TOTAL_SUM
    assert "10.005" in failure.message and "10.000" in failure.message


def test_at_minor_rounds_ties_away_from_zero_like_show() -> None:
    assert at_minor("10.005", "USD") == D("10.01")
    assert at_minor("-4.995", "USD") == D("-5.00")
    assert at_minor("1200.5", "JPY") == D("1201")
    assert at_minor("1.2345", "KWD") == D("1.235")
    assert at_minor("73.00000", "USD") == D("73.00")


def test_minor_unit_sql_names_every_non_two_place_currency() -> None:
    sql = minor_unit_sql("currency")
    assert "'JPY'" in sql and "'KWD'" in sql and "'CLF'" in sql and "'USD'" not in sql
    assert sql.endswith("ELSE 2 END)")


def _in(sale: Sale, currency: str) -> Sale:
    return msgspec.structs.replace(sale, currency=currency)


async def test_every_sink_reports_the_sum_of_the_log_figures(sink: ClientBook) -> None:
    sales = [
        *(make_sale(f"u-{i}", "10.005") for i in range(3)),  # each 10.01 in the log
        make_sale("r-1", "-4.995"),  # -5.00 in the log: a tie, away from zero
        make_sale("v-1", "50.00"),
        _in(make_sale("j-1", "1200.5"), "JPY"),
        _in(make_sale("j-2", "1200.5"), "JPY"),
        _in(make_sale("k-1", "1.2345"), "KWD"),
        _in(make_sale("k-2", "1.2345"), "KWD"),
    ]
    await sink.commit_sales(make_batch("b1", sales, voids=[make_void("v-1")]))
    log = await sink.sales_log(STORE, DAY)
    rows = await sink.sales_report(STORE, DAY, DAY)
    for row in rows:
        shown = [
            at_minor(s["total"], row.currency)
            for s in log
            if s["currency"] == row.currency and not s["voided"]
        ]
        assert row.gross == sum((t for t in shown if t > 0), D(0))
        assert row.returns == -sum((t for t in shown if t < 0), D(0))
    assert rows == [
        ReportRow(
            date=DAY,
            currency="JPY",
            count=2,
            gross=D("2402"),
            returns=D(0),
            returns_count=0,
            net=D("2402"),
            voided=0,
        ),
        ReportRow(
            date=DAY,
            currency="KWD",
            count=2,
            gross=D("2.470"),
            returns=D(0),
            returns_count=0,
            net=D("2.470"),
            voided=0,
        ),
        ReportRow(
            date=DAY,
            currency="USD",
            count=4,
            gross=D("30.03"),
            returns=D("5.00"),
            returns_count=1,
            net=D("25.03"),
            voided=1,
        ),
    ]


@pytest.mark.parametrize(
    ("total", "currency", "bounds", "fires"),
    [
        # The Sales Log and the trigger list show 99.995 as 100.00: a 100.00 minimum holds.
        ("99.995", "USD", {"min_total": "100.00"}, True),
        ("99.994", "USD", {"min_total": "100.00"}, False),
        ("5000.004", "USD", {"max_total": "5000.00"}, True),
        ("5000.005", "USD", {"max_total": "5000.00"}, False),
        ("999.5", "JPY", {"min_total": "1000"}, True),
    ],
)
def test_trigger_bounds_compare_the_total_as_shown(
    total: str, currency: str, bounds: dict[str, str], fires: bool
) -> None:
    rule = TriggerConfig(
        name="thank-you", min_total=bounds.get("min_total"), max_total=bounds.get("max_total")
    )
    assert trigger_matches(rule, priced(currency, total)) is fires


@pytest.mark.parametrize(
    ("named", "method"),
    [
        ({"gateway": "shopify_payments"}, "shopify_payments"),
        # No gateway: Shopify's own other name for the payment, never a placeholder first.
        (
            {"payment_details": {"payment_method_name": "shop_pay_installments"}},
            "shop_pay_installments",
        ),
        ({"gateway": "", "payment_details": {"credit_card_company": "Visa"}}, "Visa"),
        ({}, "unknown"),  # Shopify names nothing: said so, the tender itself is Shopify's
    ],
)
def test_shopify_tender_method_is_shopifys_own_name(named: dict[str, Any], method: str) -> None:
    doc = order()
    doc["transactions"] = [
        {"id": 2, "kind": "sale", "status": "success", "amount": "1244.87", **named}
    ]
    s = shopify_sale(shopify_push(doc, "orders/paid"), ORDER_ID)
    assert [(t.method, t.amount, t.reference) for t in s.tenders] == [(method, D("1244.87"), "2")]
