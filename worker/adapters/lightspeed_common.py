"""What both Lightspeed flavours share: keeping unmapped fields, versions, calendar dates, the
tender rule (the payment type's name, else its id; a payment naming neither is refused).

`keep_attributes` is how "keep what the POS sends" is done for Lightspeed: every scalar of the
native object that no canonical field took, as text, under its own field name, dotted for
nesting and with the array index for array elements (`register_sale_products.0.loyalty_value`,
`SaleLines.SaleLine.calcTotal`). `skip` names the consumed paths *without* indexes; a skipped
path drops its whole subtree (an embedded `Customer` that became its own record). Records hold at
most 256 attributes: past 255 the walk stops and `possync.attributes_truncated` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from worker.adapters.native import Obj
from worker.errors import RecordInvalid

MAX_ATTRIBUTES = 256
TRUNCATED = "possync.attributes_truncated"
_KEY_LIMIT = 256
_VALUE_LIMIT = 4096


def keep_attributes(data: Mapping[str, Any], skip: frozenset[str]) -> dict[str, str]:
    """Every unconsumed scalar of `data`, as text, keyed by its dotted native path."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if not _walk(str(key), str(key), value, skip, out):
            break
    return out


def _walk(name: str, norm: str, value: Any, skip: frozenset[str], out: dict[str, str]) -> bool:
    """Add `value` under `name`; False once the attribute budget is spent."""
    if norm in skip or value is None or value == "":
        return True
    if isinstance(value, Mapping):
        for key, child in value.items():
            if not _walk(f"{name}.{key}", f"{norm}.{key}", child, skip, out):
                return False
        return True
    if isinstance(value, list):
        return all(_walk(f"{name}.{i}", norm, child, skip, out) for i, child in enumerate(value))
    if len(out) >= MAX_ATTRIBUTES - 1:
        out[TRUNCATED] = "true"
        return False
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    out[name[:_KEY_LIMIT]] = text[:_VALUE_LIMIT]
    return True


def int_version(o: Obj) -> int | None:
    """The X-Series integer `version` (absent on legacy webhook bodies)."""
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


def tender(
    p: Obj,
    name: str | None,
    method_id: str | None,
    *,
    reference: str,
    nulls: frozenset[str] = frozenset(),
    names: str,
    field: str,
) -> dict[str, Any]:
    """A payment `p` as a tender: `method` is the payment type's own name (else its id),
    `method_id` that id, `reference` the payment's own id (`p[reference]`). Neither a name nor
    an id: refused at `field`, the message naming where they are looked for (`names`)."""
    if name is None and method_id is None:
        raise RecordInvalid(f"payment names no payment type ({names})", field=field)
    return {
        "method": name or method_id,
        "method_id": method_id,
        "amount": p.req_dec("amount"),
        "reference": p.ident(reference, nulls=nulls),
    }


def calendar_date(text: str | None, path: str) -> date | None:
    """A calendar date written as a date or as midnight ("1992-08-17 00:00:00", R's `dob`)."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text[:10]).date()
    except ValueError:
        raise RecordInvalid(f"not an ISO-8601 date: {text[:40]!r}", field=path) from None
