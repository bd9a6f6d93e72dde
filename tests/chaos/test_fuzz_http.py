"""Hypothesis against the real app on an ephemeral port: bad input never takes it down.

Random bytes, malformed JSON, wrong types, huge numbers, NaN/Infinity, deeply nested
bodies, invalid UTF-8, empty bodies, NDJSON with a bad line, random content types, random
paths and methods under /v1/. The oracle, for every request:

* never a 5xx;
* every status >= 400 answers JSON with "error" and "field";
* nothing is logged at ERROR by the "possync" loggers (no unhandled exception);
* a 4xx leaves the spool and the sink exactly as they were (no partial write).

One app per test function: the sync test owns an event loop, enters the app once, and each
hypothesis example runs one request on that loop (`loop.run_until_complete`).

`test_fuzz_raw_headers` sends raw header bytes (non-UTF-8, NUL, any Content-Encoding, bodies
that are or are not gzip) over a socket to the app served as `possync serve` serves it
(`worker.app.listen`), where aiohttp's own protocol errors are answered too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.appserver import ADMIN, S1_TOKEN, S2_TOKEN, Harness, make_config, running
from tests.factories import sale_dict
from tests.support.loop import PrivateLoop
from tests.support.raw import exchange
from worker.app import Listening, build_app, listen
from worker.clock import FakeClock

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


class _App(PrivateLoop[Harness]):
    """The harness entered on a private loop, for sync hypothesis tests."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(running(make_config(tmp), NOW))
        self.h = self.entered


@pytest.fixture
def app(tmp_path: Path) -> Iterator[_App]:
    with contextlib.closing(_App(tmp_path)) as a:
        yield a


# ----------------------------------------------------------------------------- strategies


def _dumps(value: object) -> bytes:
    """Stdlib JSON: unlike orjson it writes integers past 64 bits."""
    return json.dumps(value).encode()


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=10), inner, max_size=5),
    ),
    max_leaves=20,
)
_SALE_KEYS = [
    "type",
    "id",
    "occurred_at",
    "currency",
    "lines",
    "subtotal",
    "tax",
    "total",
    "tenders",
    "version",
    "origin",
    "customer_id",
    "kind",
    "original_id",
    "channel",
]
_WEIRD = st.sampled_from(
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",
        b"-1e400",
        b"123456789012345678901234567890123456789012345678901234567890",
        b'"NaN"',
        b'"Infinity"',
        b'"1e999999"',
        b"null",
        b"true",
        b'""',
        b"[]",
        b"{}",
    ]
)


@st.composite
def _mutated_sale(draw: st.DrawFn) -> bytes:
    """A valid sale with one field replaced by something of the wrong kind (as raw JSON)."""
    d = sale_dict(f"F-{draw(st.integers(0, 10**6))}", at=NOW)
    key = draw(st.sampled_from(_SALE_KEYS))
    raw = orjson.dumps({**d, key: "__X__"})
    new = draw(st.one_of(_WEIRD, _json_values.map(_dumps)))
    if draw(st.booleans()) and key == "lines":
        line = {**d["lines"][0], draw(st.sampled_from(list(d["lines"][0]))): "__X__"}
        raw = orjson.dumps({**d, "lines": [line]})
    return raw.replace(b'"__X__"', new)


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([10, 900, 1000, 100_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    tail = closer * depth if draw(st.booleans()) else b""  # unterminated half the time
    return opener * depth + b"1" + tail


@st.composite
def _ndjson_bad_line(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 5))
    lines = [
        orjson.dumps(sale_dict(f"N-{draw(st.integers(0, 10**6))}-{i}", at=NOW)) for i in range(n)
    ]
    bad = draw(st.one_of(st.binary(max_size=30), _WEIRD, _nested(), _mutated_sale()))
    lines.insert(draw(st.integers(0, n)), bad)
    return b"\n".join(lines)


_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    _WEIRD,
    _json_values.map(_dumps),
    _json_values.map(lambda v: _dumps(v)[:-1]),  # truncated JSON
    _mutated_sale(),
    _nested(),
    _ndjson_bad_line(),
    st.binary(min_size=1, max_size=20).map(
        lambda b: b'{"type":"sale","id":"' + b"\xff" + b + b'"}'
    ),
    st.sampled_from([b"\xff\xfe{}", b"\xc3\x28", b'{"id": "\xed\xa0\x80"}', b"\x00" * 10]),
)
_ctypes = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
            "text/csv",
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
)
_segment = st.one_of(
    st.sampled_from(["S1", "S2", "NOPE", "canonical", "shopify", "native", "x", "1", "-1"]),
    st.text(max_size=12).map(lambda s: quote(s, safe="") or "_"),
)
_query = st.one_of(
    st.just(""),
    st.builds(
        lambda k, v: f"?{k}={quote(v, safe='')}",
        st.sampled_from(["store", "date", "from", "to", "topic", "filename", "reason"]),
        st.one_of(st.text(max_size=20), st.sampled_from(["2026-11-20", "S1", "9999-99-99"])),
    ),
)


@st.composite
def _paths(draw: st.DrawFn) -> str:
    s = draw(_segment)
    template = draw(
        st.sampled_from(
            [
                "/v1/push/{a}/{b}",
                "/v1/push/canonical/{a}",
                "/v1/stores/{a}/customers/{b}",
                "/v1/stores/{a}/products/{b}",
                "/v1/stores/{a}/spool",
                "/v1/stores/{a}/sales",
                "/v1/stores/{a}/report",
                "/v1/stores/{a}/triggers",
                "/v1/admin/commit",
                "/v1/admin/stores/{a}/preview",
                "/v1/admin/stores/{a}/{b}",
                "/v1/admin/quarantine",
                "/v1/admin/quarantine/{a}/release",
                "/v1/admin/quarantine/{a}",
                "/v1/admin/audit",
                "/v1/{a}",
                "/v1/{a}/{b}",
            ]
        )
    )
    return template.format(a=s, b=draw(_segment)) + draw(_query)


# HEAD is left out: its answers carry no body to check.
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
_auth = st.sampled_from([ADMIN, S1_TOKEN, S2_TOKEN, "wrong", None])


# ----------------------------------------------------------------------------- known bugs

# ----------------------------------------------------------------------------- the oracle


async def _state(h: Harness) -> tuple[int, dict[str, int]]:
    return h.spool.total_pending(), await h.sink.counts()


async def _check(
    h: Harness, method: str, path: str, body: bytes, ctype: str | None, token: str | None
) -> int:
    before = await _state(h)
    hdrs = {}
    if ctype is not None:
        hdrs["Content-Type"] = ctype
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    resp = await asyncio.wait_for(h.client.request(method, path, data=body, headers=hdrs), 30)
    raw = await asyncio.wait_for(resp.read(), 30)
    assert resp.status < 500, (resp.status, raw[:500])
    if resp.status >= 400:
        got = orjson.loads(raw)
        assert isinstance(got, dict) and "error" in got and "field" in got, got
        assert resp.content_type == "application/json"
    if 400 <= resp.status < 500:
        assert await _state(h) == before, f"{resp.status} {path} wrote something"
    return resp.status


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_fuzz_push_bodies(app: _App, caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of bad body against the push endpoint, with valid store auth."""
    caplog.set_level(logging.ERROR, logger="possync")

    @given(
        body=_bodies,
        ctype=st.one_of(st.none(), _ctypes),
        store=st.sampled_from(["S1", "S2"]),
    )
    def case(body: bytes, ctype: str | None, store: str) -> None:
        token = S1_TOKEN if store == "S1" else S2_TOKEN
        app.run(_check(app.h, "POST", f"/v1/push/canonical/{store}", body, ctype, token))
        _no_errors(caplog)

    case()


def test_fuzz_routes(app: _App, caplog: pytest.LogCaptureFixture) -> None:
    """Random methods, paths, queries, content types, credentials and bodies under /v1/."""
    caplog.set_level(logging.ERROR, logger="possync")

    @given(
        method=_methods,
        path=_paths(),
        body=_bodies,
        ctype=st.one_of(st.none(), _ctypes),
        token=_auth,
    )
    def case(method: str, path: str, body: bytes, ctype: str | None, token: str | None) -> None:
        app.run(_check(app.h, method, path, body, ctype, token))
        _no_errors(caplog)

    case()


BUG_NESTED = "worker bug: msgspec raises RecursionError past ~1000 levels, answered as a 500"
BUG_UTF8 = "worker bug: invalid UTF-8 inside a JSON string raises UnicodeDecodeError, a 500"
BUG_VERSION = "worker bug: a version past int64 kills the spool writer (OverflowError)"


_ARRAYS = b"[" * 100_000 + b"]" * 100_000
_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
_UNTERMINATED = b"[" * 100_000


def _push_is_a_400(app: _App, caplog: pytest.LogCaptureFixture, body: bytes, ctype: str) -> None:
    """The push of `body` to S1 is a 400 (the oracle's checks included) and logs no error."""
    caplog.set_level(logging.ERROR, logger="possync")
    status = app.run(_check(app.h, "POST", "/v1/push/canonical/S1", body, ctype, S1_TOKEN))
    assert status == 400
    _no_errors(caplog)


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        pytest.param(_ARRAYS, "application/json", id="json-arrays"),
        pytest.param(_OBJECTS, "application/json", id="json-objects"),
        pytest.param(_UNTERMINATED, "application/json", id="json-open"),
        pytest.param(_OBJECTS, "application/x-ndjson", id="ndjson-objects"),
        pytest.param(_ARRAYS, "application/x-ndjson", id="ndjson-arrays"),
        pytest.param(_UNTERMINATED, "application/x-ndjson", id="ndjson-open"),
    ],
)
def test_deeply_nested_body_is_a_400(
    app: _App, caplog: pytest.LogCaptureFixture, body: bytes, ctype: str
) -> None:
    """100k nested arrays or objects: a 400 naming the body, not a RecursionError 500."""
    _push_is_a_400(app, caplog, body, ctype)


@pytest.mark.parametrize("version", [2**63, 2**70, -(2**63) - 1])
async def test_huge_version_is_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int
) -> None:
    """A sale whose version does not fit SQLite's INTEGER is a 400 on $.version; the spool
    writer lives on and the next push is accepted."""
    caplog.set_level(logging.ERROR, logger="possync")
    raw = orjson.dumps(sale_dict("V-1", at=NOW, version=7)).replace(
        b'"version":7', b'"version":' + str(version).encode()
    )
    hdrs = {"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/json"}
    async with running(make_config(tmp_path), NOW) as h:
        resp = await asyncio.wait_for(
            h.client.post("/v1/push/canonical/S1", data=raw, headers=hdrs), 5
        )
        body = await resp.json()
        assert resp.status == 400 and body["field"] == "$.version", body
        ok = orjson.dumps(sale_dict("V-2", at=NOW))
        resp = await asyncio.wait_for(
            h.client.post("/v1/push/canonical/S1", data=ok, headers=hdrs), 5
        )
        assert resp.status == 202
    _no_errors(caplog)


@pytest.mark.parametrize(
    "body", [b'{"type":"sale","id":"\xff"}', b'{"type":"customer","id":"\xed\xa0\x80"}']
)
@pytest.mark.parametrize("ctype", ["application/json", "application/x-ndjson"])
def test_invalid_utf8_in_a_string_is_a_400(
    app: _App, caplog: pytest.LogCaptureFixture, body: bytes, ctype: str
) -> None:
    """Invalid UTF-8 inside a JSON string: a 400 on the body, not a UnicodeDecodeError 500."""
    _push_is_a_400(app, caplog, body, ctype)


# ----------------------------------------------- raw header bytes through `possync serve`'s path


class _Served(PrivateLoop[Listening]):
    """The app behind `worker.app.listen` (cap, header timeout, JSON protocol errors)."""

    def __init__(self, tmp: Path) -> None:
        cfg = make_config(tmp)
        super().__init__(listen(build_app(cfg, clock=FakeClock(NOW)), cfg, sock=_loopback_socket()))
        self.port = self.entered.port


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@pytest.fixture
def served(tmp_path: Path) -> Iterator[_Served]:
    with contextlib.closing(_Served(tmp_path)) as s:
        yield s


# Header values as bytes: anything but CR and LF (which would end the header line).
_header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_encodings = st.one_of(
    st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"identity", b"gzip, deflate", b"x"]),
    _header_bytes,
)
_small_bodies = st.one_of(
    st.binary(max_size=200),
    st.just(orjson.dumps(sale_dict("RAW-1", at=NOW))),
    st.just(b"{}\n" * 50),
)
_raw_paths = st.sampled_from(
    [
        b"/v1/push/canonical/S1",
        b"/v1/push/shopify/S1",
        b"/v1/push/canonical/NOPE",
        b"/v1/files/canonical/S1?filename=a.ndjson",
        b"/v1/backfill/canonical/S1",
        b"/v1/admin/quarantine/99999999999999999999",
        b"/v1/admin/quarantine",
        b"/status",
        b"/healthz",
    ]
)
_raw_auth = st.one_of(
    st.sampled_from([ADMIN.encode(), S1_TOKEN.encode(), b"wrong"]),
    _header_bytes,
    _header_bytes.map(lambda b: S1_TOKEN.encode() + b),
)


def test_fuzz_raw_headers(served: _Served, caplog: pytest.LogCaptureFixture) -> None:
    """Header bytes aiohttp's client would refuse to send: never a 5xx, always JSON, no log
    line at ERROR, no traceback, and no Authorization value in the log."""
    caplog.set_level(logging.INFO)

    @given(
        method=st.sampled_from([b"GET", b"POST", b"DELETE"]),
        path=_raw_paths,
        auth=st.one_of(st.none(), _raw_auth),
        encoding=st.one_of(st.none(), _encodings),
        extra=st.one_of(st.none(), _header_bytes),
        body=st.one_of(_small_bodies, _small_bodies.map(gzip.compress)),
    )
    def case(
        method: bytes,
        path: bytes,
        auth: bytes | None,
        encoding: bytes | None,
        extra: bytes | None,
        body: bytes,
    ) -> None:
        caplog.clear()
        lines = [method + b" " + path + b" HTTP/1.1", b"Host: x", b"Connection: close"]
        if auth is not None:
            lines.append(b"Authorization: Bearer " + auth)
        if encoding is not None:
            lines.append(b"Content-Encoding: " + encoding)
        if extra is not None:
            lines.append(b"X-Shopify-Webhook-Id: " + extra)
        lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
        raw = served.run(exchange(served.port, b"\r\n".join(lines) + b"\r\n\r\n" + body, 30))
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status < 500, raw[:500]
        if status >= 400:
            got = orjson.loads(payload)
            assert isinstance(got, dict) and "error" in got and "field" in got, got
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "Traceback" not in caplog.text
        if auth is not None and len(auth) >= 8:
            assert auth.decode(errors="replace") not in caplog.text

    case()
