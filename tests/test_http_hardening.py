"""Issue 12 (items 3, 4, 6, 7, 10 and "Also"): bad bytes, credentials first, whole pushes,
capped answers, connection cap and header timeout.

Every test talks to the real app served the way `possync serve` serves it (`worker.app.listen`:
connection cap, header timeout, JSON protocol errors) on an ephemeral loopback port. Bytes an
HTTP client library would refuse to send go through raw sockets (`asyncio.open_connection`).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import io
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.adapter_helpers import make_ctx
from tests.appserver import ADMIN, S1_TOKEN, S2_TOKEN, make_config
from tests.factories import sale_dict
from worker.adapters import get_adapter
from worker.adapters.base import MAX_REJECTIONS
from worker.app import ConnectionCap, build_app, listen
from worker.clock import FakeClock
from worker.config import decode
from worker.errors import ConfigError, RecordInvalid

NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
SECRET = "shpss_hardening_secret"
PUSH = "/v1/push/canonical/S1"
SHOPIFY = "/v1/push/shopify/SH"
# One route of each kind that needs a credential (store token, Shopify HMAC, admin token).
AUTHENTICATED = (
    ("POST", PUSH),
    ("POST", SHOPIFY),
    ("POST", "/v1/files/canonical/S1?filename=a.ndjson"),
    ("POST", "/v1/backfill/canonical/S1"),
    ("GET", "/status"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/stores/S1/sales?date=2026-11-25"),
    ("GET", "/v1/admin/quarantine"),
    ("DELETE", "/v1/admin/quarantine/1"),
)


@dataclass
class Served:
    port: int
    url: str
    cap: ConnectionCap

    async def until(self, want: Callable[[tuple[int, int]], bool]) -> None:
        """Yield to the loop until the server's (open, idle) connection counts satisfy `want`."""
        for _ in range(100_000):
            if want(self.cap.counts()):
                return
            await asyncio.sleep(0)
        raise AssertionError(f"connection counts stuck at {self.cap.counts()}")


@asynccontextmanager
async def served(tmp_path: Path, **overrides: Any) -> AsyncIterator[Served]:
    """The real app behind `listen` on 127.0.0.1:<ephemeral>; stopped on exit."""
    stores = [
        {"id": "S1", "source": "canonical", "timezone": "America/New_York", "token": S1_TOKEN},
        {"id": "S2", "source": "canonical", "timezone": "Europe/Paris", "token": S2_TOKEN},
        {"id": "SH", "source": "shopify", "timezone": "UTC", "token": "sh-tok", "secret": SECRET},
    ]
    cfg = make_config(tmp_path, stores=stores, **overrides)
    app = build_app(cfg, clock=FakeClock(NOW))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    async with listen(app, cfg, sock=sock) as (port, cap):
        yield Served(port, f"http://127.0.0.1:{port}", cap)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def raw(port: int, request: bytes, *, limit_s: float = 10.0) -> Answer:
    """Send exact bytes; read the answer until the server closes (requests say close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(_read_answer(reader), limit_s)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    return _parse(data)


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return head + body


def _parse(data: bytes) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body)


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A complete HTTP/1.1 request, headers as raw bytes, Connection: close."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(token: str | bytes) -> tuple[bytes, bytes]:
    raw_token = token.encode() if isinstance(token, str) else token
    return b"Authorization", b"Bearer " + raw_token


JSON = (b"Content-Type", b"application/json")
NDJSON = (b"Content-Type", b"application/x-ndjson")


def sale_bytes(sale_id: str = "H-1") -> bytes:
    return orjson.dumps(sale_dict(sale_id, at=NOW))


def shopify_headers(body: bytes, topic: bytes = b"orders/create") -> list[tuple[bytes, bytes]]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    return [
        JSON,
        (b"X-Shopify-Hmac-Sha256", base64.b64encode(digest)),
        (b"X-Shopify-Topic", topic),
    ]


# ---------------------------------------------------------------------- item 3: no 500s


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_content_encoding_that_the_body_is_not_is_400_naming_the_header(
    tmp_path: Path, encoding: bytes
) -> None:
    body = sale_bytes()
    async with served(tmp_path) as s:
        routes = [
            ("/v1/push/canonical/S1", bearer(S1_TOKEN), JSON),
            ("/v1/files/canonical/S1?filename=a.ndjson", bearer(S1_TOKEN), NDJSON),
            ("/v1/backfill/canonical/S1", bearer(ADMIN), NDJSON),
            ("/v1/backfill/canonical/S1", bearer(ADMIN), JSON),
        ]
        for path, auth, ctype in routes:
            ans = await raw(
                s.port, request("POST", path, body, [auth, ctype, (b"Content-Encoding", encoding)])
            )
            assert ans.status == 400, (path, ans)
            assert ans.json()["field"] == "Content-Encoding", (path, ans.json())
        # The same body really compressed is read (the limit counts decompressed bytes).
        packed = gzip.compress(body)
        ans = await raw(
            s.port,
            request("POST", PUSH, packed, [bearer(S1_TOKEN), JSON, (b"Content-Encoding", b"gzip")]),
        )
        assert ans.status == 202, ans.json()


async def test_non_utf8_authorization_is_401_on_every_authenticated_route(
    tmp_path: Path,
) -> None:
    auth = bearer(b"\xff\xfe\xc3(token")
    async with served(tmp_path) as s:
        for method, path in AUTHENTICATED:
            ans = await raw(s.port, request(method, path, sale_bytes(), [auth, JSON]))
            assert ans.status == 401, (path, ans)
            assert ans.json()["field"] in ("Authorization", "X-Shopify-Hmac-Sha256"), path


async def test_quarantine_id_past_int64_is_404_naming_the_id(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        for ident in ("9223372036854775808", "99999999999999999999999", "0", "-1", "%D9%A1%D9%A2"):
            for method, path in (
                ("DELETE", f"/v1/admin/quarantine/{ident}"),
                ("POST", f"/v1/admin/quarantine/{ident}/release"),
            ):
                ans = await raw(s.port, request(method, path, b"", [bearer(ADMIN)]))
                assert ans.status == 404, (ident, method, ans)
                assert ans.json()["field"] == "id"
        # The largest id is a well-formed "no such record".
        ans = await raw(
            s.port,
            request("DELETE", "/v1/admin/quarantine/9223372036854775807", b"", [bearer(ADMIN)]),
        )
        assert ans.status == 404 and ans.json()["field"] == "id"


async def test_shopify_webhook_id_not_utf8_is_400_naming_the_header(tmp_path: Path) -> None:
    order = {"id": 1, "created_at": "2026-11-25T10:00:00-05:00", "currency": "USD"}
    body = orjson.dumps(order)
    async with served(tmp_path) as s:
        headers = [*shopify_headers(body), (b"X-Shopify-Webhook-Id", b"\xff\xfe-id")]
        ans = await raw(s.port, request("POST", SHOPIFY, body, headers))
        assert ans.status == 400, ans
        assert ans.json()["field"].lower() == "x-shopify-webhook-id"


async def test_protocol_errors_answer_json_and_log_no_header_or_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = b"nul-canary-token-0451"
    caplog.set_level(logging.DEBUG)
    async with served(tmp_path) as s:
        cases = [
            (b"GARBAGE\r\n\r\n", "method"),
            (b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", None),
            (
                request(
                    "POST", PUSH, b"{}", [bearer(S1_TOKEN), JSON, (b"Content-Encoding", b"br")]
                ),
                "Content-Encoding",
            ),
            (
                request(
                    "POST", PUSH, b"{}", [bearer(S1_TOKEN), JSON, (b"Content-Encoding", b"zstd")]
                ),
                "Content-Encoding",
            ),
            (
                request(
                    "POST", PUSH, b"{}", [(b"Authorization", b"Bearer " + token + b"\x00x"), JSON]
                ),
                "request",
            ),
        ]
        for data, field in cases:
            ans = await raw(s.port, data)
            assert ans.status == 400, (data, ans)
            assert ans.headers["content-type"].startswith("application/json"), ans
            got = ans.json()
            assert set(got) == {"error", "field"}
            if field is not None:
                assert got["field"] == field, (data, got)
            assert token.decode() not in ans.body.decode()
    text = caplog.text
    assert token.decode() not in text
    assert "Traceback" not in text
    assert all(r.exc_info is None and r.exc_text is None for r in caplog.records)
    assert all(r.levelno < logging.WARNING for r in caplog.records if "protocol" in r.name)


# ---------------------------------------------------------------------- item 4: no values


async def test_rejections_name_field_and_rule_never_the_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    email = "pii.canary.hardening@quillfeather-mail.test"
    caplog.set_level(logging.DEBUG)
    customer = {"type": "customer", "id": "C-1", "marketing_email": email, "version": 1}
    async with (
        served(tmp_path) as s,
        aiohttp.ClientSession() as http,
        http.post(
            f"{s.url}{PUSH}",
            data=orjson.dumps(customer),
            headers={"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/json"},
        ) as r,
    ):
        text = await r.text()
        assert r.status == 400, text
        assert orjson.loads(text)["field"] == "$.marketing_email"
    assert email not in text
    assert email not in caplog.text
    assert RecordInvalid(f"not an ISO-8601 date: {email!r}", field="$.at").message == (
        "not an ISO-8601 date: <value>"
    )


# ------------------------------------------------------- item 6 + Also: credentials first


async def _answer_before_body(port: int, path: str, headers: list[tuple[bytes, bytes]]) -> Answer:
    """Announce a 5 MiB body, send none of it: an answer now means the body was not read."""
    head = [
        f"POST {path} HTTP/1.1".encode(),
        b"Host: x",
        b"Content-Length: 5242880",
        *(n + b": " + v for n, v in headers),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        await writer.drain()
        return _parse(await asyncio.wait_for(_read_answer(reader), 10))
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def test_credentials_are_checked_before_the_body_is_read(tmp_path: Path) -> None:
    async with served(tmp_path, http={"max_body_bytes": 8 * 1024 * 1024}) as s:
        denied = await _answer_before_body(s.port, PUSH, [bearer("wrong"), JSON])
        assert denied.status == 401 and denied.json()["field"] == "Authorization"
        none = await _answer_before_body(
            s.port, "/v1/files/canonical/S1?filename=a.ndjson", [NDJSON]
        )
        assert none.status == 401
        # Shopify: no signature header, nothing to verify: 401 before the body.
        unsigned = await _answer_before_body(
            s.port, SHOPIFY, [JSON, (b"X-Shopify-Topic", b"orders/create")]
        )
        assert unsigned.status == 401 and unsigned.json()["field"] == "X-Shopify-Hmac-Sha256"


async def test_push_routes_take_only_the_store_token_and_hide_unknown_stores(
    tmp_path: Path,
) -> None:
    body = sale_bytes()
    async with served(tmp_path) as s:

        async def post(path: str, headers: list[tuple[bytes, bytes]]) -> Answer:
            return await raw(s.port, request("POST", path, body, headers))

        wrong = await post(PUSH, [bearer("wrong"), JSON])
        assert wrong.status == 401
        for path, headers in (
            (PUSH, [bearer(ADMIN), JSON]),  # the admin token is not a push credential
            (PUSH, [bearer(S2_TOKEN), JSON]),  # another store's token
            (PUSH, [JSON]),
            ("/v1/push/canonical/NOPE", [bearer(S1_TOKEN), JSON]),  # unknown store
            ("/v1/push/canonical/NOPE", [bearer("wrong"), JSON]),
            ("/v1/push/teletype/NOPE", [bearer("wrong"), JSON]),
        ):
            ans = await post(path, headers)
            assert (ans.status, ans.json()) == (401, wrong.json()), (path, headers)
        for path in (
            "/v1/files/canonical/S1?filename=a.ndjson",
            "/v1/files/canonical/NOPE?filename=a",
        ):
            for auth in (bearer(ADMIN), bearer("wrong")):
                ans = await post(path, [auth, NDJSON])
                assert (ans.status, ans.json()) == (401, wrong.json()), (path, auth)
        # Signed route: unknown store, wrong signature, another source's store: one answer.
        bad_sig = await post(
            SHOPIFY,
            [JSON, (b"X-Shopify-Hmac-Sha256", b"AAAA"), (b"X-Shopify-Topic", b"orders/create")],
        )
        assert bad_sig.status == 401
        for path, headers in (
            ("/v1/push/shopify/NOPE", shopify_headers(body)),
            ("/v1/push/shopify/S1", shopify_headers(body)),
            (SHOPIFY, [JSON, (b"X-Shopify-Topic", b"orders/create")]),
        ):
            ans = await post(path, headers)
            assert (ans.status, ans.json()) == (401, bad_sig.json()), path
        # With its own token, a store reaches the rule it breaks (after authentication only).
        ans = await post("/v1/push/shopify/S1", [bearer(S1_TOKEN), JSON])
        assert ans.status == 404 and ans.json()["field"] == "source"
        ans = await post(PUSH, [bearer(S1_TOKEN), JSON])
        assert ans.status == 202, ans.json()


@pytest.mark.parametrize(
    ("stores", "field"),
    [
        ([{"id": "A", "token": ADMIN}], "$.stores[0].token"),
        ([{"id": "A", "token": "same-tok"}, {"id": "B", "token": "same-tok"}], "$.stores[1].token"),
    ],
)
def test_config_refuses_a_store_token_that_is_not_its_own(
    tmp_path: Path, stores: list[dict[str, Any]], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        decode({"data_dir": str(tmp_path), "http": {"admin_token": ADMIN}, "stores": stores})
    assert err.value.field == field
    assert ADMIN not in err.value.message and "same-tok" not in err.value.message
    # Empty tokens (loopback only) are not "shared".
    decode({"data_dir": str(tmp_path), "stores": [{"id": "A"}, {"id": "B"}]})


# ---------------------------------------------------------------- item 7: whole pushes


async def test_a_push_over_the_spool_cap_writes_nothing(tmp_path: Path) -> None:
    customer = {"type": "customer", "id": "C-503", "first_name": "Whole", "version": 1}
    lines = [orjson.dumps(customer)] + [sale_bytes(f"W-{n}") for n in range(4)]
    async with (
        served(tmp_path, spool={"max_records_per_store": 3}) as s,
        aiohttp.ClientSession() as http,
    ):
        push = {"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/x-ndjson"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(f"{s.url}{PUSH}", data=b"\n".join(lines), headers=push) as r:
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"] == "30"
            assert (await r.json())["field"] == "store"
        async with http.get(f"{s.url}/v1/stores/S1/customers/C-503", headers=admin) as r:
            assert r.status == 404, await r.text()
        async with http.get(f"{s.url}/v1/stores/S1/spool", headers=admin) as r:
            assert (await r.json())["pending"] == 0
        # What fits is written whole: the customer and three sales.
        async with http.post(f"{s.url}{PUSH}", data=b"\n".join(lines[:4]), headers=push) as r:
            assert r.status == 202 and (await r.json())["accepted"] == 4
        async with http.get(f"{s.url}/v1/stores/S1/customers/C-503", headers=admin) as r:
            assert r.status == 200


# ------------------------------------------------------------- item 10: capped answers


def _rss_kib(key: str) -> int:
    """This process's VmRSS / VmHWM (the server under test runs in it)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


def _reset_peak_rss() -> None:
    """VmHWM back to the current RSS (proc(5): clear_refs "5", Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


# The peak RSS rise one 1M-line bad push may cost the server. Measured with
# `python -m bench.bad_push_rss` (1M lines of `{}`, a `possync serve` process each, same run):
# +308.5 MiB before the cap lived in `Parsed` (6be686f: a Rejection per bad line and a list of
# every line), +5.7 MiB after. This test measures +8 MiB (server and client in one process),
# and +258 MiB with `Parsed.reject`'s cap lifted (the old behaviour simulated). 64 MiB is 8x
# the measured figure (allocator and thread-stack noise cannot reach it) and a quarter of the
# old one, so a parse that keeps anything per bad line fails it.
BAD_PUSH_RSS_BOUND_KIB = 64 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
async def test_a_huge_bad_push_gets_a_capped_answer_and_healthz_stays_up(tmp_path: Path) -> None:
    n = 1_000_000
    body = b"{}\n" * n
    async with (
        served(tmp_path, http={"max_body_bytes": 4 * 1024 * 1024}) as s,
        aiohttp.ClientSession() as http,
    ):
        headers = {"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/x-ndjson"}

        async def bad_push(payload: bytes) -> tuple[int, bytes]:
            # A file-like body is sent in chunks (aiohttp warns on large raw bytes).
            data = io.BytesIO(payload)  # shares the bytes' buffer until written to
            async with http.post(f"{s.url}{PUSH}", data=data, headers=headers) as r:
                return r.status, await r.read()

        # Warm up the same path (imports, the thread pool, first decode errors).
        assert (await bad_push(b"{}\n" * 2_000))[0] == 400
        baseline = _rss_kib("VmRSS")
        _reset_peak_rss()
        task = asyncio.create_task(bad_push(body))
        # While the big body is parsed (in a thread), the loop answers /healthz.
        answered_during = 0
        while not task.done():
            async with http.get(f"{s.url}/healthz") as r:
                assert r.status == 200
            if not task.done():
                answered_during += 1
        status, raw_body = await task
        rise = _rss_kib("VmHWM") - baseline
        assert status == 400
        out = orjson.loads(raw_body)
        assert len(out["rejected"]) == MAX_REJECTIONS and out["rejected_count"] == n
        assert [r["index"] for r in out["rejected"]] == list(range(MAX_REJECTIONS))
        assert len(raw_body) < 200_000, len(raw_body)
        assert answered_during >= 1
        assert rise < BAD_PUSH_RSS_BOUND_KIB, f"peak RSS rose {rise // 1024} MiB"


def _ndjson_bad(n: int) -> bytes:
    return b"{}\n" * n + orjson.dumps(sale_dict("GOOD-1", at=NOW)) + b"\n"


def _array_bad(n: int) -> bytes:
    return b"[" + b"{}," * n + orjson.dumps(sale_dict("GOOD-1", at=NOW)) + b"]"


def _lightspeed_bad(n: int) -> bytes:
    # Vend's customer list: a number where a customer object belongs is one bad item.
    return orjson.dumps({"pagination": {"page": 1, "pages": 1}, "customers": [7] * n})


def _rain_bad(n: int) -> bytes:
    # Odd rows lack the sale id (rejected as the row is read); even rows are sales with a
    # bad date (rejected when the sales are built, after the last row): out of index order.
    rows = [",03/14/2026 10:00:00 AM,1,5" if i % 2 else f"T{i},someday,1,5" for i in range(n)]
    return ("Transaction ID,Date,Qty,Price\n" + "\n".join(rows) + "\n").encode()


BAD_PAYLOADS: dict[str, tuple[str, str, str | None, Callable[[int], bytes]]] = {
    "canonical-ndjson": ("canonical", "application/x-ndjson", None, _ndjson_bad),
    "canonical-array": ("canonical", "application/json", None, _array_bad),
    "lightspeed-x": ("lightspeed", "application/json", None, _lightspeed_bad),
    "rain-csv": ("rain", "text/csv", "transactions.csv", _rain_bad),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_an_adapter_fed_10_000_bad_items_keeps_n_and_counts_them_all(case: str) -> None:
    source, content_type, filename, make = BAD_PAYLOADS[case]
    adapter = get_adapter(source)
    assert adapter is not None
    n = 10_000
    ctx = make_ctx(source, content_type=content_type, filename=filename)
    parsed = adapter.parse(make(n), ctx)
    assert parsed.rejected_count == n
    assert len(parsed.rejected) == MAX_REJECTIONS
    # The first N by index, in order, whatever order the adapter found them in.
    assert [r.index for r in parsed.rejected] == list(range(MAX_REJECTIONS))
    assert all(r.error and r.field for r in parsed.rejected)
    if source == "rain":
        assert {r.field for r in parsed.rejected[1::2]} == {"Transaction ID"}
        assert {r.field for r in parsed.rejected[0::2]} == {"Date"}


async def test_a_buffered_backfill_counts_the_rejections_its_adapter_only_counted(
    tmp_path: Path,
) -> None:
    # A JSON array is read whole by the adapter (no streaming parser): its Parsed kept the
    # first N, and the backfill's answer still counts every bad item and every record.
    n = 1_500
    async with served(tmp_path) as s, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
        url = f"{s.url}/v1/backfill/canonical/S1"
        async with http.post(url, data=_array_bad(n), headers=headers) as r:
            out = await r.json()
            assert r.status == 200, out
    assert (out["accepted"], out["rejected_count"], out["records"]) == (1, n, n + 1)
    assert [x["index"] for x in out["rejected"]] == list(range(MAX_REJECTIONS))


# ------------------------------------------------ item 6: connection cap, header timeout


async def _slow_header(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that starts a request head and never finishes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/push/canonical/S1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def test_slow_header_connections_cannot_lock_out_healthz_or_pushes(tmp_path: Path) -> None:
    cap = 16
    async with (
        served(tmp_path, http={"max_connections": cap, "header_timeout_s": 5.0}) as s,
        aiohttp.ClientSession() as http,
    ):
        slow = [await _slow_header(s.port) for _ in range(cap * 3)]
        try:
            # Each new connection at the cap closed the oldest idle one: the first ones are
            # gone (EOF), the server holds at most `cap`.
            for reader, _ in slow[: cap * 2]:
                assert await asyncio.wait_for(reader.read(), 10) == b""
            ans = await raw(s.port, request("GET", "/healthz"))
            assert ans.status == 200 and ans.json() == {"status": "ok"}
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with http.get(f"{s.url}/status", headers=admin) as r:
                conns = (await r.json())["connections"]
            assert conns["open"] <= cap and conns["evicted_idle"] >= cap * 2, conns
            ans = await raw(
                s.port, request("POST", PUSH, sale_bytes("CAP-1"), [bearer(S1_TOKEN), JSON])
            )
            assert ans.status == 202, ans.json()
            # The rest stop by themselves: the header timeout closes them (no answer).
            for reader, _ in slow[cap * 2 :]:
                assert await asyncio.wait_for(reader.read(), 30) == b""
        finally:
            for _, writer in slow:
                writer.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503_json(
    tmp_path: Path,
) -> None:
    cap = 8
    async with served(tmp_path, http={"max_connections": cap}) as s:
        busy = []
        try:
            for _ in range(cap):
                # A complete head with a body still to come: a request in progress.
                reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
                writer.write(
                    b"POST /v1/push/canonical/S1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + S1_TOKEN.encode()
                    + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                )
                await writer.drain()
                busy.append((reader, writer))
            await s.until(lambda c: c == (cap, 0))  # every head parsed, every request running
            ans = await raw(s.port, request("GET", "/healthz"))
            assert ans.status == 503 and ans.headers["retry-after"] == "1"
            assert ans.json() == {"error": "too many open connections", "field": "connection"}
        finally:
            for _, writer in busy:
                writer.close()
        # The busy ones gone, the server answers again.
        await s.until(lambda c: c[0] == 0)
        ans = await raw(s.port, request("GET", "/healthz"))
        assert ans.status == 200


async def test_header_timeout_closes_a_connection_that_never_finishes_its_head(
    tmp_path: Path,
) -> None:
    async with served(tmp_path, http={"header_timeout_s": 0.3}) as s:
        reader, writer = await _slow_header(s.port)
        try:
            # The server closes it by itself (no answer: there was no request to answer).
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
        ans = await raw(s.port, request("GET", "/healthz"))
        assert ans.status == 200
