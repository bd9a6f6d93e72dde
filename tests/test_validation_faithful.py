"""The window's rules over the POS's own figures (issue 9): order-level adjustments, stated
discounts, tax-inclusive prices, cash rounding, tenders unknown vs none, per-store policy."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from worker.config import POLICY_RULES, decode
from worker.errors import ConfigError
from worker.records import Adjustment, Sale, SaleLine, Tender, Void, encode
from worker.validation import (
    RULE_DISCOUNT_SUM,
    RULE_SUBTOTAL_SUM,
    RULE_TENDERS_SUM,
    RULE_TOTAL_SUM,
    RULE_VOID_TARGET,
    BatchItem,
    Failure,
    ValidationContext,
    decode_spooled,
    rule_policy,
    validate_batch,
    validate_sale,
)

D = Decimal
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def ctx(**over: Any) -> ValidationContext:
    base: dict[str, Any] = {
        "store": "S1",
        "zone": ZoneInfo("America/Chicago"),
        "now": NOW,
        "existing_customers": frozenset({"C1"}),
        "existing_sales": frozenset(),
        "pending_sale_ids": frozenset(),
        "hold_windows": 2,
    }
    base.update(over)
    return ValidationContext(**base)


def shopify_like(**over: Any) -> Sale:
    """Two lines 199.95 + 215.00, an order-level 20.00 discount no line carries, 10.00 shipping.

    Shopify's own figures: total_line_items_price 414.95, total_discounts 20.00,
    subtotal_price 394.95, shipping 10.00, total_tax 0, total_price 404.95.
    """
    fields: dict[str, Any] = {
        "id": "1001",
        "occurred_at": datetime(2026, 3, 9, 18, 0, tzinfo=UTC),
        "currency": "USD",
        "lines": [
            SaleLine(sku="A", quantity=D(1), unit_price=D("199.95")),
            SaleLine(sku="B", quantity=D(1), unit_price=D("215.00")),
        ],
        "adjustments": [Adjustment(kind="discount", amount=D("-20.00"), code="SPRING20")],
        "subtotal": D("394.95"),
        "discount": D("20.00"),
        "tax": D("0.00"),
        "shipping": D("10.00"),
        "total": D("404.95"),
        "tenders_known": False,
        "customer_id": "C1",
    }
    fields.update(over)
    return Sale(**fields)


def rules(failures: list[Failure]) -> set[str]:
    return {f.rule for f in failures}


# --- rule 1: order-level figures are the POS's own; lines + adjustments add up ------------


def test_order_level_discount_adjustment_makes_lines_add_up() -> None:
    assert validate_sale(shopify_like(), ctx()) == []


def test_without_the_adjustment_the_subtotal_disagrees_with_both_figures() -> None:
    (failure,) = validate_sale(shopify_like(adjustments=[], discount=None), ctx())
    assert failure.rule == RULE_SUBTOTAL_SUM
    assert "394.95" in failure.message and "414.95" in failure.message


def test_a_recomputed_total_is_caught_with_both_figures() -> None:
    # The old adapter's 424.95: lines + shipping, the order-level discount lost.
    (failure,) = validate_sale(shopify_like(total=D("424.95")), ctx())
    assert failure.rule == RULE_TOTAL_SUM
    assert "424.95" in failure.message and "404.95" in failure.message


def test_stated_discount_must_equal_line_and_order_discounts() -> None:
    s = shopify_like(
        lines=[
            SaleLine(sku="A", quantity=D(1), unit_price=D("199.95"), discount=D("5.00")),
            SaleLine(sku="B", quantity=D(1), unit_price=D("215.00")),
        ],
        adjustments=[Adjustment(kind="discount", amount=D("-15.00"))],
    )
    assert validate_sale(s, ctx()) == []  # 5.00 on a line + 15.00 on the order = 20.00
    (failure,) = validate_sale(msgspec.structs.replace(s, discount=D("25.00")), ctx())
    assert failure.rule == RULE_DISCOUNT_SUM
    assert "25.00" in failure.message and "20.00" in failure.message


def test_order_level_tax_adjustment_is_descriptive_not_added_again() -> None:
    # Tax only at order level (Shopify tax_lines, total_tax 11.94): shown, counted once.
    s = shopify_like(
        adjustments=[
            Adjustment(kind="discount", amount=D("-20.00")),
            Adjustment(kind="tax", amount=D("11.94"), description="State tax 6%"),
        ],
        tax=D("11.94"),
        total=D("416.89"),
    )
    assert validate_sale(s, ctx()) == []


def test_tax_included_prices_do_not_add_tax_to_the_total() -> None:
    s = shopify_like(tax=D("65.83"), tax_included=True)
    assert validate_sale(s, ctx()) == []
    (failure,) = validate_sale(msgspec.structs.replace(s, tax_included=False), ctx())
    assert failure.rule == RULE_TOTAL_SUM


def test_stated_rounding_is_part_of_the_total() -> None:
    s = Sale(
        id="CH1",
        occurred_at=NOW,
        currency="CHF",
        lines=[SaleLine(sku="A", quantity=D(1), unit_price=D("10.02"))],
        subtotal=D("10.02"),
        tax=D(0),
        rounding=D("-0.02"),
        total=D("10.00"),
        tenders=[Tender(method="Bargeld", amount=D("10.00"))],
    )
    assert validate_sale(s, ctx()) == []


# --- rule 2: tenders are never invented; unknown is not none ---------------------------------


def test_tenders_unknown_skips_the_tender_rule() -> None:
    assert validate_sale(shopify_like(tenders_known=False, tenders=[]), ctx()) == []


def test_no_tenders_known_still_owes_a_payment() -> None:
    (failure,) = validate_sale(shopify_like(tenders_known=True, tenders=[]), ctx())
    assert failure == Failure(RULE_TENDERS_SUM, "$.tenders", "no tenders for a total of 404.95")


def test_tenders_unknown_round_trips_through_the_spool_encoding() -> None:
    s = shopify_like()
    decoded = decode_spooled(encode(s))
    assert isinstance(decoded, Sale)
    assert decoded.tenders_known is False and decoded.adjustments == s.adjustments


def test_canonical_default_is_tenders_known() -> None:
    s = decode_spooled(
        b'{"type":"sale","id":"X","occurred_at":"2026-03-09T12:00:00Z","currency":"USD",'
        b'"lines":[{"sku":"A","quantity":"1","unit_price":"5"}],"subtotal":"5","tax":"0",'
        b'"total":"5"}'
    )
    assert isinstance(s, Sale) and s.tenders_known is True
    assert rules(validate_sale(s, ctx())) == {RULE_TENDERS_SUM}


# --- rule 10: cash rounding is a rounding, not a tender mismatch -----------------------------


def chf(total: str, cash: str, currency: str = "CHF") -> Sale:
    return Sale(
        id="C1",
        occurred_at=NOW,
        currency=currency,
        lines=[SaleLine(sku="A", quantity=D(1), unit_price=D(total))],
        subtotal=D(total),
        tax=D(0),
        total=D(total),
        tenders=[Tender(method="Cash", amount=D(cash))],
    )


def test_cash_rounding_within_half_a_step_commits_with_a_warning() -> None:
    verdict = validate_batch([BatchItem(1, chf("10.02", "10.00"), 0)], ctx())
    ((_, row),) = verdict.sales
    (warning,) = row.warnings
    assert warning.startswith("tenders.sum: tenders sum to 10.00, total is 10.02")
    assert "cash rounding to 0.05 CHF" in warning


def test_cash_rounding_past_half_a_step_is_a_mismatch() -> None:
    assert rules(validate_sale(chf("10.02", "9.95"), ctx())) == {RULE_TENDERS_SUM}


def test_no_cash_rounding_in_usd() -> None:
    assert rules(validate_sale(chf("10.02", "10.00", "USD"), ctx())) == {RULE_TENDERS_SUM}


def test_store_cash_rounding_for_a_euro_country() -> None:
    s = chf("10.02", "10.00", "EUR")
    assert rules(validate_sale(s, ctx())) == {RULE_TENDERS_SUM}
    assert validate_sale(s, ctx(cash_rounding=D("0.05"))) == []


# --- rule 9: a per-store policy per rule ------------------------------------------------------


def test_policy_warn_commits_with_the_failure_as_a_warning() -> None:
    bad = shopify_like(total=D("424.95"))
    verdict = validate_batch([BatchItem(1, bad, 0)], ctx(policy={RULE_TOTAL_SUM: "warn"}))
    ((_, row),) = verdict.sales
    (warning,) = row.warnings
    assert warning.startswith("total.sum: total 424.95 != ")


def test_policy_off_commits_silently() -> None:
    bad = shopify_like(total=D("424.95"))
    ((_, row),) = validate_batch([BatchItem(1, bad, 0)], ctx(policy={RULE_TOTAL_SUM: "off"})).sales
    assert row.warnings == ()


def test_policy_applies_per_rule_only() -> None:
    bad = shopify_like(total=D("424.95"), tenders_known=True)
    verdict = validate_batch([BatchItem(1, bad, 0)], ctx(policy={RULE_TOTAL_SUM: "off"}))
    ((_, failures),) = verdict.quarantined
    assert rules(failures) == {RULE_TENDERS_SUM}


def test_void_of_unknown_sale_under_warn_is_kept() -> None:
    v = Void(id="GHOST", occurred_at=NOW)
    verdict = validate_batch([BatchItem(1, v, 0)], ctx(policy={RULE_VOID_TARGET: "warn"}))
    assert verdict.voids == [(1, v)]


def test_store_rules_override_source_defaults() -> None:
    got = rule_policy({"tenders.sum": "off", "total.sum": "warn"}, {"tenders.sum": "quarantine"})
    assert got == {"tenders.sum": "quarantine", "total.sum": "warn"}


def test_config_names_an_unknown_rule() -> None:
    raw = {"stores": [{"id": "S1", "rules": {"tenders.summ": "warn"}}]}
    with pytest.raises(ConfigError) as err:
        decode(raw)
    assert err.value.field == "$.stores[0].rules.tenders.summ"


def test_config_refuses_an_unknown_policy() -> None:
    with pytest.raises(ConfigError) as err:
        decode({"stores": [{"id": "S1", "rules": {"tenders.sum": "ignore"}}]})
    assert "rules" in (err.value.field or "")


def test_every_policy_rule_is_a_rule_validation_knows() -> None:
    from worker import validation

    known = {v for k, v in vars(validation).items() if k.startswith("RULE_")}
    assert set(POLICY_RULES) <= known
