"""The push baselines, each run as its own process on uvloop like `possync serve`.

    python -m bench.servers bare  --port N
    python -m bench.servers naive --port N --db PATH

* `bare`: an aiohttp handler that reads the body and answers 202. The ceiling: what
  aiohttp itself costs per request on this machine.
* `naive`: the obvious durable handler. It decodes the record with the same canonical
  decoder possync uses, then inserts it and commits, one transaction (one fsync) per
  request: sqlite3, WAL, `synchronous=FULL`. The write runs on one worker thread so the
  event loop stays free; requests queue for that thread, so commits are serialized.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from worker.records import RECORD_DECODER

_ACCEPTED = b'{"accepted":1,"duplicates":0,"rejected":[]}'


async def _bare(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_ACCEPTED, status=202, content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def bare_app() -> web.Application:
    """The do-nothing baseline."""
    app = web.Application()
    app.router.add_post("/v1/push/{source}/{store}", _bare)
    app.router.add_get("/healthz", _healthz)
    return app


def naive_app(db_path: str) -> web.Application:
    """The commit-per-request baseline."""
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS spool(seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "store TEXT NOT NULL, rid TEXT NOT NULL, received_at REAL NOT NULL, body BLOB, "
        "UNIQUE(store, rid))"
    )
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-sqlite")

    def write(store: str, rid: str, body: bytes) -> int:
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute(
            "INSERT OR IGNORE INTO spool(store, rid, received_at, body) VALUES(?,?,?,?)",
            (store, rid, time.time(), body),
        )
        db.execute("COMMIT")  # fsync: durable before the 202
        return cur.rowcount

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        record = RECORD_DECODER.decode(body)
        n = await asyncio.get_running_loop().run_in_executor(
            pool, write, request.match_info["store"], record.id, body
        )
        return web.Response(
            body=b'{"accepted":%d,"duplicates":%d,"rejected":[]}' % (n, 1 - n),
            status=202,
            content_type="application/json",
        )

    async def close(app: web.Application) -> None:
        pool.shutdown(wait=True)
        db.close()

    app = web.Application()
    app.router.add_post("/v1/push/{source}/{store}", handler)
    app.router.add_get("/healthz", _healthz)
    app.on_cleanup.append(close)
    return app


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    app = bare_app() if args.kind == "bare" else naive_app(args.db or "naive.db")
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
