"""Backfill parse workers: the slice cutter against LineSplitter, thread and process modes
giving the same answer, a worker's death (503, /readyz, recovery) and no process left behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.appserver import make_config
from tests.test_backfill import ndjson, pending_entries, pieces, post, running, sale_lines
from worker.adapters.streaming import LineSplitter
from worker.app import YOUNG_GC_THRESHOLD
from worker.errors import Unavailable
from worker.sources.backfill_proc import PARSE_POOL, ParsePool, SliceCutter
from worker.sources.backfill_worker import WORKER_GC_THRESHOLD, blob_data, iter_lines

ZONE = ZoneInfo("America/New_York")


# ---------------------------------------------------------------------- the cutter


def _cut(feeds: list[list[bytes]], max_line: int) -> list[tuple[int, int, bytes | None]]:
    """What the handler sees: each slice's blob lines, then its over-long partial line,
    numbered by counting the lines before (as the taker does)."""
    cutter = SliceCutter(max_line)
    out: list[tuple[int, int, bytes | None]] = []
    lines = 0

    def take(blob: tuple[int, list[bytes], int]) -> None:
        nonlocal lines
        data = blob_data(blob)
        got = list(iter_lines(data, blob[0], max_line))
        assert len(got) == data.count(b"\n") + 1  # what parse_blob reports
        out.extend((lines + n, pos, line) for n, pos, line in got)
        lines += len(got)

    for parts in feeds:
        blob, long = cutter.feed(parts)
        if blob is not None:
            take(blob)
        if long is not None:
            lines += 1
            out.append((lines, long, None))
    last = cutter.finish()
    if last is not None:
        take(last)
    return out


def _split(feeds: list[list[bytes]], max_line: int) -> list[tuple[int, int, bytes | None]]:
    splitter = LineSplitter(max_line)
    out: list[tuple[int, int, bytes | None]] = []
    for parts in feeds:
        out.extend(splitter.feed(b"".join(parts)))
    out.extend(splitter.finish())
    return out


@settings(max_examples=500, deadline=None)
@given(
    body=st.lists(st.sampled_from([b"a", b"bc", b" ", b"\n", b"\r\n", b"xyz\n"]), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=16),
    slice_of=st.integers(min_value=1, max_value=4),
    max_line=st.integers(min_value=1, max_value=12),
)
def test_cutter_yields_what_the_line_splitter_yields(
    body: list[bytes], cuts: list[int], slice_of: int, max_line: int
) -> None:
    """Any body, cut into reads anywhere, the reads grouped into slices of 1-4 reads."""
    data = b"".join(body)
    points = sorted({min(c, len(data)) for c in cuts})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    feeds = [reads[i : i + slice_of] for i in range(0, len(reads), slice_of)]
    assert _cut(feeds, max_line) == _split(feeds, max_line)


def test_cutter_skips_a_long_line_over_many_slices() -> None:
    feeds = [[b"ok\n", b"x" * 10], [b"x" * 10], [b"x" * 5, b"x" * 5], [b"\nla", b"st"]]
    got = _cut(feeds, 8)
    assert got == [(1, 0, b"ok"), (2, 3, None), (3, 34, b"last")]
    assert got == _split(feeds, 8)


def test_the_worker_collects_as_rarely_as_the_server() -> None:
    assert WORKER_GC_THRESHOLD == YOUNG_GC_THRESHOLD


# ---------------------------------------------------------------------- thread and process


def _mixed_body() -> bytes:
    lines = sale_lines(12_000)
    lines[5] = b'{"type":"sale","id":"BAD-1","currency":"USD"}'
    lines[7_000] = b"not json"
    lines[9_000] = b""  # blank: not a record
    lines[9_001] = orjson.dumps({"type": "customer", "id": "C-1", "first_name": "Ada"})
    lines[9_002] = b'{"type":"void","id":"V-1","occurred_at":"2026-11-20T10:00:00Z"}'
    lines[10_000] = b'{"type":"sale","id":"' + b"L" * 3_000 + b'"}'  # over max_body_bytes
    return ndjson(lines)


_VOLATILE = ("id", "elapsed_s", "rate_records_s")


async def _run_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, body: bytes
) -> tuple[dict[str, Any], list[tuple[str, str, int, str]]]:
    monkeypatch.setenv("POSSYNC_BACKFILL_PARSE", mode)
    cfg = make_config(tmp_path / mode, http={"max_body_bytes": 2_048})
    async with running(cfg) as h:
        assert h.app[PARSE_POOL].mode == mode
        status, out = await post(h, pieces(body), query="?offset=100")
        assert status == 200, out
        entries = await pending_entries(h)
    rows = sorted((e.kind, e.rid, e.version, e.origin) for e in entries)
    return {k: v for k, v in out.items() if k not in _VOLATILE}, rows


async def test_process_and_thread_modes_answer_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _mixed_body()
    by_process = await _run_mode(tmp_path, monkeypatch, "process", body)
    by_thread = await _run_mode(tmp_path, monkeypatch, "thread", body)
    assert by_process == by_thread
    out, rows = by_process
    assert (out["records"], out["rejected_count"], out["realtime"]) == (11_999, 3, 1)
    assert [(r["index"], r["line"]) for r in out["rejected"]] == [
        (5, 6),
        (7_000, 7_001),
        (9_999, 10_001),
    ]
    assert out["rejected"][2]["error"] == "line longer than 2048 bytes"
    assert out["rejected"][0]["offset"] == 100 + body.index(b'{"type":"sale","id":"BAD-1"')
    assert len(rows) == 11_995  # 11,994 sales and the void; the customer went to the sink
    assert {o for kind, _, _, o in rows if kind == "sale"} == {"backfill"}


# ---------------------------------------------------------------------- a worker's death


def _workers() -> set[int]:
    """This process's parse workers (children spawned by multiprocessing)."""
    kids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            kids.update(int(p) for p in f.read().split())
    out = set()
    for pid in kids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.add(pid)
        except FileNotFoundError:
            continue
    return out


def _big_blob(records: int) -> tuple[int, list[bytes], int]:
    return (0, [b"\n".join(sale_lines(records))], 0)


async def test_a_dead_worker_fails_its_parse_turns_readyz_red_and_is_replaced(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path)) as h:
        pool = h.app[PARSE_POOL]
        before = _workers()
        warm, lines = await pool.result(pool.submit((0, sale_lines(1), 0), ZONE, 1 << 20))
        assert (warm.records, lines) == (1, 1)
        (worker,) = _workers() - before
        # Far more than the worker can even receive before the signal lands.
        doomed = pool.submit(_big_blob(60_000), ZONE, 1 << 20)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(Unavailable, match="parse worker died"):
            await pool.result(doomed)
        resp = await h.client.get("/readyz", headers=h.admin())
        assert resp.status == 503
        assert "backfill_parse" in await resp.text()
        # The next backfill starts a fresh worker; once it parsed, /readyz is green again.
        status, out = await post(h, ndjson(sale_lines(50)))
        assert status == 200 and out["accepted"] == 50
        assert (await h.client.get("/readyz", headers=h.admin())).status == 200
        assert worker not in _workers()


async def test_shutdown_joins_the_workers(tmp_path: Path) -> None:
    before = _workers()
    async with running(make_config(tmp_path)) as h:
        status, out = await post(h, ndjson(sale_lines(100)))
        assert status == 200 and out["accepted"] == 100
        mine = _workers() - before
        assert len(mine) == 1
    for pid in mine:  # joined: not even a zombie is left (kill(pid, 0) works on zombies)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_closed_pool_refuses_work() -> None:
    pool = ParsePool("process")
    await pool.close()
    with pytest.raises(Unavailable, match="shutting down"):
        pool.submit((0, [b"{}"], 0), ZONE, 100)


_ORPHAN = """
import asyncio, os, sys
from zoneinfo import ZoneInfo
from worker.sources.backfill_proc import ParsePool

async def main():
    pool = ParsePool("process")
    await pool.result(pool.submit((0, [b"{}"], 0), ZoneInfo("UTC"), 100))
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        print(f.read(), flush=True)
    os._exit(0)  # as a SIGKILL would: the pool is never stopped

asyncio.run(main())
"""


def _exited(pid: int, timeout_s: float) -> bool:
    """Wait on the process itself (a pidfd is readable once it ended), bounded."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def test_a_worker_ends_with_a_server_that_died(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN],
        capture_output=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert pids  # the worker (and multiprocessing's resource tracker)
    assert all(_exited(pid, 20.0) for pid in pids)
