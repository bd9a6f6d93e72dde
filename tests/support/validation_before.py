"""Today's window validation, frozen as the oracle of tests/test_page_decode.py.

A copy of worker/validation.py as of ba70f0d (before the window checked rows once), so the
property test compares the lean window path with the path it replaced, not with itself.
Do not edit: when a rule changes on purpose, its own tests say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

from worker.batch import SaleRow
from worker.config import RulePolicy
from worker.errors import RecordInvalid
from worker.money import CASH_ROUNDING, quantum
from worker.records import (
    DECODE_ERRORS,
    SPOOLED_DECODER,
    Sale,
    Spooled,
    Void,
    invalid_from,
    localize,
    localized_body,
)
from worker.validation import BatchItem, BatchVerdict, Failure, ValidationContext

RULE_SCHEMA = "schema"
RULE_CURRENCY_KNOWN = "currency.known"
RULE_LINES_NONEMPTY = "lines.nonempty"
RULE_SUBTOTAL_SUM = "subtotal.sum"
RULE_DISCOUNT_SUM = "discount.sum"
RULE_TOTAL_SUM = "total.sum"
RULE_TENDERS_SUM = "tenders.sum"
RULE_OCCURRED_AT_FUTURE = "occurred_at.future"
RULE_OCCURRED_AT_TOO_OLD = "occurred_at.too_old"
RULE_RETURN_ORIGINAL = "return.original"
RULE_VOID_TARGET = "void.target"
RULE_CUSTOMER_HOLD = "customer.hold"

# The tolerance of a two-place currency (most); `tolerance(currency)` is the rule.
TOLERANCE = Decimal("0.01")
MAX_FUTURE = timedelta(days=1)
OLDEST = datetime(2000, 1, 1, tzinfo=UTC)

# ISO 4217 List One, current codes (as of 2025, including ZWG and XCG), funds and metals too.
ISO_4217: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP
    ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR
    ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
    MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK
    PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC
    SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND
    VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR
    ZMW ZWG
    """.split()  # noqa: SIM905 (a table is easier to check against ISO's list)
)
# Withdrawn since 2015 but still on receipts in backfilled history.
ISO_4217_WITHDRAWN: frozenset[str] = frozenset(
    "ANG BYR CUC HRK LTL LVL MRO SLL STD VEF ZMK ZWL".split()  # noqa: SIM905
)
KNOWN_CURRENCIES: frozenset[str] = (ISO_4217 | ISO_4217_WITHDRAWN) - {"XTS", "XXX"}

_ZERO = Decimal(0)
# Line products of two 8-place decimals below 1e12 need 40 digits; the default context
# (28) would round them before the tolerance is applied.
_PRECISION = 64


def decode_spooled(data: bytes | str) -> Spooled | Failure:
    """Decode one spooled row, or a `schema` failure naming the field."""
    try:
        return SPOOLED_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        err: RecordInvalid = invalid_from(exc)
        return Failure(RULE_SCHEMA, err.field or "$", err.message)


def tolerance(currency: str) -> Decimal:
    """How far two of a sale's figures may differ: one minor unit of its currency."""
    return quantum(currency)


def rule_policy(
    defaults: Mapping[str, RulePolicy], store: Mapping[str, RulePolicy]
) -> dict[str, RulePolicy]:
    """A store's effective policy: its source's defaults, overridden by its own `rules`."""
    return {**defaults, **store}


def _money_failures(
    sale: Sale, cash_rounding: Decimal | None, warnings: list[Failure]
) -> list[Failure]:
    failures: list[Failure] = []
    unit = tolerance(sale.currency)

    def off_by(actual: Decimal, expected: Decimal) -> bool:
        return abs(actual - expected) > unit

    with localcontext() as ctx:
        ctx.prec = _PRECISION
        lines_sum = _ZERO
        line_discounts = _ZERO
        for line in sale.lines:
            lines_sum += line.quantity * line.unit_price - line.discount
            line_discounts += line.discount
        order_discounts = _ZERO
        for adj in sale.adjustments:
            if adj.kind == "discount":
                order_discounts += adj.amount
        expected_subtotal = lines_sum + order_discounts
        if off_by(sale.subtotal, expected_subtotal):
            detail = f" + order discounts ({order_discounts})" if sale.adjustments else ""
            failures.append(
                Failure(
                    RULE_SUBTOTAL_SUM,
                    "$.subtotal",
                    f"subtotal {sale.subtotal} != sum of lines (quantity x unit_price - discount)"
                    f"{detail} {expected_subtotal}",
                )
            )
        if sale.discount is not None:
            stated = line_discounts - order_discounts
            if off_by(sale.discount, stated):
                failures.append(
                    Failure(
                        RULE_DISCOUNT_SUM,
                        "$.discount",
                        f"discount {sale.discount} != line discounts {line_discounts}"
                        f" + order discounts {-order_discounts} = {stated}",
                    )
                )
        tax = _ZERO if sale.tax_included else sale.tax
        expected_total = sale.subtotal + tax + sale.shipping + sale.fees + sale.tip + sale.rounding
        if off_by(sale.total, expected_total):
            parts = "subtotal + shipping + fees + tip + rounding (tax included)"
            if not sale.tax_included:
                parts = "subtotal + tax + shipping + fees + tip + rounding"
            failures.append(
                Failure(
                    RULE_TOTAL_SUM, "$.total", f"total {sale.total} != {parts} {expected_total}"
                )
            )
        if sale.tenders_known:
            tendered = _ZERO
            for tender in sale.tenders:
                tendered += tender.amount
            diff = tendered - sale.total
            if abs(diff) > unit:
                if cash_rounding is not None and abs(diff) * 2 <= cash_rounding:
                    warnings.append(
                        Failure(
                            RULE_TENDERS_SUM,
                            "$.tenders",
                            f"tenders sum to {tendered}, total is {sale.total}: a difference of"
                            f" {diff} within cash rounding to {cash_rounding} {sale.currency}",
                        )
                    )
                else:
                    message = (
                        f"no tenders for a total of {sale.total}"
                        if not sale.tenders
                        else f"tenders sum to {tendered}, total is {sale.total}"
                    )
                    failures.append(Failure(RULE_TENDERS_SUM, "$.tenders", message))
    return failures


def _intrinsic_failures(
    sale: Sale, now: datetime, cash_rounding: Decimal | None, warnings: list[Failure]
) -> list[Failure]:
    failures: list[Failure] = []
    if sale.currency not in KNOWN_CURRENCIES:
        failures.append(
            Failure(RULE_CURRENCY_KNOWN, "$.currency", f"unknown currency {sale.currency!r}")
        )
    if sale.presentment_currency is not None and sale.presentment_currency not in KNOWN_CURRENCIES:
        failures.append(
            Failure(
                RULE_CURRENCY_KNOWN,
                "$.presentment_currency",
                f"unknown currency {sale.presentment_currency!r}",
            )
        )
    if not sale.lines:
        failures.append(Failure(RULE_LINES_NONEMPTY, "$.lines", "a sale needs at least one line"))
    failures.extend(_money_failures(sale, cash_rounding, warnings))
    if sale.occurred_at > now + MAX_FUTURE:
        failures.append(
            Failure(
                RULE_OCCURRED_AT_FUTURE,
                "$.occurred_at",
                f"occurred_at {sale.occurred_at.isoformat()} is more than a day after {now.isoformat()}",
            )
        )
    if sale.occurred_at < OLDEST:
        failures.append(
            Failure(
                RULE_OCCURRED_AT_TOO_OLD,
                "$.occurred_at",
                f"occurred_at {sale.occurred_at.isoformat()} is before 2000-01-01",
            )
        )
    return failures


class _Known:
    """Sale ids a reference may name: committed, pending in the spool, or in this batch."""

    def __init__(self, ctx: ValidationContext, batch: frozenset[str] = frozenset()) -> None:
        self._sets = (batch, ctx.existing_sales, ctx.pending_sale_ids)

    def __contains__(self, sale_id: str) -> bool:
        return any(sale_id in s for s in self._sets)


def _reference_failures(sale: Sale, known: _Known) -> list[Failure]:
    if sale.kind == "return" and sale.original_id is not None and sale.original_id not in known:
        return [
            Failure(
                RULE_RETURN_ORIGINAL,
                "$.original_id",
                f"return of unknown sale {sale.original_id!r} (not committed, pending or in this batch)",
            )
        ]
    return []


def _cash_step(sale: Sale, ctx: ValidationContext) -> Decimal | None:
    return ctx.cash_rounding if ctx.cash_rounding is not None else CASH_ROUNDING.get(sale.currency)


def _apply_policy(
    failures: list[Failure], ctx: ValidationContext, warnings: list[Failure]
) -> list[Failure]:
    """The failures that quarantine under the store's policy; `warn` ones join `warnings`."""
    kept: list[Failure] = []
    for failure in failures:
        policy = ctx.policy.get(failure.rule, "quarantine")
        if policy == "quarantine":
            kept.append(failure)
        elif policy == "warn":
            warnings.append(failure)
    return kept


def _warning_text(failure: Failure) -> str:
    return f"{failure.rule}: {failure.message}"


def validate_sale(sale: Sale, ctx: ValidationContext) -> list[Failure]:
    """Every failed rule of one sale on its own, under the store's policy; empty when valid.

    For manual sales and previews: an unknown return original is a failure here (a manual
    entry is not held), unless the policy for `return.original` is `warn` or `off`.
    """
    warnings: list[Failure] = []
    failures = _intrinsic_failures(sale, ctx.now, _cash_step(sale, ctx), warnings)
    return _apply_policy(failures + _reference_failures(sale, _Known(ctx)), ctx, warnings)


def _collapse(items: Sequence[BatchItem]) -> tuple[list[BatchItem], list[int], dict[str, int]]:
    """Winners per (type, id), superseded seqs, and each sale id's highest hold count."""
    winners: dict[tuple[str, str], BatchItem] = {}
    superseded: list[int] = []
    held: dict[str, int] = {}
    for item in items:
        record = item.record
        is_sale = isinstance(record, Sale)
        key = ("sale" if is_sale else "void", record.id)
        if is_sale:
            held[record.id] = max(held.get(record.id, 0), item.held)
        current = winners.get(key)
        if current is None:
            winners[key] = item
            continue
        rank = (record.effective_version, item.seq)
        if rank > (current.record.effective_version, current.seq):
            superseded.append(current.seq)
            winners[key] = item
        else:
            superseded.append(item.seq)
    return sorted(winners.values(), key=lambda i: i.seq), superseded, held


def validate_batch(items: Sequence[BatchItem], ctx: ValidationContext) -> BatchVerdict:
    """Sort one store-window batch into commit, quarantine, hold and superseded."""
    winners, superseded, held_counts = _collapse(items)
    batch_sales = frozenset(i.record.id for i in items if isinstance(i.record, Sale))
    known = _Known(ctx, batch_sales)
    verdict = BatchVerdict(superseded=sorted(superseded))
    for item in winners:
        record = item.record
        if isinstance(record, Void):
            if record.id in known:
                verdict.voids.append((item.seq, record))
                continue
            message = (
                f"void of unknown sale {record.id!r} (not committed, pending or in this batch)"
            )
            failure = Failure(RULE_VOID_TARGET, "$.id", message)
            if ctx.policy.get(RULE_VOID_TARGET, "quarantine") == "quarantine":
                verdict.quarantined.append((item.seq, [failure]))
            else:  # the void is kept: its sale ends voided whenever it arrives
                verdict.voids.append((item.seq, record))
            continue
        warnings: list[Failure] = []
        failures = _apply_policy(
            _intrinsic_failures(record, ctx.now, _cash_step(record, ctx), warnings), ctx, warnings
        )
        if failures:
            verdict.quarantined.append((item.seq, failures))
            continue
        held = held_counts[record.id]
        unknown_original = _reference_failures(record, known)
        customer = record.customer_id
        waits_customer = customer is not None and customer not in ctx.existing_customers
        if (unknown_original or waits_customer) and held < ctx.hold_windows:
            verdict.held.append(item.seq)
            continue
        if unknown_original:
            (failure,) = unknown_original
            policy = ctx.policy.get(RULE_RETURN_ORIGINAL, "warn")
            if policy == "quarantine":
                verdict.quarantined.append((item.seq, unknown_original))
                continue
            if policy == "warn":
                warnings.append(
                    Failure(
                        RULE_RETURN_ORIGINAL,
                        failure.field,
                        f"original sale {record.original_id!r} unknown after {held} held"
                        " window(s); committed as an unlinked return",
                    )
                )
        linked = True
        if waits_customer:
            linked = False
            warnings.append(
                Failure(
                    RULE_CUSTOMER_HOLD,
                    "$.customer_id",
                    f"customer {customer!r} not in the sink after {held} held window(s);"
                    " committed unlinked",
                )
            )
        sale = localize(record, ctx.zone)
        row = SaleRow(
            sale=sale,
            version=record.effective_version,
            customer_linked=linked,
            warnings=tuple(_warning_text(w) for w in warnings),
            body=None if item.body is None else localized_body(item.body, record, sale),
        )
        verdict.sales.append((item.seq, row))
    return verdict
