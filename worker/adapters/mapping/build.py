"""Building records from mapped rows: which record a row is, grouping rows into sales,
customers and products with their addresses and the columns no field maps (`attributes`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from worker.adapters.base import AdapterContext, Rejection
from worker.adapters.mapping.sales import build_sale
from worker.adapters.mapping.spec import (
    _ENUMS,
    _LIMITS,
    _REQUIRED,
    ADDRESS_PARTS,
    Field,
    MappingSpec,
    RecordType,
    Target,
    mapped_columns,
)
from worker.adapters.mapping.values import (
    Reader,
    Row,
    bounded,
    leftovers,
    translate,
    version_fields,
)
from worker.adapters.native import Dropped, build, source_ref
from worker.errors import RecordInvalid
from worker.records import Customer, Product, Record

Item = Record | Rejection | Dropped


def record_type_for(spec: MappingSpec, filename: str | None) -> RecordType | Literal["skip"] | None:
    """The record type of a whole file (per-row types come from `record_column`)."""
    if spec.files and filename:
        base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
        for pattern, target in spec.files.items():
            if fnmatch.fnmatchcase(base, pattern.lower()):
                return target
    return spec.record


def _row_type(spec: MappingSpec, reader: Reader, row: Mapping[str, Any], file_type: Any) -> Target:
    if spec.record_column is None:
        return file_type  # type: ignore[no-any-return]
    value, column = reader.raw(row, Field(column=spec.record_column))
    text = "" if value is None else str(value).strip()
    target = translate(text, spec.record_values) if text else ""
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
    reader = Reader(spec, ctx)
    file_type = record_type_for(spec, ctx.filename or ctx.topic)
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
    reader: Reader, key: str, group: list[Row], ref: str, ctx: AdapterContext
) -> Iterator[Item]:
    try:
        result = build_sale(reader, key, group, ref, ctx)
    except RecordInvalid as err:
        yield Rejection(group[0][0], err.message, err.field)
        return
    if isinstance(result, Dropped):
        yield result
    else:
        yield from result


def _entity(
    reader: Reader, row: Mapping[str, Any], target: str, ref: str, ctx: AdapterContext, index: int
) -> Record:
    spec = reader.spec
    if target == "customer":
        return _customer(reader, row, spec, source_ref(ref, ctx.filename, f"row{index}"), ctx)
    return _product(reader, row, spec, source_ref(ref, ctx.filename, f"row{index}"), ctx)


def _record_id(
    reader: Reader, row: Mapping[str, Any], fields: Mapping[str, Field], what: str
) -> str:
    """The row's `what` id; a row without one is refused, naming the id's column."""
    record_id = reader.ident(row, fields.get("id"))
    if record_id is None:
        raise RecordInvalid(f"missing {what} id", field=fields["id"].column or f"{what}.id")
    return record_id


def _customer(
    reader: Reader, row: Mapping[str, Any], spec: MappingSpec, ref: str | None, ctx: AdapterContext
) -> Customer:
    c = spec.customer
    customer_id = _record_id(reader, row, c, "customer")
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
    primary = _address(reader, row, {k: c.get(n) for k, n in _PRIMARY.items()}, spec.address_kind)
    addresses = [primary] if primary else []
    for kind, where in spec.customer_addresses.items():
        extra = _address(reader, row, {k: where.get(k) for k in ADDRESS_PARTS}, kind)
        if extra:
            addresses.append(extra)
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
            "address": primary or (addresses[0] if addresses else None),
            "addresses": addresses,
            "birth_date": reader.day(row, c.get("birth_date")),
            "anniversary_date": reader.day(row, c.get("anniversary_date")),
            "marketing_email": reader.consent(row, c.get("marketing_email")),
            "marketing_sms": reader.consent(row, c.get("marketing_sms")),
            "assigned_employee_id": reader.ident(row, c.get("assigned_employee_id")),
            "linked_customer_id": reader.ident(row, c.get("linked_customer_id")),
            "tags": tags,
            "notes": reader.text(row, c.get("notes")),
            "status": reader.enum(row, c.get("status"), _ENUMS["customer.status"]),
            "attributes": bounded(leftovers(row, mapped_columns(spec, "customer"), reader.json)),
            "created_at": created[0] if created else None,
            **version_fields(reader, row, c, ctx),
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


def _product(
    reader: Reader, row: Mapping[str, Any], spec: MappingSpec, ref: str | None, ctx: AdapterContext
) -> Product:
    p = spec.product
    product_id = _record_id(reader, row, p, "product")
    attributes = leftovers(row, mapped_columns(spec, "product"), reader.json)
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
            "attributes": bounded(attributes),
            "created_at": created[0] if created else None,
            **version_fields(reader, row, p, ctx),
            "source_ref": ref,
        },
        f"product {product_id}",
    )


_PRIMARY = {
    "line1": "address_line1",
    "line2": "address_line2",
    "city": "city",
    "region": "region",
    "postal_code": "postal_code",
    "country_code": "country_code",
}


def _address(
    reader: Reader, row: Mapping[str, Any], parts: Mapping[str, Field | None], kind: str | None
) -> dict[str, Any] | None:
    """One address of a customer row, or None when all its cells are empty."""
    address: dict[str, Any] = {
        key: reader.text(
            row, parts.get(key), limit=_LIMITS["text" if key.startswith("line") else "short"]
        )
        for key in ADDRESS_PARTS
    }
    if not any(address.values()):
        return None
    if kind:
        address["kind"] = kind
    return address
