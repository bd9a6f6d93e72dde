"""The Edge (Abbott Jewelry Systems) EDT JSON exports into canonical records.

EDT writes files named `<timestamp>-<Kind>.json`, e.g. `2022-03-03-11-21-13-CustomerList.JSON`;
large Transaction exports are split as `1-2022-03-03-12-00-Transaction.json`,
`2-2022-...`; a full run has `FULL` in the name. The kind comes from `ctx.filename`
(`CustomerList`, `ItemList`/`FullItemList`, `Transaction`; `JobList` and `WishList` are
acknowledged and counted as `dropped["ignored_file"]`), else from the document's keys.

Invariants:

- **Times.** EDT writes `mm/dd/yyyy hh:mm:ss` without a zone: read in the store's zone
  (`ctx.zone`), `tz_assumed=True`, business date = the local date as written. DST edges follow
  zoneinfo's fold=0 (see `native.local_instant`).
- **Versions.** Nothing in EDT carries a modification time, so every record is versioned by the
  file's timestamp (read in the store zone), else by `received_at`. Re-delivering an old file
  therefore never overwrites what a newer file said (pitfall 29); without a timestamp in the
  name, a re-delivery is treated as new.
- **Sales.** `SaleLines` rows are grouped into one sale per `SalelineSaleKey`; the line key is
  `Key` (`[SaleKey][LineNo]`). A negative `SalelineAmount` is a returned line (quantity made
  negative); line signs classify sale / return / exchange. A sale with a layaway envelope
  (`SalelineEnvKey`) is not a completed purchase: dropped as `dropped["layaway"]`.
- **Figures.** EDT states no order-level figures: a sale's subtotal is the sum of its lines'
  `SalelineAmount`, its tax the sum of their `SalelineEstTax` (the only tax figure), its total
  subtotal + tax. That is aggregation of the POS's own figures, not invention; no discount is
  stated (`discount` stays unset). EDT exports carry no payment rows (the `Salelinecc*` fields
  are card-processor data, not amounts), so every sale is `tenders_known = False`.
- **Nothing dropped.** Every field the canonical model has no slot for lands in `attributes`
  under its EDT name (dotted for nested objects and array indexes: `Email.0.EmailType`,
  `CustomerTransfer.WebTransferWebID`). A sale's line fields are keyed by name when every line
  carries the same value, else per line as `Name.<SalelineLineNo>`. Text over 4096 characters
  continues under `Name#2`, `Name#3`, ...; null and blank values carry nothing and are skipped.
- **Consent.** The EDT dictionary documents no marketing-consent field: consent is `unknown`
  unless a store names its flag in the mapping (`email_opt_in`, `email_opt_out`, `sms_opt_in`,
  `sms_opt_out`); only a true opt-in is `opted_in`, only a true opt-out `opted_out`.
- **Split files.** The drop folder reads the numbered parts of one export together
  (`worker.sources.inbox_groups`: `split_part` names them, `combine_counted` merges them into
  one document read under the export's own name, `<stamp>-Transaction.json`), so a sale whose
  lines span parts is one sale. A part read alone (an upload, a push) is parsed as before: a
  sale whose lines start after line 1 in a part numbered 2 or more continues a previous part,
  and those lines are rejected, naming `SalelineLineNo`.
- **FULL snapshots** are upserts like any incremental file and never delete anything: absence
  from a FULL file does not deactivate a customer or item (only `CustomerInactive` does), and
  never removes a sale.

Field names beyond the public data dictionary (sale date, quantity, associate on a sale line; address/e-mail/phone sub-fields) are INFERRED: each role tries a list of candidate names,
and a store can name the real field in its mapping table, e.g.
`[mappings.edge_lumen.fields] sale_date = "SalelineTranDate"` (read from `ctx.mapping["fields"]`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.native import (
    JSON_TYPES,
    ZERO,
    Dropped,
    Obj,
    Unit,
    build,
    decode_json,
    default_currency,
    divide,
    keep_last,
    local_instant,
    run_items,
    sale_kind,
    source_ref,
    to_decimal,
    to_ident,
    to_text,
)
from worker.adapters.the_edge_fields import (
    ROLES as ROLES,
)
from worker.adapters.the_edge_fields import (
    Fields,
    attributes,
    flatten,
    local_date_of,
    parse_local,
    rel_key,
)
from worker.config import RulePolicy
from worker.errors import RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Record, Sale, sum_decimals

Kind = Literal["customer", "item", "sale", "ignored"]

_NAME = re.compile(
    r"^(?:(?P<part>\d{1,3})-)?(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})-(?P<h>\d{2})-(?P<mi>\d{2})(?:-(?P<s>\d{2}))?"
)
_KIND_WORDS: tuple[tuple[str, Kind], ...] = (
    ("customerlist", "customer"),
    ("fullitemlist", "item"),
    ("itemlist", "item"),
    ("transaction", "sale"),
    ("joblist", "ignored"),
    ("wishlist", "ignored"),
)
_CONTAINERS: dict[Kind, tuple[str, ...]] = {
    "customer": ("CustomerList", "Customers", "Customer"),
    "item": ("FullItemList", "ItemList", "Inventory", "Items", "Item"),
    "sale": ("SaleLines", "Transaction", "Transactions", "SaleLine"),
}
_MARKERS: dict[Kind, str] = {
    "customer": "CustomerKey",
    "item": "ItemDesc",
    "sale": "SalelineSaleKey",
}
_ITEM_STATUS = {"I": "active", "S": "sold"}


class FileInfo:
    """What an EDT file name says: kind, split part, generation time, FULL snapshot."""

    __slots__ = ("full", "kind", "part", "stamp")

    def __init__(
        self, kind: Kind | None, part: int | None, stamp: datetime | None, full: bool
    ) -> None:
        self.kind = kind
        self.part = part
        self.stamp = stamp
        self.full = full


def file_info(filename: str | None, ctx: AdapterContext) -> FileInfo:
    """Parse an EDT file name (`[n-]yyyy-mm-dd-hh-mm[-ss]-Kind[FULL].json`)."""
    if not filename:
        return FileInfo(None, None, None, False)
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    low = base.lower()
    kind = next((k for word, k in _KIND_WORDS if word in low), None)
    part: int | None = None
    stamp: datetime | None = None
    m = _NAME.match(base)
    if m:
        part = int(m.group("part")) if m.group("part") else None
        try:
            naive = datetime(  # noqa: DTZ001 - store-local wall time, localized just below
                int(m.group("y")),
                int(m.group("mo")),
                int(m.group("d")),
                int(m.group("h")),
                int(m.group("mi")),
                int(m.group("s") or 0),
            )
            stamp = local_instant(naive, ctx.zone, "filename")
        except ValueError:
            stamp = None
    return FileInfo(kind, part, stamp, "FULL" in base.upper())


class TheEdgeAdapter:
    """`POST /v1/push/the_edge/{store}` or the drop folder: one EDT JSON export file."""

    name = "the_edge"
    signed = False
    rule_defaults: Mapping[str, RulePolicy] = MappingProxyType({})

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Map one export file; each customer, item or sale is accepted or rejected alone."""
        if ctx.content_type not in JSON_TYPES and ctx.content_type != "application/octet-stream":
            raise UnsupportedMediaType(
                f"content type {ctx.content_type!r} not supported: EDT exports are JSON",
                field="Content-Type",
            )
        info = file_info(ctx.filename or ctx.topic, ctx)
        out = Parsed()
        if info.kind == "ignored":
            out.dropped["ignored_file"] = 1
            return out
        doc = decode_json(body.removeprefix(b"\xef\xbb\xbf"))
        kind, rows, path = _rows(doc, info.kind)
        overrides = ctx.mapping.get("fields") if ctx.mapping else None
        fields = Fields(overrides if isinstance(overrides, Mapping) else None)
        version_at = info.stamp or ctx.received_at
        ref = source_ref("the_edge", ctx.filename)
        units: list[tuple[int, Unit]]
        if kind == "customer":
            units = [
                (i, _customer_unit(v, f"{path}[{i}]", fields, ctx, version_at, ref))
                for i, v in enumerate(rows)
            ]
        elif kind == "item":
            units = [
                (i, _item_unit(v, f"{path}[{i}]", fields, ctx, version_at, ref))
                for i, v in enumerate(rows)
            ]
        else:
            units = _sale_units(rows, path, fields, ctx, info, version_at, ref)
        run_items(out, units, single=len(units) == 1)
        out.records = keep_last(out.records)
        return out


def _rows(doc: Any, kind: Kind | None) -> tuple[Kind, list[Any], str]:
    """Find the array of rows and the file's kind (from the name, else from its keys)."""
    path = "$"
    kinds: tuple[Kind, ...] = (kind,) if kind in _CONTAINERS else ("customer", "item", "sale")
    for _ in range(2):  # one level of wrapping, e.g. {"Transaction": {"SaleLines": [...]}}
        if not isinstance(doc, dict):
            break
        found = next(((k, key) for k in kinds for key in _CONTAINERS[k] if key in doc), None)
        if found is None:
            marker = next((k for k in kinds if _MARKERS[k] in doc), None)
            if marker is not None:
                return marker, [doc], path
            break
        kinds = (found[0],)
        doc, path = doc[found[1]], f"{path}.{found[1]}"
        if isinstance(doc, dict) and _MARKERS[found[0]] in doc:
            return found[0], [doc], path
    if isinstance(doc, list):
        if len(kinds) == 1:
            return kinds[0], doc, path
        first = doc[0] if doc and isinstance(doc[0], dict) else {}
        marker = next((k for k in kinds if _MARKERS[k] in first), None)
        if marker is None and "ItemKey" in first:
            marker = "item"
        if marker is not None:
            return marker, doc, path
    raise RecordInvalid(
        "not an EDT export: expected CustomerList, ItemList/FullItemList or Transaction "
        "(SaleLines) data; name the file like EDT does or check its content",
        field=path,
    )


# -- customers ---------------------------------------------------------------------------


def _customer_unit(
    value: Any, path: str, f: Fields, ctx: AdapterContext, version_at: datetime, ref: str | None
) -> Unit:
    return lambda: [edge_customer(Obj.of(value, path), f, ctx, version_at, ref)]


def _contacts(c: Obj, *keys: str) -> list[Obj]:
    for key in keys:
        if c.has(key):
            return c.objs(key, single_ok=True)
    return []


def _preferred(items: list[Obj], keys: tuple[str | None, ...]) -> Obj | None:
    """The contact whose `Key` is the first preference present, else the first contact."""
    for key in keys:
        for item in items:
            if key is not None and item.text("Key", limit=256) == key:
                return item
    return items[0] if items else None


def edge_customer(
    c: Obj, f: Fields, ctx: AdapterContext, version_at: datetime, ref: str | None
) -> Customer:
    """A CustomerList entry with its paired Address / Email / Phone objects."""
    customer_id = c.req_ident("CustomerKey")
    # CustomerPref* hold the Key of the preferred contact; which one governs which kind is not
    # documented, so each kind tries the most specific pointer first.
    pref_mail, pref_home, pref_phone = (
        c.text(k, limit=256) for k in ("CustomerPrefMail", "CustomerPrefHome", "CustomerPrefPhone")
    )
    used = {"CustomerKey", "CustomerFirstName", "CustomerLastName", "CustomerCompany"}
    addresses = _contacts(c, "Address", "Addresses")
    primary = _preferred(addresses, (pref_mail, pref_home))
    email = _preferred(_contacts(c, "Email", "Emails"), (pref_mail, pref_home))
    phone = _preferred(_contacts(c, "Phone", "Phones"), (pref_phone, pref_home))
    account = c.ident("CustomerAccountKey")
    if account and account != customer_id:
        used.add("CustomerAccountKey")
    tags = [t[:256] for t in (c.text(f"CustomerKey{i}") for i in range(1, 9)) if t]
    birth_key = "CustomerBirthDate"
    anniversary_key = f.key(c, "anniversary")
    used.update((birth_key, anniversary_key, "CustomerAsKey", "CustomerInactive"))
    used.add("CustomerDateEntered")

    def contact(o: Obj | None, role: str) -> str | None:
        if o is None:
            return None
        key = f.key(o, role)
        used.add(rel_key(c, o, key))
        return to_text(o.get(key), o.at(key))

    address_list = [_address(c, a, f, used) for a in addresses]
    fields: dict[str, str] = {}
    record = {
        "id": customer_id,
        "first_name": c.text("CustomerFirstName"),
        "last_name": c.text("CustomerLastName"),
        "company": c.text("CustomerCompany"),
        "email": contact(email, "email"),
        "phone": contact(phone, "phone"),
        "address": None if primary is None else address_list[addresses.index(primary)],
        "addresses": address_list,
        "marketing_email": _consent(c, f, "email", used),
        "marketing_sms": _consent(c, f, "sms", used),
        "birth_date": local_date_of(c.get(birth_key), c.at(birth_key), ctx),
        "anniversary_date": local_date_of(c.get(anniversary_key), c.at(anniversary_key), ctx),
        "assigned_employee_id": c.ident("CustomerAsKey"),
        "linked_customer_id": account if account and account != customer_id else None,
        "tags": tags,
        "status": "inactive" if c.boolean("CustomerInactive") else None,
        "created_at": parse_local(c.get("CustomerDateEntered"), c.at("CustomerDateEntered"), ctx),
        "updated_at": version_at,
        "source_ref": ref,
    }
    flatten(c.data, "", fields)
    record["attributes"] = attributes({k: v for k, v in fields.items() if k not in used}, c.path)
    return build(Customer, record, f"customer {customer_id}")


def _consent(c: Obj, f: Fields, channel: str, used: set[str]) -> str:
    """Three-valued consent: only a true opt-in is `opted_in`, only a true opt-out `opted_out`."""
    flags: dict[str, bool | None] = {}
    for side in ("in", "out"):
        key = f.key(c, f"{channel}_opt_{side}")
        if key:
            used.add(key)
            flags[side] = c.boolean(key)
    if flags.get("out"):
        return "opted_out"
    # A false flag ("not blocked", "not opted in") says nothing either way.
    return "opted_in" if flags.get("in") else "unknown"


def _address(c: Obj, a: Obj, f: Fields, used: set[str]) -> dict[str, Any]:
    def read(role: str, limit: int = 4096) -> str | None:
        key = f.key(a, role)
        used.add(rel_key(c, a, key))
        return to_text(a.get(key), a.at(key), limit=limit)

    used.add(rel_key(c, a, "AddressType"))
    return {
        "line1": read("address_line1"),
        "line2": read("address_line2"),
        "city": read("address_city", 256),
        "region": read("address_state", 256),
        "postal_code": read("address_zip", 256),
        "country_code": read("address_country", 256),
        "kind": a.text("AddressType", limit=256) or a.text("Key", limit=256),
    }


# -- items -------------------------------------------------------------------------------


def _item_unit(
    value: Any, path: str, f: Fields, ctx: AdapterContext, version_at: datetime, ref: str | None
) -> Unit:
    return lambda: [edge_item(Obj.of(value, path), f, ctx, version_at, ref)]


def edge_item(
    i: Obj, f: Fields, ctx: AdapterContext, version_at: datetime, ref: str | None
) -> Product:
    """An ItemList / FullItemList inventory entry (usually a one-of-a-kind piece)."""
    key = f.key(i, "item_key")
    item_id = to_ident(i.get(key), i.at(key))
    if item_id is None:
        raise RecordInvalid("missing required field `ItemKey`", field=i.at(key))
    description = " ".join(t for t in (i.text("ItemDesc"), i.text("ItemDescMemo")) if t) or None
    status_key = f.key(i, "item_status")
    status_code = (i.text(status_key, limit=16) or "").upper()
    quantity = i.dec(f.key(i, "item_quantity"))
    price_key = f.key(i, "item_price")
    style_key = f.key(i, "item_style")
    vendor_key = f.key(i, "item_vendor")
    # ItemDescMemo stays in attributes as written: the name joins it to ItemDesc with a space.
    used = {key, "ItemDesc", "CategoryName", status_key, price_key, style_key}
    used.update((vendor_key, "ItemDateCreated"))
    fields: dict[str, str] = {}
    flatten(i.data, "", fields)
    return build(
        Product,
        {
            "id": item_id,
            "sku": i.text(style_key, limit=256),
            "name": description,
            "description": description,
            "category": i.text("CategoryName"),
            "price": i.dec(price_key),
            "currency": default_currency(ctx),
            "vendor": i.text(vendor_key),
            # Edge items are individual pieces unless stocked in quantity (bulk items).
            "is_unique_piece": quantity is None or quantity <= 1,
            "status": _ITEM_STATUS.get(status_code, "archived") if status_code else None,
            "attributes": attributes({k: v for k, v in fields.items() if k not in used}, i.path),
            "created_at": parse_local(i.get("ItemDateCreated"), i.at("ItemDateCreated"), ctx),
            "updated_at": version_at,
            "source_ref": ref,
        },
        f"item {item_id}",
    )


# -- sales -------------------------------------------------------------------------------


def _sale_units(
    rows: list[Any],
    path: str,
    f: Fields,
    ctx: AdapterContext,
    info: FileInfo,
    version_at: datetime,
    ref: str | None,
) -> list[tuple[int, Unit]]:
    groups: dict[str, list[Obj]] = {}
    first_index: dict[str, int] = {}
    units: list[tuple[int, Unit]] = []
    for index, value in enumerate(rows):
        row_path = f"{path}[{index}]"
        if not isinstance(value, dict):
            units.append((index, _bad(f"expected an object, got {type(value).__name__}", row_path)))
            continue
        line = Obj(value, row_path)
        key_field = f.key(line, "sale_key")
        try:
            sale_key = to_ident(line.get(key_field), line.at(key_field))
        except RecordInvalid as err:
            units.append((index, _bad(err.message, err.field or row_path)))
            continue
        if sale_key is None:
            units.append((index, _bad(f"missing required field `{key_field}`", line.at(key_field))))
            continue
        if sale_key not in groups:
            groups[sale_key] = []
            first_index[sale_key] = index
        groups[sale_key].append(line)
    for sale_key, lines in groups.items():
        units.append(
            (first_index[sale_key], _sale_unit(sale_key, lines, f, ctx, info, version_at, ref))
        )
    units.sort(key=lambda u: u[0])
    return units


def _bad(message: str, field: str) -> Unit:
    def unit() -> list[Record] | Dropped:
        raise RecordInvalid(message, field=field)

    return unit


def _sale_unit(
    sale_key: str,
    lines: list[Obj],
    f: Fields,
    ctx: AdapterContext,
    info: FileInfo,
    version_at: datetime,
    ref: str | None,
) -> Unit:
    return lambda: edge_sale(sale_key, lines, f, ctx, info, version_at, ref)


def _line_no(line: Obj, f: Fields) -> Decimal | None:
    key = f.key(line, "line_no")
    value = line.get(key)
    return None if value in (None, "") else to_decimal(value, line.at(key))


def edge_sale(
    sale_key: str,
    rows: list[Obj],
    f: Fields,
    ctx: AdapterContext,
    info: FileInfo,
    version_at: datetime,
    ref: str | None,
) -> list[Record] | Dropped:
    """One sale from its SaleLines rows (grouped by sale key)."""
    numbered = [(_line_no(r, f), r) for r in rows]
    numbers = [n for n, _ in numbered if n is not None]
    if info.part is not None and info.part > 1 and numbers and min(numbers) > 1:
        raise RecordInvalid(
            f"sale {sale_key} continues from an earlier split part (first line {min(numbers)}); "
            "ingest the parts together (the_edge.combine_parts)",
            field=rows[0].at(f.key(rows[0], "line_no")),
        )
    numbered.sort(key=lambda p: p[0] if p[0] is not None else Decimal(0))
    if any(f.get(r, "layaway") not in (None, "") for r in rows):
        return Dropped("layaway")
    ordered = [r for _, r in numbered]
    date_row, date_key = _first(ordered, f, "sale_date")
    occurred = parse_local(date_row.get(date_key), date_row.at(date_key), ctx)
    if occurred is None:
        raise RecordInvalid(
            f"sale {sale_key} has no sale date (tried {', '.join(ROLES['sale_date'])}; name the "
            "real field in the store's mapping `fields.sale_date`)",
            field=date_row.at(date_key),
        )
    cust_row, customer_key = _first(ordered, f, "customer")
    customer_id = to_ident(cust_row.get(customer_key), cust_row.at(customer_key), nulls=_NOBODY)
    emp_row, employee_key = _first(ordered, f, "employee")
    employee_id = to_ident(emp_row.get(employee_key), emp_row.at(employee_key))
    # Sale-level fields come from the first line that has them; they count as read only where
    # every line agrees (otherwise each line's own value stays in the attributes).
    sale_level = {
        k
        for k, row in ((date_key, date_row), (customer_key, cust_row))
        if all(r.get(k) == row.get(k) for r in ordered)
    }
    lines: list[dict[str, Any]] = []
    per_line: list[tuple[str, dict[str, str]]] = []
    for index, (number, r) in enumerate(numbered):
        line, used = _edge_line(r, f, number)
        lines.append(line)
        fields: dict[str, str] = {}
        flatten(r.data, "", fields)
        label = str(number) if number is not None else str(index + 1)
        per_line.append((label, {k: v for k, v in fields.items() if k not in used | sale_level}))
    subtotal = sum_decimals(ln["quantity"] * ln["unit_price"] - ln["discount"] for ln in lines)
    tax = sum_decimals(ln["tax"] for ln in lines)
    return [
        build(
            Sale,
            {
                "id": sale_key,
                "kind": sale_kind(ln["quantity"] for ln in lines),
                "occurred_at": occurred,
                "tz_assumed": True,
                "business_date": occurred.astimezone(ctx.zone).date(),
                "currency": default_currency(ctx),
                "lines": lines,
                # Aggregates of the POS's own line figures: EDT states no order totals.
                "subtotal": subtotal,
                "tax": tax,
                "total": subtotal + tax,
                # EDT exports carry no payment rows: tenders are unknown, never invented.
                "tenders_known": False,
                "customer_id": customer_id,
                "employee_id": employee_id,
                "display_number": sale_key[:256],
                "location_id": sale_key.split("-", 1)[0] if "-" in sale_key else None,
                "attributes": attributes(_merge_lines(per_line), rows[0].path),
                "updated_at": version_at,
                "source_ref": ref,
            },
            f"sale {sale_key}",
        )
    ]


_NOBODY = frozenset({"0"})  # SalelineCustKey "0": no customer on the sale


def _first(rows: list[Obj], f: Fields, role: str) -> tuple[Obj, str]:
    """The first row carrying `role`, and its field name (the first row when none does)."""
    for r in rows:
        key = f.key(r, role)
        if r.get(key) not in (None, ""):
            return r, key
    return rows[0], f.key(rows[0], role)


def _merge_lines(per_line: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
    """One key per field when every line carries the same value, else `Field.<line no>`."""
    out: dict[str, str] = {}
    names: dict[str, None] = {}
    for _, fields in per_line:
        names.update(dict.fromkeys(fields))
    for name in names:
        values = [fields.get(name) for _, fields in per_line]
        if all(v is not None and v == values[0] for v in values):
            out[name] = str(values[0])
            continue
        for label, fields in per_line:
            if name in fields:
                out[f"{name}.{label}"] = fields[name]
    return out


def _edge_line(r: Obj, f: Fields, number: Decimal | None) -> tuple[dict[str, Any], set[str]]:
    """One SaleLines row as a canonical line, and the fields it read."""
    amount_key = f.key(r, "amount")
    amount = r.dec(amount_key)
    if amount is None:
        raise RecordInvalid(f"missing required field `{amount_key}`", field=r.at(amount_key))
    quantity_key = f.key(r, "quantity")
    quantity = r.dec(quantity_key)
    if quantity is None:  # no documented quantity field: a line is one piece
        quantity = Decimal(1)
    # SalelineAmount is the line's retail amount; its sign says sold (+) or returned (-).
    if (amount < 0 < quantity) or (quantity < 0 < amount):
        quantity = -quantity
    # One piece: the unit price is the POS's amount as written ("1199.00" stays "1199.00").
    unit = abs(amount) if abs(quantity) == 1 else divide(amount, quantity)
    line_key = f.key(r, "line_key")
    item_key = f.key(r, "item")
    desc_key = f.key(r, "description")
    tax_key = f.key(r, "tax")
    employee_key = f.key(r, "employee")
    used = {f.key(r, "sale_key"), f.key(r, "line_no"), amount_key, quantity_key, line_key}
    used.update((item_key, desc_key, tax_key, employee_key))
    line = {
        # EDT lines name the item (`SalelineItemKey`, the product id), not a SKU.
        "quantity": quantity,
        "unit_price": unit,
        # The line's net is SalelineAmount exactly: a unit price that does not terminate within
        # 8 places leaves its residue (below 1e-8 per unit) here, never in the sale's figures.
        "discount": quantity * unit - amount,
        "tax": r.dec(tax_key) or ZERO,
        "product_id": to_ident(r.get(item_key), r.at(item_key)),
        "description": to_text(r.get(desc_key), r.at(desc_key)),
        "line_id": to_ident(r.get(line_key), r.at(line_key))
        or (str(number) if number is not None else None),
        "employee_id": to_ident(r.get(employee_key), r.at(employee_key)),
    }
    return line, used


def combine_parts(parts: Iterable[bytes], names: Sequence[str] | None = None) -> bytes:
    """Merge the split parts (`1-...`, `2-...`) of one Transaction export into one document."""
    return combine_counted(parts, names)[0]


def combine_counted(
    parts: Iterable[bytes], names: Sequence[str] | None = None
) -> tuple[bytes, list[int]]:
    """`combine_parts`, and the number of rows each part held (in part order).

    A part that is not an EDT Transaction document raises RecordInvalid naming the part
    (its file name when `names` are given, else `part[n]`) and the field within it.
    """
    merged: list[Any] = []
    counts: list[int] = []
    for n, body in enumerate(parts):
        label = names[n] if names is not None else f"part[{n}]"
        doc = decode_json(body.removeprefix(b"\xef\xbb\xbf"), field=label)
        try:
            _, rows, _ = _rows(doc, "sale")
        except RecordInvalid as err:
            raise RecordInvalid(f"{label}: {err.message}", field=f"{label}{err.field}") from None
        merged.extend(rows)
        counts.append(len(rows))
    return msgspec.json.encode({"SaleLines": merged}), counts


_PART = re.compile(r"^(?P<n>[1-9]\d{0,2})-(?P<export>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}(?:-\d{2})?-.+)$")


def split_part(filename: str) -> tuple[str, int] | None:
    """(export name, part number) for a numbered part of a split Transaction export.

    `2-2026-03-14-12-00-Transaction.json` -> (`2026-03-14-12-00-Transaction.json`, 2); any
    other name (unnumbered, another kind, a zero-padded number) -> None: a file of its own.
    """
    m = _PART.match(filename)
    if m is None or "transaction" not in m.group("export").lower():
        return None
    return m.group("export"), int(m.group("n"))


def is_full_snapshot(filename: str | None) -> bool:
    """Whether an EDT file name marks a FULL export (an upsert batch; it never deletes)."""
    return bool(filename) and "FULL" in (filename or "").upper()
