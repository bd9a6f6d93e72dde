"""Lightspeed Retail, both flavours, under one source name: `lightspeed`.

**Flavour detection** (first match wins):

1. `X-Possync-Flavor: x` or `r` (also `x-series` / `r-series`), or the same word as
   `ctx.topic` (MQTT kind, drop-folder hint).
2. A form-encoded body (`application/x-www-form-urlencoded`, or a body starting `payload=`):
   an **X-Series webhook**. The JSON string in the form field `payload` is the entity; the form
   field `type` (`sale.update`, `customer.update`, `product.update`, ...) says which, else
   `ctx.topic`, else the payload's shape. X webhooks are unsigned: the push URL's bearer token
   is the only authentication, so treat them as hints and reconcile by polling.
3. A JSON object with a top-level `Sale`, `Customer` or `Item` key: **R-Series** (V3 API
   responses, single object or list).
4. Any other JSON (`{"data": {...}}`, `{"data": [...]}`, a bare object or array):
   **X-Series API 2.0** (or the legacy `register_sale` shape); the entity kind comes from its
   fields.

**Versions.** X: the integer `version` (absent on legacy webhook bodies, which therefore never
overwrite a polled record). R: `updatetime` (as `updated_at`, so the version is its
microseconds).

**Statuses.** X `CLOSED` and every `*_CLOSED` are completed sales; `VOIDED` (or `deleted_at`)
becomes a `Void`; `SAVED`, `LAYBY`, `ONACCOUNT`, `AWAITING_*`, `SERVICE` are not completed
purchases: dropped and counted as `dropped["open"]`. R: `voided="true"` is a `Void`,
`completed="false"` is dropped the same way. A void emits only the `Void` (the sale itself came
earlier, or was never completed).

**R-Series quirks.** Every scalar is a string: `"0"` and `""` are null foreign keys, `""` is an
empty relation, a relation with one child is an object (several: an array), booleans are
`"true"`/`"false"`, amounts may carry fractional cents (kept exact). A refund is a sale with
negative `unitQuantity` and `parentSaleLineID` (kept as `original_line_id`); the parent *sale*
id is not in the payload, so `original_id` stays empty.

Money: the X total is tax-exclusive (`total = total_price + total_tax`); line nets come from
`price_total`, so whether `price` is pre- or post-discount does not matter. `Sale.total`
includes tips (R `calcTips`), because tenders do.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.native import (
    FORM_TYPE,
    JSON_TYPES,
    ZERO,
    Dropped,
    Obj,
    Unit,
    build,
    decode_json,
    default_currency,
    local_date,
    run_items,
    sale_kind,
    source_ref,
    tax_exclusive_unit,
)
from worker.config import RulePolicy
from worker.errors import RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Record, Sale, Void, sum_decimals

Flavour = Literal["x", "r"]
Entity = Literal["sale", "customer", "product"]

_FLAVOURS: dict[str, Flavour] = {
    "x": "x",
    "x-series": "x",
    "xseries": "x",
    "vend": "x",
    "r": "r",
    "r-series": "r",
    "rseries": "r",
}
_WEBHOOK_TYPES: dict[str, Entity] = {
    "sale.update": "sale",
    "customer.update": "customer",
    "product.update": "product",
}
# Documented webhook types that carry nothing we map: acknowledged and counted.
_IGNORED_TYPES = frozenset(
    {"inventory.update", "register_closure.create", "consignment.send", "consignment.receive"}
)
_X_OPEN = frozenset(
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
_X_CHANNEL = {"USER": "pos", "SHOPIFY": "web", "ECOMMERCE": "web", "QUOTE": "other"}
_R_NULL = frozenset({"0"})
_WALKIN = "WALKIN"


class LightspeedAdapter:
    """`POST /v1/push/lightspeed/{store}`: X-Series webhooks / API 2.0 JSON, R-Series JSON."""

    name = "lightspeed"
    signed = False
    rule_defaults: Mapping[str, RulePolicy] = MappingProxyType({})

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Detect the flavour, decode, and map each entity (see the module docstring)."""
        hint = (ctx.headers.get("x-possync-flavor") or ctx.topic or "").strip().lower()
        flavour = _FLAVOURS.get(hint)
        out = Parsed()
        if ctx.content_type == FORM_TYPE or body.lstrip()[:8] == b"payload=":
            doc, webhook_type = _form_payload(body)
            webhook_type = webhook_type or (ctx.topic if ctx.topic in _WEBHOOK_TYPES else None)
            if webhook_type in _IGNORED_TYPES:
                out.dropped[f"ignored:{webhook_type}"] = 1
                return out
            if webhook_type is not None and webhook_type not in _WEBHOOK_TYPES:
                raise RecordInvalid(
                    f"unsupported Lightspeed webhook type {webhook_type[:64]!r}", field="type"
                )
            entity = _WEBHOOK_TYPES[webhook_type] if webhook_type else None
            run_items(out, [(0, _x_unit(doc, "payload", entity, ctx, "webhook"))], single=True)
            return out
        if ctx.content_type not in JSON_TYPES:
            raise UnsupportedMediaType(
                f"content type {ctx.content_type!r} not supported: use application/json or a "
                "form-encoded X-Series webhook",
                field="Content-Type",
            )
        doc = decode_json(body)
        if flavour == "r" or (flavour is None and _looks_r(doc)):
            _parse_r(doc, ctx, out)
        else:
            _parse_x(doc, ctx, out)
        return out


def _form_payload(body: bytes) -> tuple[Any, str | None]:
    try:
        text = body.decode("utf-8")
        form = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise RecordInvalid("not a UTF-8 form-encoded body", field="$") from None
    payload = form.get("payload")
    if not payload or not payload[0].strip():
        raise RecordInvalid("form field `payload` is missing or empty", field="payload")
    kind = (form.get("type") or [""])[0].strip().lower() or None
    return decode_json(payload[0], field="payload"), kind


def _looks_r(doc: Any) -> bool:
    return isinstance(doc, dict) and any(k in doc for k in ("Sale", "Customer", "Item"))


# -- X-Series ----------------------------------------------------------------------------


def _parse_x(doc: Any, ctx: AdapterContext, out: Parsed) -> None:
    path = "$"
    if isinstance(doc, dict) and "data" in doc:
        doc, path = doc["data"], "$.data"
    if isinstance(doc, list):
        if not doc:
            raise RecordInvalid("empty array: expected at least one entity", field=path)
        units = [(i, _x_unit(item, f"{path}[{i}]", None, ctx, "api")) for i, item in enumerate(doc)]
        run_items(out, units, single=False)
        return
    run_items(out, [(0, _x_unit(doc, path, None, ctx, "api"))], single=True)


def _x_entity(o: Obj) -> Entity:
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


def _x_unit(value: Any, path: str, entity: Entity | None, ctx: AdapterContext, via: str) -> Unit:
    def unit() -> list[Record] | Dropped:
        o = Obj.of(value, path)
        kind = entity or _x_entity(o)
        ref = source_ref("lightspeed-x", via, kind)
        if kind == "sale":
            return x_sale(o, ctx, ref)
        if kind == "customer":
            customer = x_customer(o, ref)
            return Dropped("walk_in") if customer is None else [customer]
        return [x_product(o, ref)]

    return unit


def _x_time(o: Obj, *keys: str) -> tuple[datetime, bool] | None:
    for key in keys:
        at = o.instant(key)
        if at is not None:
            return at
    return None


def x_sale(o: Obj, ctx: AdapterContext, ref: str | None) -> list[Record] | Dropped:
    """An X-Series sale (API 2.0 `line_items`/`payments` or legacy `register_sale_*`)."""
    sale_id = o.req_ident("id")
    status = (o.text("status", limit=64) or o.text("state", limit=64) or "").upper()
    version = _int_version(o)
    occurred = _x_time(o, "sale_date", "created_at")
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
    if status in _X_OPEN:
        return Dropped("open")
    if status != "CLOSED" and not status.endswith("_CLOSED"):
        raise RecordInvalid(f"unknown sale status {status[:32]!r}", field=o.at("status"))
    if occurred is None:
        raise RecordInvalid("missing required field `sale_date`", field=o.at("sale_date"))
    records: list[Record] = []
    customer_id = o.ident("customer_id")
    customer = o.obj("customer")
    if customer is not None:
        embedded = x_customer(customer, ref)
        if embedded is None:
            customer_id = None
        else:
            customer_id = customer_id or embedded.id
            records.append(embedded)
    lines: list[dict[str, Any]] = []
    line_key = "line_items" if o.has("line_items") else "register_sale_products"
    for li in o.objs(line_key):
        if (li.text("status", limit=64) or "").upper() == "VOIDED":
            continue
        quantity = li.req_dec("quantity")
        price = li.req_dec("price")
        price_total = li.dec("price_total")
        unit_tax = li.dec("tax")
        tax = li.dec("tax_total")
        if tax is None:
            tax = unit_tax * quantity if unit_tax is not None else ZERO
        lines.append(
            {
                "sku": li.text("sku", limit=256) or "",
                "quantity": quantity,
                "unit_price": price,
                # the line net is price_total whether `price` is before or after the discount
                "discount": quantity * price - price_total if price_total is not None else ZERO,
                "tax": tax,
                "product_id": li.ident("product_id"),
                "description": li.text("note") or li.text("name"),
                "line_id": li.ident("id"),
                "employee_id": li.ident("salesperson_id"),
            }
        )
    net = sum_decimals(ln["quantity"] * ln["unit_price"] - ln["discount"] for ln in lines)
    subtotal = o.dec("total_price")
    tax = o.dec("total_tax")
    subtotal = net if subtotal is None else subtotal
    tax = sum_decimals(ln["tax"] for ln in lines) if tax is None else tax
    payment_key = "payments" if o.has("payments") else "register_sale_payments"
    tenders: list[dict[str, Any]] = []
    for p in o.objs(payment_key):
        amount = p.req_dec("amount")
        method = (
            p.text("name", limit=256)
            or p.ident("retailer_payment_type_id")
            or p.ident("payment_type_id")
        )
        tenders.append(
            {"method": method or "unknown", "amount": amount, "reference": p.ident("id")}
        )
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
                "tenders": tenders,
                "customer_id": customer_id,
                "employee_id": o.ident("user_id"),
                "display_number": o.text("invoice_number", limit=256),
                "location_id": o.ident("outlet_id"),
                "register_id": o.ident("register_id"),
                "channel": _X_CHANNEL.get(source, "other"),
                "business_date": local_date(instant, ctx.zone),
                "updated_at": updated[0] if updated else None,
                "version": version,
                "source_ref": ref,
            },
            f"sale {sale_id}",
        )
    )
    return records


def _int_version(o: Obj) -> int | None:
    value = o.get("version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RecordInvalid("`version` must be an integer", field=o.at("version"))
    try:
        number = int(value)
    except ValueError:
        raise RecordInvalid("`version` must be an integer", field=o.at("version")) from None
    if not 0 <= number < 2**63:
        raise RecordInvalid("`version` out of range", field=o.at("version"))
    return number


def x_customer(c: Obj, ref: str | None) -> Customer | None:
    """An X-Series customer; the anonymous WALKIN customer is None (never a Customer)."""
    if (c.text("customer_code", limit=256) or "").upper() == _WALKIN:
        return None
    customer_id = c.req_ident("id")
    birth = c.text("date_of_birth", limit=64)
    do_not_email = c.boolean("do_not_email")
    created = c.instant("created_at")
    updated = c.instant("updated_at")
    line1 = c.text("physical_address_1")
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("first_name"),
            "last_name": c.text("last_name"),
            "email": c.text("email"),
            "phone": c.text("mobile") or c.text("phone"),
            "company": c.text("company_name"),
            "address": None
            if line1 is None and not c.has("physical_city")
            else {
                "line1": line1,
                "line2": c.text("physical_address_2"),
                "city": c.text("physical_city", limit=256),
                "region": c.text("physical_state", limit=256),
                "postal_code": c.text("physical_postcode", limit=256),
                "country_code": c.text("physical_country_id", limit=256),
            },
            "birth_date": _date(birth, c.at("date_of_birth")),
            "marketing_email": None
            if do_not_email is None
            else ("opted_out" if do_not_email else "opted_in"),
            "notes": c.text("note"),
            "status": "deleted" if c.has("deleted_at") else None,
            "created_at": created[0] if created else None,
            "updated_at": updated[0] if updated else None,
            "version": _int_version(c),
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


def _date(text: str | None, path: str) -> Any:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        raise RecordInvalid(f"not an ISO-8601 date: {text[:40]!r}", field=path) from None


def x_product(p: Obj, ref: str | None) -> Product:
    """An X-Series product (each variant is its own product)."""
    product_id = p.req_ident("id")
    brand = p.obj("brand")
    supplier = p.obj("supplier")
    product_type = p.obj("type")
    codes = p.objs("product_codes")
    attributes: dict[str, str] = {}
    including = p.dec("price_including_tax")
    if including is not None:
        attributes["price_including_tax"] = str(including)
    for key in ("supplier_code", "handle"):
        value = p.text(key)
        if value:
            attributes[key] = value
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
            "attributes": attributes,
            "created_at": created[0] if created else None,
            "updated_at": updated[0] if updated else None,
            "version": _int_version(p),
            "source_ref": ref,
        },
        f"product {product_id}",
    )


# -- R-Series ----------------------------------------------------------------------------


def _parse_r(doc: Any, ctx: AdapterContext, out: Parsed) -> None:
    if not isinstance(doc, dict) or not _looks_r(doc):
        raise RecordInvalid(
            "expected an R-Series response with a `Sale`, `Customer` or `Item` key", field="$"
        )
    units: list[tuple[int, Unit]] = []
    single = True
    index = 0
    for key, build_one in (
        ("Sale", _r_sale_unit),
        ("Customer", _r_customer_unit),
        ("Item", _r_item_unit),
    ):
        value = doc.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, list):
            single = False
            items = [(item, f"$.{key}[{i}]") for i, item in enumerate(value)]
        else:
            items = [(value, f"$.{key}")]
        for item, path in items:
            units.append((index, build_one(item, path, ctx)))
            index += 1
    if not units:
        raise RecordInvalid("R-Series response holds no records", field="$")
    run_items(out, units, single=single and len(units) == 1)


def _r_sale_unit(value: Any, path: str, ctx: AdapterContext) -> Unit:
    return lambda: r_sale(Obj.of(value, path), ctx)


def _r_customer_unit(value: Any, path: str, ctx: AdapterContext) -> Unit:
    return lambda: [r_customer(Obj.of(value, path))]


def _r_item_unit(value: Any, path: str, ctx: AdapterContext) -> Unit:
    return lambda: [r_item(Obj.of(value, path))]


def _rel(o: Obj, relation: str, child: str) -> list[Obj]:
    """`o.Relation.Child`: "" or absent is empty; one child is an object, several an array."""
    container = o.obj(relation)
    if container is None:
        return []
    return container.objs(child, single_ok=True)


def _fk(o: Obj, key: str) -> str | None:
    return o.ident(key, nulls=_R_NULL)


def _r_time(o: Obj, *keys: str) -> datetime | None:
    for key in keys:
        at = o.instant(key)
        if at is not None:
            return at[0]
    return None


def _sum(o: Obj, *keys: str) -> Decimal:
    return sum_decimals(o.dec(k) or ZERO for k in keys)


def r_sale(o: Obj, ctx: AdapterContext) -> list[Record] | Dropped:
    """An R-Series Sale with its SaleLines, SalePayments and (optionally) Customer."""
    sale_id = o.req_ident("saleID", nulls=_R_NULL)
    ref = source_ref("lightspeed-r", "Sale", sale_id)
    updated = _r_time(o, "updatetime", "timeStamp")
    if o.boolean("voided"):
        at = updated or _r_time(o, "completeTime", "createTime")
        return [
            build(
                Void,
                {
                    "id": sale_id,
                    "occurred_at": at or ctx.received_at,
                    "reason": "voided",
                    "source_ref": ref,
                },
                f"void {sale_id}",
            )
        ]
    if not o.boolean("completed"):
        return Dropped("open")
    occurred = _r_time(o, "completeTime", "timeStamp", "createTime")
    if occurred is None:
        raise RecordInvalid("missing required field `completeTime`", field=o.at("completeTime"))
    tax_inclusive = bool(o.boolean("isTaxInclusive"))
    lines: list[dict[str, Any]] = []
    for li in _rel(o, "SaleLines", "SaleLine"):
        quantity = li.req_dec("unitQuantity")
        unit = li.req_dec("unitPrice")
        tax = _sum(li, "calcTax1", "calcTax2")
        item = li.obj("Item")
        line_type = li.text("lineType", limit=64) or ""
        lines.append(
            {
                "sku": (
                    item.text("customSku", limit=256) or item.text("systemSku", limit=256)
                    if item
                    else None
                )
                or "",
                "quantity": quantity,
                "unit_price": tax_exclusive_unit(quantity, unit, tax) if tax_inclusive else unit,
                "discount": _sum(li, "calcLineDiscount", "calcTransactionDiscount"),
                "tax": tax,
                "product_id": _fk(li, "itemID"),
                "description": item.text("description") if item else None,
                "line_id": _fk(li, "saleLineID"),
                "line_kind": "fee" if line_type.startswith("item_fee") else "item",
                "employee_id": _fk(li, "employeeID"),
                "original_line_id": _fk(li, "parentSaleLineID"),
            }
        )
    net = sum_decimals(ln["quantity"] * ln["unit_price"] - ln["discount"] for ln in lines)
    calc_subtotal = o.dec("calcSubtotal")
    if calc_subtotal is not None and not tax_inclusive:
        subtotal = calc_subtotal - (o.dec("calcDiscount") or ZERO)
    else:
        subtotal = net
    header_tax: Decimal | None = None
    if o.has("calcTax1") or o.has("calcTax2"):
        header_tax = _sum(o, "calcTax1", "calcTax2")
    else:
        header_tax = o.dec("taxTotal")
    tax = sum_decimals(ln["tax"] for ln in lines) if header_tax is None else header_tax
    tip = o.dec("calcTips") or ZERO
    total = o.dec("total")
    if total is None or tax_inclusive:
        total = subtotal + tax
    tenders: list[dict[str, Any]] = []
    for p in _rel(o, "SalePayments", "SalePayment"):
        if p.boolean("archived"):  # an archived payment is a voided one
            continue
        payment_type = p.obj("PaymentType")
        method = (payment_type.text("name", limit=256) if payment_type else None) or _fk(
            p, "paymentTypeID"
        )
        tenders.append(
            {
                "method": method or "unknown",
                "amount": p.req_dec("amount"),
                "reference": _fk(p, "salePaymentID"),
            }
        )
    records: list[Record] = []
    customer = o.obj("Customer")
    if customer is not None and _fk(customer, "customerID") is not None:
        records.append(r_customer(customer))
    records.append(
        build(
            Sale,
            {
                "id": sale_id,
                "kind": sale_kind(ln["quantity"] for ln in lines),
                "occurred_at": occurred,
                "currency": default_currency(ctx),
                "lines": lines,
                "subtotal": subtotal,
                "tax": tax,
                "tip": tip,
                "total": total + tip,
                "tenders": tenders,
                "customer_id": _fk(o, "customerID"),
                "employee_id": _fk(o, "employeeID"),
                "display_number": o.text("ticketNumber", limit=256),
                "location_id": _fk(o, "shopID"),
                "register_id": _fk(o, "registerID"),
                "channel": "other" if o.text("referenceNumberSource") else "pos",
                "business_date": local_date(occurred, ctx.zone),
                "updated_at": updated,
                "source_ref": ref,
            },
            f"sale {sale_id}",
        )
    )
    return records


def r_customer(c: Obj) -> Customer:
    """An R-Series Customer with its Contact (emails, phones, addresses)."""
    customer_id = c.req_ident("customerID", nulls=_R_NULL)
    contact = c.obj("Contact")
    email = phone = None
    address: dict[str, Any] | None = None
    no_email = None
    if contact is not None:
        emails = _rel(contact, "Emails", "ContactEmail")
        primary = [e for e in emails if (e.text("useType") or "").lower() == "primary"] or emails
        email = primary[0].text("address") if primary else None
        phones = _rel(contact, "Phones", "ContactPhone")
        mobile = [p for p in phones if (p.text("useType") or "").lower() == "mobile"] or phones
        phone = mobile[0].text("number") if mobile else None
        addresses = _rel(contact, "Addresses", "ContactAddress")
        if addresses:
            a = addresses[0]
            address = {
                "line1": a.text("address1"),
                "line2": a.text("address2"),
                "city": a.text("city", limit=256),
                "region": a.text("stateCode", limit=256) or a.text("state", limit=256),
                "postal_code": a.text("zip", limit=256),
                "country_code": a.text("countryCode", limit=256) or a.text("country", limit=256),
            }
        no_email = contact.boolean("noEmail")
    note = c.obj("Note")
    dob = c.text("dob", limit=64)
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("firstName"),
            "last_name": c.text("lastName"),
            "company": c.text("company"),
            "email": email,
            "phone": phone,
            "address": address,
            # dob is a calendar date sent as midnight UTC: take its date part as written
            "birth_date": _date(dob[:10], c.at("dob")) if dob else None,
            "marketing_email": None
            if no_email is None
            else ("opted_out" if no_email else "opted_in"),
            "notes": note.text("note") if note else None,
            "status": "inactive" if c.boolean("archived") else None,
            "created_at": _r_time(c, "createTime"),
            "updated_at": _r_time(c, "timeStamp"),
            "source_ref": source_ref("lightspeed-r", "Customer", customer_id),
        },
        f"customer {customer_id}",
    )


def r_item(i: Obj) -> Product:
    """An R-Series Item (a matrix child's parent is its `itemMatrixID`)."""
    item_id = i.req_ident("itemID", nulls=_R_NULL)
    prices = _rel(i, "Prices", "ItemPrice")
    price = None
    attributes: dict[str, str] = {}
    for p in prices:
        use = p.text("useType", limit=64) or p.text("useTypeID", limit=64) or ""
        amount = p.dec("amount")
        if amount is None:
            continue
        if use.lower() == "default" or use == "1":
            price = amount
        else:
            attributes[f"price:{use}"] = str(amount)
    for key in ("manufacturerSku", "upc", "ean", "itemType"):
        value = i.text(key, limit=256)
        if value:
            attributes[key] = value
    return build(
        Product,
        {
            "id": item_id,
            "sku": i.text("customSku", limit=256) or i.text("systemSku", limit=256),
            "barcode": i.text("upc", limit=256)
            or i.text("ean", limit=256)
            or i.text("systemSku", limit=256),
            "name": i.text("description"),
            "price": price,
            "parent_id": _fk(i, "itemMatrixID"),
            "category": _fk(i, "categoryID"),
            "status": "archived" if i.boolean("archived") else None,
            "attributes": attributes,
            "created_at": _r_time(i, "createTime"),
            "updated_at": _r_time(i, "timeStamp"),
            "source_ref": source_ref("lightspeed-r", "Item", item_id),
        },
        f"item {item_id}",
    )
