"""Lightspeed X-Series (ex-Vend): API 2.0 JSON, webhook payloads, Vend 0.9 lists.

**Shapes.** API 2.0 (`{"data": {...}}` or `{"data": [...]}`): a sale has `line_items[]`,
`payments[]` and `total_price`/`total_tax` on the sale. The webhook `payload` and the Vend 0.9
API (`{"pagination": {...}, "register_sales": [...]}`, also `customers`/`products` lists) use
the register_sale shape: `register_sale_products[]`, `register_sale_payments[]` and the figures
under `totals` (`total_price`, `total_tax`, `total_payment`, `total_to_pay`), money as
five-place strings or numbers (`"63.47826"`, `9.52174`), kept exact.

**Money.** The POS's own figures: `subtotal` is `total_price`, which the 2.0 schema calls the
"Total (tax exclusive) price of the sale", `tax` is `total_tax`, and the sale total is
`total_price + total_tax` (X states no other grand total; `total_payment` is what was paid and
is kept as an attribute). X line prices are tax-exclusive in every shape (the webhook sample's
56.52174 + 8.47826 tax is a 65.00 GST-inclusive shelf price), so `tax_included` is false. A
line's net is its `price_total`: `discount = quantity x price - price_total`, so whether
`price` is before or after the discount does not matter; the POS's `discount`/`discount_total`
stay in `attributes`. X states no sale-level discount, so `Sale.discount` is unset.

**Tenders.** `method` is the payment type's human name (`retailer_payment_type.name`, else
`payment_type.name`, else the 2.0 payment's `name`, else its `label`); `method_id` the POS's id
(`retailer_payment_type_id`, else `payment_type_id`); `reference` the payment's `id`. Only a
payment with no name anywhere keeps its type id as `method`. A sale without a payments array
at all has `tenders_known = false`.

**Customers.** Addresses live on the 2.0 customer (`physical_address_1`, ...) or under the
webhook's `contact` (`physical_address1`, ...): physical is `address` (kind "physical"), and
both physical and postal go into `addresses`. `do_not_email: true` is opted out; false only
means "not blocked", so consent is `unknown`; only an explicit `email_marketing: true` (no
documented X schema has one; honoured where a payload does) is `opted_in`. The
walk-in customer (`customer_code` WALKIN) is never a customer, nor a sale's customer link.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from worker.adapters.base import AdapterContext
from worker.adapters.lightspeed_common import calendar_date, int_version, keep_attributes, tender
from worker.adapters.native import (
    ZERO,
    Dropped,
    Obj,
    Unit,
    build,
    default_currency,
    local_date,
    sale_kind,
    source_ref,
)
from worker.errors import RecordInvalid
from worker.records import Customer, Product, Record, Sale, Void

Entity = Literal["sale", "customer", "product"]

# Vend 0.9 list responses: the list key names the entity.
LIST_KEYS: dict[str, Entity] = {
    "register_sales": "sale",
    "customers": "customer",
    "products": "product",
}
_OPEN = frozenset(
    {
        "SAVED",
        "LAYBY",
        "ONACCOUNT",
        "AWAITING_DISPATCH",
        "AWAITING_PICKUP",
        "SERVICE",
        "OPEN",
        "PARKED",
    }
)
_CHANNEL = {"USER": "pos", "SHOPIFY": "web", "ECOMMERCE": "web", "QUOTE": "other"}
WALKIN = "WALKIN"

# Sale fields a canonical field took (the rest are kept as attributes).
_SALE_MAPPED = frozenset(
    {
        "id",
        "status",
        "state",
        "version",
        "sale_date",
        "updated_at",
        "deleted_at",
        "customer_id",
        "customer",
        "user",  # the embedded user (employee) record: `user_id` links it
        "user_id",
        "invoice_number",
        "outlet_id",
        "register_id",
        "return_for",
        "total_price",
        "total_tax",
        "currency",
        "totals.total_price",
        "totals.total_tax",
    }
)
_LINE_MAPPED = frozenset(
    {
        "id",
        "product_id",
        "quantity",
        "price",
        "price_total",
        "tax_total",
        "sku",
        "name",
        "salesperson_id",
    }
)
_PAYMENT_MAPPED = frozenset(
    {
        "id",
        "amount",
        "name",
        "retailer_payment_type_id",
        "retailer_payment_type.id",
        "retailer_payment_type.name",
    }
)
_ADDRESS_PARTS = (
    ("line1", ("address1", "address_1")),
    ("line2", ("address2", "address_2")),
    ("city", ("city",)),
    ("region", ("state",)),
    ("postal_code", ("postcode",)),
    ("country_code", ("country_id",)),
)
_CUSTOMER_MAPPED = frozenset(
    {
        "id",
        "first_name",
        "last_name",
        "email",
        "company_name",
        "date_of_birth",
        "note",
        "created_at",
        "updated_at",
        "deleted_at",
        "version",
    }
)


def entity_of(o: Obj) -> Entity:
    """Which entity an X object is, from its fields."""
    keys = o.data.keys()
    if keys & {
        "line_items",
        "register_sale_products",
        "register_sale_payments",
        "sale_date",
        "invoice_number",
    }:
        return "sale"
    if keys & {"variant_parent_id", "price_excluding_tax", "supply_price", "sku", "handle"}:
        return "product"
    if keys & {"customer_code", "first_name", "last_name", "email", "customer_group_id"}:
        return "customer"
    raise RecordInvalid("cannot tell whether this is a sale, customer or product", field=o.path)


def x_unit(value: Any, path: str, entity: Entity | None, ctx: AdapterContext, via: str) -> Unit:
    """One X item (sale, customer or product) as an all-or-nothing unit."""

    def unit() -> list[Record] | Dropped:
        o = Obj.of(value, path)
        kind = entity or entity_of(o)
        ref = source_ref("lightspeed-x", via, kind)
        if kind == "sale":
            return x_sale(o, ctx, ref)
        if kind == "customer":
            customer = x_customer(o, ref)
            return Dropped("walk_in") if customer is None else [customer]
        return [x_product(o, ref)]

    return unit


def _first_time(o: Obj, *keys: str) -> tuple[datetime, bool] | None:
    for key in keys:
        at = o.instant(key)
        if at is not None:
            return at
    return None


def _figure(o: Obj, totals: Obj | None, key: str) -> Decimal:
    """A sale-level figure: `totals.<key>` (register_sale shape), else `<key>` (API 2.0)."""
    if totals is not None and totals.has(key):
        return totals.req_dec(key)
    value = o.dec(key)
    if value is None:
        where = totals.at(key) if totals is not None else o.at(key)
        raise RecordInvalid(f"missing required field `{key}`", field=where)
    return value


def x_sale(o: Obj, ctx: AdapterContext, ref: str | None) -> list[Record] | Dropped:
    """An X-Series sale (API 2.0 `line_items`/`payments` or the register_sale shape)."""
    sale_id = o.req_ident("id")
    status = (o.text("status", limit=64) or o.text("state", limit=64) or "").upper()
    version = int_version(o)
    occurred = _first_time(o, "sale_date", "created_at")
    updated = o.instant("updated_at")
    if status == "VOIDED" or o.has("deleted_at"):
        at = o.instant("deleted_at") or updated or occurred
        return [
            build(
                Void,
                {
                    "id": sale_id,
                    "occurred_at": at[0] if at else ctx.received_at,
                    "reason": "voided" if status == "VOIDED" else "deleted",
                    "version": version,
                    "source_ref": ref,
                },
                f"void {sale_id}",
            )
        ]
    if not status:
        raise RecordInvalid("missing required field `status`", field=o.at("status"))
    if status in _OPEN:
        return Dropped("open")
    if status != "CLOSED" and not status.endswith("_CLOSED"):
        raise RecordInvalid(f"unknown sale status {status[:32]!r}", field=o.at("status"))
    if occurred is None:
        raise RecordInvalid("missing required field `sale_date`", field=o.at("sale_date"))
    records: list[Record] = []
    customer_id = o.ident("customer_id")
    skip = set(_SALE_MAPPED)
    customer = o.obj("customer")
    if customer is not None:
        embedded = x_customer(customer, ref)
        if embedded is None:  # the walk-in customer: no link, and its fields stay attributes
            customer_id = None
            skip.discard("customer")
        else:
            customer_id = customer_id or embedded.id
            records.append(embedded)
    line_key = "line_items" if o.has("line_items") else "register_sale_products"
    lines = [_line(li) for li in o.objs(line_key) if not _voided(li)]
    skip |= {f"{line_key}.{k}" for k in _LINE_MAPPED}
    totals = o.obj("totals")
    subtotal = _figure(o, totals, "total_price")
    tax = _figure(o, totals, "total_tax")
    payment_key = "payments" if o.has("payments") else "register_sale_payments"
    tenders_known = o.has(payment_key)
    tenders = [_tender(p) for p in o.objs(payment_key)]
    skip |= {f"{payment_key}.{k}" for k in _PAYMENT_MAPPED}
    instant, assumed = occurred
    source = (o.text("source", limit=64) or "USER").upper()
    records.append(
        build(
            Sale,
            {
                "id": sale_id,
                "kind": sale_kind(ln["quantity"] for ln in lines),
                "original_id": o.ident("return_for"),
                "occurred_at": instant,
                "tz_assumed": assumed,
                "currency": o.text("currency", limit=8) or default_currency(ctx),
                "lines": lines,
                "subtotal": subtotal,
                "tax": tax,
                "total": subtotal + tax,
                "tax_included": False,
                "tenders": tenders,
                "tenders_known": tenders_known,
                "customer_id": customer_id,
                "employee_id": o.ident("user_id"),
                "display_number": o.text("invoice_number", limit=256),
                "location_id": o.ident("outlet_id"),
                "register_id": o.ident("register_id"),
                "channel": _CHANNEL.get(source, "other"),
                "attributes": keep_attributes(o.data, frozenset(skip)),
                "business_date": local_date(instant, ctx.zone),
                "updated_at": updated[0] if updated else None,
                "version": version,
                "source_ref": ref,
            },
            f"sale {sale_id}",
        )
    )
    return records


def _voided(li: Obj) -> bool:
    return (li.text("status", limit=64) or "").upper() == "VOIDED"


def _line(li: Obj) -> dict[str, Any]:
    quantity = li.req_dec("quantity")
    price = li.req_dec("price")
    price_total = li.dec("price_total")
    tax = li.dec("tax_total")
    if tax is None:
        unit_tax = li.dec("tax")
        tax = unit_tax * quantity if unit_tax is not None else ZERO
    product = li.obj("product")
    return {
        "sku": li.text("sku", limit=256) or (product.text("sku", limit=256) if product else None),
        "quantity": quantity,
        "unit_price": price,
        # the line net is price_total whether `price` is before or after the discount
        "discount": quantity * price - price_total if price_total is not None else ZERO,
        "tax": tax,
        "product_id": li.ident("product_id"),
        "description": li.text("name")
        or (product.text("name") if product else None)
        or li.text("note"),
        "line_id": li.ident("id"),
        "employee_id": li.ident("salesperson_id"),
    }


def _tender(p: Obj) -> dict[str, Any]:
    retailer_type = p.obj("retailer_payment_type")
    global_type = p.obj("payment_type")
    method_id = (
        p.ident("retailer_payment_type_id")
        or (retailer_type.ident("id") if retailer_type else None)
        or p.ident("payment_type_id")
        or (global_type.ident("id") if global_type else None)
    )
    name = (
        (retailer_type.text("name", limit=256) if retailer_type else None)
        or (global_type.text("name", limit=256) if global_type else None)
        or p.text("name", limit=256)
        or p.text("label", limit=256)
    )
    return tender(
        p,
        name,
        method_id,
        reference="id",
        names="`retailer_payment_type.name` or an id",
        field=p.at("retailer_payment_type"),
    )


def _address(c: Obj, contact: Obj | None, kind: str) -> dict[str, Any] | None:
    """The `physical_*` or `postal_*` address, from `contact` (webhook) or the customer (2.0)."""
    out: dict[str, Any] = {}
    for field, suffixes in _ADDRESS_PARTS:
        value = None
        for holder in (contact, c):
            if holder is None:
                continue
            for suffix in suffixes:
                value = holder.text(
                    f"{kind}_{suffix}", limit=4096 if field.startswith("line") else 256
                )
                if value is not None:
                    break
            if value is not None:
                break
        if value is not None:
            out[field] = value
    if not out:
        return None
    out["kind"] = kind
    return out


def _address_keys() -> frozenset[str]:
    keys = {
        f"{kind}_{suffix}"
        for kind in ("physical", "postal")
        for _, suffixes in _ADDRESS_PARTS
        for suffix in suffixes
    }
    return frozenset(keys | {f"contact.{k}" for k in keys})


_ADDRESS_KEYS = _address_keys()


def x_customer(c: Obj, ref: str | None) -> Customer | None:
    """An X-Series customer; the anonymous WALKIN customer is None (never a Customer)."""
    if (c.text("customer_code", limit=256) or "").upper() == WALKIN:
        return None
    customer_id = c.req_ident("id")
    contact = c.obj("contact")
    do_not_email = c.boolean("do_not_email")
    opted_in = c.boolean("email_marketing")
    created = c.instant("created_at")
    updated = c.instant("updated_at")
    addresses = [a for a in (_address(c, contact, k) for k in ("physical", "postal")) if a]

    def pick(key: str) -> str | None:
        return c.text(key) or (contact.text(key) if contact else None)

    mobile = pick("mobile")
    skip = set(_CUSTOMER_MAPPED | _ADDRESS_KEYS)
    skip |= {"contact.first_name", "contact.last_name", "contact.email", "contact.company_name"}
    skip |= {"mobile", "contact.mobile"} if mobile else {"phone", "contact.phone"}
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": pick("first_name"),
            "last_name": pick("last_name"),
            "email": pick("email"),
            "phone": mobile or pick("phone"),
            "company": pick("company_name"),
            "address": addresses[0] if addresses else None,
            "addresses": addresses,
            "birth_date": calendar_date(c.text("date_of_birth", limit=64), c.at("date_of_birth")),
            # do_not_email false is "not blocked", not a consent: unknown (the record default);
            # only an explicit opt-in (`email_marketing: true`, where a payload has it) opts in
            "marketing_email": "opted_out" if do_not_email else ("opted_in" if opted_in else None),
            "notes": c.text("note"),
            "status": "deleted" if c.has("deleted_at") else None,
            "attributes": keep_attributes(c.data, frozenset(skip)),
            "created_at": created[0] if created else None,
            "updated_at": updated[0] if updated else None,
            "version": int_version(c),
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


_PRODUCT_MAPPED = frozenset(
    {
        "id",
        "sku",
        "name",
        "variant_name",
        "variant_parent_id",
        "price_excluding_tax",
        "description",
        "deleted_at",
        "active",
        "created_at",
        "updated_at",
        "version",
    }
)


def x_product(p: Obj, ref: str | None) -> Product:
    """An X-Series product (each variant is its own product)."""
    product_id = p.req_ident("id")
    brand = p.obj("brand")
    supplier = p.obj("supplier")
    product_type = p.obj("type") or p.obj("product_type")
    codes = p.objs("product_codes")
    created = p.instant("created_at")
    updated = p.instant("updated_at")
    active = p.boolean("active")
    return build(
        Product,
        {
            "id": product_id,
            "sku": p.text("sku", limit=256),
            "name": p.text("variant_name") or p.text("name"),
            "parent_id": p.ident("variant_parent_id"),
            "price": p.dec("price_excluding_tax"),
            "barcode": codes[0].text("code", limit=256) if codes else None,
            "vendor": (brand.text("name") if brand else None)
            or (supplier.text("name") if supplier else None),
            "category": product_type.text("name") if product_type else None,
            "description": p.text("description"),
            "status": "deleted"
            if p.has("deleted_at")
            else ("archived" if active is False else None),
            "attributes": keep_attributes(p.data, _PRODUCT_MAPPED),
            "created_at": created[0] if created else None,
            "updated_at": updated[0] if updated else None,
            "version": int_version(p),
            "source_ref": ref,
        },
        f"product {product_id}",
    )
