"""The declarative mapping adapter: CSV or JSON exports described by a TOML table.

Used by the sources with no public field list (Rain and its brands Like Sew, Jewel360 and
Music Shop 360; KWI; Logicmate). A mapping says, per canonical field, which column (CSV header)
or JSON path (dotted, `customer.id`, `lines[0].sku`) holds it, plus how to read dates, decimals,
booleans and enumerations, how rows group into sales, and which record type each file or row is.

Where a mapping comes from (`load_mapping(cfg, store)`, at start-up):

1. `StoreConfig.mapping` names a `[mappings.NAME]` table in the config, else a built-in file
   `worker/adapters/mappings/NAME.toml`; without `mapping`, the built-in named after the
   store's `source` is used.
2. A table may say `extends = "rain"` (a built-in or another table) and override only what
   differs: tables merge key by key, the overriding side wins.
3. The result is validated (unknown keys, unknown canonical fields, bad strptime formats,
   enumeration values, required fields per record type) and any problem raises `ConfigError`
   naming the key. `MappingSpec.as_context()` is what goes into `AdapterContext.mapping`.

Reading (`parse`, or the iterator pair `iter_csv_rows` + `iter_items` for streaming backfills):

- Rows are read one by one (csv module over a text stream). Columns a mapping names but the
  file lacks read as empty, except required ones (record id, sale time): a missing required
  column rejects the whole file naming the column.
- Sales: rows sharing the `sale.id` value form one sale; each row with line data is a line.
  `parse` groups the whole file; `iter_items(contiguous=True)` keeps memory bounded and needs a
  sale's rows to be adjacent (a sale id that reappears later is rejected, not half-merged).
- Signs: negative-quantity lines are returns; mixed signs make an exchange (Rain's convention:
  the returned and the new items are lines of one transaction). A row whose amount and
  quantity disagree in sign is read as a return of that quantity.
- Times without an offset are store-local (`ctx.zone`, `tz_assumed=True`). Two-digit years
  (`%y`) that would land in the future are read in the previous century (birth dates).
- Decimals: currency symbols, thousands separators and spaces are stripped; `(12.50)` and
  `12.50-` are negative; a decimal comma is supported (`numbers.decimal_point = ","`).
- Versions: `updated_at`/`version` when mapped, else the push's `received_at`, so a later
  delivery of a row supersedes an earlier one.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from worker.adapters.base import AdapterContext, Parsed, Rejection
from worker.adapters.native import (
    ZERO,
    Dropped,
    build,
    check_amount,
    decode_json,
    default_currency,
    divide,
    keep_last,
    local_instant,
    sale_kind,
    source_ref,
    to_decimal,
)
from worker.config import Config, RulePolicy, StoreConfig
from worker.errors import ConfigError, RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Record, Sale, Void, sum_decimals

RecordType = Literal["customer", "product", "sale"]
Target = Literal["customer", "product", "sale", "skip"]

DEFAULT_DATE_FORMATS = [
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%m/%d/%y %H:%M:%S",
    "%m/%d/%y %H:%M",
    "%m/%d/%y",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
]
CSV_TYPES = frozenset(
    {
        "text/csv",
        "application/csv",
        "text/plain",
        "application/vnd.ms-excel",
        "application/octet-stream",
        "",
    }
)
JSON_TYPES = frozenset({"application/json", "text/json", "application/octet-stream", ""})


_TRUE = ("y", "yes", "true", "t", "1", "x", "on")
_FALSE = ("n", "no", "false", "f", "0", "off")


class Field(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where one canonical field comes from. In TOML, a bare string is `column`."""

    column: str | None = None  # CSV header, or dotted JSON path inside a row
    value: str | None = None  # a constant instead of a column
    formats: list[str] | None = None  # strptime formats for this field (else `date_formats`)
    default: str | None = None  # used when the cell is empty
    values: dict[str, str] = {}  # translation of cell values (case-insensitive), e.g. {Y = "true"}
    split: str | None = None  # tags: split the cell on this separator


class Numbers(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How decimal cells are written."""

    thousands: str = ","
    decimal_point: str = "."
    symbols: str = "$€£¥"
    parens_negative: bool = True
    trailing_minus: bool = True


class MappingSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A validated mapping (see the module docstring and docs/adapters.md)."""

    name: str
    description: str | None = None
    extends: str | None = None
    brand: str | None = None
    format: Literal["csv", "json"] = "csv"
    delimiter: str = ","
    quotechar: str = '"'
    encoding: str = "utf-8-sig"
    rows: str = ""  # JSON: dotted path to the array of rows; "" is the document itself
    record: RecordType | None = None
    record_column: str | None = None
    record_values: dict[str, Target] = {}
    files: dict[str, Target] = {}  # file-name glob (case-insensitive) -> record type
    currency: str | None = None
    date_formats: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DATE_FORMATS))
    numbers: Numbers = Numbers()
    true_values: list[str] = msgspec.field(default_factory=lambda: [*_TRUE])
    false_values: list[str] = msgspec.field(default_factory=lambda: [*_FALSE])
    tenders: Literal["first", "distinct", "each"] = "first"
    tender_fallback: Literal["none", "total"] = "none"
    customer: dict[str, Field] = {}
    product: dict[str, Field] = {}
    sale: dict[str, Field] = {}
    line: dict[str, Field] = {}
    tender: dict[str, Field] = {}
    customer_tags: dict[str, Field] = {}  # "prefix" -> field: tag "prefix:value"
    product_attributes: dict[str, Field] = {}  # attribute name -> field

    def as_context(self) -> dict[str, Any]:
        """The plain-dict form that goes into `AdapterContext.mapping`."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


# Canonical fields each section may name, with their value type.
_ENUMS: dict[str, tuple[str, ...]] = {
    "customer.status": ("active", "inactive", "deleted"),
    "product.status": ("active", "archived", "deleted", "sold"),
    "sale.channel": ("pos", "web", "other"),
    "sale.kind": ("sale", "return", "exchange"),
    "sale.status": ("completed", "voided", "open"),
    "line.line_kind": ("item", "gift_card", "fee", "service", "shipping", "deposit"),
}
SECTIONS: dict[str, dict[str, str]] = {
    "customer": {
        "id": "id",
        "first_name": "text",
        "last_name": "text",
        "email": "text",
        "phone": "text",
        "company": "text",
        "address_line1": "text",
        "address_line2": "text",
        "city": "short",
        "region": "short",
        "postal_code": "short",
        "country_code": "short",
        "birth_date": "date",
        "anniversary_date": "date",
        "marketing_email": "consent",
        "marketing_sms": "consent",
        "assigned_employee_id": "id",
        "linked_customer_id": "id",
        "tags": "tags",
        "notes": "text",
        "status": "enum",
        "created_at": "datetime",
        "updated_at": "datetime",
        "version": "int",
    },
    "product": {
        "id": "id",
        "sku": "short",
        "name": "text",
        "category": "text",
        "price": "decimal",
        "currency": "short",
        "parent_id": "id",
        "barcode": "short",
        "vendor": "text",
        "description": "text",
        "is_unique_piece": "bool",
        "status": "enum",
        "created_at": "datetime",
        "updated_at": "datetime",
        "version": "int",
    },
    "sale": {
        "id": "id",
        "occurred_at": "datetime",
        "customer_id": "id",
        "employee_id": "id",
        "original_id": "id",
        "display_number": "short",
        "location_id": "id",
        "register_id": "id",
        "channel": "enum",
        "currency": "short",
        "subtotal": "decimal",
        "tax": "decimal",
        "total": "decimal",
        "shipping": "decimal",
        "fees": "decimal",
        "tip": "decimal",
        "kind": "enum",
        "status": "enum",
        "updated_at": "datetime",
        "version": "int",
    },
    "line": {
        "sku": "short",
        "product_id": "id",
        "description": "text",
        "category": "text",
        "quantity": "decimal",
        "unit_price": "decimal",
        "amount": "decimal",
        "discount": "decimal",
        "tax": "decimal",
        "line_id": "id",
        "line_kind": "enum",
        "employee_id": "id",
        "original_line_id": "id",
        "restock": "bool",
    },
    "tender": {"method": "short", "amount": "decimal", "reference": "short"},
}
_FIELD_SECTIONS = (*SECTIONS, "customer_tags", "product_attributes")
_REQUIRED: dict[RecordType, tuple[tuple[str, str], ...]] = {
    "customer": (("customer", "id"),),
    "product": (("product", "id"),),
    "sale": (("sale", "id"), ("sale", "occurred_at")),
}
_CONSENT = ("opted_in", "opted_out", "unknown")
_LIMITS = {"text": 4096, "short": 256, "id": 256}


# -- loading -----------------------------------------------------------------------------


def builtin_names() -> list[str]:
    """Names of the mapping files shipped in `worker/adapters/mappings/`."""
    folder = resources.files("worker.adapters").joinpath("mappings")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def builtin_table(name: str) -> dict[str, Any] | None:
    """A shipped mapping file as a TOML table, or None."""
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        return None
    path = resources.files("worker.adapters").joinpath("mappings", f"{name}.toml")
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text(encoding="utf-8"))


def load_mapping(cfg: Config, store: StoreConfig) -> MappingSpec:
    """The store's mapping, merged over what it extends and validated (raises ConfigError)."""
    index = next((i for i, s in enumerate(cfg.stores) if s.id == store.id), 0)
    name = store.mapping or store.source
    field = f"$.stores[{index}].mapping" if store.mapping else f"$.stores[{index}].source"
    table, origin = _resolve(cfg.mappings, name, field, seen=())
    if store.brand and not table.get("brand"):
        table["brand"] = store.brand
    return compile_spec(table, origin)


def load_mappings(cfg: Config, sources: Iterable[str]) -> dict[str, MappingSpec]:
    """Validate, at start-up, the mapping of every store whose source is in `sources`.

    Store id -> spec. Stores of other sources are skipped even when they name a `mapping`
    (the_edge reads only a `fields` table: see `worker.adapters.mapping_context`).
    """
    wanted = set(sources)
    return {s.id: load_mapping(cfg, s) for s in cfg.stores if s.source in wanted}


def _resolve(
    tables: Mapping[str, Mapping[str, Any]], name: str, field: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], str]:
    if name in seen:
        raise ConfigError(
            f"mapping {name!r} extends itself ({' -> '.join((*seen, name))})", field=field
        )
    if name in tables:
        table, origin = dict(tables[name]), f"$.mappings.{name}"
    else:
        builtin = builtin_table(name)
        if builtin is None:
            raise ConfigError(
                f"unknown mapping {name!r}: not a [mappings.{name}] table and not a built-in "
                f"({', '.join(builtin_names())})",
                field=field,
            )
        table, origin = builtin, f"mappings/{name}.toml"
    table.setdefault("name", name)
    parent = table.get("extends")
    if parent is None:
        return table, origin
    if not isinstance(parent, str):
        raise ConfigError("`extends` must be a mapping name", field=f"{origin}.extends")
    base, _ = _resolve(tables, parent, f"{origin}.extends", (*seen, name))
    merged = _merge(base, table)
    merged["name"] = table["name"]
    return merged, origin


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def compile_spec(table: Mapping[str, Any], origin: str = "mapping") -> MappingSpec:
    """Validate a (merged) mapping table into a MappingSpec, or raise ConfigError naming the key."""
    raw = dict(table)
    for section in _FIELD_SECTIONS:
        fields = raw.get(section)
        if isinstance(fields, Mapping):
            raw[section] = {
                k: ({"column": v} if isinstance(v, str) else v) for k, v in fields.items()
            }
    try:
        spec = msgspec.convert(raw, MappingSpec)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = text.rsplit(" - at `", 1)
        path = at[1].rstrip("`").removeprefix("$") if len(at) == 2 else ""
        unknown = re.search(r"unknown field `([^`]+)`", text)
        if unknown:
            path = f"{path}.{unknown.group(1)}"
        raise ConfigError(f"{origin}: {at[0]}", field=f"{origin}{path}") from None
    _validate(spec, origin)
    return spec


def _validate(spec: MappingSpec, origin: str) -> None:
    def fail(message: str, key: str) -> ConfigError:
        return ConfigError(f"{origin}: {message}", field=f"{origin}.{key}")

    if len(spec.delimiter) != 1:
        raise fail("delimiter must be one character", "delimiter")
    if len(spec.quotechar) != 1:
        raise fail("quotechar must be one character", "quotechar")
    try:
        codecs.lookup(spec.encoding)
    except LookupError:
        raise fail(f"unknown encoding {spec.encoding!r}", "encoding") from None
    if spec.currency is not None and not re.fullmatch(r"[A-Z]{3}", spec.currency):
        raise fail("currency must be an ISO-4217 code like USD", "currency")
    n = spec.numbers
    if len(n.decimal_point) != 1 or len(n.thousands) > 1 or n.thousands == n.decimal_point:
        raise fail(
            "decimal_point is one character; thousands is one character or empty, not the same",
            "numbers",
        )
    for fmt in spec.date_formats:
        _check_format(fmt, fail, "date_formats")
    if spec.record is None and spec.record_column is None and not spec.files:
        raise fail(
            "say which record type a file holds: `record`, `record_column` or `files`", "record"
        )
    if spec.record_column is not None and not spec.record_values:
        raise fail(
            "`record_column` needs `record_values` (cell value -> record type)", "record_values"
        )
    for section, names in SECTIONS.items():
        fields: dict[str, Field] = getattr(spec, section)
        for canonical, f in fields.items():
            key = f"{section}.{canonical}"
            kind = names.get(canonical)
            if kind is None:
                raise fail(f"unknown field {canonical!r} (known: {', '.join(names)})", key)
            _check_field(f, kind, key, fail)
    for section in ("customer_tags", "product_attributes"):
        for label, f in getattr(spec, section).items():
            _check_field(f, "text", f"{section}.{label}", fail)
    for record_type in reachable_types(spec):
        for section, canonical in _REQUIRED[record_type]:
            if canonical not in getattr(spec, section):
                raise fail(
                    f"{record_type} records need `{section}.{canonical}`", f"{section}.{canonical}"
                )
        if record_type == "sale" and not ({"unit_price", "amount"} & spec.line.keys()):
            raise fail("sale lines need `line.unit_price` or `line.amount`", "line.unit_price")


def reachable_types(spec: MappingSpec) -> set[RecordType]:
    """Every record type a file read with this mapping may hold."""
    targets: list[str] = [*spec.record_values.values(), *spec.files.values()]
    if spec.record:
        targets.append(spec.record)
    return {t for t in _RECORD_TYPES if t in targets}


_RECORD_TYPES: tuple[RecordType, ...] = ("customer", "product", "sale")


def _check_field(f: Field, kind: str, key: str, fail: Any) -> None:
    if (f.column is None) == (f.value is None):
        raise fail("give exactly one of `column` or `value`", key)
    for fmt in f.formats or []:
        _check_format(fmt, fail, f"{key}.formats")
    allowed: tuple[str, ...] | None = None
    if kind == "enum":
        allowed = _ENUMS[key]
    elif kind == "consent":
        allowed = (*_CONSENT, "true", "false")
    elif kind == "bool":
        allowed = ("true", "false")
    if allowed is not None:
        for target in (*f.values.values(), *([f.value] if f.value is not None else [])):
            if target.lower() not in allowed:
                raise fail(f"value {target!r} is not one of {', '.join(allowed)}", key)


def _check_format(fmt: str, fail: Any, key: str) -> None:
    sample = datetime(2001, 2, 3, 16, 5, 6, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(fmt), fmt)  # noqa: DTZ007 - a format round-trip check
    except ValueError:
        raise fail(f"bad date format {fmt!r}", key) from None


# -- reading rows ------------------------------------------------------------------------

Row = tuple[int, Mapping[str, Any]]


def iter_csv_rows(stream: Iterable[str], spec: MappingSpec) -> Iterator[Row]:
    """(index, {header: cell}) for each data row of a CSV text stream (header stripped)."""
    reader = csv.reader(stream, delimiter=spec.delimiter, quotechar=spec.quotechar)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip() for h in header]
        for index, cells in enumerate(reader):
            if not any(c.strip() for c in cells):
                continue
            yield index, dict(zip(names, cells, strict=False))
    except csv.Error as exc:
        raise RecordInvalid(f"unreadable CSV at line {reader.line_num}: {exc}", field="$") from None


def csv_header(text: str, spec: MappingSpec) -> list[str]:
    """The header row of a CSV text (stripped names)."""
    reader = csv.reader(io.StringIO(text), delimiter=spec.delimiter, quotechar=spec.quotechar)
    try:
        return [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise RecordInvalid(f"unreadable CSV header: {exc}", field="$") from None


def iter_json_rows(doc: Any, spec: MappingSpec) -> Iterator[Row]:
    """(index, row object) for each element of the array at `spec.rows`."""
    value = doc
    for part in [p for p in spec.rows.split(".") if p]:
        if not isinstance(value, dict) or part not in value:
            raise RecordInvalid(f"no `{spec.rows}` array in the document", field=f"$.{spec.rows}")
        value = value[part]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordInvalid(
            f"`{spec.rows or '$'}` is not an array of rows", field=f"$.{spec.rows}".rstrip(".")
        )
    for index, row in enumerate(value):
        yield index, row if isinstance(row, dict) else {"\0not-an-object": row}


_PATH_PART = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")


def _lookup(row: Mapping[str, Any], column: str, json_paths: bool) -> Any:
    if not json_paths or column in row:
        return row.get(column)
    value: Any = row
    for part in column.split("."):
        m = _PATH_PART.match(part)
        if m is None or not isinstance(value, dict):
            return None
        value = value.get(m.group(1))
        for idx in re.findall(r"\[(\d+)\]", m.group(2)):
            if not isinstance(value, list) or int(idx) >= len(value):
                return None
            value = value[int(idx)]
    return value


class _Reader:
    """Typed reads of mapped fields from one row; failures name the column."""

    __slots__ = ("ctx", "json", "spec")

    def __init__(self, spec: MappingSpec, ctx: AdapterContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.json = spec.format == "json"

    def raw(self, row: Mapping[str, Any], f: Field | None) -> tuple[Any, str]:
        if f is None:
            return None, ""
        if f.value is not None:
            return f.value, "value"
        column = f.column or ""
        value = _lookup(row, column, self.json)
        if isinstance(value, str):
            value = value.strip()
        if value in (None, "") and f.default is not None:
            value = f.default
        if isinstance(value, str) and f.values:
            value = _translate(value, f.values)
        return (None if value == "" else value), column

    def text(self, row: Mapping[str, Any], f: Field | None, limit: int = 4096) -> str | None:
        value, column = self.raw(row, f)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise RecordInvalid(f"expected text in `{column}`", field=column)
        return str(value)[:limit] or None

    def ident(self, row: Mapping[str, Any], f: Field | None) -> str | None:
        value = self.text(row, f, limit=4096)
        if value is not None and len(value) > 256:
            raise RecordInvalid("id longer than 256 characters", field=self.raw(row, f)[1])
        return value

    def decimal(self, row: Mapping[str, Any], f: Field | None) -> Decimal | None:
        value, column = self.raw(row, f)
        if value is None:
            return None
        if isinstance(value, str):
            return parse_decimal(value, self.spec.numbers, column)
        return to_decimal(value, column)

    def boolean(self, row: Mapping[str, Any], f: Field | None) -> bool | None:
        value, column = self.raw(row, f)
        if value is None or isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in self.spec.true_values or low == "true":
            return True
        if low in self.spec.false_values or low == "false":
            return False
        raise RecordInvalid(f"not a yes/no value: {low[:40]!r}", field=column)

    def integer(self, row: Mapping[str, Any], f: Field | None) -> int | None:
        value, column = self.raw(row, f)
        if value is None:
            return None
        text = str(value).strip().replace(self.spec.numbers.thousands or ",", "")
        if isinstance(value, bool) or not re.fullmatch(r"\d{1,19}", text) or int(text) >= 2**63:
            raise RecordInvalid("a version is an integer from 0 to 2^63-1", field=column)
        return int(text)

    def when(self, row: Mapping[str, Any], f: Field | None) -> tuple[datetime, bool, date] | None:
        """(UTC instant, zone assumed, local date)."""
        value, column = self.raw(row, f)
        if value is None:
            return None
        if not isinstance(value, str):
            raise RecordInvalid(f"expected a date or time in `{column}`", field=column)
        formats = (f.formats if f and f.formats else None) or self.spec.date_formats
        return parse_when(value, formats, self.ctx.zone, self.ctx.received_at, column)

    def day(self, row: Mapping[str, Any], f: Field | None) -> date | None:
        parsed = self.when(row, f)
        return parsed[2] if parsed else None

    def enum(self, row: Mapping[str, Any], f: Field | None, allowed: tuple[str, ...]) -> str | None:
        value = self.text(row, f, limit=256)
        if value is None:
            return None
        low = value.lower()
        if low not in allowed:
            raise RecordInvalid(
                f"{value[:40]!r} is not one of {', '.join(allowed)}", field=self.raw(row, f)[1]
            )
        return low

    def consent(self, row: Mapping[str, Any], f: Field | None) -> str | None:
        value = self.text(row, f, limit=256)
        if value is None:
            return None
        low = value.lower()
        if low in _CONSENT:
            return low
        flag = self.boolean(row, Field(value=low))
        return None if flag is None else ("opted_in" if flag else "opted_out")


def _translate(value: str, values: Mapping[str, str]) -> str:
    if value in values:
        return values[value]
    low = value.lower()
    for key, target in values.items():
        if key.lower() == low:
            return target
    return value


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def parse_decimal(text: str, numbers: Numbers, field: str) -> Decimal | None:
    """A report-style decimal: "$1,234.50", "(12.00)", "12.00-", "1.234,50" with a decimal comma."""
    s = "".join(ch for ch in text if ch not in numbers.symbols and not ch.isspace())
    s = re.sub(r"^(?:[A-Z]{3})|(?:[A-Z]{3})$", "", s)  # "USD 12.00", "12.00USD"
    if not s:
        return None
    negative = False
    if numbers.parens_negative and s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1]
    if numbers.trailing_minus and s.endswith("-"):
        negative, s = not negative, s[:-1]
    if numbers.thousands:
        s = s.replace(numbers.thousands, "")
    if numbers.decimal_point != ".":
        s = s.replace(numbers.decimal_point, ".")
    if len(s) > 40 or not _NUMBER.match(s):
        raise RecordInvalid(f"not a decimal amount: {text[:40]!r}", field=field)
    value = Decimal(s)
    if negative:
        value = -value
    check_amount(value, field)
    return value


def parse_when(
    text: str, formats: Iterable[str], zone: ZoneInfo, received_at: datetime, field: str
) -> tuple[datetime, bool, date]:
    """A cell as (UTC instant, zone assumed, local date); 2-digit years never land in the future."""
    text = text.strip()
    for fmt in formats:
        try:
            parsed = datetime.strptime(text, fmt)  # noqa: DTZ007 - zone applied below
        except ValueError:
            continue
        if "%y" in fmt and parsed.date() > (received_at + timedelta(days=1)).date():
            try:
                parsed = parsed.replace(year=parsed.year - 100)
            except ValueError:  # 29 February of a non-leap year a century earlier
                parsed = parsed.replace(year=parsed.year - 100, day=28)
        return _placed(parsed, zone, field)
    iso: datetime | None = None
    try:
        iso = datetime.fromisoformat(text) if len(text) <= 64 else None
    except ValueError:
        iso = None
    if iso is None:
        raise RecordInvalid(f"not a date/time in a known format: {text[:40]!r}", field=field)
    return _placed(iso, zone, field)


def _placed(parsed: datetime, zone: ZoneInfo, field: str) -> tuple[datetime, bool, date]:
    if parsed.tzinfo is None:
        return local_instant(parsed, zone, field), True, parsed.date()
    try:
        instant = parsed.astimezone(UTC)
    except OverflowError:
        raise RecordInvalid("time out of range", field=field) from None
    return instant, False, instant.astimezone(zone).date()


# -- building records --------------------------------------------------------------------

Item = Record | Rejection | Dropped


def record_type_for(spec: MappingSpec, filename: str | None) -> RecordType | Literal["skip"] | None:
    """The record type of a whole file (per-row types come from `record_column`)."""
    if spec.files and filename:
        base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
        for pattern, target in spec.files.items():
            if fnmatch.fnmatchcase(base, pattern.lower()):
                return target
    return spec.record


def _row_type(spec: MappingSpec, reader: _Reader, row: Mapping[str, Any], file_type: Any) -> Target:
    if spec.record_column is None:
        return file_type  # type: ignore[no-any-return]
    value, column = reader.raw(row, Field(column=spec.record_column))
    text = "" if value is None else str(value).strip()
    target = _translate(text, spec.record_values) if text else ""
    if target not in ("customer", "product", "sale", "skip"):
        raise RecordInvalid(f"record type {text[:40]!r} is not in record_values", field=column)
    return target  # type: ignore[return-value]


def check_columns(spec: MappingSpec, header: list[str], types: Iterable[RecordType]) -> None:
    """A CSV lacking a required column cannot be read: RecordInvalid naming the column."""
    present = set(header)
    for record_type in types:
        for section, canonical in _REQUIRED[record_type]:
            f = getattr(spec, section).get(canonical)
            if f is not None and f.column is not None and f.column not in present:
                raise RecordInvalid(
                    f"the file has no `{f.column}` column (mapped to {section}.{canonical}); "
                    "adapt the store's mapping to the export",
                    field=f.column,
                )
    if spec.record_column is not None and spec.record_column not in present:
        raise RecordInvalid(
            f"the file has no `{spec.record_column}` column (record_column)",
            field=spec.record_column,
        )


def iter_items(
    rows: Iterable[Row], spec: MappingSpec, ctx: AdapterContext, *, contiguous: bool = True
) -> Iterator[Item]:
    """Records, rejections (by row index) and drops, in file order.

    With `contiguous`, a sale is flushed when the next row belongs to another sale (bounded
    memory, for streaming); otherwise all rows of a sale id are gathered first.
    """
    reader = _Reader(spec, ctx)
    file_type = record_type_for(spec, ctx.filename)
    if spec.record_column is None and file_type is None:
        raise RecordInvalid(
            f"the mapping does not say which records {ctx.filename or 'this file'!r} holds (files/record)",
            field="filename",
        )
    ref_base = spec.brand or spec.name
    pending: dict[str, list[Row]] = {}
    done: set[str] = set()
    current: str | None = None
    for index, row in rows:
        if "\0not-an-object" in row:
            yield Rejection(index, "expected an object", f"$[{index}]")
            continue
        try:
            target = _row_type(spec, reader, row, file_type)
            sale_key = reader.ident(row, spec.sale.get("id")) if target == "sale" else None
        except RecordInvalid as err:
            yield Rejection(index, err.message, err.field)
            continue
        if target == "skip":
            yield Dropped("skipped_row")
            continue
        if target != "sale":
            yield from _one(
                index, lambda r=row, t=target, i=index: _entity(reader, r, t, ref_base, ctx, i)
            )
            continue
        if sale_key is None:
            column = spec.sale["id"].column or "sale.id"
            yield Rejection(index, f"missing sale id in `{column}`", column)
            continue
        if contiguous and sale_key != current and current is not None:
            yield from _flush_sale(reader, current, pending.pop(current), ref_base, ctx)
            done.add(current)
        if contiguous and sale_key in done:
            yield Rejection(
                index,
                f"rows of sale {sale_key!r} are not adjacent; sort the export by sale",
                spec.sale["id"].column,
            )
            continue
        pending.setdefault(sale_key, []).append((index, row))
        current = sale_key
    for key, group in pending.items():
        yield from _flush_sale(reader, key, group, ref_base, ctx)


def _one(index: int, make: Any) -> Iterator[Item]:
    try:
        yield make()
    except RecordInvalid as err:
        yield Rejection(index, err.message, err.field)


def _flush_sale(
    reader: _Reader, key: str, group: list[Row], ref: str, ctx: AdapterContext
) -> Iterator[Item]:
    try:
        result = _sale(reader, key, group, ref, ctx)
    except RecordInvalid as err:
        yield Rejection(group[0][0], err.message, err.field)
        return
    if isinstance(result, Dropped):
        yield result
    else:
        yield from result


def _version_fields(
    reader: _Reader, row: Mapping[str, Any], section: dict[str, Field], ctx: AdapterContext
) -> dict[str, Any]:
    updated = reader.when(row, section.get("updated_at"))
    version = reader.integer(row, section.get("version"))
    return {
        "updated_at": updated[0] if updated else (None if version is not None else ctx.received_at),
        "version": version,
    }


def _entity(
    reader: _Reader, row: Mapping[str, Any], target: str, ref: str, ctx: AdapterContext, index: int
) -> Record:
    spec = reader.spec
    if target == "customer":
        return _customer(reader, row, spec, source_ref(ref, ctx.filename, f"row{index}"), ctx)
    return _product(reader, row, spec, source_ref(ref, ctx.filename, f"row{index}"), ctx)


def _customer(
    reader: _Reader, row: Mapping[str, Any], spec: MappingSpec, ref: str | None, ctx: AdapterContext
) -> Customer:
    c = spec.customer
    customer_id = reader.ident(row, c.get("id"))
    if customer_id is None:
        raise RecordInvalid("missing customer id", field=c["id"].column or "customer.id")
    tags: list[str] = []
    tag_field = c.get("tags")
    if tag_field is not None:
        cell = reader.text(row, tag_field)
        if cell:
            parts = cell.split(tag_field.split) if tag_field.split else [cell]
            tags.extend(p.strip()[:256] for p in parts if p.strip())
    for prefix, f in spec.customer_tags.items():
        value = reader.text(row, f, limit=200)
        if value:
            tags.append(f"{prefix}:{value}"[:256])
    address = {
        key: reader.text(
            row, c.get(name), limit=_LIMITS["text" if key.startswith("line") else "short"]
        )
        for key, name in (
            ("line1", "address_line1"),
            ("line2", "address_line2"),
            ("city", "city"),
            ("region", "region"),
            ("postal_code", "postal_code"),
            ("country_code", "country_code"),
        )
    }
    created = reader.when(row, c.get("created_at"))
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": reader.text(row, c.get("first_name")),
            "last_name": reader.text(row, c.get("last_name")),
            "email": reader.text(row, c.get("email")),
            "phone": reader.text(row, c.get("phone")),
            "company": reader.text(row, c.get("company")),
            "address": address if any(address.values()) else None,
            "birth_date": reader.day(row, c.get("birth_date")),
            "anniversary_date": reader.day(row, c.get("anniversary_date")),
            "marketing_email": reader.consent(row, c.get("marketing_email")),
            "marketing_sms": reader.consent(row, c.get("marketing_sms")),
            "assigned_employee_id": reader.ident(row, c.get("assigned_employee_id")),
            "linked_customer_id": reader.ident(row, c.get("linked_customer_id")),
            "tags": tags,
            "notes": reader.text(row, c.get("notes")),
            "status": reader.enum(row, c.get("status"), _ENUMS["customer.status"]),
            "created_at": created[0] if created else None,
            **_version_fields(reader, row, c, ctx),
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


def _product(
    reader: _Reader, row: Mapping[str, Any], spec: MappingSpec, ref: str | None, ctx: AdapterContext
) -> Product:
    p = spec.product
    product_id = reader.ident(row, p.get("id"))
    if product_id is None:
        raise RecordInvalid("missing product id", field=p["id"].column or "product.id")
    attributes = {}
    for name, f in spec.product_attributes.items():
        value = reader.text(row, f)
        if value:
            attributes[name[:256]] = value
    created = reader.when(row, p.get("created_at"))
    currency = reader.text(row, p.get("currency"), limit=8)
    return build(
        Product,
        {
            "id": product_id,
            "sku": reader.text(row, p.get("sku"), limit=256),
            "name": reader.text(row, p.get("name")),
            "category": reader.text(row, p.get("category")),
            "price": reader.decimal(row, p.get("price")),
            "currency": currency.upper() if currency else None,
            "parent_id": reader.ident(row, p.get("parent_id")),
            "barcode": reader.text(row, p.get("barcode"), limit=256),
            "vendor": reader.text(row, p.get("vendor")),
            "description": reader.text(row, p.get("description")),
            "is_unique_piece": reader.boolean(row, p.get("is_unique_piece")),
            "status": reader.enum(row, p.get("status"), _ENUMS["product.status"]),
            "attributes": attributes,
            "created_at": created[0] if created else None,
            **_version_fields(reader, row, p, ctx),
            "source_ref": ref,
        },
        f"product {product_id}",
    )


_LINE_CELLS = ("sku", "product_id", "quantity", "unit_price", "amount", "description")


def _first(reader: _Reader, rows: list[Row], f: Field | None, read: Any) -> Any:
    """The first non-empty value of a header field across a sale's rows."""
    if f is None:
        return None
    for _, row in rows:
        value = read(row, f)
        if value is not None:
            return value
    return None


def _sale(
    reader: _Reader, sale_id: str, rows: list[Row], ref: str, ctx: AdapterContext
) -> list[Record] | Dropped:
    spec = reader.spec
    s, ln, tn = spec.sale, spec.line, spec.tender
    status = _first(
        reader, rows, s.get("status"), lambda r, f: reader.enum(r, f, _ENUMS["sale.status"])
    )
    when = _first(reader, rows, s.get("occurred_at"), reader.when)
    if when is None:
        column = s["occurred_at"].column or "sale.occurred_at"
        raise RecordInvalid(f"sale {sale_id} has no time in `{column}`", field=column)
    occurred, assumed, business = when
    sale_ref = source_ref(ref, ctx.filename, f"row{rows[0][0]}")
    if status == "open":
        return Dropped("open")
    if status == "voided":
        return [
            build(
                Void,
                {
                    "id": sale_id,
                    "occurred_at": occurred,
                    "reason": "voided",
                    "source_ref": sale_ref,
                },
                f"void {sale_id}",
            )
        ]
    lines: list[dict[str, Any]] = []
    tenders: list[dict[str, Any]] = []
    seen_tenders: set[tuple[Any, ...]] = set()
    for _, row in rows:
        if any(reader.raw(row, ln.get(k))[0] is not None for k in _LINE_CELLS if k in ln):
            lines.append(_line(reader, row))
        amount = reader.decimal(row, tn.get("amount"))
        if amount is None or (spec.tenders == "first" and tenders):
            continue
        tender = {
            "method": reader.text(row, tn.get("method"), limit=256) or "unspecified",
            "amount": amount,
            "reference": reader.text(row, tn.get("reference"), limit=256),
        }
        signature = (tender["method"], amount, tender["reference"])
        if spec.tenders == "distinct" and signature in seen_tenders:
            continue
        seen_tenders.add(signature)
        tenders.append(tender)
    net = sum_decimals(x["quantity"] * x["unit_price"] - x["discount"] for x in lines)
    line_tax = sum_decimals(x["tax"] for x in lines)

    def header(name: str) -> Decimal | None:
        return _first(reader, rows, s.get(name), reader.decimal)  # type: ignore[no-any-return]

    subtotal = header("subtotal")
    subtotal = net if subtotal is None else subtotal
    tax = header("tax")
    tax = line_tax if tax is None else tax
    shipping, fees, tip = (header(n) or ZERO for n in ("shipping", "fees", "tip"))
    total = header("total")
    total = subtotal + tax + shipping + fees + tip if total is None else total
    if not tenders and spec.tender_fallback == "total" and total != 0:
        tenders.append({"method": "unspecified", "amount": total})
    currency = _first(reader, rows, s.get("currency"), lambda r, f: reader.text(r, f, limit=8))
    kind = _first(reader, rows, s.get("kind"), lambda r, f: reader.enum(r, f, _ENUMS["sale.kind"]))
    first_row = rows[0][1]
    versions = _version_fields(reader, first_row, s, ctx)
    return [
        build(
            Sale,
            {
                "id": sale_id,
                "kind": kind or sale_kind(x["quantity"] for x in lines),
                "occurred_at": occurred,
                "tz_assumed": assumed,
                "business_date": business,
                "currency": (currency or "").upper() or spec.currency or default_currency(ctx),
                "lines": lines,
                "subtotal": subtotal,
                "tax": tax,
                "shipping": shipping,
                "fees": fees,
                "tip": tip,
                "total": total,
                "tenders": tenders,
                "customer_id": _first(reader, rows, s.get("customer_id"), reader.ident),
                "employee_id": _first(reader, rows, s.get("employee_id"), reader.ident),
                "original_id": _first(reader, rows, s.get("original_id"), reader.ident),
                "display_number": _first(
                    reader, rows, s.get("display_number"), lambda r, f: reader.text(r, f, 256)
                ),
                "location_id": _first(reader, rows, s.get("location_id"), reader.ident),
                "register_id": _first(reader, rows, s.get("register_id"), reader.ident),
                "channel": _first(
                    reader,
                    rows,
                    s.get("channel"),
                    lambda r, f: reader.enum(r, f, _ENUMS["sale.channel"]),
                ),
                **versions,
                "source_ref": sale_ref,
            },
            f"sale {sale_id}",
        )
    ]


def _line(reader: _Reader, row: Mapping[str, Any]) -> dict[str, Any]:
    ln = reader.spec.line
    quantity = reader.decimal(row, ln.get("quantity"))
    quantity = Decimal(1) if quantity is None else quantity
    unit = reader.decimal(row, ln.get("unit_price"))
    amount = reader.decimal(row, ln.get("amount"))
    discount = reader.decimal(row, ln.get("discount")) or ZERO
    if unit is None:
        if amount is None:
            column = (
                ln.get("unit_price") or ln.get("amount") or Field(column="line.unit_price")
            ).column
            raise RecordInvalid(
                "line has neither a unit price nor an amount", field=column or "line.unit_price"
            )
        if (amount < 0 < quantity) or (quantity < 0 < amount):  # signed amount, unsigned quantity
            quantity = -quantity
        if quantity == 0:
            quantity = Decimal(-1) if amount < 0 else Decimal(1)
        unit = divide(amount, quantity)
        discount += quantity * unit - amount  # rounding of the unit price, exact net
    return {
        "sku": reader.text(row, ln.get("sku"), limit=256) or "",
        "quantity": quantity,
        "unit_price": unit,
        "discount": discount,
        "tax": reader.decimal(row, ln.get("tax")) or ZERO,
        "product_id": reader.ident(row, ln.get("product_id")),
        "description": reader.text(row, ln.get("description")),
        "category": reader.text(row, ln.get("category")),
        "line_id": reader.ident(row, ln.get("line_id")),
        "line_kind": reader.enum(row, ln.get("line_kind"), _ENUMS["line.line_kind"]),
        "employee_id": reader.ident(row, ln.get("employee_id")),
        "original_line_id": reader.ident(row, ln.get("original_line_id")),
        "restock": reader.boolean(row, ln.get("restock")),
    }


# -- the adapter -------------------------------------------------------------------------


class MappingAdapter:
    """A mapping-driven source (`rain`, `like_sew`, `jewel360`, `music_shop_360`, `kwi`, `logicmate`).

    `ctx.mapping` (from `load_mapping(...).as_context()`) wins; without it the built-in mapping
    named after the source is used (read once, on first use).
    """

    signed = False
    rule_defaults: Mapping[str, RulePolicy] = MappingProxyType({})

    def __init__(self, name: str, brand: str | None = None) -> None:
        self.name = name
        self.brand = brand
        self._builtin: MappingSpec | None = None

    def spec_for(self, ctx: AdapterContext) -> MappingSpec:
        """The mapping this payload is read with."""
        if ctx.mapping is not None:
            return compile_spec(ctx.mapping, f"stores.{ctx.store.id}.mapping")
        if self._builtin is None:
            table, origin = _resolve({}, self.name, "source", seen=())
            if self.brand and not table.get("brand"):
                table["brand"] = self.brand
            self._builtin = compile_spec(table, origin)
        return self._builtin

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Read a whole export; each customer, product or sale stands or falls alone."""
        spec = self.spec_for(ctx)
        accepted = CSV_TYPES if spec.format == "csv" else JSON_TYPES
        if ctx.content_type not in accepted:
            raise UnsupportedMediaType(
                f"content type {ctx.content_type!r} not supported by mapping {spec.name!r} ({spec.format})",
                field="Content-Type",
            )
        out = Parsed()
        items: list[Item]
        if spec.format == "json":
            rows = list(iter_json_rows(decode_json(body), spec))
            items = list(iter_items(rows, spec, ctx, contiguous=False))
        else:
            try:
                text = body.decode(spec.encoding)
            except UnicodeDecodeError as exc:
                raise RecordInvalid(
                    f"not {spec.encoding} text (byte {exc.start}); set the mapping's `encoding`",
                    field="$",
                ) from None
            header = csv_header(text, spec)
            file_type = record_type_for(spec, ctx.filename)
            if spec.record_column is not None:
                check_columns(spec, header, reachable_types(spec))
            elif file_type is not None and file_type != "skip":
                check_columns(spec, header, [file_type])
            items = list(
                iter_items(
                    iter_csv_rows(io.StringIO(text, newline=""), spec), spec, ctx, contiguous=False
                )
            )
        for item in items:
            if isinstance(item, Rejection):
                out.rejected.append(item)
            elif isinstance(item, Dropped):
                out.dropped[item.reason] = out.dropped.get(item.reason, 0) + 1
            else:
                out.records.append(item)
        out.rejected.sort(key=lambda r: r.index)
        if len(out.rejected) == 1 and not out.records and not out.dropped:
            only = out.rejected[0]
            raise RecordInvalid(only.error, field=only.field)
        out.records = keep_last(out.records)
        return out
