"""Reading EDT fields: role -> field-name candidates, naive local times, and attributes.

Shared by the CustomerList, ItemList and Transaction readers in `worker.adapters.the_edge`.
Attributes keep every EDT field the canonical model has no slot for, under its EDT name
(dotted for nested objects and array indexes); text over 4096 characters continues under
`Name#2`, `Name#3`, ...; more than 256 such fields reject the record rather than drop any.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from worker.adapters.base import AdapterContext
from worker.adapters.native import Obj, local_instant, to_text
from worker.errors import RecordInvalid

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
    "tax": ("SalelineEstTax",),
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
    # No consent field is documented: none is read unless the store names one.
    "email_opt_in": (),
    "email_opt_out": (),
    "sms_opt_in": (),
    "sms_opt_out": (),
}


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
        return names[0] if names else ""

    def get(self, o: Obj, role: str) -> Any:
        """The raw value for `role` (None for a role with no field)."""
        key = self.key(o, role)
        return o.get(key) if key else None


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


def local_date_of(value: Any, path: str, ctx: AdapterContext) -> date | None:
    """An EDT date-time's store-local calendar date."""
    instant = parse_local(value, path, ctx)
    return instant.astimezone(ctx.zone).date() if instant else None


# -- attributes: every EDT field without a canonical slot ---------------------------------

_MAX_ATTRIBUTES = 256
_MAX_VALUE = 4096


def _scalar(value: Any) -> str | None:
    """A JSON scalar as the POS wrote it (numbers keep their digits); None for null or blank."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    """`value`'s scalars into `out` under dotted keys (`Email.0.EmailType`), null/blank skipped."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)
    else:
        text = _scalar(value)
        if text is not None:
            out[prefix] = text


def attributes(fields: Mapping[str, str], path: str) -> dict[str, str]:
    """Bounded attributes: long text continues under `key#2`, ...; too many fields is an error."""
    out: dict[str, str] = {}
    for key, text in fields.items():
        for n, start in enumerate(range(0, len(text), _MAX_VALUE), start=1):
            out[key if n == 1 else f"{key}#{n}"] = text[start : start + _MAX_VALUE]
    if len(out) > _MAX_ATTRIBUTES:
        raise RecordInvalid(
            f"{len(out)} fields without a canonical slot; at most {_MAX_ATTRIBUTES} are kept "
            "and none is dropped silently",
            field=path,
        )
    return out


def rel_key(base: Obj, o: Obj, key: str) -> str:
    """The attribute key of `o.key` relative to `base` (`$.Customer[0].Email[1]` -> `Email.1`)."""
    rel = o.path[len(base.path) + 1 :].replace("[", ".").replace("]", "")
    return f"{rel}.{key}" if rel else key
