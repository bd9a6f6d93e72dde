"""Reading a mapped export's rows and typed values: CSV/JSON rows, decimals, dates, consent.

Every reader names the column (CSV header or JSON path) when a cell cannot be read, by
raising `RecordInvalid`. `leftovers` collects what the mapping does not map, for the
record's `attributes`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from worker.adapters.base import AdapterContext
from worker.adapters.mapping.spec import _CONSENT, Field, MappingSpec, Numbers
from worker.adapters.native import check_amount, local_instant, to_decimal
from worker.errors import RecordInvalid

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


def lookup(row: Mapping[str, Any], column: str, json_paths: bool) -> Any:
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


class Reader:
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
        value = lookup(row, column, self.json)
        if isinstance(value, str):
            value = value.strip()
        if value in (None, "") and f.default is not None:
            value = f.default
        if isinstance(value, str) and f.values:
            value = translate(value, f.values)
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
        if flag is None or f is None:
            return None
        if f.flag == "blocked":  # do-not-contact: set = opted out, clear = not blocked
            return "opted_out" if flag else "unknown"
        return "opted_in" if flag else "unknown"  # an opt-in box left empty is no opt-out


def translate(value: str, values: Mapping[str, str]) -> str:
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


ATTRIBUTE_LIMIT = 256  # entries per record (records.Attributes)
ATTRIBUTE_TEXT = 4096  # characters per value


def cell_text(value: Any) -> str | None:
    """A cell as attribute text; empty cells (and JSON nulls) are None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def leftovers(row: Mapping[str, Any], mapped: frozenset[str], json_paths: bool) -> dict[str, str]:
    """The cells of a row the mapping does not map: header (or dotted JSON path) -> text.

    Empty cells are skipped. JSON objects are flattened (`customer.loyalty.tier`,
    `codes[0]`) except below a mapped path.
    """
    out: dict[str, str] = {}
    if not json_paths:
        for header, value in row.items():
            if header in mapped or header is None:
                continue
            text = cell_text(value)
            if text is not None:
                out[header] = text
        return out
    _flatten(row, "", mapped, out)
    return out


def _flatten(value: Any, path: str, mapped: frozenset[str], out: dict[str, str]) -> None:
    if path and path in mapped:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), mapped, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", mapped, out)
    else:
        text = cell_text(value)
        if text is not None and path:
            out[path] = text


def bounded(attributes: Mapping[str, str]) -> dict[str, str]:
    """Attributes within the record's limits: 256 entries, keys and values clipped."""
    out: dict[str, str] = {}
    for key, value in attributes.items():
        if len(out) >= ATTRIBUTE_LIMIT:
            break
        out[key[:256]] = value[:ATTRIBUTE_TEXT]
    return out


def version_fields(
    reader: Reader, row: Mapping[str, Any], section: dict[str, Field], ctx: AdapterContext
) -> dict[str, Any]:
    """`updated_at` / `version` when mapped, else the push's `received_at`."""
    updated = reader.when(row, section.get("updated_at"))
    version = reader.integer(row, section.get("version"))
    return {
        "updated_at": updated[0] if updated else (None if version is not None else ctx.received_at),
        "version": version,
    }
