"""The mapping-driven adapter: one instance per source name, reading with the store's spec."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from worker.adapters.base import AdapterContext, Parsed, Rejection
from worker.adapters.mapping.build import (
    Item,
    check_columns,
    iter_items,
    record_type_for,
)
from worker.adapters.mapping.spec import (
    CSV_TYPES,
    JSON_TYPES,
    MappingSpec,
    _resolve,
    compile_spec,
    reachable_types,
)
from worker.adapters.mapping.values import csv_header, iter_csv_rows, iter_json_rows
from worker.adapters.native import Dropped, decode_json, keep_last
from worker.config import RulePolicy
from worker.errors import RecordInvalid, UnsupportedMediaType

# Rules a correct export of these POS cannot satisfy (docs/adapters.md, "Default rule policy").
# `void.target`: their exports are snapshots that state each transaction's status at export
# time, so a transaction voided before the export is in it only as voided: the void of a
# sale possync never saw is the normal case. It is kept (warning), and a later delivery of
# the sale ends voided. A store can set `rules = { "void.target" = "quarantine" }`.
_SNAPSHOT: Mapping[str, RulePolicy] = MappingProxyType({"void.target": "warn"})
RULE_DEFAULTS: Mapping[str, Mapping[str, RulePolicy]] = MappingProxyType(
    {
        name: _SNAPSHOT
        for name in ("rain", "like_sew", "jewel360", "music_shop_360", "kwi", "logicmate")
    }
)


class MappingAdapter:
    """A mapping-driven source (`rain`, `like_sew`, `jewel360`, `music_shop_360`, `kwi`, `logicmate`).

    `ctx.mapping` (from `load_mapping(...).as_context()`) wins; without it the built-in mapping
    named after the source is used (read once, on first use).
    """

    signed = False
    rule_defaults: Mapping[str, RulePolicy]

    def __init__(self, name: str, brand: str | None = None) -> None:
        self.name = name
        self.brand = brand
        self.rule_defaults = RULE_DEFAULTS.get(name, MappingProxyType({}))
        self._builtin: MappingSpec | None = None

    def spec_for(self, ctx: AdapterContext) -> MappingSpec:
        """The mapping this payload is read with (the store's, compiled once at start-up)."""
        if ctx.spec is not None:
            return ctx.spec
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
        items: Iterator[Item]
        if spec.format == "json":
            rows = list(iter_json_rows(decode_json(body), spec))
            items = iter_items(rows, spec, ctx, contiguous=False)
        else:
            try:
                text = body.decode(spec.encoding)
            except UnicodeDecodeError as exc:
                raise RecordInvalid(
                    f"not {spec.encoding} text (byte {exc.start}); set the mapping's `encoding`",
                    field="$",
                ) from None
            check_header(spec, csv_header(text, spec), ctx.filename or ctx.topic)
            items = iter_items(
                iter_csv_rows(io.StringIO(text, newline=""), spec), spec, ctx, contiguous=False
            )
        # Straight into `out`, not via a list of every item: past the cap a rejection is
        # only counted (sales rejected at the end, when grouped, are sorted in by `reject`).
        for item in items:
            if isinstance(item, Rejection):
                out.reject(item.index, item.error, item.field)
            elif isinstance(item, Dropped):
                out.dropped[item.reason] = out.dropped.get(item.reason, 0) + 1
            else:
                out.records.append(item)
        if out.rejected_count == 1 and not out.records and not out.dropped:
            only = out.rejected[0]
            raise RecordInvalid(only.error, field=only.field)
        out.records = keep_last(out.records)
        return out


def check_header(spec: MappingSpec, header: list[str], name: str | None) -> None:
    """RecordInvalid naming the column when a CSV header lacks one its record types require.

    `name` is the file name (or topic) that may select the record type.
    """
    file_type = record_type_for(spec, name)
    if spec.record_column is not None:
        check_columns(spec, header, reachable_types(spec))
    elif file_type is not None and file_type != "skip":
        check_columns(spec, header, [file_type])


def csv_items(lines: Iterator[str], spec: MappingSpec, ctx: AdapterContext) -> Iterator[Item]:
    """Streaming read of a CSV export from its text lines, in bounded memory.

    The header (first line) is checked as `parse` checks it (by `ctx.filename`), then each
    customer, product or sale is yielded as its rows end (`iter_items(contiguous=True)`: a
    sale's rows must be adjacent), with rejections and drops in between.
    """
    first = next(lines, None)
    if first is None:
        return
    check_header(spec, csv_header(first, spec), ctx.filename)
    rows = iter_csv_rows(itertools.chain([first], lines), spec)
    yield from iter_items(rows, spec, ctx, contiguous=True)
