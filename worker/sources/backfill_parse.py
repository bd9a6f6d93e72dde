"""Backfill NDJSON lines -> spool rows, off the event loop, validated once.

    LineSplitter lines of one network read (one `to_thread` per read, not per record)
        -> LEAN_DECODER (sale | void; money kept as the decimal strings received)
             + one money check per record (`MONEY`)
             -> origin "backfill", business date -> ENCODER -> (kind, id, version, origin, body)
        -> anything the lean decoder refuses: RECORD_DECODER, exactly as before
             (its error is the rejection; a customer or product is an entity for the sink;
              a sale with JSON-number money is encoded by the full encoder)

Invariants

* Same verdicts as the full decoder. The lean structs are derived field by field from
  `worker.records` (same names, order, defaults, constraints, struct options) with two
  changes that only make them stricter: `Decimal` becomes a string the `MONEY` pattern
  accepts (finite, below 1e12, at most 8 places: the checks of `_check_decimal`), and
  `datetime` must carry an offset (the check of `_check_aware`). Whatever the lean decoder
  refuses goes to the full decoder, so a rejection's message and field are today's.
* Same record. The lean body is the canonical JSON without the fields at their defaults
  (`omit_defaults`: ~60 % of the full encoding, and the spool's write cost grows with the
  bytes); `SPOOLED_DECODER` reads it back to exactly the record the full path would have
  spooled. `MONEY` takes only the strings that `str(Decimal(s))` returns unchanged (no
  leading zeros, no "+", nothing Decimal prints in exponent form), so every value is the
  full encoder's text (tests/test_backfill_parse.py holds both, with hypothesis).
"""

from __future__ import annotations

import operator
import re
import types
import typing
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Union, get_args, get_origin
from zoneinfo import ZoneInfo

import msgspec

from worker.buffers.base import SpoolRow
from worker.records import (
    DECODE_ERRORS,
    ENCODER,
    RECORD_DECODER,
    Customer,
    Product,
    Record,
    Sale,
    Void,
    business_date,
    invalid_from,
    version_of,
)

# A money string whose Decimal is finite, |v| < 1e12, <= 8 places, AND whose str() is the
# string itself: integer part without leading zeros, and no value that str(Decimal) prints
# in exponent form (adjusted exponent < -6, i.e. "0." followed by six zeros).
MONEY = re.compile(r"-?(?:0(?!\.0{6})|[1-9][0-9]{0,11})(?:\.[0-9]{1,8})?")

_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_LEAN: dict[type, type] = {}


def _lean_type(tp: Any) -> Any:
    """`tp` with Decimal -> str, datetime -> aware datetime, record structs -> lean ones."""
    if tp is Decimal:
        return str
    if tp is datetime:
        return _AwareDatetime
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return lean_struct(tp)
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        return Annotated[(_lean_type(base), *meta)]
    if origin in (Union, types.UnionType):
        args = [_lean_type(a) for a in get_args(tp)]
        out = args[0]
        for a in args[1:]:
            out = Union[out, a]  # noqa: UP007 - built at run time from a list
        return out
    if origin is list:
        return list[_lean_type(get_args(tp)[0])]  # type: ignore[misc]
    if origin is dict:
        key, value = get_args(tp)
        return dict[_lean_type(key), _lean_type(value)]  # type: ignore[misc]
    if any(a is Decimal or a is datetime for a in get_args(tp)):
        raise TypeError(f"no lean form for {tp!r}")
    return tp


def lean_struct(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """The lean twin of a record struct (module docstring); built once per class."""
    got = _LEAN.get(cls)
    if got is not None:
        return got
    hints = typing.get_type_hints(cls, include_extras=True)
    cfg = cls.__struct_config__
    fields: list[Any] = []
    for f in msgspec.structs.fields(cls):
        tp = _lean_type(hints[f.name])
        if f.default is not msgspec.NODEFAULT:
            default = str(f.default) if isinstance(f.default, Decimal) else f.default
            fields.append((f.name, tp, default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, tp))
    lean: type[msgspec.Struct] = msgspec.defstruct(
        f"Lean{cls.__name__}",
        fields,
        frozen=cfg.frozen,
        forbid_unknown_fields=cfg.forbid_unknown_fields,
        kw_only=True,
        gc=cfg.gc,  # untracked like the records (they hold no cycles): no young collections
        tag=cfg.tag,
        tag_field=cfg.tag_field,
        # Encoded without the fields at their defaults: the spooled body is about 60 % of the
        # full encoding (the spool's write cost grows with it), and decodes to the same record.
        omit_defaults=True,
        rename=None,
        module=__name__,
    )
    _LEAN[cls] = lean
    return lean


# Typed Any: their fields exist only at run time (mypy cannot see a defstruct's fields).
LeanSale: Any = lean_struct(Sale)
LeanVoid: Any = lean_struct(Void)
LEAN_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[LeanSale, LeanVoid])  # noqa: UP007

# The money fields `_money_ok` checks, spelled out for speed; tests/test_backfill_parse.py
# derives them from the record types and holds these to them.
SALE_MONEY = ("subtotal", "tax", "total", "shipping", "fees", "tip", "rounding")
SALE_OPTIONAL_MONEY = ("discount",)
LINE_MONEY = ("quantity", "unit_price", "discount", "tax")
TENDER_MONEY = ("amount",)
ADJUSTMENT_MONEY = ("amount",)

Row = SpoolRow  # what the spool's row append takes


_SALE_GET = operator.attrgetter(*SALE_MONEY)
_LINE_GET = operator.attrgetter(*LINE_MONEY)
# Every money string of a record joined by NUL: one regex call instead of one per field.
# A value holding a NUL itself would shift the fields, so the NUL count is checked too.
# Possessive (`*+`): a value cannot hold a NUL, so each repetition can match only one way,
# and there is nothing to backtrack into (about 10 % faster).
_MONEY_LIST = re.compile(f"(?:{MONEY.pattern}\x00)*+{MONEY.pattern}")


def _money_ok(s: Any) -> bool:
    """Every money string of a lean sale passes `MONEY` (the Decimal checks, see above)."""
    values: list[str] = [*_SALE_GET(s)]
    if s.discount is not None:
        values.append(s.discount)
    for line in s.lines:
        values += _LINE_GET(line)
    for t in s.tenders:
        values.append(t.amount)
    for a in s.adjustments:
        values.append(a.amount)
    text = "\x00".join(values)
    return text.count("\x00") == len(values) - 1 and _MONEY_LIST.fullmatch(text) is not None


class Chunk:
    """What one slice of lines became: spool rows, sink entities, rejections, line count."""

    __slots__ = ("entities", "nbytes", "records", "rejected", "rows")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.nbytes = 0
        self.entities: list[Customer | Product] = []
        # (record index, line number, byte position in the body, error, field)
        self.rejected: list[tuple[int, int, int, str, str | None]] = []
        self.records = 0


def mark_history(record: Sale, zone: ZoneInfo) -> None:
    """Set `origin="backfill"` and the business date on a sale the parser just built, in place.

    `msgspec.structs.replace` would re-run every field check of the sale; nothing else holds
    the object yet, so setting the two (valid) values directly is safe.
    """
    if record.origin != "backfill":
        msgspec.structs.force_setattr(record, "origin", "backfill")
    if record.business_date is None:
        msgspec.structs.force_setattr(
            record, "business_date", business_date(record.occurred_at, zone)
        )


def row_of(record: Sale | Void, zone: ZoneInfo) -> Row:
    """A fully decoded sale or void as a backfill spool row (origin, business date set)."""
    if type(record) is Sale:
        mark_history(record, zone)
        version = version_of(record.version, record.updated_at)
        return ("sale", record.id, version, "backfill", ENCODER.encode(record))
    return ("void", record.id, record.version or 0, "pos", ENCODER.encode(record))


def parse_lines(
    lines: Iterable[tuple[int, int, bytes | None]], zone: ZoneInfo, max_line: int, index: int
) -> Chunk:
    """Decode NDJSON lines into a `Chunk` (runs on a worker thread: pure, no loop state).

    `index` is the record index of the first line (rejections are numbered from it).
    """
    out = Chunk()
    rows = out.rows
    lean = LEAN_DECODER.decode
    encode = ENCODER.encode
    force = msgspec.structs.force_setattr
    nbytes = 0
    for line_no, pos, line in lines:
        if line is None:
            out.rejected.append(
                (index + out.records, line_no, pos, f"line longer than {max_line} bytes", "$")
            )
            out.records += 1
            continue
        if not line:
            continue  # blank lines are not records
        out.records += 1
        try:
            r = lean(line)
        except DECODE_ERRORS:
            r = None
        if type(r) is LeanSale and _money_ok(r):
            if r.origin != "backfill":
                force(r, "origin", "backfill")
            if r.business_date is None:
                force(r, "business_date", business_date(r.occurred_at, zone))
            body = encode(r)
            rows.append(("sale", r.id, version_of(r.version, r.updated_at), "backfill", body))
            nbytes += len(body)
            continue
        if type(r) is LeanVoid:
            body = encode(r)
            rows.append(("void", r.id, r.version or 0, "pos", body))
            nbytes += len(body)
            continue
        # The exact path: today's decoder decides, and names the error.
        try:
            full: Record = RECORD_DECODER.decode(line)
        except DECODE_ERRORS as exc:
            err = invalid_from(exc)
            out.rejected.append((index + out.records - 1, line_no, pos, err.message, err.field))
            continue
        if isinstance(full, Sale | Void):
            row = row_of(full, zone)
            rows.append(row)
            nbytes += len(row[4])
        else:
            out.entities.append(full)
    out.nbytes = nbytes
    return out
