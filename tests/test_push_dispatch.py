"""`PushDispatch` (worker.app): the push route served straight answers what the app answers.

The same requests go to the app behind `listen` (as `possync serve` runs it: pushes take the
direct path) and to the app behind aiohttp's TestServer (every request through
`Application._handle`, the router and the middleware chain), each with its own fresh data
directory and the same fake clock. Every answer must be the same: status, JSON body, and
the headers the error middleware and aiohttp set; and the direct path must have been taken.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.appserver import ADMIN, S1_TOKEN, S2_TOKEN, make_config
from tests.factories import sale_dict
from worker.app import PushDispatch, build_app, listen
from worker.clock import FakeClock

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
OK = {"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/json"}
SALE = orjson.dumps(sale_dict("D-1", at=NOW))
# Header names whose values must match between the paths (X-Request-Id: present, random).
COMPARED = ("Content-Type", "WWW-Authenticate", "Retry-After", "Allow", "Connection")

# (method, path, headers, body, takes the direct path)
CASES: list[tuple[str, str, dict[str, str], bytes, bool]] = [
    ("POST", "/v1/push/canonical/S1", OK, SALE, True),
    ("POST", "/v1/push/canonical/S1", OK, SALE, True),  # the duplicate
    ("POST", "/v1/push/canonical/S1", OK, b"[" + SALE + b"," + SALE + b"]", True),
    ("POST", "/v1/push/canonical/S1", {**OK, "X-Request-Id": "given-1"}, SALE, True),
    ("POST", "/v1/push/canonical/S1", {**OK, "Authorization": "Bearer nope"}, SALE, True),
    ("POST", "/v1/push/canonical/S1", {**OK, "Authorization": f"Bearer {S2_TOKEN}"}, SALE, True),
    ("POST", "/v1/push/canonical/S1", {**OK, "Authorization": f"Bearer {ADMIN}"}, SALE, True),
    ("POST", "/v1/push/canonical/NOPE", OK, SALE, True),
    ("POST", "/v1/push/nosuch/S1", OK, SALE, True),
    ("POST", "/v1/push/shopify/S1", OK, SALE, True),
    ("POST", "/v1/push/canonical/S1", {**OK, "Content-Type": "text/plain"}, SALE, True),
    ("POST", "/v1/push/canonical/S1", OK, b"{", True),
    ("POST", "/v1/push/canonical/S1", OK, b"", True),
    ("POST", "/v1/push/canonical/S1", OK, orjson.dumps({"type": "customer", "id": "C1"}), True),
    ("POST", "/v1/push/canonical/S1", OK, b"x" * (4096 + 1), True),
    (
        "POST",
        "/v1/push/canonical/S1",
        {**OK, "Content-Encoding": "gzip"},
        gzip.compress(orjson.dumps(sale_dict("D-2", at=NOW))),
        True,
    ),
    ("POST", "/v1/push/canonical/S1", {**OK, "Expect": "100-continue"}, SALE, False),
    ("POST", "/v1/push/canonical/S1/extra", OK, SALE, False),
    ("GET", "/v1/push/canonical/S1", OK, b"", False),
    ("POST", "/v1/push/canonical", OK, SALE, False),
    ("GET", "/healthz", {}, b"", False),
]


@asynccontextmanager
async def _served(tmp: Path) -> AsyncIterator[tuple[str, PushDispatch]]:
    cfg = make_config(tmp, http={"max_body_bytes": 4096})
    app = build_app(cfg, clock=FakeClock(NOW))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    async with listen(app, cfg, sock=sock) as (port, cap):
        dispatch = cap.server.request_handler
        assert isinstance(dispatch, PushDispatch)
        yield f"http://127.0.0.1:{port}", dispatch


@asynccontextmanager
async def _tested(tmp: Path) -> AsyncIterator[str]:
    cfg = make_config(tmp, http={"max_body_bytes": 4096})
    server = TestServer(build_app(cfg, clock=FakeClock(NOW)), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _answer(
    session: aiohttp.ClientSession, base: str, case: tuple[str, str, dict[str, str], bytes, bool]
) -> tuple[int, Any, dict[str, str | None], str | None]:
    method, path, headers, body, _ = case
    async with session.request(
        method, base + path, headers=headers, data=body or None, skip_auto_headers=["Content-Type"]
    ) as resp:
        raw = await resp.read()
        kept = {h: resp.headers.get(h) for h in COMPARED}
        try:
            content: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            content = raw
        rid = resp.headers.get("X-Request-Id")
        return resp.status, content, kept, rid


async def test_the_direct_path_answers_what_the_app_answers(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        _served(tmp_path / "a") as (direct, dispatch),
        _tested(tmp_path / "b") as routed,
        aiohttp.ClientSession() as session,
    ):
        statuses = set()
        for case in CASES:
            before = dispatch.fast
            got = await _answer(session, direct, case)
            want = await _answer(session, routed, case)
            assert got[:3] == want[:3], case[:2]
            assert (got[3] is None) == (want[3] is None)
            if case[2].get("X-Request-Id"):
                assert got[3] == want[3] == case[2]["X-Request-Id"]
            assert dispatch.fast - before == int(case[4]), case[:2]
            statuses.add(got[0])
        metrics = {}
        for base in (direct, routed):
            async with session.get(
                base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp:
                text = await resp.text()
            metrics[base] = sorted(
                line
                for line in text.splitlines()
                if line.startswith(("possync_http_requests_total", "possync_records_"))
                and "_created" not in line  # creation times differ
            )
        assert metrics[direct] == metrics[routed]
        assert any("/v1/push/{source}/{store}" in m for m in metrics[direct])
    assert {202, 400, 401, 404, 405, 413, 415} <= statuses


@pytest.mark.parametrize("expect", ["100-continue", "something-else"])
async def test_a_push_with_expect_is_the_apps(tmp_path: Path, expect: str) -> None:
    async with _served(tmp_path) as (direct, dispatch), aiohttp.ClientSession() as session:
        async with session.post(
            direct + "/v1/push/canonical/S1", headers={**OK, "Expect": expect}, data=SALE
        ) as resp:
            assert resp.status == (202 if expect == "100-continue" else 417)
        assert dispatch.fast == 0
