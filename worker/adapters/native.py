"""Helpers shared by the native-format adapters.

Every reader here names the *native* field path (`$.line_items[0].price`) when a value
cannot be read, by raising `RecordInvalid`. Money is `Decimal` from end to end: JSON is
decoded with `float_hook=Decimal` (the literal text, never a binary float), strings go
through `Decimal(str)`, and every amount is bounded (finite, below 1e12, at most 8 decimal
places) before any arithmetic touches it.

An *item* (one order, one CSV sale group, one customer) is all-or-nothing: its records are
built into a list and only appended to the output when every one of them validated. A payload
that is a single item raises instead of returning a rejection, so a 400 never half-applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from worker.adapters.base import AdapterContext, Parsed
from worker.errors import RecordInvalid
from worker.records import Customer, Product, Record, Sale, Void, invalid_from, type_of

ZERO = Decimal(0)
ONE = Decimal(1)
CENT = Decimal("0.01")
_PLACES = Decimal("0.00000001")  # the finest amount a record may carry (8 places)
_MAX_ABS = Decimal("1e12")
_MAX_PLACES = 8

JSON_TYPES = frozenset({"application/json", "text/json", ""})
FORM_TYPE = "application/x-www-form-urlencoded"

# msgspec hands the literal text of every JSON float to the hook: exact, never a double.
_JSON = msgspec.json.Decoder(float_hook=Decimal)

R = TypeVar("R", Customer, Product, Sale, Void)


def decode_json(body: bytes | str, field: str = "$") -> Any:
    """Decode JSON with exact decimals, or raise RecordInvalid naming `field`."""
    try:
        return _JSON.decode(body)
    except msgspec.DecodeError as exc:
        raise RecordInvalid(f"invalid JSON: {exc}", field=field) from None
    except RecursionError:
        raise RecordInvalid("invalid JSON: nested too deeply", field=field) from None
    except UnicodeDecodeError as exc:  # msgspec raises this for bad UTF-8 inside a string
        raise RecordInvalid(f"invalid JSON: not UTF-8 (byte {exc.start})", field=field) from None


# -- scalar readers ----------------------------------------------------------------------


def to_decimal(value: Any, path: str) -> Decimal:
    """An exact, bounded Decimal from a JSON number, a Decimal or a decimal string."""
    if isinstance(value, bool) or value is None:
        raise RecordInvalid(f"expected a decimal number, got {_kind(value)}", field=path)
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        if abs(value) >= 10**12:
            raise RecordInvalid("number magnitude must be below 1e12", field=path)
        result = Decimal(value)
    elif isinstance(value, float):  # only reachable from callers that decoded with floats
        result = _parse_decimal_text(repr(value), path)
    elif isinstance(value, str):
        result = _parse_decimal_text(value, path)
    else:
        raise RecordInvalid(f"expected a decimal number, got {_kind(value)}", field=path)
    check_amount(result, path)
    return result


_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")


def _parse_decimal_text(text: str, path: str) -> Decimal:
    s = text.strip()
    if len(s) > 64 or not _DECIMAL_TEXT.match(s):
        raise RecordInvalid(f"not a decimal number: {text[:40]!r}", field=path)
    try:
        return Decimal(s)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes these
        raise RecordInvalid(f"not a decimal number: {text[:40]!r}", field=path) from None


def check_amount(value: Decimal, path: str) -> None:
    """Finite, below 1e12, at most 8 decimal places (the bounds records enforce)."""
    if not value.is_finite():
        raise RecordInvalid("must be a finite number", field=path)
    if abs(value) >= _MAX_ABS:
        raise RecordInvalid("number magnitude must be below 1e12", field=path)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_PLACES:
        if value == value.quantize(_PLACES):  # trailing zeros only ("1.500000000")
            return
        raise RecordInvalid(f"at most {_MAX_PLACES} decimal places", field=path)


def fit(value: Decimal) -> Decimal:
    """Strip insignificant trailing zeros beyond 8 places so records accept the value."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_PLACES:
        return value.quantize(_PLACES, rounding=ROUND_HALF_EVEN)
    return value


def divide(amount: Decimal, by: Decimal) -> Decimal:
    """amount / by, exact when it terminates within 8 places, else rounded half-even."""
    if by == 0:
        return amount
    result = amount / by
    return fit(result.quantize(_PLACES, rounding=ROUND_HALF_EVEN)).normalize() + ZERO


def prorate(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """amount x part / whole, rounded to cents (used when an edit shrinks a line)."""
    if whole == 0:
        return ZERO
    return (amount * part / whole).quantize(CENT, rounding=ROUND_HALF_EVEN)


def tax_exclusive_unit(quantity: Decimal, unit_price: Decimal, tax: Decimal) -> Decimal:
    """The unit price without its included tax, so that quantity x unit + tax = gross."""
    if quantity == 0:
        return unit_price
    return divide(quantity * unit_price - tax, quantity)


def to_text(value: Any, path: str, *, limit: int = 4096, clip: bool = True) -> str | None:
    """A string (numbers are rendered as text); "" and null are None; long text is clipped."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordInvalid(f"expected a string, got {_kind(value)}", field=path)
    if isinstance(value, int | Decimal):
        value = str(value)
    if not isinstance(value, str):
        raise RecordInvalid(f"expected a string, got {_kind(value)}", field=path)
    text: str = value.strip()
    if not text:
        return None
    if len(text) > limit:
        if not clip:
            raise RecordInvalid(f"longer than {limit} characters", field=path)
        text = text[:limit]
    return text


def to_ident(value: Any, path: str, *, nulls: frozenset[str] = frozenset()) -> str | None:
    """An identifier as a string (int64 ids stay exact); null, "" and `nulls` are None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordInvalid(f"expected an id (string or integer), got {_kind(value)}", field=path)
    text = str(value).strip()
    if not text or text in nulls:
        return None
    if len(text) > 256:
        raise RecordInvalid("id longer than 256 characters", field=path)
    return text


def to_bool(value: Any, path: str) -> bool | None:
    """true/false as JSON booleans or the strings "true"/"false" (any case); null is None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "y", "t"):
            return True
        if low in ("false", "0", "no", "n", "f"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RecordInvalid(f"expected true or false, got {str(value)[:40]!r}", field=path)


def to_instant(value: Any, path: str) -> tuple[datetime, bool] | None:
    """An ISO-8601 time as a UTC instant, and whether its offset was missing (read as UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise RecordInvalid(f"expected an ISO-8601 time, got {_kind(value)}", field=path)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RecordInvalid(f"not an ISO-8601 time: {value[:40]!r}", field=path) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC), True
    return _utc(parsed, path), False


def _utc(value: datetime, path: str) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise RecordInvalid("time out of range", field=path) from None


def local_instant(naive: datetime, zone: ZoneInfo, path: str) -> datetime:
    """A store-local wall time read in `zone`, as a UTC instant.

    zoneinfo's fold=0 rule decides the DST edge cases: a wall time that occurs twice (fall
    back) is the first occurrence; one that does not exist (spring forward) is read with the
    offset in force before the change, which lands one hour later in wall terms.
    """
    return _utc(naive.replace(tzinfo=zone), path)


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """The store-local calendar date of a UTC instant."""
    return instant.astimezone(zone).date()


def micros(instant: datetime) -> int:
    """An instant as integer microseconds since the epoch (a version number)."""
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


# -- objects with paths ------------------------------------------------------------------


class Obj:
    """A JSON object with its path, whose readers name the native field on failure."""

    __slots__ = ("data", "path")

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    @classmethod
    def of(cls, value: Any, path: str) -> Obj:
        """Wrap a value that must be a JSON object."""
        if not isinstance(value, dict):
            raise RecordInvalid(f"expected an object, got {_kind(value)}", field=path)
        return cls(value, path)

    def at(self, key: str) -> str:
        """The path of a key of this object."""
        return f"{self.path}.{key}"

    def get(self, key: str) -> Any:
        """The raw value (None when absent)."""
        return self.data.get(key)

    def has(self, key: str) -> bool:
        """Whether the key is present with a non-null value."""
        return self.data.get(key) is not None

    def text(self, key: str, *, limit: int = 4096) -> str | None:
        """An optional string (clipped to `limit`)."""
        return to_text(self.data.get(key), self.at(key), limit=limit)

    def ident(self, key: str, *, nulls: frozenset[str] = frozenset()) -> str | None:
        """An optional identifier."""
        return to_ident(self.data.get(key), self.at(key), nulls=nulls)

    def req_ident(self, key: str, *, nulls: frozenset[str] = frozenset()) -> str:
        """A required identifier."""
        value = to_ident(self.data.get(key), self.at(key), nulls=nulls)
        if value is None:
            raise RecordInvalid(f"missing required field `{key}`", field=self.at(key))
        return value

    def dec(self, key: str) -> Decimal | None:
        """An optional exact decimal ("" and null are None)."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        return to_decimal(value, self.at(key))

    def req_dec(self, key: str) -> Decimal:
        """A required exact decimal."""
        value = self.dec(key)
        if value is None:
            raise RecordInvalid(f"missing required field `{key}`", field=self.at(key))
        return value

    def boolean(self, key: str) -> bool | None:
        """An optional boolean (JSON or "true"/"false")."""
        return to_bool(self.data.get(key), self.at(key))

    def instant(self, key: str) -> tuple[datetime, bool] | None:
        """An optional ISO-8601 time as (UTC instant, offset was missing)."""
        return to_instant(self.data.get(key), self.at(key))

    def obj(self, key: str) -> Obj | None:
        """An optional nested object (null and "" are None)."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        return Obj.of(value, self.at(key))

    def objs(self, key: str, *, single_ok: bool = False) -> list[Obj]:
        """A list of objects (null and "" are empty; a lone object is a list of one if allowed)."""
        value = self.data.get(key)
        base = self.at(key)
        if value is None or value == "":
            return []
        if isinstance(value, dict) and single_ok:
            return [Obj(value, base)]
        if not isinstance(value, list):
            raise RecordInvalid(f"expected an array, got {_kind(value)}", field=base)
        return [Obj.of(item, f"{base}[{i}]") for i, item in enumerate(value)]


def money(o: Obj, key: str) -> Decimal | None:
    """A Shopify-style amount: `<key>_set.shop_money.amount` when present, else `<key>`."""
    money_set = o.obj(f"{key}_set")
    if money_set is not None:
        shop = money_set.obj("shop_money")
        if shop is not None and shop.has("amount"):
            return shop.req_dec("amount")
    return o.dec(key)


# -- building records --------------------------------------------------------------------


def build(cls: type[R], fields: Mapping[str, Any], what: str) -> R:
    """Build a record through msgspec validation (constraints and __post_init__ checks)."""
    try:
        return msgspec.convert(_drop_none(fields), cls)
    except msgspec.ValidationError as exc:
        err = invalid_from(exc)
        raise RecordInvalid(f"{what}: {err.message}", field=err.field) from None


def _drop_none(value: Any) -> Any:
    """Leave unset (None) keys out, so every field falls back to its record default."""
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def sale_kind(quantities: Iterable[Decimal]) -> Literal["sale", "return", "exchange"]:
    """Classify by line signs: all negative is a return, mixed signs an exchange."""
    negative = positive = False
    for q in quantities:
        negative = negative or q < 0
        positive = positive or q > 0
    if negative and positive:
        return "exchange"
    return "return" if negative else "sale"


def default_currency(ctx: AdapterContext, mapping_currency: str | None = None) -> str:
    """The store currency when the payload carries none.

    Order: the `X-Possync-Currency` header, a `currency` on the store config (forward-compatible:
    `StoreConfig` has no such key yet), the mapping's `currency`, then USD (the Edge, KWI, Rain
    and Logicmate are US products).
    """
    header = ctx.headers.get("x-possync-currency")
    if header:
        return header.strip().upper()
    configured = getattr(ctx.store, "currency", None)
    if isinstance(configured, str) and configured:
        return configured.upper()
    if mapping_currency:
        return mapping_currency.upper()
    return "USD"


def source_ref(*parts: str | None) -> str | None:
    """A short reference to the raw payload (source, topic, delivery or file, row)."""
    text = ":".join(p for p in parts if p)
    return text[:256] or None


class Dropped:
    """An item that was read fine but is deliberately not ingested (counted by reason)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Unit = Callable[[], "list[Record] | Dropped"]


def run_items(out: Parsed, units: Iterable[tuple[int, Unit]], *, single: bool) -> None:
    """Run each item's builder; an item's records land all together or not at all.

    With `single`, the payload is one item and its failure raises (nothing is returned).
    """
    for index, unit in units:
        try:
            result = unit()
        except RecordInvalid as err:
            if single:
                raise
            out.reject(index, err.message, err.field)
            continue
        if isinstance(result, Dropped):
            out.dropped[result.reason] = out.dropped.get(result.reason, 0) + 1
        else:
            out.records.extend(result)


def keep_last(records: list[Record]) -> list[Record]:
    """Collapse repeats of a natural key inside one payload: the last row wins."""
    last: dict[tuple[str, str], int] = {}
    for i, record in enumerate(records):
        last[(type_of(record), record.id)] = i
    if len(last) == len(records):
        return records
    return [r for i, r in enumerate(records) if last[(type_of(r), r.id)] == i]


def enumerate_objs(values: Any, path: str) -> Iterator[tuple[int, Any, str]]:
    """(index, value, path) for each element of a JSON array."""
    if not isinstance(values, list):
        raise RecordInvalid(f"expected an array, got {_kind(values)}", field=path)
    for i, value in enumerate(values):
        yield i, value, f"{path}[{i}]"
