"""Mapping specs: the TOML table's shape, loading (built-ins, `extends`) and validation.

A spec names, per canonical field, the column (CSV header) or dotted JSON path that holds
it. `load_mapping` resolves a store's mapping, merges what it extends and validates it;
every problem is a `ConfigError` naming the key. `mapped_columns` is the set of columns a
spec reads: every other column of a row is kept in the record's `attributes`.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

import msgspec

from worker.config import Config, StoreConfig
from worker.errors import ConfigError

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
    # Consent cells that are yes/no flags: "opt_in" (yes = opted_in, no = unknown: not
    # opting in is not an opt-out) or "blocked" (a do-not-contact flag: yes = opted_out,
    # no = unknown: not blocked is not an opt-in). Cells reading opted_in / opted_out /
    # unknown are taken as they are.
    flag: Literal["opt_in", "blocked"] = "opt_in"


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
    # Only "none": a sale whose export has no payment columns gets no tender and
    # `tenders_known = false` (a tender is never made up from our own total).
    tender_fallback: Literal["none"] = "none"
    # Per-line columns the mapping does not map: "keep" as sale attributes `lines[N].<header>`
    # (N = the line's position, from 0), or "drop" (documented per source).
    line_attributes: Literal["keep", "drop"] = "keep"
    address_kind: str | None = None  # `kind` of the address in [customer] (e.g. "physical")
    customer: dict[str, Field] = {}
    product: dict[str, Field] = {}
    sale: dict[str, Field] = {}
    line: dict[str, Field] = {}
    tender: dict[str, Field] = {}
    customer_tags: dict[str, Field] = {}  # "prefix" -> field: tag "prefix:value"
    # More addresses: kind -> {line1, line2, city, region, postal_code, country_code} -> field.
    customer_addresses: dict[str, dict[str, Field]] = {}
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
        "discount": "decimal",
        "rounding": "decimal",
        "tax_included": "bool",
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
    "tender": {"method": "short", "amount": "decimal", "reference": "short", "method_id": "short"},
}
ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country_code")
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
    extra = raw.get("customer_addresses")
    if isinstance(extra, Mapping):
        raw["customer_addresses"] = {
            kind: (
                {k: ({"column": v} if isinstance(v, str) else v) for k, v in parts.items()}
                if isinstance(parts, Mapping)
                else parts
            )
            for kind, parts in extra.items()
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
    for kind, parts in spec.customer_addresses.items():
        if not parts:
            raise fail("an address needs at least one part", f"customer_addresses.{kind}")
        for part, f in parts.items():
            key = f"customer_addresses.{kind}.{part}"
            if part not in ADDRESS_PARTS:
                raise fail(
                    f"unknown address part {part!r} (known: {', '.join(ADDRESS_PARTS)})", key
                )
            _check_field(f, "text", key, fail)
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
    if f.flag != "opt_in" and kind != "consent":
        raise fail("`flag` is for consent fields (marketing_email, marketing_sms)", key)
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


_SECTIONS_OF: dict[RecordType, tuple[str, ...]] = {
    "customer": ("customer", "customer_tags"),
    "product": ("product", "product_attributes"),
    "sale": ("sale", "line", "tender"),
}


def mapped_columns(spec: MappingSpec, record_type: RecordType) -> frozenset[str]:
    """The columns (or JSON paths) a record type reads; the rest go into its `attributes`."""
    fields: list[Field] = []
    for section in _SECTIONS_OF[record_type]:
        fields.extend(getattr(spec, section).values())
    if record_type == "customer":
        for parts in spec.customer_addresses.values():
            fields.extend(parts.values())
    columns = {f.column for f in fields if f.column is not None}
    if spec.record_column is not None:
        columns.add(spec.record_column)
    return frozenset(columns)
