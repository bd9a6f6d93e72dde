"""Money as the API shows it: the currency's minor unit, one format (issue 9.7)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.money import CASH_ROUNDING, minor_unit, show, show_opt
from worker.validation import KNOWN_CURRENCIES


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [
        ("0", "USD", "0.00"),
        ("0.00", "USD", "0.00"),
        ("73.00000", "NZD", "73.00"),
        ("63.47826", "NZD", "63.48"),
        ("299", "USD", "299.00"),
        ("-0.001", "USD", "0.00"),  # never "-0.00"
        ("0.125", "USD", "0.13"),  # half-up, as POS end-of-day reports round
        ("-0.125", "USD", "-0.13"),
        ("1200", "JPY", "1200"),
        ("1200.4", "JPY", "1200"),
        ("1.2345", "KWD", "1.235"),
        ("1", "CLF", "1.0000"),
        ("12.5", None, "12.50"),
        ("1E+3", "USD", "1000.00"),
    ],
)
def test_show(value: str, currency: str | None, shown: str) -> None:
    assert show(Decimal(value), currency) == shown


def test_show_opt() -> None:
    assert show_opt(None, "USD") is None
    assert show_opt("5", "USD") == "5.00"


def test_every_known_currency_has_an_exponent() -> None:
    for code in KNOWN_CURRENCIES:
        assert minor_unit(code) in (0, 2, 3, 4)


def test_cash_rounding_steps_are_known_currencies() -> None:
    assert set(CASH_ROUNDING) <= KNOWN_CURRENCIES


@given(st.decimals(min_value=-(10**11), max_value=10**11, places=8, allow_nan=False))
def test_shown_is_within_half_a_minor_unit(value: Decimal) -> None:
    shown = Decimal(show(value, "USD"))
    assert abs(shown - value) <= Decimal("0.005")
    assert shown.as_tuple().exponent == -2
