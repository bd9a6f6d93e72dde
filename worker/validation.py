"""Validation of one store-window batch of spooled sales and voids.

Pure: the window runner leases the batch, asks the sink which customers and sales already
exist, and passes that in a `ValidationContext`; nothing here does I/O or reads a clock.

Every input row lands in exactly one list of the `BatchVerdict`: `sales` (commit),
`voids` (commit), `quarantined` (with every reason), `held` (stays in the spool for the next
window) or `superseded` (acknowledged, neither committed nor quarantined).

Rules, by id (field path in the failure):

* `schema` (`$...`): the spooled bytes do not decode as a canonical sale or void
  (`decode_spooled`; the rest assume a decoded record).
* `currency.known` (`$.currency`, `$.presentment_currency`): an ISO 4217 code in
  `KNOWN_CURRENCIES`: the current List One, plus codes withdrawn since 2015 (backfilled
  history carries them, e.g. HRK before Croatia's euro), minus XTS and XXX (not money).
* `lines.nonempty` (`$.lines`).
* `subtotal.sum` (`$.subtotal`): the sum of quantity x unit_price - discount over the lines,
  plus the order-level `discount` adjustments (negative), equals the POS's subtotal.
* `discount.sum` (`$.discount`): where the POS states a total `discount`, it equals the line
  discounts plus the order-level discount adjustments (as a positive figure).
* `total.sum` (`$.total`): subtotal + tax (unless `tax_included`) + shipping + fees + tip +
  rounding equals the POS's total.
* `tenders.sum` (`$.tenders`): where tenders are known (`tenders_known`), they sum to the
  total (none = 0). A difference within half the store's cash-rounding step (CHF 0.05, SEK 1,
  `[[stores]] cash_rounding`) passes with a warning: a rounding the POS did not state, not a
  mismatch. Sources that carry no payments (`tenders_known = False`) skip the rule.
* `occurred_at.future` (`$.occurred_at`): more than one day after `ctx.now`.
* `occurred_at.too_old` (`$.occurred_at`): before 2000-01-01T00:00Z.
* `return.original` (`$.original_id`): a return whose `original_id` names no sale known to
  possync (sold before the integration started, or in another channel) is held like a sale
  awaiting its customer, up to `hold_windows`, then committed as an unlinked return with a
  warning (policy `warn`, the default), quarantined (`quarantine`), or committed silently
  (`off`).
* `void.target` (`$.id`): a void of a sale not known to possync.
* `customer.hold` (not a failure): a valid sale whose `customer_id` is not in the sink yet
  stays in the spool while its hold count < `hold_windows`, then commits with
  `customer_linked=False` and a warning naming this id.

Policy: each store maps rule ids to `quarantine` (the default), `warn` (commit, with the
failure as a warning on the sale) or `off` (not checked), over its source's defaults
(`rule_policy`). Every failure message carries both figures it compared.

Money comparisons are exact Decimal arithmetic, passing when |difference| <= one minor unit
of the sale's currency (`tolerance`: 0.01 USD, 1 JPY, 0.001 KWD). The tolerance exists
because a POS rounds each figure it prints to that unit, so a sum of rounded figures may
differ from the rounded sum by a unit; a fixed 0.01 would let a KWD sale disagree with itself
by nine fils unseen and ask a JPY sale to agree to a hundredth of a yen.

"Known to possync" means committed (`existing_sales`), anywhere in this batch (held and
quarantined ones too, since a quarantined sale can be corrected and released), or pending in
the spool outside this batch (`pending_sale_ids`: a window is cut into chunks of
`batch_size`, so the referenced sale may be in the next chunk of the same window).

Duplicates: per (type, id) the highest `effective_version` wins, a tie goes to the later
arrival (higher seq); the others are superseded. A sale's hold count is the highest among its
duplicates, so a corrected version does not restart the hold.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from zoneinfo import ZoneInfo

import msgspec

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

__all__ = [
    "ISO_4217",
    "ISO_4217_WITHDRAWN",
    "KNOWN_CURRENCIES",
    "MAX_FUTURE",
    "OLDEST",
    "RULE_CURRENCY_KNOWN",
    "RULE_CUSTOMER_HOLD",
    "RULE_DISCOUNT_SUM",
    "RULE_LINES_NONEMPTY",
    "RULE_OCCURRED_AT_FUTURE",
    "RULE_OCCURRED_AT_TOO_OLD",
    "RULE_RETURN_ORIGINAL",
    "RULE_SCHEMA",
    "RULE_SUBTOTAL_SUM",
    "RULE_TENDERS_SUM",
    "RULE_TOTAL_SUM",
    "RULE_VOID_TARGET",
    "TOLERANCE",
    "BatchItem",
    "BatchVerdict",
    "Failure",
    "ValidationContext",
    "context_ids",
    "decode_spooled",
    "rule_policy",
    "tolerance",
    "validate_batch",
    "validate_sale",
]

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


class Failure(msgspec.Struct, frozen=True, gc=False):
    """One failed rule: its id, the field path and a human message."""

    rule: str
    field: str
    message: str


class BatchItem(msgspec.Struct, frozen=True, gc=False):
    """One spooled row: its spool sequence, the record and how many windows it has been held."""

    seq: int
    record: Sale | Void
    held: int = 0
    body: bytes | None = None  # the spooled bytes the record was decoded from (None: unknown)


class ValidationContext(msgspec.Struct, frozen=True, kw_only=True):
    """What validation needs from outside: store, zone, now and what the sink/spool already hold."""

    store: str
    zone: ZoneInfo
    now: datetime
    existing_customers: frozenset[str]
    existing_sales: frozenset[str]
    pending_sale_ids: frozenset[str]
    hold_windows: int
    # rule id -> policy; a rule not named is "quarantine".
    policy: Mapping[str, RulePolicy] = {}
    # The store's cash-rounding step (None: none for its currency).
    cash_rounding: Decimal | None = None


class BatchVerdict(msgspec.Struct, kw_only=True):
    """Where each row of a batch goes; every input seq appears in exactly one list, in seq order."""

    sales: list[tuple[int, SaleRow]] = msgspec.field(default_factory=list)
    voids: list[tuple[int, Void]] = msgspec.field(default_factory=list)
    quarantined: list[tuple[int, list[Failure]]] = msgspec.field(default_factory=list)
    held: list[int] = msgspec.field(default_factory=list)
    superseded: list[int] = msgspec.field(default_factory=list)
    # Trigger events skipped by reason, filled in by the window runner (`match_triggers`).
    skipped: Counter[str] = msgspec.field(default_factory=Counter)


def decode_spooled(data: bytes | str) -> Spooled | Failure:
    """Decode one spooled row, or a `schema` failure naming the field."""
    try:
        return SPOOLED_DECODER.decode(data)
    except DECODE_ERRORS as exc:
        err: RecordInvalid = invalid_from(exc)
        return Failure(RULE_SCHEMA, err.field or "$", err.message)


def context_ids(items: Sequence[BatchItem]) -> tuple[set[str], set[str]]:
    """What a batch's `ValidationContext` must look up: the customers its sales name, and the
    sales its returns and voids name that are not in the batch itself."""
    customers: set[str] = set()
    named: set[str] = set()
    in_batch: set[str] = set()
    for item in items:
        r = item.record
        if isinstance(r, Sale):
            in_batch.add(r.id)
            if r.customer_id:
                customers.add(r.customer_id)
            if r.original_id:
                named.add(r.original_id)
        else:
            named.add(r.id)
    return customers, named - in_batch


def tolerance(currency: str) -> Decimal:
    """How far two of a sale's figures may differ: one minor unit of its currency."""
    return quantum(currency)


def rule_policy(
    defaults: Mapping[str, RulePolicy], store: Mapping[str, RulePolicy]
) -> dict[str, RulePolicy]:
    """A store's effective policy: its source's defaults, overridden by its own `rules`."""
    return {**defaults, **store}


def _money_failures(
    sale: Sale, unit: Decimal, cash_rounding: Decimal | None, warnings: list[Failure]
) -> list[Failure]:
    """The sum rules, to within `unit`; the caller holds a Decimal context of `_PRECISION`."""
    failures: list[Failure] = []
    lines_sum = _ZERO
    line_discounts = _ZERO
    for line in sale.lines:
        discount = line.discount
        lines_sum += line.quantity * line.unit_price - discount
        line_discounts += discount
    order_discounts = _ZERO
    for adj in sale.adjustments:
        if adj.kind == "discount":
            order_discounts += adj.amount
    expected_subtotal = lines_sum + order_discounts
    subtotal = sale.subtotal
    if abs(subtotal - expected_subtotal) > unit:
        detail = f" + order discounts ({order_discounts})" if sale.adjustments else ""
        failures.append(
            Failure(
                RULE_SUBTOTAL_SUM,
                "$.subtotal",
                f"subtotal {subtotal} != sum of lines (quantity x unit_price - discount)"
                f"{detail} {expected_subtotal}",
            )
        )
    if sale.discount is not None:
        stated = line_discounts - order_discounts
        if abs(sale.discount - stated) > unit:
            failures.append(
                Failure(
                    RULE_DISCOUNT_SUM,
                    "$.discount",
                    f"discount {sale.discount} != line discounts {line_discounts}"
                    f" + order discounts {-order_discounts} = {stated}",
                )
            )
    total = sale.total
    tax = _ZERO if sale.tax_included else sale.tax
    expected_total = subtotal + tax + sale.shipping + sale.fees + sale.tip + sale.rounding
    if abs(total - expected_total) > unit:
        parts = "subtotal + shipping + fees + tip + rounding (tax included)"
        if not sale.tax_included:
            parts = "subtotal + tax + shipping + fees + tip + rounding"
        failures.append(
            Failure(RULE_TOTAL_SUM, "$.total", f"total {total} != {parts} {expected_total}")
        )
    if sale.tenders_known:
        tendered = _ZERO
        for tender in sale.tenders:
            tendered += tender.amount
        diff = tendered - total
        if abs(diff) > unit:
            if cash_rounding is not None and abs(diff) * 2 <= cash_rounding:
                warnings.append(
                    Failure(
                        RULE_TENDERS_SUM,
                        "$.tenders",
                        f"tenders sum to {tendered}, total is {total}: a difference of"
                        f" {diff} within cash rounding to {cash_rounding} {sale.currency}",
                    )
                )
            else:
                message = (
                    f"no tenders for a total of {total}"
                    if not sale.tenders
                    else f"tenders sum to {tendered}, total is {total}"
                )
                failures.append(Failure(RULE_TENDERS_SUM, "$.tenders", message))
    return failures


class _Rules:
    """The intrinsic rules under one context, with what they need computed once per batch."""

    __slots__ = ("_cash", "_latest", "_now", "_units")

    def __init__(self, ctx: ValidationContext) -> None:
        self._now = ctx.now
        self._latest = ctx.now + MAX_FUTURE
        self._cash = ctx.cash_rounding
        self._units: dict[str, Decimal] = {}

    def failures(self, sale: Sale, warnings: list[Failure]) -> list[Failure]:
        """Every intrinsic rule the sale fails (before policy); cash-rounding warnings join
        `warnings`. The caller holds a Decimal context of `_PRECISION`."""
        failures: list[Failure] = []
        currency = sale.currency
        if currency not in KNOWN_CURRENCIES:
            failures.append(
                Failure(RULE_CURRENCY_KNOWN, "$.currency", f"unknown currency {currency!r}")
            )
        presentment = sale.presentment_currency
        if presentment is not None and presentment not in KNOWN_CURRENCIES:
            failures.append(
                Failure(
                    RULE_CURRENCY_KNOWN,
                    "$.presentment_currency",
                    f"unknown currency {presentment!r}",
                )
            )
        if not sale.lines:
            failures.append(
                Failure(RULE_LINES_NONEMPTY, "$.lines", "a sale needs at least one line")
            )
        unit = self._units.get(currency)
        if unit is None:
            unit = self._units[currency] = tolerance(currency)
        cash = self._cash if self._cash is not None else CASH_ROUNDING.get(currency)
        money = _money_failures(sale, unit, cash, warnings)
        if money:
            failures.extend(money)
        occurred = sale.occurred_at
        if occurred > self._latest:
            failures.append(
                Failure(
                    RULE_OCCURRED_AT_FUTURE,
                    "$.occurred_at",
                    f"occurred_at {occurred.isoformat()} is more than a day after"
                    f" {self._now.isoformat()}",
                )
            )
        if occurred < OLDEST:
            failures.append(
                Failure(
                    RULE_OCCURRED_AT_TOO_OLD,
                    "$.occurred_at",
                    f"occurred_at {occurred.isoformat()} is before 2000-01-01",
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
    with localcontext() as dctx:
        dctx.prec = _PRECISION
        failures = _Rules(ctx).failures(sale, warnings)
    return _apply_policy(failures + _reference_failures(sale, _Known(ctx)), ctx, warnings)


def _collapse(items: Sequence[BatchItem]) -> tuple[list[BatchItem], list[int], dict[str, int]]:
    """Winners per (type, id), superseded seqs, and each sale id's highest hold count."""
    winners: dict[tuple[bool, str], BatchItem] = {}
    superseded: list[int] = []
    held: dict[str, int] = {}
    for item in items:
        record = item.record
        rid = record.id
        is_sale = isinstance(record, Sale)
        if is_sale:
            count = held.get(rid, 0)
            held[rid] = item.held if item.held > count else count
        key = (is_sale, rid)
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
    return sorted(winners.values(), key=_SEQ), superseded, held


_SEQ = operator.attrgetter("seq")


def validate_batch(items: Sequence[BatchItem], ctx: ValidationContext) -> BatchVerdict:
    """Sort one store-window batch into commit, quarantine, hold and superseded."""
    winners, superseded, held_counts = _collapse(items)
    batch_sales = frozenset(i.record.id for i in items if isinstance(i.record, Sale))
    known = _Known(ctx, batch_sales)
    verdict = BatchVerdict(superseded=sorted(superseded))
    rules = _Rules(ctx)
    customers = ctx.existing_customers
    zone = ctx.zone
    with localcontext() as dctx:
        dctx.prec = _PRECISION
        for item in winners:
            record = item.record
            if isinstance(record, Void):
                _void(item, record, known, ctx, verdict)
                continue
            warnings: list[Failure] = []
            failures = rules.failures(record, warnings)
            if failures:
                failures = _apply_policy(failures, ctx, warnings)
                if failures:
                    verdict.quarantined.append((item.seq, failures))
                    continue
            held = held_counts[record.id]
            unknown_original = _reference_failures(record, known) if record.kind == "return" else []
            customer = record.customer_id
            waits_customer = customer is not None and customer not in customers
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
            sale = localize(record, zone)
            body = item.body
            row = SaleRow(
                sale=sale,
                version=record.effective_version,
                customer_linked=linked,
                warnings=tuple([_warning_text(w) for w in warnings]) if warnings else (),
                body=None if body is None else localized_body(body, record, sale),
            )
            verdict.sales.append((item.seq, row))
    return verdict


def _void(
    item: BatchItem, record: Void, known: _Known, ctx: ValidationContext, verdict: BatchVerdict
) -> None:
    """A void commits when its sale is known to possync; otherwise as the policy says."""
    if record.id in known:
        verdict.voids.append((item.seq, record))
        return
    message = f"void of unknown sale {record.id!r} (not committed, pending or in this batch)"
    failure = Failure(RULE_VOID_TARGET, "$.id", message)
    if ctx.policy.get(RULE_VOID_TARGET, "quarantine") == "quarantine":
        verdict.quarantined.append((item.seq, [failure]))
    else:  # the void is kept: its sale ends voided whenever it arrives
        verdict.voids.append((item.seq, record))
