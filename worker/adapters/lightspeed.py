"""Lightspeed Retail, both flavours, under one source name: `lightspeed`.

This module detects the flavour and the envelope; `lightspeed_x` maps X-Series (ex-Vend)
entities and `lightspeed_r` R-Series ones (their headers say how each field is read).

**Flavour detection** (first match wins):

1. `X-Possync-Flavor: x` or `r` (also `x-series` / `r-series` / `vend`), or the same word as
   `ctx.topic` (MQTT kind, drop-folder hint).
2. A form-encoded body (`application/x-www-form-urlencoded`, or a body starting `payload=`):
   an **X-Series webhook**. The JSON string in the form field `payload` is the entity; the form
   field `type` (`sale.update`, `customer.update`, `product.update`, ...) says which, else
   `ctx.topic`, else the payload's shape. X webhooks are unsigned: the push URL's bearer token
   is the only authentication, so treat them as hints and reconcile by polling.
3. A JSON object with a top-level `Sale`, `Customer` or `Item` key: **R-Series** (V3 API
   responses, single object or list).
4. Any other JSON: **X-Series**. `{"data": {...}}` / `{"data": [...]}` (API 2.0), a Vend 0.9
   list (`{"pagination": {...}, "register_sales": [...]}`, or `customers` / `products`: each
   element one record of that kind), a bare object or array (the entity kind from its fields).

**Versions.** X: the integer `version` (absent on legacy webhook bodies, which therefore never
overwrite a polled record). R: `updatetime` (as `updated_at`, so the version is its
microseconds).

**Statuses.** X `CLOSED` and every `*_CLOSED` are completed sales; `VOIDED` (or `deleted_at`)
becomes a `Void`; `SAVED`, `LAYBY`, `ONACCOUNT`, `AWAITING_*`, `SERVICE` are not completed
purchases: dropped and counted as `dropped["open"]`. R: `voided="true"` is a `Void`,
`completed="false"` is dropped the same way. A void emits only the `Void`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.lightspeed_r import looks_r, parse_r
from worker.adapters.lightspeed_x import LIST_KEYS, Entity, x_unit
from worker.adapters.native import FORM_TYPE, JSON_TYPES, Unit, decode_json, run_items
from worker.config import RulePolicy
from worker.errors import RecordInvalid, UnsupportedMediaType

Flavour = Literal["x", "r"]

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


class LightspeedAdapter:
    """`POST /v1/push/lightspeed/{store}`: X-Series webhooks / API JSON, R-Series JSON."""

    name = "lightspeed"
    signed = False
    # Empty: a correct Lightspeed export satisfies every window rule.
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
            run_items(out, [(0, x_unit(doc, "payload", entity, ctx, "webhook"))], single=True)
            return out
        if ctx.content_type not in JSON_TYPES:
            raise UnsupportedMediaType(
                f"content type {ctx.content_type!r} not supported: use application/json or a "
                "form-encoded X-Series webhook",
                field="Content-Type",
            )
        doc = decode_json(body)
        if flavour == "r" or (flavour is None and looks_r(doc)):
            parse_r(doc, ctx, out)
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


def _parse_x(doc: Any, ctx: AdapterContext, out: Parsed) -> None:
    path = "$"
    entity: Entity | None = None
    via = "api"
    if isinstance(doc, dict) and "data" in doc:
        doc, path = doc["data"], "$.data"
    elif isinstance(doc, dict):
        listed = [k for k in LIST_KEYS if isinstance(doc.get(k), list)]
        if listed:  # a Vend 0.9 list response: every element is one record of that kind
            key = listed[0]
            doc, path, entity, via = doc[key], f"$.{key}", LIST_KEYS[key], "0.9"
    if isinstance(doc, list):
        if not doc and entity is None:
            raise RecordInvalid("empty array: expected at least one entity", field=path)
        units: list[tuple[int, Unit]] = [
            (i, x_unit(item, f"{path}[{i}]", entity, ctx, via)) for i, item in enumerate(doc)
        ]
        run_items(out, units, single=False)
        return
    run_items(out, [(0, x_unit(doc, path, None, ctx, via))], single=True)
