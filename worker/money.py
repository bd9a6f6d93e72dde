"""Money as the API shows it: at the currency's minor unit (ISO 4217 exponent), one format.

The stored record keeps the POS's exact figure ("63.47826", "73.00000"); everything the read
API shows goes through `show`, so a report never prints `"0"` beside `"0.00"`. Rounding is
half-up (ties away from zero), the way POS end-of-day reports round. A figure the API shows
as a sum (the Sales Report) adds each figure at the minor unit first (`at_minor`; the
PostgreSQL sink rounds in SQL with `minor_unit_sql`), so it equals the sum of the figures
the Sales Log shows, to the unit. Sales triggers compare their bounds with that figure too.

`CASH_ROUNDING` is the smallest cash step of currencies whose cash payments are rounded
(so a cash tender may differ from the total by up to half a step); a store can set its own
with `[[stores]] cash_rounding` (euro countries that round cash: Finland, the Netherlands,
Belgium, Ireland, Italy, Slovakia).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

__all__ = [
    "CASH_ROUNDING",
    "at_minor",
    "minor_unit",
    "minor_unit_sql",
    "quantum",
    "show",
    "show_opt",
]

# ISO 4217 exponents other than 2 (List One, current and the withdrawn codes we accept).
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
            "BYR",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
    # Funds, metals and special drawing rights have no minor unit ("N.A." in ISO 4217).
    **dict.fromkeys(
        ["XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XUA"], 2
    ),
}

CASH_ROUNDING: dict[str, Decimal] = {
    "AUD": Decimal("0.05"),
    "CAD": Decimal("0.05"),
    "CHF": Decimal("0.05"),
    "CZK": Decimal("1"),
    "DKK": Decimal("0.50"),
    "HUF": Decimal("5"),
    "NOK": Decimal("1"),
    "NZD": Decimal("0.10"),
    "SEK": Decimal("1"),
    "SGD": Decimal("0.05"),
}


def minor_unit(currency: str | None) -> int:
    """Decimal places of a currency's minor unit (2 when unknown)."""
    if currency is None:
        return 2
    return _EXPONENTS.get(currency, 2)


@lru_cache(maxsize=64)
def quantum(currency: str | None) -> Decimal:
    """The minor unit as a Decimal quantum: 0.01 for USD, 1 for JPY, 0.001 for KWD."""
    return Decimal(1).scaleb(-minor_unit(currency))


def at_minor(value: Decimal | str | int, currency: str | None) -> Decimal:
    """`value` at the currency's minor unit, half-up (ties away from zero), as a Decimal."""
    amount = value if isinstance(value, Decimal) else Decimal(value)
    try:
        return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)
    except InvalidOperation:  # beyond the context's precision: keep it exactly
        return amount


def minor_unit_sql(column: str) -> str:
    """A SQL expression of the minor unit's places of the currency in `column` (a CASE over
    the ISO 4217 exponents other than 2), for a database to round as `at_minor` does."""
    by_places: dict[int, list[str]] = {}
    for code, places in sorted(_EXPONENTS.items()):
        if places != 2:
            by_places.setdefault(places, []).append(f"'{code}'")
    whens = " ".join(
        f"WHEN {column} IN ({', '.join(codes)}) THEN {places}"
        for places, codes in sorted(by_places.items())
    )
    return f"(CASE {whens} ELSE 2 END)"


def show(value: Decimal | str | int, currency: str | None) -> str:
    """`value` at the currency's minor unit, half-up: "0.00", "73.00", "1200" (JPY)."""
    shown = at_minor(value, currency)
    if shown.is_zero():
        shown = abs(shown)  # never "-0.00"
    return f"{shown:f}"


def show_opt(value: Decimal | str | None, currency: str | None) -> str | None:
    """`show`, or None."""
    return None if value is None else show(value, currency)
