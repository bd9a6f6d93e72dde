"""The OpenAPI 3.1 document of the HTTP API, built in code and served at `GET /openapi.json`.

Built from small pieces so it stays in step with the code it describes:

* request bodies of canonical records are the JSON Schemas msgspec derives from the record
  Structs (`msgspec.json.schema_components`), never written by hand;
* the push sources are the adapter registry's names (`worker.adapters.ADAPTERS`); paging
  limits are `worker.api.pages`' own; rule ids are `worker.config.POLICY_RULES`;
* `tests/test_openapi.py` builds the app and checks that every registered route (method and
  path) is documented and every documented path is registered, that the document validates
  as OpenAPI 3.1, and that the statuses a real server answers are the documented ones;
  `tests/chaos/test_schemathesis.py` fuzzes every operation against a real server.

The document depends on no configuration (store ids and tokens are not in it): it describes
the API and reveals no data, so it is served without a credential.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import msgspec
from aiohttp import web

from worker import __version__
from worker.api.openapi_schemas import (
    BOOL,
    COMPONENT_SCHEMAS,
    DAY,
    ERRORS,
    FILE_BODY,
    ID_TEXT,
    INT,
    LOGIN_BODY,
    NATIVE_BODY,
    NATIVE_JSON,
    NEXT,
    P_ANY_SOURCE,
    P_ID,
    P_NATIVE_SOURCE,
    P_QID,
    P_STORE,
    Q_BOUND,
    Q_CURSOR,
    Q_DATE,
    Q_FILENAME,
    Q_LIMIT,
    Q_TOPIC,
    RESPONSES,
    RULES,
    STR,
    Json,
    error_response,
    html,
    json_ok,
    obj,
    param,
    record_schemas,
    records_body,
    ref,
    see_other,
)
from worker.api.page import COOKIE
from worker.api.status import STATUS_STORES_DEFAULT, STATUS_STORES_MAX
from worker.sinks.base import TRIGGER_STATES

# ------------------------------------------------------------------------- operations

STORE: list[Json] = [{"storeToken": []}]
ADMIN: list[Json] = [{"adminToken": []}]
SHOPIFY: list[Json] = [{"shopifyHmac": []}]
PAGE: list[Json] = [{"adminToken": []}, {"adminCookie": []}]
NONE: list[Json] = []


def _op(
    op_id: str,
    summary: str,
    security: list[Json],
    ok: dict[str, Json],
    errors: Iterable[int],
    *,
    params: Iterable[Json] = (),
    body: Json | None = None,
    tag: str,
) -> Json:
    responses: Json = dict(ok)
    # Any request can be a 400 of the HTTP layer (a malformed request line or header).
    for status in sorted({400, *errors}):
        responses[str(status)] = {"$ref": RESPONSES + ERRORS[status][0]}
    out: Json = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
        "responses": responses,
    }
    plist = list(params)
    if plist:
        out["parameters"] = plist
    if body is not None:
        out["requestBody"] = body
    return out


# Statuses shared by kinds of route.
_INTAKE = (400, 401, 404, 413, 415, 503, 507)
_READ = (401, 404, 503)
_LIST = (400, 401, 404, 503)


def _paths(record: Json, spooled: Json) -> Json:
    ok_push = json_ok(
        "every accepted record is durable (spool fsync or sink commit)", ref("PushOutcome"), 202
    )
    shopify_headers = [
        param("header", "X-Shopify-Topic", STR, "the webhook topic (orders/create, ...)"),
        param("header", "X-Shopify-Webhook-Id", STR, "delivery id: a replay is a duplicate"),
    ]
    push_tag, read_tag, admin_tag, ops_tag = "intake", "read", "admin", "operations"
    return {
        "/v1/push/canonical/{store}": {
            "post": _op(
                "pushCanonical",
                "Push canonical records: one object, a JSON array, or NDJSON",
                STORE,
                ok_push,
                _INTAKE,
                params=[P_STORE],
                body=records_body(record),
                tag=push_tag,
            )
        },
        "/v1/push/shopify/{store}": {
            "post": _op(
                "pushShopify",
                "Push a Shopify webhook, authenticated by the HMAC of the raw body",
                SHOPIFY,
                ok_push,
                _INTAKE,
                params=[P_STORE, *shopify_headers, Q_TOPIC],
                body={
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", **NATIVE_JSON}}},
                },
                tag=push_tag,
            )
        },
        "/v1/push/{source}/{store}": {
            "post": _op(
                "pushNative",
                "Push a native POS payload (the store's configured source)",
                STORE,
                ok_push,
                _INTAKE,
                params=[P_NATIVE_SOURCE, P_STORE, Q_TOPIC, Q_FILENAME],
                body=NATIVE_BODY,
                tag=push_tag,
            )
        },
        "/v1/files/{source}/{store}": {
            "post": _op(
                "uploadFile",
                "Upload one export file, ingested like a drop-folder file",
                STORE,
                ok_push,
                _INTAKE,
                params=[P_ANY_SOURCE, P_STORE, Q_FILENAME, Q_TOPIC],
                body=FILE_BODY,
                tag=push_tag,
            )
        },
        "/v1/backfill/{source}/{store}": {
            "post": _op(
                "backfill",
                "Stream history (NDJSON or CSV), any size, bounded memory",
                ADMIN,
                json_ok("the run's result", {"type": "object"}),
                _INTAKE,
                params=[
                    P_ANY_SOURCE,
                    P_STORE,
                    param(
                        "query",
                        "offset",
                        {"type": "integer", "minimum": 0},
                        "byte offset of this body in the file",
                    ),
                    param(
                        "query",
                        "commit",
                        {"type": "string", "enum": ["now", "window"]},
                        "commit now (rate-limited) or at the window",
                    ),
                    param(
                        "query",
                        "commit_every_s",
                        {"type": "number", "minimum": 0},
                        "seconds between commits with commit=now",
                    ),
                    param(
                        "query",
                        "final",
                        {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]},
                        "the last body of the file",
                    ),
                ],
                body={
                    "required": True,
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                tag=push_tag,
            )
        },
        "/healthz": {
            "get": _op(
                "healthz",
                "Liveness",
                NONE,
                json_ok("the process answers", obj({"status": STR}, ["status"])),
                (),
                tag=ops_tag,
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness: spool writable, sink healthy, background tasks alive",
                ADMIN,
                json_ok("ready", ref("Ready"))
                | {
                    "503": {
                        "description": "not ready: `field` names the first failing check",
                        "content": {
                            "application/json": {"schema": {"allOf": [ref("Ready"), ref("Error")]}}
                        },
                    }
                },
                (401,),
                tag=ops_tag,
            )
        },
        "/status": {
            "get": _op(
                "status",
                "Every store's summary; one page of stores in attention order; spool and sink",
                ADMIN,
                json_ok("status", obj({"summary": {"type": "object"}, **NEXT}, ["summary"])),
                (400, 401),
                params=[
                    param(
                        "query",
                        "page",
                        {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
                        "page of stores",
                    ),
                    param(
                        "query",
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": STATUS_STORES_MAX,
                            "default": STATUS_STORES_DEFAULT,
                        },
                        "stores per page",
                    ),
                ],
                tag=ops_tag,
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus exposition",
                ADMIN,
                {"200": {"description": "metrics", "content": {"text/plain": {"schema": STR}}}},
                (401,),
                tag=ops_tag,
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "This document",
                NONE,
                json_ok("OpenAPI 3.1", {"type": "object"}),
                (),
                tag=ops_tag,
            )
        },
        "/": {
            "get": _op(
                "statusPage",
                "The operator's status page (HTML); the login form without a credential",
                PAGE,
                html("the page", 200) | html("the login form", 401),
                (),
                params=[
                    param("query", "page", STR, "page of the store table"),
                    param("query", "store", STR, "sale lookup: the store"),
                    param("query", "sale", STR, "sale lookup: the sale id"),
                ],
                tag=ops_tag,
            )
        },
        "/login": {
            "post": _op(
                "login",
                "Log in with the admin token: sets an HttpOnly SameSite=Strict cookie",
                NONE,
                see_other("logged in: to the page") | html("not the admin token", 401),
                (400, 413),
                body=LOGIN_BODY,
                tag=ops_tag,
            )
        },
        "/logout": {
            "post": _op(
                "logout",
                "Clear the session cookie",
                NONE,
                see_other("to the page"),
                (),
                tag=ops_tag,
            )
        },
        "/v1/stores/{store}/customers/{id}": {
            "get": _op(
                "getCustomer",
                "A stored customer",
                ADMIN,
                json_ok("the customer", {"type": "object"}),
                _READ,
                params=[P_STORE, P_ID],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/products/{id}": {
            "get": _op(
                "getProduct",
                "A stored product (`price` at the minor unit; exact under `record`)",
                ADMIN,
                json_ok("the product", {"type": "object"}),
                _READ,
                params=[P_STORE, P_ID],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/spool": {
            "get": _op(
                "getSpool",
                "Pending count, bytes, oldest age, next window",
                ADMIN,
                json_ok("spool state", ref("Spool")),
                (401, 404),
                params=[P_STORE],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/sales": {
            "get": _op(
                "salesLog",
                "Sales Log: one page of a business date's committed sales, by (occurred_at, id)",
                ADMIN,
                json_ok("one page", ref("SalesLog")),
                _LIST,
                params=[
                    P_STORE,
                    Q_DATE,
                    param("query", "customer", ID_TEXT, "only this customer's sales"),
                    Q_LIMIT,
                    Q_CURSOR,
                ],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/sales/{id}": {
            "get": _op(
                "getSale",
                "One committed sale, figures at the minor unit, the exact record",
                ADMIN,
                json_ok("the sale", ref("SaleDetail")),
                _READ,
                params=[P_STORE, P_ID],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/report": {
            "get": _op(
                "salesReport",
                "Sales Report: a row per business date and currency",
                ADMIN,
                json_ok("the report", ref("Report")),
                _LIST,
                params=[
                    P_STORE,
                    param("query", "from", DAY, "first business date", required=True),
                    param(
                        "query",
                        "to",
                        DAY,
                        "last business date (at most ten years on)",
                        required=True,
                    ),
                ],
                tag=read_tag,
            )
        },
        "/v1/stores/{store}/triggers": {
            "get": _op(
                "listTriggers",
                "Trigger events, newest first by (created_at, event_id)",
                ADMIN,
                json_ok("one page", ref("Triggers")),
                _LIST,
                params=[
                    P_STORE,
                    param(
                        "query",
                        "state",
                        {"type": "string", "enum": list(TRIGGER_STATES)},
                        "only events in this state",
                    ),
                    param("query", "trigger", ID_TEXT, "only this trigger's events"),
                    Q_LIMIT,
                    Q_CURSOR,
                ],
                tag=read_tag,
            )
        },
        "/v1/admin/commit": {
            "post": _op(
                "commitNow",
                "Run the window now (one store or all)",
                ADMIN,
                json_ok("per store: committed, quarantined, held, triggers", ref("Commit")),
                # A sink still failing at `[windows] admin_commit_timeout_s` is the answer.
                (400, 401, 404, 503, 507),
                params=[param("query", "store", ID_TEXT, "only this store")],
                tag=admin_tag,
            )
        },
        "/v1/admin/stores/{store}/preview": {
            "get": _op(
                "preview",
                "Dry-run validation of what is pending",
                ADMIN,
                json_ok("the preview", {"type": "object"}),
                (401, 404, 503),
                params=[P_STORE],
                tag=admin_tag,
            )
        },
        "/v1/admin/stores/{store}/{action}": {
            "post": _op(
                "pauseResume",
                "Pause (accept pushes, skip windows) or resume a store",
                ADMIN,
                json_ok(
                    "the store's state", obj({"store": STR, "paused": BOOL}, ["store", "paused"])
                ),
                (401, 404),
                params=[
                    P_STORE,
                    param(
                        "path",
                        "action",
                        {"type": "string", "enum": ["pause", "resume"]},
                        "pause or resume",
                    ),
                ],
                tag=admin_tag,
            )
        },
        "/v1/admin/quarantine": {
            "get": _op(
                "listQuarantine",
                "Quarantined records with every reason, newest first by id",
                ADMIN,
                json_ok("one page", ref("Quarantine")),
                _LIST,
                params=[
                    param("query", "store", ID_TEXT, "only this store"),
                    param(
                        "query",
                        "rule",
                        {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"},
                        "only records that failed this rule",
                    ),
                    Q_BOUND["from"],
                    Q_BOUND["to"],
                    Q_LIMIT,
                    Q_CURSOR,
                ],
                tag=admin_tag,
            )
        },
        "/v1/admin/quarantine/release": {
            "post": _op(
                "releaseRule",
                "Re-validate one rule's quarantine under the store's current policy; release the valid",
                ADMIN,
                json_ok("released and still invalid", ref("ReleaseRule")),
                (400, 401, 404, 503, 507),
                params=[
                    param("query", "store", ID_TEXT, "the store", required=True),
                    param(
                        "query",
                        "rule",
                        {"type": "string", "enum": RULES},
                        "a window rule id, or schema",
                        required=True,
                    ),
                ],
                tag=admin_tag,
            )
        },
        "/v1/admin/quarantine/{id}/release": {
            "post": _op(
                "releaseOne",
                "Re-validate one quarantined record (optionally a corrected one) and spool it",
                ADMIN,
                json_ok(
                    "released",
                    obj(
                        {"released": INT, "store": STR, "visible_at": STR},
                        ["released", "store", "visible_at"],
                    ),
                ),
                (400, 401, 404, 413, 422, 503, 507),
                params=[P_QID],
                body={
                    "required": False,
                    "description": "a corrected record with the same id (empty: the stored one)",
                    "content": {"application/json": {"schema": spooled}},
                },
                tag=admin_tag,
            )
        },
        "/v1/admin/quarantine/{id}": {
            "delete": _op(
                "discardOne",
                "Discard a quarantined record, with an audit entry",
                ADMIN,
                json_ok("discarded", obj({"discarded": INT}, ["discarded"])),
                (400, 401, 404, 503),
                params=[
                    P_QID,
                    param(
                        "query",
                        "reason",
                        {"type": "string"},
                        "kept in the audit log (first 500 characters)",
                    ),
                ],
                tag=admin_tag,
            )
        },
        "/v1/admin/audit": {
            "get": _op(
                "audit",
                "The audit log, newest first by id",
                ADMIN,
                json_ok("one page", ref("Audit")),
                (400, 401),
                params=[Q_LIMIT, Q_CURSOR],
                tag=admin_tag,
            )
        },
    }


SECURITY_SCHEMES: Json = {
    "storeToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the store's own token (`[[stores]] token`); only for its own store",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "`[http] admin_token`"},
    "shopifyHmac": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Shopify-Hmac-Sha256",
        "description": "base64 HMAC-SHA256 of the raw body with the store's secret (previous secret accepted while it rotates)",
    },
    "adminCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "set by POST /login",
    },
}


@functools.cache
def _document_bytes() -> bytes:
    record, spooled, comps = record_schemas()
    doc: Json = {
        "openapi": "3.1.0",
        "info": {
            "title": "possync",
            "version": __version__,
            "description": (
                "Intake between POS systems and a clienteling app. Every error is JSON "
                '`{"error", "field"}` naming the field and rule, never the value. Any request '
                "may also be answered 400 by the HTTP layer (a malformed request line or "
                "header), 404 on an unknown path and 405 for a method a path does not list. "
                "Money in read answers is a string at the currency's ISO 4217 minor unit."
            ),
        },
        "paths": _paths(record, spooled),
        "components": {
            "schemas": {**comps, **COMPONENT_SCHEMAS},
            "responses": {name: error_response(status) for status, (name, _) in ERRORS.items()},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
    return msgspec.json.encode(doc)


def document() -> Json:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    out: Json = msgspec.json.decode(_document_bytes())
    return out


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the document (no credential: it describes, it holds no data)."""
    return web.Response(body=_document_bytes(), content_type="application/json")
