"""Schemathesis over every operation of `/openapi.json`, against the real app (issue 13).

The app runs on an ephemeral port on its own event loop in a thread (schemathesis's
transport is synchronous `requests`); the document is the one the server serves. Each
case is sent with the credential its operation documents (the store's token, the admin
token, or the HMAC of the exact body bytes with the Shopify store's secret), and about
half the cases aim at a configured store of the right source, so the handlers past the
credential and store checks are reached too. Cases are generated in schemathesis's
positive (valid per the document) and negative (breaking it) modes.

Checks on every answer: `not_a_server_error` (no 5xx), `status_code_conformance` (the
status is one the document lists for the operation), `content_type_conformance`,
`response_headers_conformance` and `response_schema_conformance` (the body has the
documented shape: this is what keeps the answer schemas honest).

Long mode (`POSSYNC_LONG=1`, marker `long`): every operation, LONG_EXAMPLES cases each.
Quick mode (in `make test`): a smoke run over a few operations, QUICK_EXAMPLES each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.appserver import ADMIN, S1_TOKEN, make_config
from worker.app import build_app, listen
from worker.clock import FakeClock

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
LONG_EXAMPLES = 1000
QUICK_EXAMPLES = 8
QUICK_OPERATIONS = ("pushCanonical", "salesLog", "listQuarantine", "releaseOne")
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

SHOPIFY_SECRET = "shopify-secret-fuzz"
# A configured store per source the fuzz aims at (its own token, as config requires).
STORES = {
    "canonical": ("S1", S1_TOKEN),
    "shopify": ("SH", "sh-token-fuzz"),
    "lightspeed": ("LS", "ls-token-fuzz"),
    "the_edge": ("TE", "te-token-fuzz"),
}


class _Server:
    """The harness entered on a private loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        cfg = make_config(
            tmp,
            stores=[
                {
                    "id": "S1",
                    "source": "canonical",
                    "timezone": "America/New_York",
                    "token": S1_TOKEN,
                },
                {
                    "id": "SH",
                    "source": "shopify",
                    "token": STORES["shopify"][1],
                    "secret": SHOPIFY_SECRET,
                    "currency": "USD",
                },
                {
                    "id": "LS",
                    "source": "lightspeed",
                    "token": STORES["lightspeed"][1],
                    "currency": "USD",
                },
                {
                    "id": "TE",
                    "source": "the_edge",
                    "token": STORES["the_edge"][1],
                    "currency": "USD",
                },
            ],
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        # `listen` is how `possync serve` serves (its protocol-error answers included).
        self._cm = listen(build_app(cfg, clock=FakeClock(NOW)), cfg, sock=sock)
        port = self._run(self._cm.__aenter__()).port
        self.url = f"http://127.0.0.1:{port}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        try:
            self._run(self._cm.__aexit__(None, None, None))
            self._run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    with contextlib.closing(_Server(tmp_path)) as s:
        yield s


@dataclass
class Tally:
    """Cases sent, by operation and by status."""

    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_operation: dict[str, int] = field(default_factory=dict)


def _schemes(op: Operation) -> set[str]:
    security = op.definition.raw.get("security", [])
    return {name for req in security for name in req}


def _send(session: requests.Session, url: str, case: Case, aim: bool) -> requests.Response:
    """Send `case` with its operation's credential; `aim` targets a configured store."""
    schemes = _schemes(case.operation)
    if aim and case.path_parameters and "store" in case.path_parameters:
        source = case.path_parameters.get("source")
        if source is None:
            source = "shopify" if "shopifyHmac" in schemes else "canonical"
        case.path_parameters["store"] = STORES.get(str(source), STORES["canonical"])[0]
    store = case.path_parameters.get("store") if case.path_parameters else None
    headers: dict[str, str] = {}
    if "storeToken" in schemes:
        token = next((t for sid, t in STORES.values() if sid == store), S1_TOKEN)
        headers["Authorization"] = f"Bearer {token}"
    elif "adminToken" in schemes:
        headers["Authorization"] = f"Bearer {ADMIN}"
    kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
    kwargs.pop("timeout", None)
    prepared = session.prepare_request(requests.Request(**kwargs))
    if "shopifyHmac" in schemes:
        body = prepared.body or b""
        raw = body.encode() if isinstance(body, str) else bytes(body)  # type: ignore[arg-type]
        mac = hmac.new(SHOPIFY_SECRET.encode(), raw, hashlib.sha256).digest()
        prepared.headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(mac).decode()
    return session.send(prepared, timeout=60, allow_redirects=False)


def _run_operation(
    session: requests.Session,
    url: str,
    op: Operation,
    op_id: str,
    examples: int,
    tally: Tally,
) -> None:
    """`examples` cases of one operation, positive and negative, each answer checked."""
    strategy = st.one_of(
        op.as_strategy(generation_mode=GenerationMode.POSITIVE),
        op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, aim=st.booleans())
    def run(case: Case, aim: bool) -> None:
        resp = _send(session, url, case, aim)
        tally.cases += 1
        tally.by_status[resp.status_code] = tally.by_status.get(resp.status_code, 0) + 1
        tally.by_operation[op_id] = tally.by_operation.get(op_id, 0) + 1
        case.validate_response(resp, checks=CHECKS)

    run()


def _fuzz(url: str, examples: int, only: tuple[str, ...] = ()) -> Tally:
    """Every operation (or those in `only`), `examples` cases each; checks every answer."""
    doc = requests.get(f"{url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    tally = Tally()
    session = requests.Session()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        op = result.ok()
        op_id = str(op.definition.raw["operationId"])
        if only and op_id not in only:
            continue
        _run_operation(session, url, op, op_id, examples, tally)
    session.close()
    return tally


def test_schemathesis_smoke(server: _Server) -> None:
    tally = _fuzz(server.url, QUICK_EXAMPLES, QUICK_OPERATIONS)
    assert set(tally.by_operation) == set(QUICK_OPERATIONS)
    assert tally.cases >= len(QUICK_OPERATIONS)
    assert not any(s >= 500 for s in tally.by_status)


@pytest.mark.long
def test_schemathesis_every_operation(server: _Server) -> None:
    tally = _fuzz(server.url, LONG_EXAMPLES)
    doc = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    operations = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert set(tally.by_operation) == operations
    assert not any(s >= 500 for s in tally.by_status)
    print(f"schemathesis: {tally.cases} cases over {len(operations)} operations; {tally.by_status}")
