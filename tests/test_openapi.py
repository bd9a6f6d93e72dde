"""The OpenAPI document cannot drift from the routes (issue 13).

* it validates as OpenAPI 3.1 (openapi-spec-validator);
* every route the app registers (method and path) is documented, and every documented path
  is a registered route;
* every operation lists the error statuses its kind of handler can produce, and a real
  server's answers to requests built from the document (no credential, unknown store or id,
  each query parameter broken) are statuses the document lists, with the error body;
* the served `/openapi.json` is the built document, without a credential.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.appserver import ADMIN, S1_TOKEN, Harness, make_config, running
from worker.adapters import ADAPTERS
from worker.api.openapi import document
from worker.app import build_app

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
METHODS = ("get", "post", "put", "patch", "delete")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def _registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route, HEAD routes aiohttp adds for GETs left out."""
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        # aiohttp's canonical form drops a segment's regex: {action:pause|resume} -> {action}
        out.add((route.method, route.resource.canonical))
    return out


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


def test_document_validates_as_openapi_31() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()


def test_every_route_is_documented_and_every_documented_path_registered(
    tmp_path: Path,
) -> None:
    app = build_app(make_config(tmp_path))
    registered = _registered(app)
    documented = {(m, p) for m, p, _ in _operations(document())}
    assert registered, "the app registers no route"
    missing = registered - documented
    assert not missing, f"routes without documentation: {sorted(missing)}"
    for method, path in documented - registered:
        # A concrete specialization of a templated route (/v1/push/canonical/{store} of
        # /v1/push/{source}/{store}): documented separately for its own body and auth.
        general = [p for m, p in registered if m == method and _template(p).match(path)]
        assert general, f"documented but not registered: {method} {path}"


def test_every_push_source_is_documented() -> None:
    doc = document()
    native = doc["paths"]["/v1/push/{source}/{store}"]["post"]["parameters"][0]
    assert native["name"] == "source"
    concrete = {p.split("/")[3] for p in doc["paths"] if re.match(r"^/v1/push/[a-z_]+/", p)}
    assert set(native["schema"]["enum"]) | concrete == set(ADAPTERS)
    assert not set(native["schema"]["enum"]) & concrete
    files = doc["paths"]["/v1/files/{source}/{store}"]["post"]["parameters"][0]
    assert set(files["schema"]["enum"]) == set(ADAPTERS)


def test_every_operation_lists_the_errors_its_handler_can_produce() -> None:
    doc = document()
    for method, path, op in _operations(doc):
        codes = set(op["responses"])
        where = f"{method} {path}"
        names = {s for req in op["security"] for s in req}
        if names and "adminCookie" not in names:
            assert "401" in codes, where
        params = op.get("parameters", [])
        if op.get("requestBody") or any(p["in"] == "query" for p in params):
            assert "400" in codes or path == "/", where  # the page ignores a bad query
        if op.get("requestBody"):
            assert "413" in codes, where
        if any(p["name"] == "store" and p["in"] == "path" for p in params):
            assert "404" in codes, where
        for code, resp in op["responses"].items():
            if int(code) >= 400 and "$ref" in resp:
                name = resp["$ref"].rsplit("/", 1)[-1]
                assert name in doc["components"]["responses"], where
    for name, resp in doc["components"]["responses"].items():
        schema = resp["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"} or name == "Unprocessable"
    assert "Retry-After" in doc["components"]["responses"]["Unavailable"]["headers"]
    intake = doc["paths"]["/v1/push/canonical/{store}"]["post"]["responses"]
    assert {"202", "400", "401", "404", "413", "415", "503", "507"} <= set(intake)


def test_canonical_bodies_come_from_the_record_structs() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    for name in ("Customer", "Product", "Sale", "SaleLine", "Tender", "Adjustment", "Void"):
        assert name in schemas
    sale = schemas["Sale"]["properties"]
    # Fields the canonical model gained are there without anyone writing them here.
    for field in ("discount", "rounding", "tax_included", "tenders_known", "adjustments"):
        assert field in sale
    # A Decimal is accepted as a decimal string or a JSON number.
    assert {"type": "number"} in sale["total"]["anyOf"]
    body = doc["paths"]["/v1/push/canonical/{store}"]["post"]["requestBody"]["content"]
    assert "application/x-ndjson" in body
    one = body["application/json"]["schema"]["anyOf"][0]
    assert one["discriminator"]["propertyName"] == "type"


# ----------------------------------------------------------------------------- live


async def test_served_document_is_the_built_one_without_credential(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), NOW) as h:
        resp = await h.client.get("/openapi.json")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        text = await resp.text()
        assert await resp.json() == document()
    # It describes; it reveals nothing of the configuration (tokens, store ids, data dir).
    for secret in (ADMIN, S1_TOKEN, str(tmp_path), '"S1"', '"S2"'):
        assert secret not in text


def _url(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), "x"), path)


def _auth(op: dict[str, Any]) -> dict[str, str]:
    names = {s for req in op["security"] for s in req}
    if "storeToken" in names:
        return {"Authorization": f"Bearer {S1_TOKEN}"}
    if "adminToken" in names:
        return {"Authorization": f"Bearer {ADMIN}"}
    return {}


# Values that break each query parameter's rule (the document's own names).
_BAD = {
    "date": "20-11-2026",
    "from": "yesterday",
    "to": "tomorrow",
    "limit": "0",
    "cursor": "not-a-cursor",
    "customer": "c" * 300,
    "trigger": "t" * 300,
    "state": "bogus",
    "rule": "no rule!",
    "store": "no-such-store",
    "offset": "-1",
    "commit": "later",
    "commit_every_s": "nan",
    "page": "0",
}


async def _check(h: Harness, method: str, url: str, op: dict[str, Any], **kw: Any) -> int:
    resp = await h.client.request(method, url, **kw)
    codes = set(op["responses"])
    assert str(resp.status) in codes, f"{method} {url} answered {resp.status}, documented {codes}"
    if resp.status >= 400 and resp.content_type == "application/json":
        body = await resp.json()
        assert set(body) >= {"error", "field"}, (method, url, body)
    await resp.read()
    return resp.status


async def test_live_answers_are_documented_statuses(tmp_path: Path) -> None:
    doc = document()
    seen: set[tuple[str, str, int]] = set()
    async with running(make_config(tmp_path), NOW) as h:
        for method, path, op in _operations(doc):
            if path == "/logout":
                continue  # nothing to break: it always answers 303
            known = {"store": "S1", "source": "canonical", "action": "pause", "id": "1"}
            for p in op.get("parameters", []):
                if p["in"] == "path" and "enum" in p["schema"]:
                    known[p["name"]] = p["schema"]["enum"][0]
            body = {"data": b"{}", "headers": {"Content-Type": "application/json"}}
            if path == "/login":
                body = {"data": {"token": "wrong"}}
            auth = _auth(op)
            # No credential.
            if auth:
                status = await _check(h, method, _url(path, known), op, **body)
                assert status == 401, (method, path)
                seen.add((method, path, status))
            # An unknown store or record.
            for name in ("store", "id"):
                if any(p["name"] == name and p["in"] == "path" for p in op.get("parameters", [])):
                    url = _url(path, {**known, name: "nope"})
                    status = await _check(
                        h, method, url, op, params=_required(op), headers=auth, data=b""
                    )
                    seen.add((method, path, status))
            # Each query parameter broken in turn (the others valid where required).
            for p in op.get("parameters", []):
                if p["in"] != "query" or p["name"] not in _BAD:
                    continue
                query = {**_required(op), p["name"]: _BAD[p["name"]]}
                url = _url(path, known)
                status = await _check(h, method, url, op, params=query, headers=auth, data=b"")
                seen.add((method, path, status))
    statuses = {s for _, _, s in seen}
    # The run reached the validation of each kind: 400 (rules), 401, 404.
    assert {400, 401, 404} <= statuses, statuses
    assert ("GET", "/v1/stores/{store}/sales", 400) in seen
    assert ("POST", "/v1/admin/quarantine/{id}/release", 404) in seen


def _required(op: dict[str, Any]) -> dict[str, str]:
    """A valid value for each required query parameter."""
    valid = {"date": "2026-11-20", "from": "2026-11-01", "to": "2026-11-20", "store": "S1"}
    out = {}
    for p in op.get("parameters", []):
        if p["in"] == "query" and p.get("required"):
            out[p["name"]] = valid.get(p["name"]) or p["schema"].get("enum", ["x"])[0]
    return out


@pytest.mark.parametrize("media", ["text/xml", "application/pdf"])
async def test_a_push_of_an_unreadable_media_type_is_a_documented_415(
    tmp_path: Path, media: str
) -> None:
    op = document()["paths"]["/v1/push/canonical/{store}"]["post"]
    async with running(make_config(tmp_path), NOW) as h:
        status = await _check(
            h,
            "POST",
            "/v1/push/canonical/S1",
            op,
            data=b"{}",
            headers={"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": media},
        )
        assert status == 415
