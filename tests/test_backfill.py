"""Backfill: the streamed endpoint against the real app on an ephemeral port, and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiohttp import ClientSession
from rich.console import Console

from tests.appserver import ADMIN, S1_TOKEN, Harness, make_config
from tests.appserver import running as app_running
from tests.factories import sale_dict
from worker import keys
from worker.adapters.streaming import LineSplitter
from worker.backfill_cli import (
    Options,
    add_backfill_command,
    offset_path,
    run_backfill_command,
    send_file,
)
from worker.config import Config
from worker.records import RECORD_DECODER, SPOOLED_DECODER, Sale, business_date, type_of
from worker.sources.backfill import BACKFILLS, BATCH_RECORDS

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 in New York
URL = "/v1/backfill/canonical/S1"
NDJSON = {"Content-Type": "application/x-ndjson"}


def running(cfg: Config, now: datetime = NOW) -> AbstractAsyncContextManager[Harness]:
    """tests.appserver.running at this file's NOW (build_app registers the backfills)."""
    return app_running(cfg, now)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path)) as harness:
        yield harness


def sale_lines(n: int, prefix: str = "H", **extra: Any) -> list[bytes]:
    """n distinct canonical sales, one JSON line each."""
    return [orjson.dumps(sale_dict(f"{prefix}-{i:07d}", at=NOW, **extra)) for i in range(n)]


def ndjson(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


async def pieces(data: bytes, size: int = 7919) -> AsyncIterator[bytes]:
    """The body in odd-sized pieces, so lines are cut anywhere."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def post(
    h: Harness, body: Any, *, query: str = "", token: str = ADMIN, url: str = URL
) -> tuple[int, dict[str, Any]]:
    data = io.BytesIO(body) if isinstance(body, bytes) else body
    resp = await h.client.post(
        url + query, data=data, headers={"Authorization": f"Bearer {token}", **NDJSON}
    )
    return resp.status, await resp.json()


async def pending_entries(h: Harness, store: str = "S1") -> list[Any]:
    lease = await h.spool.lease(store, upto=h.clock.now(), after_seq=0, limit=1_000_000)
    await h.spool.release(lease.lease_id)
    return list(lease.entries)


# ---------------------------------------------------------------------- the endpoint


async def test_streamed_ndjson_is_spooled_with_origin_backfill(h: Harness) -> None:
    lines = sale_lines(20_000)
    # Live-looking and manual origins are overridden: all of it is history.
    lines[10] = orjson.dumps(sale_dict("H-pos", at=NOW, origin="pos"))
    lines[11] = orjson.dumps(sale_dict("H-manual", at=NOW, origin="manual"))
    customer = orjson.dumps({"type": "customer", "id": "C-1", "first_name": "Ada"})
    body = ndjson([customer, *lines])
    status, out = await post(h, pieces(body))
    assert status == 200, out
    assert out["records"] == 20_001
    assert (out["accepted"], out["duplicates"], out["rejected_count"]) == (20_001, 0, 0)
    assert (out["spooled"], out["realtime"]) == (20_000, 1)
    assert out["bytes"] == len(body) and out["last_offset"] == len(body)
    assert out["rejected"] == []
    entries = await pending_entries(h)
    assert len(entries) == 20_000
    assert {e.origin for e in entries} == {"backfill"}
    assert {"H-pos", "H-manual"} <= {e.rid for e in entries}
    resp = await h.client.get("/v1/stores/S1/customers/C-1", headers=h.admin())
    assert resp.status == 200
    # Finished runs are listed on /status.
    status_body = await (await h.client.get("/status", headers=h.admin())).json()
    recent = status_body["backfills"]["recent"]
    assert recent[0]["store"] == "S1" and recent[0]["records"] == 20_001
    assert status_body["backfills"]["running"] == []


async def test_bad_lines_are_rejected_by_index_and_the_rest_accepted(h: Harness) -> None:
    good = sale_lines(1_000)
    missing = b'{"type":"sale","id":"BAD-1","currency":"USD"}'
    broken = b"{not json"
    lines = [*good[:500], missing, b"", b"   ", broken, *good[500:]]
    body = ndjson(lines)
    status, out = await post(h, pieces(body, 4096), query="?offset=1000000")
    assert status == 200, out
    assert out["accepted"] == 1_000 and out["rejected_count"] == 2
    assert out["records"] == 1_002  # blank lines are not records
    first, second = out["rejected"]
    assert (first["index"], first["line"], first["field"]) == (500, 501, "$.occurred_at")
    assert first["offset"] == 1_000_000 + body.index(missing)
    assert (second["index"], second["line"], second["field"]) == (501, 504, "$")
    assert second["offset"] == 1_000_000 + body.index(broken)
    assert out["last_offset"] == 1_000_000 + len(body)
    assert len(await pending_entries(h)) == 1_000


async def test_rerunning_the_same_file_gives_all_duplicates(h: Harness) -> None:
    body = ndjson(sale_lines(3_000))
    assert (await post(h, body))[1]["accepted"] == 3_000
    status, out = await post(h, pieces(body))
    assert status == 200
    assert (out["accepted"], out["duplicates"]) == (0, 3_000)
    assert len(await pending_entries(h)) == 3_000


async def test_last_line_without_newline_and_overlong_line(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, http={"max_body_bytes": 4096})
    async with running(cfg) as h:
        long_line = b'{"type":"sale","id":"' + b"x" * 10_000 + b'"}'
        lines = sale_lines(3)
        body = b"\n".join([lines[0], long_line, lines[1], lines[2]])  # no final newline
        status, out = await post(h, pieces(body, 1000))
        assert status == 200, out
        assert out["accepted"] == 3 and out["rejected_count"] == 1
        assert out["rejected"][0]["index"] == 1 and out["rejected"][0]["line"] == 2
        assert "longer than 4096" in out["rejected"][0]["error"]


async def test_auth_unknown_store_and_bad_params(h: Harness) -> None:
    body = ndjson(sale_lines(2))
    resp = await h.client.post(URL, data=body, headers=NDJSON)
    assert resp.status == 401
    # A store token is not enough: backfill is an admin operation.
    status, out = await post(h, body, token=S1_TOKEN)
    assert status == 401 and out["field"] == "Authorization"
    status, out = await post(h, body, url="/v1/backfill/canonical/NOPE")
    assert status == 404 and out["field"] == "store"
    status, out = await post(h, body, url="/v1/backfill/teletype/S1")
    assert status == 404 and out["field"] == "source"
    for query, field in (("?offset=-1", "offset"), ("?commit=later", "commit")):
        status, out = await post(h, body, query=query)
        assert status == 400 and out["field"] == field
    status, out = await post(h, body, query="?commit_every_s=nan")
    assert status == 400 and out["field"] == "commit_every_s"
    assert await pending_entries(h) == []


async def test_over_max_backfill_bytes_is_413(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, http={"max_backfill_bytes": 64 * 1024})
    async with running(cfg) as h:
        body = ndjson(sale_lines(200))
        assert len(body) > 64 * 1024
        # Refused from Content-Length, before reading...
        status, out = await post(h, body)
        assert status == 413 and out["field"] == "body"
        # ... and while streaming when there is none.
        status, out = await post(h, pieces(body))
        assert status == 413 and out["field"] == "body"
        assert await pending_entries(h) == []
        recent = (await (await h.client.get("/status", headers=h.admin())).json())["backfills"]
        assert recent["recent"][0]["state"] == "failed"


async def test_backfill_sales_fire_no_triggers_at_the_window(h: Harness) -> None:
    # Every sale has a customer the sink holds, so only `origin` decides (sales without a
    # customer fire nothing either).
    customer = {"type": "customer", "id": "C-1", "first_name": "Ada"}
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=orjson.dumps(customer),
        headers={**h.store(), "Content-Type": "application/json"},
    )
    assert resp.status == 202
    status, out = await post(h, ndjson(sale_lines(50, customer_id="C-1")))
    assert status == 200 and out["accepted"] == 50
    # A live sale of the same day does fire: the config has triggers.
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=orjson.dumps(sale_dict("LIVE-1", at=NOW, customer_id="C-1")),
        headers={**h.store(), "Content-Type": "application/json"},
    )
    assert resp.status == 202
    resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    assert (await resp.json())["stores"]["S1"]["committed"] == 51
    events = (await (await h.client.get("/v1/stores/S1/triggers", headers=h.admin())).json())[
        "events"
    ]
    assert {e["sale_id"] for e in events} == {"LIVE-1"}


async def test_commit_now_commits_as_it_goes_rate_limited(h: Harness) -> None:
    n = 2 * BATCH_RECORDS + 1_000
    status, out = await post(h, ndjson(sale_lines(n)), query="?commit=now&final=1")
    assert status == 200, out
    # One commit after the first batch, then none until `commit_every_s` passed (the clock
    # does not move), then the final one at the end of the request.
    assert out["commits"] == 2 and out["committed"] == n and out["commit_error"] is None
    assert await pending_entries(h) == []
    report = await (
        await h.client.get("/v1/stores/S1/report?from=2026-11-20&to=2026-11-20", headers=h.admin())
    ).json()
    assert report["rows"][0]["count"] == n
    # The limit is per store, across requests: no commit until 5 s have passed ...
    status, out = await post(h, ndjson(sale_lines(10, prefix="B")), query="?commit=now")
    assert status == 200 and out["commits"] == 0 and len(await pending_entries(h)) == 10
    h.clock.advance(5)
    status, out = await post(h, ndjson(sale_lines(10, prefix="C")), query="?commit=now")
    assert status == 200 and out["commits"] == 1 and out["committed"] == 20
    assert await pending_entries(h) == []


async def test_status_shows_a_running_backfill(h: Harness) -> None:
    gate = asyncio.Event()
    lines = sale_lines(200)

    async def stalled() -> AsyncIterator[bytes]:
        yield ndjson(lines[:100])
        await gate.wait()
        yield ndjson(lines[100:])

    task = asyncio.ensure_future(post(h, stalled()))
    running_now: list[dict[str, Any]] = []
    # Each probe is a real round trip through the server (no timer): the backfill is seen
    # as soon as the server has parsed the first part.
    for _ in range(1_000):
        body = await (await h.client.get("/status", headers=h.admin())).json()
        running_now = body["backfills"]["running"]
        if running_now and running_now[0]["records"] == 100:
            break
    gate.set()
    status, out = await task
    assert status == 200 and out["accepted"] == 200
    assert len(running_now) == 1
    run = running_now[0]
    assert (run["store"], run["source"], run["records"]) == ("S1", "canonical", 100)
    assert run["bytes"] == len(ndjson(lines[:100])) and run["started"] == NOW.isoformat()
    assert {"id", "rate_records_s", "elapsed_s"} <= set(run)
    assert h.app[BACKFILLS].running == {}


# ---------------------------------------------------------------------- mapping CSV exports

CSV_HEADER = (
    "Transaction ID,Date,Customer ID,SKU,Description,Category,Qty,Price,Discount,Tax,"
    "Payment Type,Payment Amount,Status\n"
)


def csv_rows(n: int) -> list[str]:
    """Rain-style transaction rows: two lines per sale, a sale's rows adjacent."""
    rows = []
    for i in range(n):
        rows.append(
            f"T{i:06d},11/20/2026 10:15:00,,RING-{i % 97},Ring,rings,1,100.00,0,8.00,"
            f"Visa,162.00,Completed\n"
        )
        rows.append(
            f'T{i:06d},11/20/2026 10:15:00,,PEND-{i % 89},"Pendant, 18"" chain",pendants,'
            f"1,50.00,0,4.00,Visa,162.00,Completed\n"
        )
    return rows


def rain_config(tmp: Path) -> Config:
    cfg = make_config(tmp)
    raw = msgspec.to_builtins(cfg)
    raw["stores"].append({"id": "R1", "source": "rain", "timezone": "America/New_York"})
    return msgspec.convert(raw, Config)


async def test_mapping_csv_export_is_streamed_row_by_row(tmp_path: Path) -> None:
    from worker.adapters import get_adapter
    from worker.adapters.base import AdapterContext

    async with running(rain_config(tmp_path)) as h:
        body = (CSV_HEADER + "".join(csv_rows(3_000))).encode()
        url = "/v1/backfill/rain/R1?filename=transactions.csv"
        headers = {**h.admin(), "Content-Type": "text/csv"}
        # The same file read whole by the adapter: streaming must find exactly the same.
        store = h.app[keys.CONFIG].stores[-1]
        ctx = AdapterContext(
            store=store,
            zone=h.app[keys.CONFIG].store_zone(store),
            headers={},
            content_type="text/csv",
            received_at=NOW,
            filename="transactions.csv",
        )
        whole = get_adapter("rain").parse(body, ctx)  # type: ignore[union-attr]
        assert whole.rejected == [] and len(whole.records) == 3_000

        resp = await h.client.post(url, data=pieces(body, 5000), headers=headers)
        out = await resp.json()
        assert resp.status == 200, out
        assert (out["accepted"], out["rejected_count"], out["bytes"]) == (3_000, 0, len(body))
        entries = await pending_entries(h, "R1")
        assert len(entries) == 3_000 and {e.origin for e in entries} == {"backfill"}

        # A sale whose rows are not adjacent cannot be streamed: rejected by row, not merged.
        straggler = csv_rows(1)[0]
        resp = await h.client.post(url, data=body + straggler.encode(), headers=headers)
        out = await resp.json()
        assert resp.status == 200 and out["duplicates"] == 3_000
        assert out["rejected_count"] == 1 and out["rejected"][0]["index"] == 6_000

        resp = await h.client.post(
            url, data=body, headers={**h.admin(), "Content-Type": "application/json"}
        )
        assert resp.status == 415
        resp = await h.client.post(url, data=b"Nope,Columns\n1,2\n", headers=headers)
        assert resp.status == 400 and (await resp.json())["field"] == "Transaction ID"


# ---------------------------------------------------------------------- the CLI


def write_history(path: Path, n: int, bad_at: int | None = None) -> list[bytes]:
    lines = sale_lines(n)
    if bad_at is not None:
        lines[bad_at] = b'{"type":"sale","id":"BROKEN"}'
    path.write_bytes(ndjson(lines))
    return lines


def cli_args(h: Harness, file: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="possync")
    add_backfill_command(parser.add_subparsers(dest="command"))
    url = f"http://127.0.0.1:{h.client.port}"
    return parser.parse_args(
        ["backfill", str(file), "--source", "canonical", "--store", "S1", "--url", url, *extra]
    )


async def test_cli_resumes_from_its_offset_file(h: Harness, tmp_path: Path) -> None:
    file = tmp_path / "history.ndjson"
    write_history(file, 3_000, bad_at=2_500)
    out = io.StringIO()
    console = Console(file=out, width=120)
    args = cli_args(h, file, "--token", ADMIN, "--chunk-bytes", "200000", "--max-chunks", "3")
    # The CLI runs its own event loop (asyncio.run) in a thread, as from a shell.
    assert await asyncio.to_thread(run_backfill_command, args, console) == 0
    saved = json.loads(offset_path(file).read_bytes())
    assert 0 < saved["offset"] < file.stat().st_size
    assert saved["offset"] == len(b"".join(file.read_bytes().splitlines(True)[: saved["lines"]]))
    first = len(await pending_entries(h))
    assert first == saved["lines"]
    assert "run the same command again to resume" in out.getvalue()

    opts = Options(
        file=file, source="canonical", store="S1", url=args.url, token=ADMIN, chunk_bytes=200_000
    )
    summary = await send_file(opts, console=Console(file=io.StringIO()))
    assert summary.ok and summary.complete, summary.error
    assert summary.resumed_from == saved["offset"]
    assert (summary.accepted, summary.duplicates) == (3_000 - 1 - first, 0)
    assert summary.rejected == 1
    assert not offset_path(file).exists()
    rejects = [json.loads(x) for x in Path(summary.rejects_path or "").read_bytes().splitlines()]
    assert len(rejects) == 1
    assert rejects[0]["line"] == 2_501 and rejects[0]["field"] == "$.occurred_at"
    assert rejects[0]["offset"] == file.read_bytes().index(b'{"type":"sale","id":"BROKEN"}')
    assert len(await pending_entries(h)) == 2_999

    # A finished file re-sent from the start: all duplicates, nothing doubled.
    again = await send_file(opts, console=Console(file=io.StringIO()))
    assert again.ok and (again.accepted, again.duplicates, again.rejected) == (0, 2_999, 1)
    assert len(await pending_entries(h)) == 2_999


async def test_cli_retries_then_fails_and_keeps_the_offset(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, spool={"max_records_per_store": 150, "retry_after_s": 42})
    async with running(cfg) as h:
        file = tmp_path / "history.ndjson"
        write_history(file, 400)
        slept: list[float] = []

        async def fake_sleep(s: float) -> None:
            slept.append(s)

        opts = Options(
            file=file,
            source="canonical",
            store="S1",
            url=f"http://127.0.0.1:{h.client.port}",
            token=ADMIN,
            chunk_bytes=30_000,  # ~90 lines a chunk: the second one overflows the spool
            retries=3,
        )
        summary = await send_file(opts, console=Console(file=io.StringIO()), sleep=fake_sleep)
        assert not summary.ok and "spool for store 'S1' is full" in (summary.error or "")
        assert slept == [42.0, 42.0, 42.0]  # Retry-After honoured on every 503
        saved = json.loads(offset_path(file).read_bytes())
        assert saved["offset"] == summary.last_offset > 0
        assert summary.chunks == 1
        assert len(await pending_entries(h)) == saved["lines"] <= 150


async def test_cli_fails_at_once_when_nothing_listens(tmp_path: Path) -> None:
    # A wrong --url or a stopped server: one line naming the URL, no retries, no backoff.
    file = tmp_path / "history.ndjson"
    write_history(file, 10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    url = f"http://127.0.0.1:{port}"
    opts = Options(file=file, source="canonical", store="S1", url=url, token=ADMIN, retries=9)
    summary = await send_file(opts, console=Console(file=io.StringIO()), sleep=fake_sleep)
    assert not summary.ok
    assert summary.error == f"cannot reach {url}: connection refused"
    assert slept == []


async def test_cli_needs_a_token(
    h: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSSYNC_ADMIN_TOKEN", raising=False)
    file = tmp_path / "h.ndjson"
    write_history(file, 1)
    out = io.StringIO()
    assert run_backfill_command(cli_args(h, file), Console(file=out)) == 2
    assert "POSSYNC_ADMIN_TOKEN" in out.getvalue()
    monkeypatch.setenv("POSSYNC_ADMIN_TOKEN", "wrong")
    assert await asyncio.to_thread(run_backfill_command, cli_args(h, file), Console(file=out)) == 1
    assert "admin token required" in out.getvalue()


# ---------------------------------------------------------------------- bounded memory

_SERVER = """
import asyncio, json, signal, sys
from aiohttp import web
from worker.app import build_app
from worker.config import decode
from worker.sources.backfill import add_backfills

async def main():
    app = build_app(decode(json.loads(sys.argv[1])))
    add_backfills(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(runner.addresses[0][1], flush=True)
    await stop.wait()
    await runner.cleanup()

asyncio.run(main())
"""


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
async def test_50_mb_stream_in_bounded_memory(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, spool={"synchronous": "NORMAL"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        json.dumps(msgspec.to_builtins(cfg)),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        template = orjson.dumps(sale_dict("ID", at=NOW)).replace(b'"ID"', b'"%s"')
        total = 50 * 1024 * 1024

        def lines() -> Iterator[bytes]:
            sent = i = 0
            while sent < total:
                block = b"".join(template % f"M-{i + k:08d}".encode() + b"\n" for k in range(500))
                i += 500
                sent += len(block)
                yield block

        async def body() -> AsyncIterator[bytes]:
            for block in lines():
                yield block

        async with ClientSession() as session:
            headers = {"Authorization": f"Bearer {ADMIN}", **NDJSON}
            # Warm up (imports, first decode, first group) before the baseline.
            async with session.post(
                f"{base}{URL}", data=ndjson(sale_lines(100, prefix="W")), headers=headers
            ) as resp:
                assert resp.status == 200
            before = _peak_rss_kib(proc.pid)
            async with session.post(f"{base}{URL}", data=body(), headers=headers) as resp:
                out = await resp.json()
                assert resp.status == 200, out
            after = _peak_rss_kib(proc.pid)
        assert out["bytes"] >= total and out["accepted"] == out["records"] > 50_000
        assert after - before < 100 * 1024, f"peak RSS grew {(after - before) // 1024} MiB"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


# ---------------------------------------------------------------------- the splitter


def _split_all(body: bytes, cut: int, max_line: int = 64) -> list[tuple[int, int, bytes | None]]:
    s = LineSplitter(max_line)
    out = [*s.feed(body[:cut]), *s.feed(body[cut:])]
    return [*out, *s.finish()]


def test_line_splitter_is_independent_of_where_the_stream_is_cut() -> None:
    long = b"y" * 100
    body = b'{"a":1}\r\n\n  {"b":2}\n' + long + b"\n{c}\n{d}"
    expected = [
        (1, 0, b'{"a":1}'),
        (2, 9, b""),
        (3, 10, b'{"b":2}'),
        (4, 20, None),
        (5, 121, b"{c}"),
        (6, 125, b"{d}"),
    ]
    for cut in range(len(body) + 1):
        assert _split_all(body, cut) == expected, cut


# ---------------------------------------------------------------------- lean and full paths


async def test_lean_and_full_paths_spool_the_same_records(h: Harness) -> None:
    """Lines the lean decoder takes and lines only the full one takes (JSON-number money,
    leading zeros) end up as the records the full decoder makes; a bad amount is rejected
    with the full decoder's words."""
    lean = [orjson.dumps(sale_dict(f"L-{i}", at=NOW)) for i in range(30)]
    numbers = [orjson.dumps({**sale_dict(f"N-{i}", at=NOW), "tax": 1.5}) for i in range(5)]
    zeros = [orjson.dumps({**sale_dict(f"Z-{i}", at=NOW), "tip": "007.50"}) for i in range(5)]
    bad = orjson.dumps({**sale_dict("BAD-1", at=NOW), "total": "1e13"})
    void = orjson.dumps({"type": "void", "id": "L-0", "occurred_at": NOW.isoformat()})
    lines = [*lean, *numbers, bad, *zeros, void]
    status, out = await post(h, ndjson(lines))
    assert status == 200, out
    assert (out["accepted"], out["rejected_count"]) == (41, 1)
    (rej,) = out["rejected"]
    assert (rej["index"], rej["field"]) == (35, "$.total")
    assert rej["error"] == "`total` magnitude must be below 1e12"
    entries = await pending_entries(h)
    zone = h.app[keys.CONFIG].store_zone(h.app[keys.INTAKE].store("S1"))
    want: dict[tuple[str, str], Any] = {}
    for line in [*lean, *numbers, *zeros, void]:
        r = RECORD_DECODER.decode(line)
        if isinstance(r, Sale):
            r = msgspec.structs.replace(
                r, origin="backfill", business_date=business_date(r.occurred_at, zone)
            )
        want[(type_of(r), r.id)] = r
    got = {(e.kind, e.rid): SPOOLED_DECODER.decode(e.body) for e in entries}
    assert got == want
    assert {e.origin for e in entries if e.kind == "sale"} == {"backfill"}


async def test_a_full_spool_refuses_the_batch_before_its_customers_land(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, spool={"max_records_per_store": 5})
    async with running(cfg) as h:
        customer = orjson.dumps({"type": "customer", "id": "C-9", "first_name": "Ada"})
        status, out = await post(h, ndjson([customer, *sale_lines(10)]))
        assert status == 503, out
        assert out["field"] == "store"
        resp = await h.client.get("/v1/stores/S1/customers/C-9", headers=h.admin())
        assert resp.status == 404
        assert await pending_entries(h) == []
