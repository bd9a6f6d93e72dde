"""Canonical records: the one shape every adapter produces and every sink consumes.

Tagged by `"type"`: customer, product, sale, void. Money and quantities are `Decimal`
(msgspec decodes JSON numbers and decimal strings into Decimal without going through
float). Times must carry a UTC offset. The natural key is (store, type, id); `version`
(an integer, else `updated_at` in microseconds) orders updates so an older version never
overwrites a newer one.

Decoders are built once at import (msgspec practice) and reused on the hot path.

Checked once. The field checks of `__post_init__` (finite money below 1e12 with at most 8
places, offsets on times) run where a record enters: the push and MQTT parsers decode with
the full decoders, adapters build records through them, backfill's lean parser applies the
same checks as one pattern. A window reading back a row that this code spooled decodes it
with `decode_checked`: the same decoders and constraints with the `__post_init__` checks
skipped (in the calling context only), so the record is the one intake built. Rows spooled
under another `INTAKE_CHECKS` are decoded by the full decoder (`worker.page_decode`).
"""

from __future__ import annotations

import contextvars
import copy
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec

from worker.errors import RecordInvalid

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
# Versions are stored as SQLite/PostgreSQL BIGINT: keep them inside int64.
Version = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# Bounds on every Decimal: finite, below a trillion, at most 8 decimal places
# (R-Series carries fractional cents; nothing real needs more).
_MAX_ABS = Decimal("1e12")
_MAX_PLACES = 8
_ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The version of the checks a record passes before it is spooled (the `__post_init__` checks,
# the field constraints, backfill's money pattern). Bump it with any change to them: rows
# spooled under another version are checked again, in full, at their window.
INTAKE_CHECKS = 1
# True only inside `decode_checked`, in its own context: `__post_init__` checks are skipped.
_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("checked", default=False)


def _check_decimal(name: str, value: Decimal) -> None:
    if not value.is_finite():
        raise ValueError(f"{name}|must be a finite number")
    if not -_MAX_ABS < value < _MAX_ABS:
        raise ValueError(f"{name}|magnitude must be below 1e12")
    # Decimal places without building as_tuple() (the hottest line of intake): the plain
    # string form is "123.45"; only exponent notation needs the exact exponent.
    text = str(value)
    dot = text.find(".")
    if "E" in text:
        exponent = value.as_tuple().exponent
        places = -exponent if isinstance(exponent, int) else 0
    else:
        places = len(text) - dot - 1 if dot >= 0 else 0
    if places > _MAX_PLACES:
        raise ValueError(f"{name}|at most {_MAX_PLACES} decimal places")


def _check_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name}|must be ISO-8601 with a UTC offset")


def version_of(version: int | None, updated_at: datetime | None) -> int:
    """The ordering key: explicit `version`, else `updated_at` in microseconds, else 0."""
    if version is not None:
        return version
    if updated_at is not None:
        return (updated_at - _EPOCH) // _US
    return 0


_US = datetime.resolution  # one microsecond as a timedelta


class Address(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """A postal address."""

    line1: Text | None = None
    line2: Text | None = None
    city: ShortText | None = None
    region: ShortText | None = None
    postal_code: ShortText | None = None
    country_code: ShortText | None = None
    kind: ShortText | None = None


# Free-form POS fields the canonical model has no slot for: kept, never dropped (issue 9).
# Keys are the POS's own field names (dotted for nested ones), values its text.
Attributes = Annotated[dict[ShortText, Text], msgspec.Meta(max_length=256)]


class Customer(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    gc=False,
    tag="customer",
    tag_field="type",
):
    """A store's customer (real-time record)."""

    id: Id
    first_name: Text | None = None
    last_name: Text | None = None
    email: Text | None = None
    phone: Text | None = None
    company: Text | None = None
    address: Address | None = None
    # Every address the POS holds, each with its `kind` (physical, postal, billing, ...);
    # `address` is the primary one.
    addresses: Annotated[list[Address], msgspec.Meta(max_length=20)] = []
    birth_date: date | None = None
    anniversary_date: date | None = None
    marketing_email: Literal["opted_in", "opted_out", "unknown"] = "unknown"
    marketing_sms: Literal["opted_in", "opted_out", "unknown"] = "unknown"
    assigned_employee_id: Id | None = None
    linked_customer_id: Id | None = None
    tags: list[ShortText] = []
    notes: Text | None = None
    status: Literal["active", "inactive", "deleted"] = "active"
    attributes: Attributes = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: Version | None = None
    source_ref: ShortText | None = None

    def __post_init__(self) -> None:
        _check_aware("created_at", self.created_at)
        _check_aware("updated_at", self.updated_at)

    @property
    def effective_version(self) -> int:
        """Ordering key for upserts."""
        return version_of(self.version, self.updated_at)


class Product(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    gc=False,
    tag="product",
    tag_field="type",
):
    """A product at SKU/variant level (real-time record)."""

    id: Id
    sku: ShortText | None = None
    name: Text | None = None
    category: Text | None = None
    price: Decimal | None = None
    currency: Currency | None = None
    parent_id: Id | None = None
    barcode: ShortText | None = None
    vendor: Text | None = None
    description: Text | None = None
    is_unique_piece: bool = False
    status: Literal["active", "archived", "deleted", "sold"] = "active"
    attributes: Attributes = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: Version | None = None
    source_ref: ShortText | None = None

    def __post_init__(self) -> None:
        if self.price is not None:
            _check_decimal("price", self.price)
        _check_aware("created_at", self.created_at)
        _check_aware("updated_at", self.updated_at)

    @property
    def effective_version(self) -> int:
        """Ordering key for upserts."""
        return version_of(self.version, self.updated_at)


LineKind = Literal["item", "gift_card", "fee", "service", "shipping", "deposit"]


class SaleLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """One line of a sale. `quantity` is signed: negative means returned.

    `sku` is None when the POS sends none for the line (Lightspeed X lines may carry only the
    product id): never invented, never an empty string.
    """

    quantity: Decimal
    unit_price: Decimal
    sku: ShortText | None = None
    discount: Decimal = _ZERO
    tax: Decimal = _ZERO
    product_id: Id | None = None
    description: Text | None = None
    category: Text | None = None
    line_id: Id | None = None
    line_kind: LineKind = "item"
    employee_id: Id | None = None
    original_line_id: Id | None = None
    restock: bool | None = None

    def __post_init__(self) -> None:
        if _CHECKED.get():
            return
        _check_decimal("quantity", self.quantity)
        _check_decimal("unit_price", self.unit_price)
        _check_decimal("discount", self.discount)
        _check_decimal("tax", self.tax)

    @property
    def net(self) -> Decimal:
        """quantity x unit_price - discount (before tax)."""
        return self.quantity * self.unit_price - self.discount


class Tender(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """A payment (positive) or refund (negative).

    `method` is the POS's human name for the payment type ("Cash", "EFTPOS", "shopify_payments");
    `method_id` the POS's own id for it, kept beside the name; `reference` the payment's id.
    """

    method: ShortText
    amount: Decimal
    reference: ShortText | None = None
    method_id: ShortText | None = None

    def __post_init__(self) -> None:
        if _CHECKED.get():
            return
        _check_decimal("amount", self.amount)


AdjustmentKind = Literal["discount", "tax", "shipping", "fee", "tip", "rounding", "other"]


class Adjustment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """An order-level figure that no line carries, as the POS states it.

    `amount` is signed as it moves the sale: an order-level discount is negative. How each
    kind enters the sums (see `worker.validation`): `discount` adjustments count into the
    subtotal (lines + discount adjustments = subtotal); the others describe the sale-level
    figure of the same name (`tax`, `shipping`, `fees`, `tip`, `rounding`) and are shown, not
    added again.
    """

    kind: AdjustmentKind
    amount: Decimal
    description: Text | None = None
    code: ShortText | None = None
    reference: ShortText | None = None

    def __post_init__(self) -> None:
        if _CHECKED.get():
            return
        _check_decimal("amount", self.amount)


SaleKind = Literal["sale", "return", "exchange"]
Origin = Literal["pos", "manual", "backfill"]


class Sale(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    gc=False,
    tag="sale",
    tag_field="type",
):
    """A completed sale, return or exchange. Spooled, then committed at the store's window."""

    id: Id
    occurred_at: datetime
    currency: Currency
    lines: Annotated[list[SaleLine], msgspec.Meta(max_length=2000)]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    tenders: Annotated[list[Tender], msgspec.Meta(max_length=200)] = []
    kind: SaleKind = "sale"
    origin: Origin = "pos"
    customer_id: Id | None = None
    employee_id: Id | None = None
    original_id: Id | None = None
    display_number: ShortText | None = None
    location_id: Id | None = None
    register_id: Id | None = None
    channel: Literal["pos", "web", "other"] = "pos"
    shipping: Decimal = _ZERO
    fees: Decimal = _ZERO
    tip: Decimal = _ZERO
    # Cash rounding the POS applied to the total (signed; CHF rounds cash to 0.05).
    rounding: Decimal = _ZERO
    # The POS's total discount on the sale (line and order level), when it states one.
    discount: Decimal | None = None
    # Prices (and so the subtotal) include tax: the total does not add `tax` again.
    tax_included: bool = False
    # False when the source carries no payment records at all (The Edge EDT exports, a
    # Shopify order without transactions): "tenders unknown", not "no tenders".
    tenders_known: bool = True
    adjustments: Annotated[list[Adjustment], msgspec.Meta(max_length=200)] = []
    attributes: Attributes = {}
    presentment_currency: Currency | None = None
    business_date: date | None = None
    tz_assumed: bool = False
    updated_at: datetime | None = None
    version: Version | None = None
    source_ref: ShortText | None = None

    def __post_init__(self) -> None:
        if _CHECKED.get():
            return
        _check_aware("occurred_at", self.occurred_at)
        _check_aware("updated_at", self.updated_at)
        for name in ("subtotal", "tax", "total", "shipping", "fees", "tip", "rounding"):
            _check_decimal(name, getattr(self, name))
        if self.discount is not None:
            _check_decimal("discount", self.discount)

    @property
    def effective_version(self) -> int:
        """Ordering key: a newer version supersedes an older one of the same id."""
        return version_of(self.version, self.updated_at)


class Void(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    gc=False,
    tag="void",
    tag_field="type",
):
    """Voids the sale `id`: the sale stays in the log, leaves the report."""

    id: Id
    occurred_at: datetime
    reason: Text | None = None
    version: Version | None = None
    source_ref: ShortText | None = None

    def __post_init__(self) -> None:
        if _CHECKED.get():
            return
        _check_aware("occurred_at", self.occurred_at)

    @property
    def effective_version(self) -> int:
        """Voids are final; a later void of the same sale is a duplicate."""
        return self.version or 0


Record = Customer | Product | Sale | Void
Entity = Customer | Product
Spooled = Sale | Void

RECORD_DECODER: msgspec.json.Decoder[Record] = msgspec.json.Decoder(Record)
SPOOLED_DECODER: msgspec.json.Decoder[Spooled] = msgspec.json.Decoder(Spooled)
ENCODER = msgspec.json.Encoder(decimal_format="string")

_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `([^`]+)`")


# Everything decoding untrusted JSON can raise: msgspec's errors, plus RecursionError for
# absurdly deep nesting and UnicodeDecodeError for invalid UTF-8 inside strings.
DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def decode_checked(bodies: Iterable[bytes]) -> list[Spooled | None]:
    """Spooled rows this code's intake checked, decoded without running those `__post_init__`
    checks again (module docstring): the same records `SPOOLED_DECODER` gives. None where the
    decoder refuses a row; the caller asks the full decoder for the error."""
    decode = SPOOLED_DECODER.decode
    out: list[Spooled | None] = []
    token = _CHECKED.set(True)
    try:
        for body in bodies:
            try:
                out.append(decode(body))
            except DECODE_ERRORS:
                out.append(None)
    finally:
        _CHECKED.reset(token)
    return out


def invalid_from(exc: BaseException) -> RecordInvalid:
    """Turn a decoding error into RecordInvalid with a `$.a.b[0].c` field path."""
    if isinstance(exc, RecursionError):
        return RecordInvalid("JSON nested too deeply", field="$")
    if isinstance(exc, UnicodeDecodeError):
        return RecordInvalid("invalid UTF-8 in JSON", field="$")
    text = str(exc)
    m = _PATH.match(text)
    msg, path = (m.group("msg"), m.group("path")) if m else (text, None)
    path = path or "$"
    if "|" in msg:  # raised by a __post_init__ check: "field|message"
        name, msg = msg.split("|", 1)
        path = f"{path}.{name}"
        msg = f"`{name}` {msg}"
    else:
        missing = _MISSING.search(msg)
        if missing:
            path = f"{path}.{missing.group(1)}"
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        path = "$"
    return RecordInvalid(msg, field=path)


def encode(record: Record) -> bytes:
    """Canonical JSON bytes (money as decimal strings)."""
    return ENCODER.encode(record)


def business_date(instant: datetime, zone: ZoneInfo) -> date:
    """The store-local calendar date of an instant."""
    return instant.astimezone(zone).date()


def localize(sale: Sale, zone: ZoneInfo) -> Sale:
    """Fill `business_date` from the store's zone when the adapter did not set it."""
    if sale.business_date is not None:
        return sale
    # A copy with one (valid) date set: `msgspec.structs.replace` would run every field check
    # of the sale again (2-3 us per sale, on a sale already checked).
    out = copy.copy(sale)
    msgspec.structs.force_setattr(out, "business_date", business_date(sale.occurred_at, zone))
    return out


_NO_BUSINESS_DATE = b'"business_date":null'


def localized_body(body: bytes, before: Sale, after: Sale) -> bytes | None:
    """`encode(after)` made from `body` (= `encode(before)`) where `after = localize(before)`.

    `localize` changes nothing or fills `business_date` only. In the encoding, the key
    `"business_date":null` can stand only at the sale's top level: no nested record has the
    field, attribute values are strings (never null), and inside a JSON string every quote is
    escaped, so the unescaped pattern cannot occur there. Filling it in place gives the bytes
    `encode(after)` would, without encoding the sale again. None (encode instead) when the
    body does not hold the pattern exactly once, e.g. one spooled by a version whose encoding
    differed, or one written without its default fields (the backfill spools those: stored
    as they are, the sink's sale detail would lack the defaults a pushed sale shows); and
    None when `localize` changed nothing, since the body's form cannot then be told.
    """
    if after is before or after.business_date is None:
        return None
    # Exactly once, found from the end (the key is near it); the pattern cannot overlap itself.
    at = body.rfind(_NO_BUSINESS_DATE)
    if at < 0 or body.find(_NO_BUSINESS_DATE, 0, at) >= 0:
        return None
    filled = b'"business_date":"' + after.business_date.isoformat().encode() + b'"'
    return b"".join((body[:at], filled, body[at + len(_NO_BUSINESS_DATE) :]))


_TYPE_NAMES: dict[type, str] = {
    Customer: "customer",
    Product: "product",
    Sale: "sale",
    Void: "void",
}


def type_of(record: Record) -> str:
    """The record's `type` tag."""
    return _TYPE_NAMES[type(record)]


def sum_decimals(values: Iterable[Decimal]) -> Decimal:
    """Exact sum (start at Decimal zero, never int/float)."""
    total = _ZERO
    for v in values:
        total += v
    return total
