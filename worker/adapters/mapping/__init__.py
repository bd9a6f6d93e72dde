"""The declarative mapping adapter: CSV or JSON exports described by a TOML table.

Modules by job: `spec` (the table, loading, validation), `values` (rows and typed cells),
`build` (row types, grouping, customers and products), `sales` (one sale from its rows),
`adapter` (`MappingAdapter`).

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
   naming the key. The compiled `MappingSpec` goes into `AdapterContext.spec` (built once
   per store at start-up, `worker.adapters.store_context`); `as_context()` is its dict form.

Reading (`parse`, or `csv_items` over text lines for streaming backfills):

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
- Columns no field maps are kept in the record's `attributes` under their header, exactly
  as the file has them (empty cells skipped); for sales see `worker.adapters.mapping.sales`.
- Figures are the export's own; a figure it does not state is the sum of the lines.
  Tenders only from payment columns (`tenders_known = false` without any).
- Consent is three-valued: a yes/no flag is an opt-in box by default (no = `unknown`), or a
  do-not-contact flag with `flag = "blocked"` (yes = `opted_out`, no = `unknown`).
"""

from worker.adapters.mapping.adapter import MappingAdapter, check_header, csv_items
from worker.adapters.mapping.build import (
    Item,
    check_columns,
    iter_items,
    record_type_for,
)
from worker.adapters.mapping.spec import (
    CSV_TYPES,
    DEFAULT_DATE_FORMATS,
    JSON_TYPES,
    SECTIONS,
    Field,
    MappingSpec,
    Numbers,
    RecordType,
    Target,
    builtin_names,
    builtin_table,
    compile_spec,
    load_mapping,
    load_mappings,
    mapped_columns,
    reachable_types,
)
from worker.adapters.mapping.values import (
    Row,
    csv_header,
    iter_csv_rows,
    iter_json_rows,
    leftovers,
    parse_decimal,
    parse_when,
)

__all__ = [
    "CSV_TYPES",
    "DEFAULT_DATE_FORMATS",
    "JSON_TYPES",
    "SECTIONS",
    "Field",
    "Item",
    "MappingAdapter",
    "MappingSpec",
    "Numbers",
    "RecordType",
    "Row",
    "Target",
    "builtin_names",
    "builtin_table",
    "check_columns",
    "check_header",
    "compile_spec",
    "csv_header",
    "csv_items",
    "iter_csv_rows",
    "iter_items",
    "iter_json_rows",
    "leftovers",
    "load_mapping",
    "load_mappings",
    "mapped_columns",
    "parse_decimal",
    "parse_when",
    "reachable_types",
    "record_type_for",
]
