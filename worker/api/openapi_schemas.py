"""Schema pieces of the OpenAPI document (`worker.api.openapi`): shapes, responses, parameters.

Canonical record schemas are derived from the msgspec Structs (`record_schemas`); the
answer shapes below are written here, next to the API formatting they describe
(`worker.api.format`, `worker.api.pages`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from worker.adapters import ADAPTERS
from worker.api import pages
from worker.config import POLICY_RULES
from worker.records import Record, Spooled

Json = dict[str, Any]

SCHEMAS = "#/components/schemas/"
RESPONSES = "#/components/responses/"

# ------------------------------------------------------------------------- schema pieces


def ref(name: str) -> Json:
    return {"$ref": SCHEMAS + name}


def obj(props: Mapping[str, Json], required: Iterable[str] = (), **extra: Any) -> Json:
    """An object schema; unlisted properties are allowed (answers may grow)."""
    out: Json = {"type": "object", "properties": dict(props)}
    req = list(required)
    if req:
        out["required"] = req
    out.update(extra)
    return out


def arr(items: Json, **extra: Any) -> Json:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Json) -> Json:
    return {"anyOf": [schema, {"type": "null"}]}


STR: Json = {"type": "string"}
INT: Json = {"type": "integer"}
BOOL: Json = {"type": "boolean"}
NUM: Json = {"type": "number"}
OPT_STR = nullable(STR)
INSTANT: Json = {"type": "string", "format": "date-time"}
DAY: Json = {"type": "string", "format": "date"}
# Money in read answers: a decimal string at the currency's ISO 4217 minor unit.
MONEY: Json = {
    "type": "string",
    "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
    "description": "at the currency's minor unit (`worker.money.show`); exact in `record`",
}
OPT_MONEY = nullable(MONEY)
# A Decimal in a canonical record: a decimal string or a JSON number (never through float).
DECIMAL_IN: Json = {
    "anyOf": [
        {"type": "string", "pattern": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"},
        {"type": "number"},
    ],
    "description": "exact decimal: finite, |x| < 1e12, at most 8 places",
}


def _decimals(node: Any) -> Any:
    """msgspec's Decimal schema (`string`, format `decimal`) widened to what is accepted."""
    if isinstance(node, dict):
        if node.get("format") == "decimal" and node.get("type") == "string":
            out = copy.deepcopy(DECIMAL_IN)
            if "default" in node:
                out["default"] = node["default"]
            return out
        return {k: _decimals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decimals(v) for v in node]
    return node


def record_schemas() -> tuple[Json, Json, Json]:
    """(one canonical record, one spooled record, the component schemas) from the Structs."""
    (record, spooled), comps = msgspec.json.schema_components(
        [Record, Spooled], ref_template=SCHEMAS + "{name}"
    )
    return record, spooled, {name: _decimals(s) for name, s in comps.items()}


ERROR: Json = obj(
    {
        "error": {"type": "string", "description": "the rule broken (never the value)"},
        "field": nullable({"type": "string", "description": "the field or header it names"}),
    },
    ["error", "field"],
)
REJECTION = obj({"index": INT, "error": STR, "field": OPT_STR}, ["index", "error", "field"])
PUSH_OUTCOME = obj(
    {
        "accepted": INT,
        "duplicates": INT,
        "rejected": arr(ref("Rejection")),
        "rejected_count": INT,
        "dropped": {
            "type": "object",
            "additionalProperties": INT,
            "description": "items the adapter dropped on purpose, counted by reason",
        },
        "visible_at": nullable(INSTANT),
    },
    ["accepted", "duplicates", "rejected", "rejected_count", "dropped", "visible_at"],
)
SALE_FIGURES = {
    name: MONEY for name in ("subtotal", "tax", "shipping", "fees", "tip", "rounding", "total")
}
SALE_LOG_ITEM = obj(
    {
        "id": STR,
        "kind": STR,
        "origin": STR,
        "occurred_at": STR,
        "business_date": STR,
        "currency": STR,
        "customer_id": OPT_STR,
        "customer_linked": BOOL,
        "original_id": OPT_STR,
        **SALE_FIGURES,
        "discount": OPT_MONEY,
        "line_count": INT,
        "voided": BOOL,
        "warnings": arr(STR),
    },
    ["id", "currency", "total"],
)
SALE_LINE_OUT = obj(
    {
        "line_no": INT,
        "line_id": OPT_STR,
        "sku": OPT_STR,
        "product_id": OPT_STR,
        "description": OPT_STR,
        "category": OPT_STR,
        "quantity": {"type": "string", "description": "exact, without trailing zeros"},
        "unit_price": MONEY,
        "discount": MONEY,
        "tax": MONEY,
        "net": MONEY,
        "line_kind": STR,
    },
    ["line_no", "quantity", "unit_price"],
)
SALE_DETAIL = obj(
    {
        **SALE_LOG_ITEM["properties"],
        "tax_included": BOOL,
        "lines": arr(ref("SaleLineOut")),
        "tenders_known": BOOL,
        "tenders": arr(
            obj(
                {"method": STR, "method_id": OPT_STR, "amount": MONEY, "reference": OPT_STR},
                ["method", "amount"],
            )
        ),
        "adjustments": arr(
            obj(
                {
                    "kind": STR,
                    "amount": MONEY,
                    "description": OPT_STR,
                    "code": OPT_STR,
                    "reference": OPT_STR,
                },
                ["kind", "amount"],
            )
        ),
        "attributes": {"type": "object", "additionalProperties": STR},
        "source": STR,
        "source_ref": OPT_STR,
        "version": nullable(INT),
        "committed_at": {},
        "batch_id": {},
        "record": {"type": "object", "description": "the canonical record exactly as stored"},
    },
    ["id", "currency", "total", "lines", "tenders", "tenders_known", "record"],
)
NEXT = {
    "next": {
        "type": "string",
        "description": "relative URL of the next page (same filters and limit); absent on the last",
    }
}
SALES_LOG = obj(
    {"store": STR, "date": DAY, "customer": STR, "count": INT, "sales": arr(ref("SaleLogItem"))}
    | NEXT,
    ["store", "date", "count", "sales"],
)
REPORT = obj(
    {
        "store": STR,
        "from": DAY,
        "to": DAY,
        "rows": arr(
            obj(
                {
                    "date": DAY,
                    "currency": STR,
                    "count": INT,
                    "gross": MONEY,
                    "returns": MONEY,
                    "returns_count": INT,
                    "net": MONEY,
                    "voided": INT,
                },
                ["date", "currency", "count", "gross", "returns", "returns_count", "net"],
            )
        ),
    },
    ["store", "from", "to", "rows"],
)
TRIGGERS = obj({"store": STR, "events": arr(obj({"total": MONEY}))} | NEXT, ["store", "events"])
REASON = obj({"rule": STR, "field": OPT_STR, "message": STR}, ["rule", "message"])
QUARANTINE = obj(
    {
        "count": INT,
        "items": arr(
            obj(
                {
                    "id": INT,
                    "store": STR,
                    "type": STR,
                    "record_id": STR,
                    "version": nullable(INT),
                    "received_at": STR,
                    "quarantined_at": STR,
                    "reasons": arr(ref("Reason")),
                    "record": {},
                },
                ["id", "store", "type", "record_id", "reasons", "record"],
            )
        ),
    }
    | NEXT,
    ["count", "items"],
)
AUDIT = obj({"entries": arr(obj({"id": INT}, ["id"]))} | NEXT, ["entries"])
SPOOL = obj(
    {
        "store": STR,
        "pending": INT,
        "bytes": INT,
        "oldest_pending_age_s": nullable(NUM),
        "next_window": STR,
    },
    ["store", "pending", "bytes", "oldest_pending_age_s", "next_window"],
)
COMMIT = obj(
    {
        "window_at": STR,
        "stores": {
            "type": "object",
            "additionalProperties": obj(
                {
                    **{k: INT for k in ("committed", "quarantined", "held", "triggers", "voids")},
                    "skipped": nullable({"type": "string", "enum": ["paused", "busy"]}),
                }
            ),
        },
    },
    ["window_at", "stores"],
)
RELEASE_RULE = obj(
    {
        "store": STR,
        "rule": STR,
        "released": arr(INT),
        "released_records": arr(STR),
        "still_invalid": arr(obj({"id": INT, "record_id": STR, "reasons": arr(ref("Reason"))})),
        "visible_at": STR,
    },
    ["store", "rule", "released", "released_records", "still_invalid", "visible_at"],
)
STILL_INVALID = {"allOf": [ref("Error"), obj({"reasons": arr(ref("Reason"))}, ["reasons"])]}
READY = obj(
    {"ready": BOOL, "checks": {"type": "object", "additionalProperties": STR}, "notes": {}},
    ["ready", "checks"],
)

COMPONENT_SCHEMAS: Mapping[str, Json] = {
    "Error": ERROR,
    "Rejection": REJECTION,
    "PushOutcome": PUSH_OUTCOME,
    "SaleLogItem": SALE_LOG_ITEM,
    "SaleLineOut": SALE_LINE_OUT,
    "SaleDetail": SALE_DETAIL,
    "SalesLog": SALES_LOG,
    "Report": REPORT,
    "Triggers": TRIGGERS,
    "Reason": REASON,
    "Quarantine": QUARANTINE,
    "Audit": AUDIT,
    "Spool": SPOOL,
    "Commit": COMMIT,
    "ReleaseRule": RELEASE_RULE,
    "StillInvalid": STILL_INVALID,
    "Ready": READY,
}

# ------------------------------------------------------------------------- responses

# Every error answer: a status, what it means here, and the shared body.
ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("BadRequest", "a parameter, header or body broke a rule; `field` names it"),
    401: ("Unauthorized", "missing or wrong credential (`WWW-Authenticate: Bearer`)"),
    404: ("NotFound", "unknown store, source or record; `field` names which"),
    405: ("MethodNotAllowed", "the path exists, not with this method"),
    413: ("PayloadTooLarge", "body over the limit (from Content-Length or while reading)"),
    415: ("UnsupportedMediaType", "a Content-Type this source cannot read"),
    422: ("Unprocessable", "the record is still invalid; every reason listed"),
    503: ("Unavailable", "spool over its cap, or a dependency down: retry after `Retry-After`"),
    507: ("InsufficientStorage", "the disk under the spool is full: nothing was written"),
}


def error_response(status: int) -> Json:
    _, text = ERRORS[status]
    schema = ref("StillInvalid") if status == 422 else ref("Error")
    out: Json = {"description": text, "content": {"application/json": {"schema": schema}}}
    if status == 503:
        out["headers"] = {
            "Retry-After": {
                "description": "seconds to wait (set on spool full and dependency down)",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": STR}}
    return out


def json_ok(description: str, schema: Json, status: int = 200) -> dict[str, Json]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def html(description: str, status: int) -> dict[str, Json]:
    return {str(status): {"description": description, "content": {"text/html": {"schema": STR}}}}


def see_other(description: str) -> dict[str, Json]:
    return {"303": {"description": description, "headers": {"Location": {"schema": STR}}}}


# ------------------------------------------------------------------------- parameters


def param(where: str, name: str, schema: Json, description: str, *, required: bool = False) -> Json:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


ID_TEXT: Json = {"type": "string", "minLength": 1, "maxLength": 256}
P_STORE = param("path", "store", ID_TEXT, "the store id (`[[stores]] id`)")
P_ID = param("path", "id", ID_TEXT, "the record id")
P_QID = param(
    "path", "id", {"type": "string", "pattern": "^[0-9]{1,19}$"}, "quarantine id (1 to 2**63-1)"
)
_BEARER_SOURCES = sorted(
    name for name, a in ADAPTERS.items() if not a.signed and name != "canonical"
)
P_NATIVE_SOURCE = param(
    "path", "source", {"type": "string", "enum": _BEARER_SOURCES}, "a native POS format"
)
P_ANY_SOURCE = param(
    "path", "source", {"type": "string", "enum": sorted(ADAPTERS)}, "canonical or a native format"
)
Q_LIMIT = param(
    "query",
    "limit",
    {"type": "integer", "minimum": 1, "maximum": pages.MAX_LIMIT, "default": pages.DEFAULT_LIMIT},
    "page size",
)
Q_CURSOR = param(
    "query",
    "cursor",
    {"type": "string", "maxLength": 2048},
    "opaque, signed position from the previous page's `next` (bound to this list and filters)",
)
Q_DATE = param("query", "date", DAY, "store-local business date", required=True)
Q_TOPIC = param("query", "topic", STR, "the payload's topic where no header carries it")
Q_FILENAME = param("query", "filename", STR, "the export file's name (picks its format)")
RULES = sorted((*POLICY_RULES, "schema"))
Q_BOUND = {
    name: param(
        "query",
        name,
        {"anyOf": [DAY, INSTANT]},
        f"quarantined_at {'from' if name == 'from' else 'up to'}: a date (UTC day) or an instant",
    )
    for name in ("from", "to")
}

# ------------------------------------------------------------------------- bodies


def records_body(record: Json, *, required: bool = True) -> Json:
    return {
        "required": required,
        "content": {
            "application/json": {
                "schema": {"anyOf": [record, arr(record, minItems=1)]},
            },
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one canonical record per line"}
            },
        },
    }


OPAQUE: Json = {"type": "string", "description": "the POS's own payload, read by its adapter"}
# A native JSON payload: any JSON document; its adapter reads it.
NATIVE_JSON: Json = {"description": "the POS's own JSON document, read by its adapter"}
NATIVE_BODY: Json = {
    "required": True,
    "content": {
        "application/json": {"schema": NATIVE_JSON},
        **{
            media: {"schema": OPAQUE}
            for media in (
                "application/x-ndjson",
                "application/x-www-form-urlencoded",
                "text/csv",
                "text/plain",
            )
        },
    },
}
FILE_BODY: Json = {
    "required": True,
    "content": {
        media: {"schema": {"type": "string", "description": "the export file"}}
        for media in (
            "application/json",
            "application/x-ndjson",
            "text/csv",
            "text/plain",
            "application/octet-stream",
        )
    },
}
LOGIN_BODY: Json = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": obj({"token": STR}, ["token"], additionalProperties=False)
        }
    },
}
