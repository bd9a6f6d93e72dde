"""The HTTP output through the durable outbox vs the same POSTs sent directly, same run.

    python -m bench.outputs [--events 20000] [--page-size 500] [--concurrency 4] [--stores 8]

A local aiohttp receiver (in this process, on an ephemeral port; it parses each page and
answers 200) takes both runs:

* direct (baseline): the events, already in memory, POSTed in pages of `--page-size` with
  at most `--concurrency` in flight, through one aiohttp ClientSession: the HTTP work alone.
* outbox: the same events appended in batches of 1,000 (a window's page: one transaction,
  fsync), then delivered by the outbox's lanes through the real HTTP output, timed from the
  first append until the receiver holds every event.

Also printed: the append rate while delivering and alone (events/s durably in `outbox.db`),
beside its baseline: the same rows, schema and statement through plain sqlite3, one
transaction per 1,000. The receiver and the
sender share one process and the machine may be shared: read the ratio, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from worker.clock import SystemClock
from worker.config import Config, decode
from worker.health import Health
from worker.metrics import Metrics
from worker.sinks.http import idempotency_key
from worker.sinks.outbox import Staged, delivering, open_outbox
from worker.sinks.outputs import OutEvent, open_output

_BODY = {"type": "sale", "id": "", "total": "404.95", "currency": "USD", "lines": [{"sku": "R"}]}


class Receiver:
    """Counts the events it received."""

    def __init__(self) -> None:
        self.events = 0
        self.done = asyncio.Event()
        self.want = 0

    async def handle(self, request: web.Request) -> web.Response:
        """POST /events."""
        body = await request.json()
        self.events += len(body["events"])
        if self.events >= self.want:
            self.done.set()
        return web.json_response({"ok": True})


def make_events(n: int, stores: int) -> list[OutEvent]:
    """`n` sale events over `stores` stores."""
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    out = []
    for i in range(n):
        store = f"S{i % stores}"
        body = msgspec.json.encode({**_BODY, "id": str(i)})
        out.append(
            OutEvent(
                event_id=f"sale:{store}:{i}:1",
                kind="sale",
                store=store,
                at=at,
                body=msgspec.Raw(body),
            )
        )
    return out


async def direct(url: str, events: list[OutEvent], page: int, conc: int) -> float:
    """Seconds to POST every page directly."""
    enc = msgspec.json.Encoder()
    pages = [events[i : i + page] for i in range(0, len(events), page)]
    sem = asyncio.Semaphore(conc)
    async with ClientSession() as session:

        async def post(p: list[OutEvent]) -> None:
            async with sem:
                headers = {
                    "Content-Type": "application/json",
                    "Idempotency-Key": idempotency_key(p),
                }
                async with session.post(url, data=enc.encode({"events": p}), headers=headers) as r:
                    await r.read()
                    assert r.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(post(p) for p in pages))
        return time.perf_counter() - t0


def config(data: Path, url: str, page: int, conc: int) -> Config:
    """One HTTP output taking sales."""
    return decode(
        {
            "data_dir": str(data),
            "outputs": [
                {
                    "kind": "http",
                    "name": "bench",
                    "records": ["sale"],
                    "url": url,
                    "page_size": page,
                    "concurrency": conc,
                }
            ],
        }
    )


async def through_outbox(
    cfg: Config, events: list[OutEvent], receiver: Receiver
) -> tuple[float, float]:
    """(seconds from the first append until all received, seconds of the appends alone)."""
    staged = [Staged(event=e) for e in events]
    async with (
        open_outbox(cfg, SystemClock(), Metrics()) as outbox,
        open_output(cfg, cfg.outputs[0]) as output,
        delivering(outbox, {"bench": output}, Health()),
    ):
        t0 = time.perf_counter()
        for i in range(0, len(staged), 1000):
            await outbox.append(staged[i : i + 1000])
        appended = time.perf_counter() - t0
        await asyncio.wait_for(receiver.done.wait(), 600)
        return time.perf_counter() - t0, appended


async def appends_alone(cfg: Config, events: list[OutEvent]) -> float:
    """Seconds to append every event in batches of 1,000, nothing delivering."""
    staged = [Staged(event=e) for e in events]
    async with open_outbox(cfg, SystemClock(), Metrics()) as outbox:
        t0 = time.perf_counter()
        for i in range(0, len(staged), 1000):
            await outbox.append(staged[i : i + 1000])
        return time.perf_counter() - t0


def raw_inserts(path: Path, events: list[OutEvent]) -> float:
    """Baseline of the append: the same rows, same schema and statement, plain sqlite3 on
    this thread, one transaction (fsync) per 1,000."""
    import sqlite3

    from worker.sinks.outbox import _INSERT, SCHEMA

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    rows = [
        (
            "bench",
            e.event_id,
            e.kind,
            e.store,
            None,
            0,
            e.at.isoformat(),
            None,
            0,
            bytes(e.body),
            None,
        )
        for e in events
    ]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 1000):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows[i : i + 1000])
        db.execute("COMMIT")
    took = time.perf_counter() - t0
    db.close()
    return took


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Both runs; the figures and their ratio."""
    receiver = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/events", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/events"))
    try:
        events = make_events(args.events, args.stores)
        receiver.want = len(events)
        base = await direct(url, events, args.page_size, args.concurrency)
        receiver.events = 0
        receiver.done.clear()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config(Path(tmp), url, args.page_size, args.concurrency)
            total, appended = await through_outbox(cfg, events, receiver)
        with tempfile.TemporaryDirectory() as tmp:
            alone = await appends_alone(config(Path(tmp), url, args.page_size, 1), events)
        with tempfile.TemporaryDirectory() as tmp:
            raw = raw_inserts(Path(tmp) / "raw.db", events)
    finally:
        await server.close()
    n = len(events)
    return {
        "events": n,
        "direct_events_per_s": round(n / base),
        "outbox_events_per_s": round(n / total),
        "ratio_outbox_vs_direct": round(base / total, 2),
        "append_while_delivering_events_per_s": round(n / appended),
        "append_alone_events_per_s": round(n / alone),
        "raw_sqlite_inserts_events_per_s": round(n / raw),
        "ratio_append_vs_raw": round(raw / alone, 2),
    }


def run() -> None:
    """CLI entry."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--stores", type=int, default=8)
    out = asyncio.run(main(p.parse_args()))
    for key, value in out.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    run()
