"""P9: window commits into PostgreSQL, by one committer and by two, beside raw COPY.

    python -m bench --only postgres [--quick]

A throw-away PostgreSQL is started the way the tests start theirs
(`tests.plugins.postgres.PostgresServer`: initdb + pg_ctl on a free port in a temp dir,
fsync off, stopped by its pid at the end). Every phase runs in worker processes
(`python -m bench.postgres worker ...`) which first build their pages (untimed), then wait
for the parent's "go" on stdin, so two of them start together:

    sink   each page is one `PostgresSink.commit_sales` (the sink the server runs: claim
           the batch row, stored versions, COPY into staging, guarded upsert, lines,
           tenders, outbox, manifest), `[windows] batch_size` sales per page
    raw    the same rows COPYed straight into the same tables (sales, sale_lines, tenders,
           trigger_outbox), one transaction per page of the same size: the baseline

Each phase gets its own schema in one database; one process commits every store, or two
processes commit disjoint halves of them. The rate is sales over the wall time from the
first worker's start to the last one's end. Ratios are sink / raw within the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from bench.data import SaleStream
from bench.report import Row, fmt_rate
from worker.batch import CommitBatch, SaleRow, TriggerEvent
from worker.config import decode
from worker.records import Sale, localize
from worker.sinks import open_sink
from worker.sinks.postgres_sql import LINE, SALE, TENDER, TRIGGER, Sql, sale_row
from worker.sinks.sql_rows import line_values, tender_values, trigger_values

COMMIT_RATIO = 0.8  # the window commit's own goal (issue 11), applied to PostgreSQL too
_ZONE = ZoneInfo("UTC")
_WINDOW = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
_DECODER = msgspec.json.Decoder(Sale)


@dataclass(frozen=True)
class PostgresSettings:
    """Sizes: `stores` stores of `per_store` sales, `page` sales per transaction."""

    per_store: int
    stores: int = 2
    page: int = 1000


def _log(msg: str) -> None:
    print(f"  [P9] {msg}", flush=True)


# ---------------------------------------------------------------------------- worker side


def _pages(store: str, n: int, page: int) -> list[CommitBatch]:
    """The store's sales as committer pages, each sale with one trigger event."""
    sales = [localize(_DECODER.decode(b), _ZONE) for b in SaleStream(f"{store}-", n)]
    out = []
    for k in range(0, len(sales), page):
        rows = [SaleRow(sale=s, version=s.effective_version) for s in sales[k : k + page]]
        triggers = [_trigger(store, r.sale) for r in rows]
        out.append(CommitBatch.build(f"{store}:{k // page}", store, _WINDOW, rows, (), triggers))
    return out


def _trigger(store: str, s: Sale) -> TriggerEvent:
    day = s.business_date or _WINDOW.date()
    return TriggerEvent(
        event_id=f"{store}:{s.id}:thank-you",
        store=store,
        sale_id=s.id,
        trigger="thank-you",
        action="message",
        customer_id=s.customer_id,
        total=s.total,
        business_date=day,
        due_date=day,
        due_at=datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1),
        created_at=_WINDOW,
    )


async def _sink_run(dsn: str, schema: str, pages: list[CommitBatch]) -> int:
    cfg = decode({"sink": {"kind": "postgres", "dsn": dsn, "schema": schema}})
    async with open_sink(cfg) as sink:
        _wait_go()
        n = 0
        for batch in pages:
            out = await sink.commit_sales(batch)
            n += out.inserted + out.updated
        return n


_SALE_COLS = (
    "store",
    *(n for n, _ in SALE),
    "committed_at",
    "batch_id",
)


def _raw_rows(
    batch: CommitBatch,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[Any]]:
    """The rows the sink writes for a page, built before the clock starts."""
    st = batch.store
    sales = [(st, *sale_row(r), _WINDOW, batch.batch_id) for r in batch.sales]
    lines = [(st, *v) for v in line_values(batch.sales)]
    tenders = [(st, *v) for v in tender_values(batch.sales)]
    outbox = [(*trigger_values(t), batch.batch_id) for t in batch.triggers]
    return sales, lines, tenders, outbox


async def _raw_run(dsn: str, schema: str, pages: list[CommitBatch]) -> int:
    built = [_raw_rows(b) for b in pages]
    conn = await asyncpg.connect(dsn)
    try:
        _wait_go()
        n = 0
        for sales, lines, tenders, outbox in built:
            async with conn.transaction():
                for table, rows, cols in (
                    ("sales", sales, _SALE_COLS),
                    ("sale_lines", lines, ("store", *(c for c, _ in LINE))),
                    ("tenders", tenders, ("store", *(c for c, _ in TENDER))),
                    ("trigger_outbox", outbox, (*(c for c, _ in TRIGGER), "batch_id")),
                ):
                    await conn.copy_records_to_table(
                        table, records=rows, columns=cols, schema_name=schema
                    )
            n += len(sales)
        return n
    finally:
        await conn.close()


def _wait_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("bench.postgres worker: no go")


def _worker(args: argparse.Namespace) -> None:
    pages = [p for store in args.stores.split(",") for p in _pages(store, args.n, args.page)]
    run = _sink_run if args.mode == "sink" else _raw_run
    n = asyncio.run(run(args.dsn, args.schema, pages))
    # The parent starts the clock when it says "go"; the worker reports when it ended.
    print(json.dumps({"sales": n, "end": time.time()}), flush=True)


# ---------------------------------------------------------------------------- parent side


async def _phase(
    dsn: str, schema: str, mode: str, groups: list[list[str]], s: PostgresSettings
) -> tuple[int, float]:
    """Run one worker per store group; sales committed and the wall time."""
    procs = []
    for stores in groups:
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.postgres",
            "worker",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--mode",
            mode,
            "--stores",
            ",".join(stores),
            "--n",
            str(s.per_store),
            "--page",
            str(s.page),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(p)
    try:
        for p in procs:
            assert p.stdout is not None
            line = await p.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"bench.postgres worker did not start: {line!r}")
        t0 = time.time()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        results = []
        for p in procs:
            out, _ = await p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"bench.postgres worker failed ({p.returncode})")
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        t1 = max(r["end"] for r in results)
        return sum(int(r["sales"]) for r in results), t1 - t0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def _count(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(f'SELECT count(*) FROM "{schema}".sales')
        return n
    finally:
        await conn.close()


async def _create_raw_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(Sql(schema).ddl)
    finally:
        await conn.close()


async def run(workdir: Path, s: PostgresSettings) -> list[Row]:
    """P9 rows: one committer and two, each against raw COPY of the same rows, same run."""
    from tests.plugins.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        _log("PostgreSQL binaries not found (make services): P9 not measured")
        return []
    stores = [f"PG{i}" for i in range(s.stores)]
    half = (len(stores) + 1) // 2
    rows: list[Row] = []
    with PostgresServer(bindir) as server:
        dsn = server.create_database("bench")
        _log(f"PostgreSQL on port {server.port} (fsync off, as the tests run it), pid {server.pid}")
        for label, groups in (
            ("one committer", [stores]),
            ("two committers (processes), disjoint stores", [stores[:half], stores[half:]]),
        ):
            tag = "1" if len(groups) == 1 else "2"
            await _create_raw_schema(dsn, f"raw{tag}")
            raw_n, raw_s = await _phase(dsn, f"raw{tag}", "raw", groups, s)
            sink_n, sink_s = await _phase(dsn, f"sink{tag}", "sink", groups, s)
            for schema, expect in ((f"raw{tag}", raw_n), (f"sink{tag}", sink_n)):
                stored = await _count(dsn, schema)
                if stored != expect or expect != s.per_store * s.stores:
                    raise RuntimeError(f"P9 {schema}: {stored} rows stored, {expect} reported")
            rate, raw_rate = sink_n / sink_s, raw_n / raw_s
            _log(
                f"{label}: sink {sink_n:,} sales in {sink_s:.1f} s = {rate:,.0f}/s; "
                f"raw COPY {raw_n:,} in {raw_s:.1f} s = {raw_rate:,.0f}/s; {rate / raw_rate:.2f}x"
            )
            rows.append(
                Row(
                    "postgres",
                    f"P9 window commit into PostgreSQL, {label}, {sink_n:,} sales",
                    rate,
                    fmt_rate(rate, "sales/s"),
                    raw_rate,
                    fmt_rate(raw_rate, "sales/s") + f" raw COPY, {s.page:,}/transaction",
                    rate / raw_rate,
                    f">= {COMMIT_RATIO}x",
                    rate / raw_rate >= COMMIT_RATIO,
                    {
                        "seconds": sink_s,
                        "raw_seconds": raw_s,
                        "processes": len(groups),
                        "page": s.page,
                        "fsync": "off",
                    },
                )
            )
    return rows


def main() -> None:
    """`python -m bench.postgres worker ...` (started by `run`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.postgres")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--dsn", required=True)
    w.add_argument("--schema", required=True)
    w.add_argument("--mode", choices=("sink", "raw"), required=True)
    w.add_argument("--stores", required=True)
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--page", type=int, required=True)
    _worker(parser.parse_args())


if __name__ == "__main__":
    main()
