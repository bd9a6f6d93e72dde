"""Small durable state beside the SQLite spool: delivery dedup ids and per-store values.

* `deliveries(store, source, delivery_id, seen_at)`: transport ids already processed (a
  Shopify webhook's `X-Shopify-Webhook-Id`), kept a week, well past the sender's retries.
  Intake asks before parsing and remembers after the push was stored.
* `kv(store, key, value)`: the scheduler's state per store (last window, paused), JSON.
* `last_seq`: where the spool's seqs stand (AUTOINCREMENT: a seq is never given twice), so
  the committer can tell rows spooled before a mark from rows spooled after it.

Each write is one transaction on the spool file's writer thread (`SpoolFile.run`),
durable on return like an append; each read is one snapshot on its reader thread
(`SpoolFile.read`), which holds every write that returned before it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from worker.buffers.sqlite_file import SpoolFile
from worker.clock import Clock


class SqliteState:
    """`BufferState` on the spool's file."""

    def __init__(self, file: SpoolFile, clock: Clock) -> None:
        self._file = file
        self._clock = clock

    async def seen_delivery(self, store: str, source: str, delivery_id: str) -> bool:
        """Whether this transport delivery id was already processed."""
        return await self._file.read(
            lambda db: (
                db.execute(
                    "SELECT 1 FROM deliveries WHERE store=? AND source=? AND delivery_id=?",
                    (store, source, delivery_id),
                ).fetchone()
                is not None
            )
        )

    async def remember_delivery(
        self, store: str, source: str, delivery_id: str, keep_s: float = 7 * 86400
    ) -> None:
        """Record a processed delivery id (kept `keep_s`, well past Shopify's 4-hour retries)."""
        now = self._clock.now().timestamp()

        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO deliveries VALUES(?,?,?,?)",
                (store, source, delivery_id, now),
            )
            db.execute("DELETE FROM deliveries WHERE seen_at < ?", (now - keep_s,))

        await self._file.run(q)

    async def get(self, store: str) -> dict[str, Any]:
        """Per-store key/value state (JSON values)."""

        def q(db: sqlite3.Connection) -> dict[str, Any]:
            cur = db.execute("SELECT key, value FROM kv WHERE store=?", (store,))
            return {k: orjson.loads(v) for k, v in cur}

        return await self._file.read(q)

    async def put(self, store: str, values: dict[str, Any]) -> None:
        """Upsert per-store state."""
        rows = [(store, k, orjson.dumps(v).decode()) for k, v in values.items()]
        await self._file.run(
            lambda db: db.executemany(
                "INSERT INTO kv(store, key, value) VALUES(?,?,?) "
                "ON CONFLICT(store, key) DO UPDATE SET value=excluded.value",
                rows,
            )
        )

    async def last_seq(self) -> int:
        """The highest seq the spool has given a row (0: none); later rows get higher ones."""

        def q(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='spool'").fetchone()
            top = db.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()
            return max(int(row[0]) if row else 0, int(top[0]))

        return await self._file.read(q)
