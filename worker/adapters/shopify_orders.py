"""Shopify orders and refunds into canonical sales: Shopify's own figures, never recomputed.

- **Order figures come from the order.** `total` = `total_price`, `subtotal` =
  `subtotal_price`, `tax` = `total_tax`, `discount` = `total_discounts`, `tip` =
  `total_tip_received`, `tax_included` = `taxes_included`; shop money (`*_set.shop_money`)
  where both exist. `shipping` is `total_shipping_price_set`, or, when a shipping line carries
  a discount, the sum of the shipping lines' `discounted_price` (else `price` less their
  `discount_allocations`). `fees` are the duties and additional fees Shopify adds to
  `total_price` (`original_total_duties_set`, `original_total_additional_fees_set`), each
  also a `fee` adjustment. Where Shopify's figures disagree with each other, the window
  quarantines with both figures; nothing here "fixes" them.
- **Lines carry their own figures**: `price` (as sent: tax-inclusive when `taxes_included`),
  `discount_allocations` (else `total_discount`), `tax_lines`. Lines keep what was *sold*:
  `current_quantity` plus everything refunded from the line (an edit that removed items
  shrinks the line, its discount and tax pro rata; refunds do not, each is its own return).
- **Order-level figures no line carries.** `subtotal_price` = `total_line_items_price` −
  `total_discounts`, so `total_discounts` is the item discount; the part of it that no line's
  `discount_allocations` carries is an `Adjustment(kind="discount")`, negative, named from the
  `discount_applications` no allocation points at and their `discount_codes`. When no line
  carries tax, each order `tax_lines` entry is an `Adjustment(kind="tax")` (descriptive: the
  sale's `tax` is `total_tax`).
- **Tenders are never invented.** An order body has no payment amounts (they live in the
  Transaction resource): with a `transactions` array (REST exports, relays that embed them),
  successful `sale`/`capture` are payments and `refund` negative, `gateway` the method (else
  `payment_details.payment_method_name` or `credit_card_company`; "unknown" only where
  Shopify names none) and the transaction id the reference; without one, `tenders_known` is False and the gateway names
  stay in `attributes.payment_gateway_names`.
- **Refunds** become a return sale `refund:<refund id>` (`original_id` the order) built from the
  refund alone, so `refunds/create` and the copy embedded in `orders/updated` share one natural
  key; the standalone copy is versioned by the refund's `created_at`, the embedded one by the
  order's `updated_at` (never earlier). A refund line's amount is its `subtotal` (after
  discounts) and `total_tax`; the older shape without `subtotal` uses `line_item.price` ×
  quantity less the line item's discount allocations pro rata, and the line item's
  `tax_lines` pro rata unless `total_tax` is given. Tenders are the refund's `transactions`.
  A refund embedded in a `taxes_included` order is `tax_included` (its amounts carry the tax,
  as the order's prices do); a standalone `refunds/create` does not say, and is read as
  tax-exclusive (if that is wrong, `tenders.sum` says so with both figures).
- **Cancellation** (`orders/cancelled`, `cancelled_at` set, or `financial_status: voided`)
  emits the order's sale, a `Void` of it, and a `Void` of each refund embedded in it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from worker.adapters.base import AdapterContext
from worker.adapters.native import (
    ZERO,
    Dropped,
    Obj,
    build,
    divide,
    local_date,
    money,
    prorate,
)
from worker.adapters.shopify_entities import attribute_text, attributes_of, customer_record, when
from worker.errors import RecordInvalid
from worker.records import Record, Sale, Void, sum_decimals

_WEB_SOURCES = frozenset({"web", "shopify_draft_order", "iphone", "android"})

# Order fields the canonical sale maps (or that are PII kept on the customer): the rest of the
# order goes to the sale's attributes under Shopify's own names.
_ORDER_MAPPED = frozenset(
    {
        "id",
        "line_items",
        "refunds",
        "shipping_lines",
        "transactions",
        "fulfillments",
        "customer",
        "email",
        "contact_email",
        "phone",
        "billing_address",
        "shipping_address",
        "client_details",
        "browser_ip",
        "total_price",
        "total_price_set",
        "subtotal_price",
        "subtotal_price_set",
        "total_tax",
        "total_tax_set",
        "total_discounts",
        "total_discounts_set",
        "total_shipping_price_set",
        "total_tip_received",
        "original_total_duties_set",
        "original_total_additional_fees_set",
        "taxes_included",
        "currency",
        "presentment_currency",
        "processed_at",
        "updated_at",
        "user_id",
        "location_id",
    }
)
_REFUND_MAPPED = frozenset(
    {
        "id",
        "order_id",
        "processed_at",
        "user_id",
        "refund_line_items",
        "transactions",
        "order_adjustments",
    }
)


def _channel(source_name: str | None) -> str:
    if source_name is None or source_name == "pos":
        return "pos"
    return "web" if source_name in _WEB_SOURCES else "other"


def _req_money(o: Obj, key: str) -> Decimal:
    value = money(o, key)
    if value is None:
        raise RecordInvalid(f"missing required field `{key}`", field=o.at(key))
    return value


def order_records(
    o: Obj, ctx: AdapterContext, ref: str | None, *, cancelled: bool
) -> list[Record] | Dropped:
    """An order's sale, its embedded customer and refunds, and voids when cancelled."""
    if o.boolean("test"):
        return Dropped("test")
    order_id = o.req_ident("id")
    occurred = when(o, "processed_at", "created_at")
    if occurred is None:
        raise RecordInvalid("missing required field `processed_at`", field=o.at("processed_at"))
    updated = when(o, "updated_at")
    currency = o.text("currency", limit=8) or _set_currency(o, "total_price")
    if currency is None:
        raise RecordInvalid("missing required field `currency`", field=o.at("currency"))
    records: list[Record] = []
    customer_id: str | None = None
    customer = o.obj("customer")
    if customer is not None and customer.has("id"):  # null customer: a walk-in, no Customer
        on_order = [
            (kind, a)
            for kind in ("billing", "shipping")
            if (a := o.obj(f"{kind}_address")) is not None
        ]
        record = customer_record(customer, ref, deleted=False, order_addresses=on_order)
        customer_id = record.id
        records.append(record)

    refunds = o.objs("refunds")
    refunded: dict[str, Decimal] = {}
    for r in refunds:
        for rli in r.objs("refund_line_items"):
            line_item_id = rli.ident("line_item_id")
            if line_item_id is not None:
                refunded[line_item_id] = refunded.get(line_item_id, ZERO) + rli.req_dec("quantity")
    items = o.objs("line_items")
    lines = [line for li in items if (line := _order_line(li, refunded)) is not None]
    tenders = _order_tenders(o, refunds)
    discount, discount_adjustments = _discounts(o, items)
    fees = _fees(o)
    extra = [
        (f"line_items.{i}.properties", li.get("properties"))
        for i, li in enumerate(items)
        if li.get("properties")
    ]
    if discount is None:  # not the item discount: kept as Shopify's own figure
        extra.append(("total_discounts", o.get("total_discounts")))
    sale = build(
        Sale,
        {
            "id": order_id,
            "occurred_at": occurred,
            "currency": currency,
            "lines": lines,
            "subtotal": _req_money(o, "subtotal_price"),
            "tax": _req_money(o, "total_tax"),
            "total": _req_money(o, "total_price"),
            "discount": discount,
            "shipping": _shipping(o),
            "tip": money(o, "total_tip_received") or ZERO,
            "fees": sum_decimals(a["amount"] for a in fees),
            "tax_included": bool(o.boolean("taxes_included")),
            "tenders": tenders or [],
            "tenders_known": tenders is not None,
            "adjustments": discount_adjustments + _tax_adjustments(o, lines) + fees,
            "attributes": attributes_of(o, _ORDER_MAPPED, extra),
            "customer_id": customer_id,
            "employee_id": o.ident("user_id"),
            "display_number": o.text("name", limit=256),
            "location_id": o.ident("location_id"),
            "channel": _channel(o.text("source_name", limit=256)),
            "presentment_currency": o.text("presentment_currency", limit=8),
            "business_date": local_date(occurred, ctx.zone),
            "updated_at": updated,
            "source_ref": ref,
        },
        f"order {order_id}",
    )
    records.append(sale)

    cancelled_at = when(o, "cancelled_at")
    is_cancelled = cancelled or cancelled_at is not None or o.text("financial_status") == "voided"
    void_at = cancelled_at or updated or occurred
    order_lines = {li.ident("id"): li for li in items}
    for r in refunds:
        refund = refund_sale(
            r,
            ctx,
            ref,
            order_id=order_id,
            currency=currency,
            customer_id=customer_id,
            version_at=updated,
            tax_included=bool(o.boolean("taxes_included")),
            order_lines=order_lines,
        )
        if isinstance(refund, Dropped):
            continue
        records.append(refund)
        if is_cancelled:
            records.append(_void(refund.id, void_at, "order cancelled", ref))
    if is_cancelled:
        records.append(
            _void(order_id, void_at, o.text("cancel_reason", limit=256) or "cancelled", ref)
        )
    return records


def _void(sale_id: str, at: datetime, reason: str, ref: str | None) -> Void:
    return build(
        Void, {"id": sale_id, "occurred_at": at, "reason": reason, "source_ref": ref}, "void"
    )


def _set_currency(o: Obj, key: str) -> str | None:
    money_set = o.obj(f"{key}_set")
    shop = money_set.obj("shop_money") if money_set else None
    return shop.text("currency_code", limit=8) if shop else None


def _allocated(o: Obj) -> Decimal:
    return sum_decimals(money(a, "amount") or ZERO for a in o.objs("discount_allocations"))


def _shipping(o: Obj) -> Decimal:
    """Shipping after its own discounts, as Shopify states it."""
    lines = o.objs("shipping_lines")
    if any(sl.objs("discount_allocations") for sl in lines):
        return sum_decimals(
            discounted
            if (discounted := money(sl, "discounted_price")) is not None
            # an older body without `discounted_price`: its price less its allocations
            else (money(sl, "price") or ZERO) - _allocated(sl)
            for sl in lines
        )
    total_set = o.obj("total_shipping_price_set")
    shop = total_set.obj("shop_money") if total_set else None
    if shop is not None and shop.has("amount"):
        return shop.req_dec("amount")
    return sum_decimals(money(sl, "price") or ZERO for sl in lines)


def _order_line(li: Obj, refunded: dict[str, Decimal]) -> dict[str, Any] | None:
    quantity = li.req_dec("quantity")
    line_id = li.ident("id")
    current = li.dec("current_quantity")
    sold = quantity
    if current is not None:
        sold = min(quantity, current + refunded.get(line_id or "", ZERO))
    if sold <= 0:
        return None  # removed by an edit
    price = money(li, "price")
    if price is None:
        raise RecordInvalid("missing required field `price`", field=li.at("price"))
    if li.objs("discount_allocations"):
        discount = _allocated(li)
    else:
        discount = money(li, "total_discount") or ZERO
    tax = sum_decimals(money(t, "price") or ZERO for t in li.objs("tax_lines"))
    if sold != quantity:  # an edit removed some: the rest keeps its share
        discount = prorate(discount, sold, quantity)
        tax = prorate(tax, sold, quantity)
    return {
        "sku": li.text("sku", limit=256) or None,
        "quantity": sold,
        "unit_price": price,
        "discount": discount,
        "tax": tax,
        "product_id": li.ident("variant_id") or li.ident("product_id"),
        "description": li.text("name") or li.text("title"),
        "line_id": line_id,
        "line_kind": "gift_card" if li.boolean("gift_card") else "item",
    }


def _discounts(o: Obj, items: list[Obj]) -> tuple[Decimal | None, list[dict[str, Any]]]:
    """The sale's `discount` and the order-level discount adjustments no line carries.

    `total_discounts` is the item discount (`subtotal_price` = `total_line_items_price` -
    `total_discounts`). Should a body count a shipping discount into it too (it then exceeds
    `total_line_items_price` - `subtotal_price` by the shipping lines' allocations), it is not
    an item discount: the sale states none (`total_discounts` stays in the attributes) and
    only what is left after the shipping discount can be an order-level adjustment.
    """
    stated = money(o, "total_discounts")
    if stated is None:
        return None, []
    carried = ZERO
    pointed: set[str] = set()
    for li in items:
        allocations = li.objs("discount_allocations")
        if allocations:
            carried += _allocated(li)
        else:
            carried += money(li, "total_discount") or ZERO
        pointed.update(a.ident("discount_application_index") or "" for a in allocations)
    shipping_discount = ZERO
    for sl in o.objs("shipping_lines"):
        allocations = sl.objs("discount_allocations")
        shipping_discount += _allocated(sl)
        pointed.update(a.ident("discount_application_index") or "" for a in allocations)
    rest = stated - carried
    discount: Decimal | None = stated
    lines_price, subtotal = money(o, "total_line_items_price"), money(o, "subtotal_price")
    if (
        shipping_discount > 0
        and lines_price is not None
        and subtotal is not None
        and stated == lines_price - subtotal + shipping_discount
    ):
        rest -= shipping_discount
        discount = None
    if rest <= 0:  # nothing left over (or lines carry more: the window says so)
        return discount, []
    codes = {
        c.text("code", limit=256): c
        for c in o.objs("discount_codes")
        if c.text("type") != "shipping"
    }
    free = [
        a
        for i, a in enumerate(o.objs("discount_applications"))
        if str(i) not in pointed and a.text("target_type") != "shipping_line"
    ]
    split = [(a, _application_amount(a, codes)) for a in free]
    stated_each = [amount for _, amount in split if amount is not None]
    if len(split) > 1 and len(stated_each) == len(split) and sum_decimals(stated_each) == rest:
        return discount, [_discount(a, amount or ZERO) for a, amount in split]
    names = [a.text("title", limit=256) or a.text("code", limit=256) for a in free]
    applied = [a.text("code", limit=256) for a in free] or list(codes)
    adjustment = {
        "kind": "discount",
        "amount": -rest,
        "description": ", ".join(n for n in names if n) or None,
        "code": ", ".join(c for c in applied if c)[:256] or None,
    }
    return discount, [adjustment]


def _application_amount(a: Obj, codes: dict[str | None, Obj]) -> Decimal | None:
    code = codes.get(a.text("code", limit=256))
    if code is not None and a.has("code"):
        return money(code, "amount")
    if a.text("value_type") == "fixed_amount" and a.text("allocation_method") != "each":
        return a.dec("value")
    return None


def _discount(a: Obj, amount: Decimal) -> dict[str, Any]:
    return {
        "kind": "discount",
        "amount": -amount,
        "description": a.text("title") or a.text("description"),
        "code": a.text("code", limit=256),
    }


def _fees(o: Obj) -> list[dict[str, Any]]:
    """Duties and additional fees Shopify adds to `total_price`, as fee adjustments."""
    out: list[dict[str, Any]] = []
    for key, what in (
        ("original_total_duties_set", "duties"),
        ("original_total_additional_fees_set", "additional fees"),
    ):
        money_set = o.obj(key)
        shop = money_set.obj("shop_money") if money_set else None
        if shop is not None and shop.has("amount") and (amount := shop.req_dec("amount")) != 0:
            out.append({"kind": "fee", "amount": amount, "description": what})
    return out


def _tax_adjustments(o: Obj, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order `tax_lines` when no line carries tax (descriptive: `tax` is `total_tax`)."""
    if any(ln["tax"] != 0 for ln in lines):
        return []
    out: list[dict[str, Any]] = []
    for t in o.objs("tax_lines"):
        amount = money(t, "price")
        if amount is None:
            raise RecordInvalid("missing required field `price`", field=t.at("price"))
        rate = attribute_text(t.get("rate"))
        title = t.text("title")
        out.append(
            {
                "kind": "tax",
                "amount": amount,
                "description": f"{title} ({rate})" if title and rate else title,
            }
        )
    return out


def _method(t: Obj) -> str:
    """Shopify's own name for a transaction's payment: its `gateway`, else the
    `payment_details` names (`payment_method_name`, `credit_card_company`); "unknown" only
    when Shopify names none (the payment itself, amount and id, is still Shopify's)."""
    details = t.obj("payment_details")
    return (
        t.text("gateway", limit=256)
        or (details.text("payment_method_name", limit=256) if details else None)
        or (details.text("credit_card_company", limit=256) if details else None)
        or "unknown"
    )


def _order_tenders(o: Obj, refunds: list[Obj]) -> list[dict[str, Any]] | None:
    """Tenders from `transactions` when the body has them; None (unknown) otherwise.

    A refund transaction that one of the order's embedded refunds also lists is that return
    sale's tender, not the order's (the order keeps what was sold).
    """
    if not isinstance(o.get("transactions"), list):
        return None
    refunded = {t.ident("id") for r in refunds for t in r.objs("transactions")} - {None}
    tenders: list[dict[str, Any]] = []
    authorized = False
    for t in o.objs("transactions"):
        kind = t.text("kind")
        ok = t.text("status") in (None, "success")
        authorized = authorized or (ok and kind == "authorization")
        if not ok or kind not in ("sale", "capture", "refund"):
            continue  # authorizations move no money; voids and failures neither
        if kind == "refund" and t.ident("id") in refunded:
            continue
        amount = _req_money(t, "amount")
        tenders.append(
            {
                "method": _method(t),
                "amount": -amount if kind == "refund" else amount,
                "reference": t.ident("id"),
            }
        )
    if not tenders and authorized:
        # Authorized, not yet captured (`financial_status: authorized`): the payment is
        # promised, not made. Tenders are not known yet; the capture arrives with a later
        # version of the order.
        return None
    return tenders


# -- refunds -----------------------------------------------------------------------------


def refund_sale(
    r: Obj,
    ctx: AdapterContext,
    ref: str | None,
    *,
    order_id: str | None = None,
    currency: str | None = None,
    customer_id: str | None = None,
    version_at: datetime | None = None,
    order_lines: dict[str | None, Obj] | None = None,
    tax_included: bool = False,
) -> Sale | Dropped:
    """A refund as a return sale `refund:<id>`: negative lines, negative tenders.

    Embedded in an order, a refund line without its own `line_item` borrows the order's line
    (SKU, variant, name, and for the older shape its price); the money comes from the refund.
    """
    transactions = r.objs("transactions")
    if any(t.boolean("test") for t in transactions):
        return Dropped("test")
    refund_id = r.req_ident("id")
    original = r.ident("order_id") or order_id
    occurred = when(r, "processed_at", "created_at")
    created = when(r, "created_at") or occurred
    if occurred is None:
        raise RecordInvalid("missing required field `created_at`", field=r.at("created_at"))
    found_currency: str | None = None
    lines: list[dict[str, Any]] = []
    for rli in r.objs("refund_line_items"):
        found_currency = found_currency or _set_currency(rli, "subtotal")
        item = rli.obj("line_item") or (order_lines or {}).get(rli.ident("line_item_id"))
        lines.append(_refund_line(rli, item, r.boolean("restock")))
    for adj in r.objs("order_adjustments"):
        found_currency = found_currency or _set_currency(adj, "amount")
        # Shopify signs adjustments against the refund: a shipping refund is "-5.00", so the
        # return's total moves by +amount (more negative), a discrepancy the other way.
        lines.append(
            {
                "quantity": Decimal(1),
                "unit_price": money(adj, "amount") or ZERO,
                "tax": money(adj, "tax_amount") or ZERO,
                "line_kind": "fee",
                "description": adj.text("kind", limit=256) or adj.text("reason"),
                "line_id": adj.ident("id"),
            }
        )
    tenders: list[dict[str, Any]] = []
    for t in transactions:
        if t.text("kind") not in (None, "refund") or t.text("status") not in (None, "success"):
            continue
        amount = _req_money(t, "amount")
        found_currency = found_currency or t.text("currency", limit=8)
        tenders.append(
            {
                "method": _method(t),
                "amount": -amount,
                "reference": t.ident("id"),
            }
        )
    subtotal = sum_decimals(
        ln["quantity"] * ln["unit_price"] - ln.get("discount", ZERO) for ln in lines
    )
    tax = sum_decimals(ln["tax"] for ln in lines)
    if not lines and tenders:  # money refunded with nothing itemised: keep it visible as a fee
        amount = sum_decimals(t["amount"] for t in tenders)
        lines.append(
            {
                "quantity": Decimal(1),
                "unit_price": amount,
                "line_kind": "fee",
                "description": "refund",
            }
        )
        subtotal = amount
    currency = currency or found_currency
    if currency is None:
        raise RecordInvalid(
            "refund carries no currency (no *_set money, no transaction currency)",
            field=r.at("transactions"),
        )
    return build(
        Sale,
        {
            "id": f"refund:{refund_id}",
            "kind": "return",
            "original_id": original,
            "occurred_at": occurred,
            "currency": currency,
            "lines": lines,
            "subtotal": subtotal,
            "tax": tax,
            "total": subtotal if tax_included else subtotal + tax,
            "tax_included": tax_included,
            "tenders": tenders,
            "tenders_known": isinstance(r.get("transactions"), list),
            "attributes": attributes_of(r, _REFUND_MAPPED),
            "customer_id": customer_id,
            "employee_id": r.ident("user_id"),
            "business_date": local_date(occurred, ctx.zone),
            "updated_at": max(version_at, created) if version_at and created else created,
            "source_ref": ref,
        },
        f"refund {refund_id}",
    )


def _refund_line(rli: Obj, item: Obj | None, restock: bool | None) -> dict[str, Any]:
    """One refunded line, negative: its `subtotal`, or the older shape's line-item figures."""
    count = rli.req_dec("quantity")
    subtotal = money(rli, "subtotal")
    price = money(item, "price") if item is not None else None
    total_tax = money(rli, "total_tax")
    if subtotal is not None:
        # without a unit price, subtotal / quantity (Shopify's subtotal is after discounts)
        unit = price if price is not None else divide(subtotal, count)
        discount = count * unit - subtotal
        tax = total_tax if total_tax is not None else ZERO
    else:
        if item is None or price is None:
            raise RecordInvalid(
                "a refund line needs `subtotal`, or a `line_item` with its `price`",
                field=rli.at("subtotal"),
            )
        unit = price
        ordered = item.dec("quantity") or count
        allocations = item.objs("discount_allocations")
        discount_whole = _allocated(item) if allocations else money(item, "total_discount") or ZERO
        discount = prorate(discount_whole, count, ordered)
        if total_tax is not None:
            tax = total_tax
        else:
            item_tax = sum_decimals(money(t, "price") or ZERO for t in item.objs("tax_lines"))
            tax = prorate(item_tax, count, ordered)
    restock_type = rli.text("restock_type")
    return {
        "sku": (item.text("sku", limit=256) if item else None) or None,
        "quantity": -count,
        "unit_price": unit,
        "discount": -discount,
        "tax": -tax,
        "product_id": (item.ident("variant_id") or item.ident("product_id")) if item else None,
        "description": item.text("name") if item else None,
        "line_id": rli.ident("id"),
        "original_line_id": rli.ident("line_item_id"),
        # the older shape says `restock` once for the whole refund
        "restock": restock if restock_type is None else restock_type != "no_restock",
    }
