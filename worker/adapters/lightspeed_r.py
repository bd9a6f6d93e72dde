"""Lightspeed R-Series (ex-MerchantOS): V3 API JSON, `Sale`, `Customer`, `Item`.

**Quirks.** Every scalar is a string: `"0"` and `""` are null foreign keys, `""` is an empty
relation, a relation with one child is an object (several: an array) and both are accepted
everywhere, booleans are `"true"`/`"false"`, amounts may carry fractional cents (kept exact).

**Relations must be loaded.** A `Sale` fetched without `load_relations` has no `SaleLines` and
no `SalePayments` key at all; it cannot be committed, so it is refused at once (400 naming
`$.Sale.SaleLines`, with the parameter to fetch it). A sale whose `SaleLines` were loaded but
whose `SalePayments` key is absent has `tenders_known = false`; a loaded, empty relation (`""`)
is "no tenders".

**Money.** The POS's own figures: `calcSubtotal` is before discounts and `calcDiscount` is the
sale's discount, so `subtotal = calcSubtotal - calcDiscount` and `discount = calcDiscount`;
`tax` is `taxTotal` (else `calcTax1 + calcTax2`); `total` is `total`; `tip` is `calcTips`.
`isTaxInclusive` is `tax_included`. Line prices are `unitPrice` as sent; line discounts are
`calcLineDiscount + calcTransactionDiscount`, line tax `calcTax1 + calcTax2` (five places, e.g.
2.29425, where the sale says 2.29: lines are not summed into the header).

**Tenders.** `method` is `PaymentType.name` (else the `paymentTypeID`), `method_id` the
`paymentTypeID`, `reference` the `salePaymentID`; archived payments (voided) are left out.

A refund is a sale with negative `unitQuantity` and `parentSaleLineID` (kept as
`original_line_id`); the parent *sale* id is not in the payload, so `original_id` stays empty.
The customer `"0"` is no customer. `voided="true"` is a `Void`; `completed="false"` is dropped
(`open`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.lightspeed_common import calendar_date, keep_attributes, tender
from worker.adapters.native import (
    ZERO,
    Dropped,
    Obj,
    Unit,
    build,
    default_currency,
    local_date,
    run_items,
    sale_kind,
    source_ref,
)
from worker.errors import RecordInvalid
from worker.records import Customer, Product, Record, Sale, Void, sum_decimals

R_KEYS = ("Sale", "Customer", "Item")
_NULL = frozenset({"0"})
# Said without quotes: error messages are scrubbed of quoted values (`worker.errors.scrub`).
LOAD_RELATIONS = "load_relations=[SaleLines, SalePayments, SalePayments.PaymentType]"

_SALE_MAPPED = frozenset(
    {
        "saleID",
        "completed",
        "voided",
        "completeTime",
        "updatetime",
        "customerID",
        "Customer",
        "employeeID",
        "ticketNumber",
        "shopID",
        "registerID",
        "calcDiscount",
        "taxTotal",
        "total",
        "calcTips",
        "isTaxInclusive",
        # embedded related entities, records of their own (not facts of this sale)
        "Employee",
        "Register",
        "Shop",
        "TaxCategory",
        "SaleLines.SaleLine.saleLineID",
        "SaleLines.SaleLine.saleID",
        "SaleLines.SaleLine.itemID",
        "SaleLines.SaleLine.unitQuantity",
        "SaleLines.SaleLine.unitPrice",
        "SaleLines.SaleLine.calcLineDiscount",
        "SaleLines.SaleLine.calcTransactionDiscount",
        "SaleLines.SaleLine.calcTax1",
        "SaleLines.SaleLine.calcTax2",
        "SaleLines.SaleLine.employeeID",
        "SaleLines.SaleLine.parentSaleLineID",
        "SaleLines.SaleLine.Item",
        "SaleLines.SaleLine.Employee",
        "SaleLines.SaleLine.TaxClass",
        "SaleLines.SaleLine.TaxCategory",
        "SaleLines.SaleLine.Shop",
        "SalePayments.SalePayment.salePaymentID",
        "SalePayments.SalePayment.saleID",
        "SalePayments.SalePayment.amount",
        "SalePayments.SalePayment.paymentTypeID",
        "SalePayments.SalePayment.PaymentType.paymentTypeID",
        "SalePayments.SalePayment.PaymentType.name",
    }
)


def looks_r(doc: Any) -> bool:
    """Whether a decoded body is an R-Series response (a `Sale`, `Customer` or `Item` key)."""
    return isinstance(doc, dict) and any(k in doc for k in R_KEYS)


def parse_r(doc: Any, ctx: AdapterContext, out: Parsed) -> None:
    """Map every Sale, Customer and Item of an R-Series response (one object or a list)."""
    if not looks_r(doc):
        raise RecordInvalid(
            "expected an R-Series response with a `Sale`, `Customer` or `Item` key", field="$"
        )
    units: list[tuple[int, Unit]] = []
    single = True
    index = 0
    for key in R_KEYS:
        value = doc.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, list):
            single = False
            items = [(item, f"$.{key}[{i}]") for i, item in enumerate(value)]
        else:
            items = [(value, f"$.{key}")]
        for item, path in items:
            units.append((index, _unit(key, item, path, ctx)))
            index += 1
    if not units:
        raise RecordInvalid("R-Series response holds no records", field="$")
    run_items(out, units, single=single and len(units) == 1)


def _unit(key: str, value: Any, path: str, ctx: AdapterContext) -> Unit:
    def unit() -> list[Record] | Dropped:
        o = Obj.of(value, path)
        if key == "Sale":
            return r_sale(o, ctx)
        if key == "Customer":
            return [r_customer(o)]
        return [r_item(o)]

    return unit


def _rel(o: Obj, relation: str, child: str) -> list[Obj]:
    """`o.Relation.Child`: "" or absent is empty; one child is an object, several an array."""
    container = o.obj(relation)
    if container is None:
        return []
    return container.objs(child, single_ok=True)


def _fk(o: Obj, key: str) -> str | None:
    return o.ident(key, nulls=_NULL)


def _time(o: Obj, *keys: str) -> datetime | None:
    for key in keys:
        at = o.instant(key)
        if at is not None:
            return at[0]
    return None


def _sum(o: Obj, *keys: str) -> Decimal:
    return sum_decimals(o.dec(k) or ZERO for k in keys)


def r_sale(o: Obj, ctx: AdapterContext) -> list[Record] | Dropped:
    """An R-Series Sale with its SaleLines, SalePayments and (optionally) Customer."""
    sale_id = o.req_ident("saleID", nulls=_NULL)
    ref = source_ref("lightspeed-r", "Sale", sale_id)
    updated = _time(o, "updatetime", "timeStamp")
    if o.boolean("voided"):
        at = updated or _time(o, "completeTime", "createTime")
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
    if "SaleLines" not in o.data:
        raise RecordInvalid(
            "Sale was fetched without its relations (no SaleLines, no SalePayments): fetch it"
            f" with {LOAD_RELATIONS} (each name a JSON string)",
            field=o.at("SaleLines"),
        )
    occurred = _time(o, "completeTime", "timeStamp", "createTime")
    if occurred is None:
        raise RecordInvalid("missing required field `completeTime`", field=o.at("completeTime"))
    lines = [_line(li) for li in _rel(o, "SaleLines", "SaleLine")]
    subtotal = o.req_dec("calcSubtotal") - (o.dec("calcDiscount") or ZERO)
    tax = o.dec("taxTotal")
    if tax is None:
        tax = _sum(o, "calcTax1", "calcTax2")
    total = o.req_dec("total")
    tenders_known = "SalePayments" in o.data
    tenders = [
        _tender(p)
        for p in _rel(o, "SalePayments", "SalePayment")
        if not p.boolean("archived")  # an archived payment is a voided one
    ]
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
                "discount": o.dec("calcDiscount"),
                "tax": tax,
                "tip": o.dec("calcTips"),
                "total": total,
                "tax_included": bool(o.boolean("isTaxInclusive")),
                "tenders": tenders,
                "tenders_known": tenders_known,
                "customer_id": _fk(o, "customerID"),
                "employee_id": _fk(o, "employeeID"),
                "display_number": o.text("ticketNumber", limit=256),
                "location_id": _fk(o, "shopID"),
                "register_id": _fk(o, "registerID"),
                "channel": "other" if o.text("referenceNumberSource") else "pos",
                "attributes": keep_attributes(o.data, _SALE_MAPPED),
                "business_date": local_date(occurred, ctx.zone),
                "updated_at": updated,
                "source_ref": ref,
            },
            f"sale {sale_id}",
        )
    )
    return records


def _line(li: Obj) -> dict[str, Any]:
    item = li.obj("Item")
    line_type = li.text("lineType", limit=64) or ""
    sku = None
    if item is not None:
        sku = item.text("customSku", limit=256) or item.text("systemSku", limit=256)
    return {
        "sku": sku,
        "quantity": li.req_dec("unitQuantity"),
        "unit_price": li.req_dec("unitPrice"),
        "discount": _sum(li, "calcLineDiscount", "calcTransactionDiscount"),
        "tax": _sum(li, "calcTax1", "calcTax2"),
        "product_id": _fk(li, "itemID"),
        "description": item.text("description") if item else None,
        "line_id": _fk(li, "saleLineID"),
        "line_kind": "fee" if line_type.startswith("item_fee") else "item",
        "employee_id": _fk(li, "employeeID"),
        "original_line_id": _fk(li, "parentSaleLineID"),
    }


def _tender(p: Obj) -> dict[str, Any]:
    payment_type = p.obj("PaymentType")
    method_id = _fk(p, "paymentTypeID") or (
        _fk(payment_type, "paymentTypeID") if payment_type else None
    )
    name = payment_type.text("name", limit=256) if payment_type else None
    return tender(
        p,
        name,
        method_id,
        reference="salePaymentID",
        nulls=_NULL,
        names="`PaymentType.name` or `paymentTypeID`",
        field=p.at("paymentTypeID"),
    )


_ADDRESS_MAPPED = ("address1", "address2", "city", "stateCode", "zip", "countryCode")
_CUSTOMER_MAPPED = frozenset(
    {
        "customerID",
        "firstName",
        "lastName",
        "company",
        "dob",
        "archived",
        "createTime",
        "timeStamp",
        "Note.note",
        # what a sale embeds under its customer: other sales' lines, not this customer's facts
        "Layaways",
        "SpecialOrders",
        "Workorders",
        *(f"Contact.Addresses.ContactAddress.{k}" for k in _ADDRESS_MAPPED),
    }
)


def _r_address(a: Obj) -> dict[str, Any]:
    return {
        "line1": a.text("address1"),
        "line2": a.text("address2"),
        "city": a.text("city", limit=256),
        "region": a.text("stateCode", limit=256) or a.text("state", limit=256),
        "postal_code": a.text("zip", limit=256),
        "country_code": a.text("countryCode", limit=256) or a.text("country", limit=256),
    }


def r_customer(c: Obj) -> Customer:
    """An R-Series Customer with its Contact (emails, phones, addresses)."""
    customer_id = c.req_ident("customerID", nulls=_NULL)
    contact = c.obj("Contact")
    email = phone = None
    addresses: list[dict[str, Any]] = []
    no_email = None
    if contact is not None:
        emails = _rel(contact, "Emails", "ContactEmail")
        primary = [e for e in emails if (e.text("useType") or "").lower() == "primary"] or emails
        email = primary[0].text("address") if primary else None
        phones = _rel(contact, "Phones", "ContactPhone")
        mobile = [p for p in phones if (p.text("useType") or "").lower() == "mobile"] or phones
        phone = mobile[0].text("number") if mobile else None
        addresses = [
            a
            for a in (_r_address(x) for x in _rel(contact, "Addresses", "ContactAddress"))
            if any(a.values())
        ]
        no_email = contact.boolean("noEmail")
    note = c.obj("Note")
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("firstName"),
            "last_name": c.text("lastName"),
            "company": c.text("company"),
            "email": email,
            "phone": phone,
            "address": addresses[0] if addresses else None,
            "addresses": addresses,
            # dob is a calendar date sent as midnight UTC: its date part as written
            "birth_date": calendar_date(c.text("dob", limit=64), c.at("dob")),
            # noEmail "false" is "not blocked", not a consent: unknown (the record default)
            "marketing_email": "opted_out" if no_email else None,
            "notes": note.text("note") if note else None,
            "status": "inactive" if c.boolean("archived") else None,
            "attributes": keep_attributes(c.data, _CUSTOMER_MAPPED),
            "created_at": _time(c, "createTime"),
            "updated_at": _time(c, "timeStamp"),
            "source_ref": source_ref("lightspeed-r", "Customer", customer_id),
        },
        f"customer {customer_id}",
    )


_ITEM_MAPPED = frozenset(
    {
        "itemID",
        "customSku",
        "description",
        "itemMatrixID",
        "categoryID",
        "archived",
        "createTime",
        "timeStamp",
    }
)


def r_item(i: Obj) -> Product:
    """An R-Series Item (a matrix child's parent is its `itemMatrixID`)."""
    item_id = i.req_ident("itemID", nulls=_NULL)
    price = None
    attributes = keep_attributes(i.data, _ITEM_MAPPED)
    for p in _rel(i, "Prices", "ItemPrice"):
        use = p.text("useType", limit=64) or p.text("useTypeID", limit=64) or ""
        amount = p.dec("amount")
        if amount is None:
            continue
        if use.lower() == "default" or use == "1":
            price = amount
        elif len(attributes) < 255:
            attributes[f"price:{use}"] = str(amount)
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
            "created_at": _time(i, "createTime"),
            "updated_at": _time(i, "timeStamp"),
            "source_ref": source_ref("lightspeed-r", "Item", item_id),
        },
        f"item {item_id}",
    )
