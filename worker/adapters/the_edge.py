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
- **Split files.** Parts are independent payloads. A sale whose lines start after line 1 in a
  part numbered 2 or more continues a previous part: it is rejected (not half-applied); feed
  `combine_parts()` output (all parts of one export merged) to ingest such an export whole.
- **FULL snapshots** are upserts like any incremental file and never delete anything: absence
  from a FULL file does not deactivate a customer or item (only `CustomerInactive` does), and
  never removes a sale.

Field names beyond the public data dictionary (sale date, quantity, tax, associate on a sale
line; address/e-mail/phone sub-fields) are INFERRED: each role tries a list of candidate names,
and a store can name the real field in its mapping table, e.g.
`[mappings.edge_lumen.fields] sale_date = "SalelineTranDate"` (read from `ctx.mapping["fields"]`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime
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
_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M", "%m/%d/%Y")

# Candidate field names per role; the first present wins. Override per store via
# ctx.mapping["fields"] = {role: "RealFieldName"}.
ROLES: dict[str, tuple[str, ...]] = {
    "sale_key": ("SalelineSaleKey",),
    "line_no": ("SalelineLineNo",),
    "line_key": ("Key",),
    "amount": ("SalelineAmount",),
    "quantity": ("SalelineQty", "SalelineQuantity", "SalelineQtySold"),
    "sale_date": (
        "SalelineDate",
        "SalelineSaleDate",
        "SalelineTranDate",
        "SalelineDateTime",
        "SaleDate",
    ),
    "tax": ("SalelineTax", "SalelineEstTax"),
    "customer": ("SalelineCustKey",),
    "item": ("SalelineItemKey",),
    "description": ("SalelineDesc",),
    "employee": ("SalelineAsKey", "SalelineAssociate", "SalelineSalesperson", "SalelineClerk"),
    "layaway": ("SalelineEnvKey",),
    "anniversary": (
        "CustomerAnniversary",
        "CustomerAnniversaryDate",
        "CustomerAnnivDate",
        "CustomerAnniv",
    ),
    "address_line1": (
        "AddressStreet1",
        "AddressLine1",
        "AddressAddress1",
        "Address1",
        "Street1",
        "Street 1",
    ),
    "address_line2": (
        "AddressStreet2",
        "AddressLine2",
        "AddressAddress2",
        "Address2",
        "Street2",
        "Street 2",
    ),
    "address_city": ("AddressCity", "City"),
    "address_state": ("AddressState", "State"),
    "address_zip": ("AddressZip", "AddressPostalCode", "Zip"),
    "address_country": ("AddressCountry", "Country"),
    "email": ("EmailAddress", "EmailEmail", "Email", "Address"),
    "phone": ("PhoneNumber", "PhonePhone", "Phone", "Number"),
    "item_key": ("ItemKey", "ItKey", "ItemId", "Key"),
    "item_price": ("ItemCurrentPrice", "ItemRetailPrice"),
    "item_vendor": ("ItemVendorId", "VendorName", "VendorId"),
    "item_style": ("ItemVendStyleCode", "ItemVendorStyleCode", "ItemStyle"),
    "item_status": ("ItemStatus",),
    "item_quantity": ("ItemQty", "ItemQuantity", "ItemQtyOnHand"),
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


class Fields:
    """Resolves a role to the first candidate field present (or the store's override)."""

    __slots__ = ("_roles",)

    def __init__(self, overrides: Mapping[str, Any] | None) -> None:
        roles = dict(ROLES)
        for role, name in (overrides or {}).items():
            if isinstance(name, str) and name:
                roles[role] = (name,)
        self._roles = roles

    def key(self, o: Obj, role: str) -> str:
        """The field name to read for `role` in this object (the first candidate if none present)."""
        names = self._roles[role]
        for name in names:
            if o.get(name) not in (None, ""):
                return name
        return names[0]

    def get(self, o: Obj, role: str) -> Any:
        """The raw value for `role`."""
        return o.get(self.key(o, role))


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


def parse_local(value: Any, path: str, ctx: AdapterContext) -> datetime | None:
    """An EDT `mm/dd/yyyy hh:mm:ss` (or ISO) time, read in the store's zone, as UTC."""
    text = to_text(value, path, limit=64)
    if text is None:
        return None
    for fmt in _DATE_FORMATS:
        try:
            naive = datetime.strptime(text, fmt)  # noqa: DTZ007 - store-local, localized below
        except ValueError:
            continue
        return local_instant(naive, ctx.zone, path)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RecordInvalid(f"not a mm/dd/yyyy hh:mm:ss time: {text[:40]!r}", field=path) from None
    return local_instant(parsed, ctx.zone, path) if parsed.tzinfo is None else parsed


def _local_date(value: Any, path: str, ctx: AdapterContext) -> date | None:
    instant = parse_local(value, path, ctx)
    return instant.astimezone(ctx.zone).date() if instant else None


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
    address = _preferred(_contacts(c, "Address", "Addresses"), (pref_mail, pref_home))
    email = _preferred(_contacts(c, "Email", "Emails"), (pref_mail, pref_home))
    phone = _preferred(_contacts(c, "Phone", "Phones"), (pref_phone, pref_home))
    account = c.ident("CustomerAccountKey")
    tags = [t[:256] for t in (c.text(f"CustomerKey{i}") for i in range(1, 9)) if t]
    birth_key = "CustomerBirthDate"
    anniversary_key = f.key(c, "anniversary")
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("CustomerFirstName"),
            "last_name": c.text("CustomerLastName"),
            "company": c.text("CustomerCompany"),
            "email": to_text(f.get(email, "email"), email.at(f.key(email, "email")))
            if email
            else None,
            "phone": to_text(f.get(phone, "phone"), phone.at(f.key(phone, "phone")))
            if phone
            else None,
            "address": None if address is None else _address(address, f),
            "birth_date": _local_date(c.get(birth_key), c.at(birth_key), ctx),
            "anniversary_date": _local_date(c.get(anniversary_key), c.at(anniversary_key), ctx),
            "assigned_employee_id": c.ident("CustomerAsKey"),
            "linked_customer_id": account if account and account != customer_id else None,
            "tags": tags,
            "status": "inactive" if c.boolean("CustomerInactive") else None,
            "created_at": parse_local(
                c.get("CustomerDateEntered"), c.at("CustomerDateEntered"), ctx
            ),
            "updated_at": version_at,
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


def _address(a: Obj, f: Fields) -> dict[str, Any]:
    def read(role: str, limit: int = 4096) -> str | None:
        key = f.key(a, role)
        return to_text(a.get(key), a.at(key), limit=limit)

    return {
        "line1": read("address_line1"),
        "line2": read("address_line2"),
        "city": read("address_city", 256),
        "region": read("address_state", 256),
        "postal_code": read("address_zip", 256),
        "country_code": read("address_country", 256),
        "kind": a.text("AddressType", limit=256),
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
    attributes: dict[str, str] = {}
    for n in range(1, 17):
        detail = i.text(f"ItemDetail_{n}")
        if detail:
            attributes[f"detail_{n}"] = detail
    for name, field in (("retail_price", "ItemRetailPrice"), ("category_id", "CategoryId")):
        value = i.text(field, limit=256)
        if value:
            attributes[name] = value
    status_key = f.key(i, "item_status")
    status_code = (i.text(status_key, limit=16) or "").upper()
    quantity_key = f.key(i, "item_quantity")
    quantity = i.dec(quantity_key)
    price_key = f.key(i, "item_price")
    style_key = f.key(i, "item_style")
    vendor_key = f.key(i, "item_vendor")
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
            "attributes": attributes,
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
    occurred: datetime | None = None
    customer_id: str | None = None
    employee_id: str | None = None
    lines: list[dict[str, Any]] = []
    for number, r in numbered:
        date_key = f.key(r, "sale_date")
        occurred = occurred or parse_local(r.get(date_key), r.at(date_key), ctx)
        customer_key = f.key(r, "customer")
        customer_id = customer_id or to_ident(
            r.get(customer_key), r.at(customer_key), nulls=frozenset({"0"})
        )
        employee_key = f.key(r, "employee")
        employee_id = employee_id or to_ident(r.get(employee_key), r.at(employee_key))
        lines.append(_edge_line(r, f, number))
    if occurred is None:
        key = f.key(rows[0], "sale_date")
        raise RecordInvalid(
            f"sale {sale_key} has no sale date (tried {', '.join(ROLES['sale_date'])}; name the "
            "real field in the store's mapping `fields.sale_date`)",
            field=rows[0].at(key),
        )
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
                "subtotal": subtotal,
                "tax": tax,
                "total": subtotal + tax,
                "customer_id": customer_id,
                "employee_id": employee_id,
                "display_number": sale_key[:256],
                "location_id": sale_key.split("-", 1)[0] if "-" in sale_key else None,
                "updated_at": version_at,
                "source_ref": ref,
            },
            f"sale {sale_key}",
        )
    ]


def _edge_line(r: Obj, f: Fields, number: Decimal | None) -> dict[str, Any]:
    amount_key = f.key(r, "amount")
    amount = r.dec(amount_key)
    if amount is None:
        raise RecordInvalid(f"missing required field `{amount_key}`", field=r.at(amount_key))
    quantity = r.dec(f.key(r, "quantity")) or Decimal(1)
    # SalelineAmount is the line's retail amount; its sign says sold (+) or returned (-).
    if (amount < 0 < quantity) or (quantity < 0 < amount):
        quantity = -quantity
    unit = divide(amount, quantity)
    line_key = f.key(r, "line_key")
    item_key = f.key(r, "item")
    desc_key = f.key(r, "description")
    return {
        "sku": to_text(r.get(item_key), r.at(item_key), limit=256) or "",
        "quantity": quantity,
        "unit_price": unit,
        # amount is the line's net retail amount: rounding of the unit price lands in `discount`
        "discount": quantity * unit - amount,
        "tax": r.dec(f.key(r, "tax")) or ZERO,
        "product_id": to_ident(r.get(item_key), r.at(item_key)),
        "description": to_text(r.get(desc_key), r.at(desc_key)),
        "line_id": to_ident(r.get(line_key), r.at(line_key))
        or (str(number) if number is not None else None),
        "employee_id": to_ident(f.get(r, "employee"), r.at(f.key(r, "employee"))),
    }


def combine_parts(parts: Iterable[bytes]) -> bytes:
    """Merge the split parts (`1-...`, `2-...`) of one Transaction export into one document."""
    merged: list[Any] = []
    for n, body in enumerate(parts):
        doc = decode_json(body.removeprefix(b"\xef\xbb\xbf"), field=f"part[{n}]")
        _, rows, _ = _rows(doc, "sale")
        merged.extend(rows)
    return msgspec.json.encode({"SaleLines": merged})


def is_full_snapshot(filename: str | None) -> bool:
    """Whether an EDT file name marks a FULL export (an upsert batch; it never deletes)."""
    return bool(filename) and "FULL" in (filename or "").upper()
