"""The quarantine room of the SQLite spool: what windows quarantined, its admin moves, the audit.

Records arrive here from a window (`SqliteSpool.quarantine`, which moves leased rows in
with every reason). An operator lists them (`sqlite_lists`: paged, filtered, counted),
releases one back to the spool (possibly corrected; it is re-validated by the next window)
or discards it. Each release and discard is one transaction that also writes its audit
entry, so the audit log is exactly the list of admin moves that happened. A discard keeps
the record's body in its audit entry: nothing an operator removes is lost without trace.

Runs on the spool file's thread (`SpoolFile`): the spool's one writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from worker.buffers import sqlite_lists as lists
from worker.buffers.base import QuarantineFilter, QuarantineItem
from worker.buffers.sqlite_file import SPOOL_INSERT, SpoolFile
from worker.clock import Clock
from worker.records import Spooled, encode, type_of

# Called with (store, rows, bytes) the spool's pending counts grew by after a release.
Credit = Callable[[str, int, int], None]


class SqliteQuarantine:
    """`Quarantine` on the spool's file; `credit` keeps the spool's in-memory counts exact."""

    def __init__(self, file: SpoolFile, clock: Clock, credit: Credit) -> None:
        self._file = file
        self._clock = clock
        self._credit = credit

    async def latest(
        self, store: str | None, limit: int = 1000, *, before: int | None = None
    ) -> list[QuarantineItem]:
        """Quarantined records, newest first (qid < `before` when given)."""
        f = QuarantineFilter(store=store)
        return await self._file.read(lambda db: lists.quarantine_items(db, f, limit, before))

    async def page(
        self, f: QuarantineFilter, limit: int, before: int | None
    ) -> tuple[list[QuarantineItem], int]:
        """One page of the quarantine matching `f` (newest first) and the count of all."""
        return await self._file.read(
            lambda db: (lists.quarantine_items(db, f, limit, before), lists.quarantine_count(db, f))
        )

    async def rules(self, store: str) -> dict[str, int]:
        """Per rule id, how many of the store's quarantined records failed it."""
        return await self._file.read(lambda db: lists.quarantine_rules(db, store))

    async def by_rule(self, store: str, rule: str, limit: int = 100_000) -> list[QuarantineItem]:
        """A store's quarantined records that failed `rule` (among others), oldest first."""

        def q(db: sqlite3.Connection) -> list[QuarantineItem]:
            cur = db.execute(
                f"SELECT {lists.ITEM_COLS} FROM quarantine WHERE store=? AND EXISTS "
                "(SELECT 1 FROM json_each(reasons) WHERE json_extract(value, '$.rule')=?) "
                "ORDER BY qid LIMIT ?",
                (store, rule, limit),
            )
            return [lists.as_item(r) for r in cur]

        return await self._file.read(q)

    async def count(self, store: str) -> int:
        """Quarantine size of a store."""
        return await self._file.read(
            lambda db: lists.quarantine_count(db, QuarantineFilter(store=store))
        )

    async def counts(self) -> dict[str, int]:
        """Quarantine size of every store that has any, in one query."""
        return await self._file.read(
            lambda db: {
                str(store): int(n)
                for store, n in db.execute(
                    "SELECT store, count(*) FROM quarantine GROUP BY store"
                ).fetchall()
            }
        )

    async def get(self, qid: int) -> QuarantineItem | None:
        """One quarantined record."""

        def q(db: sqlite3.Connection) -> QuarantineItem | None:
            r = db.execute(
                f"SELECT {lists.ITEM_COLS} FROM quarantine WHERE qid=?", (qid,)
            ).fetchone()
            return None if r is None else lists.as_item(r)

        return await self._file.read(q)

    async def release(self, qid: int, record: Spooled, actor: str) -> bool:
        """Move a quarantined record (possibly corrected) back to the spool, with an audit entry."""
        body = encode(record)
        now = self._clock.now().timestamp()
        kind = type_of(record)

        def q(db: sqlite3.Connection) -> tuple[str, int, int] | None:
            r = db.execute("SELECT store FROM quarantine WHERE qid=?", (qid,)).fetchone()
            if r is None:
                return None
            store = str(r[0])
            db.execute("DELETE FROM quarantine WHERE qid=?", (qid,))
            old = db.execute(
                "SELECT seq, state, size FROM spool WHERE store=? AND kind=? AND rid=?",
                (store, kind, record.id),
            ).fetchone()
            drows, dbytes = 1, len(body)
            if old is not None:
                if old[1] == 0:
                    drows, dbytes = 0, len(body) - int(old[2])
                db.execute("DELETE FROM spool WHERE seq=?", (old[0],))
            origin = getattr(record, "origin", "pos")
            db.execute(
                SPOOL_INSERT,
                (store, kind, record.id, record.effective_version, origin, now, len(body), body),
            )
            audit(db, now, "quarantine.release", store, str(qid), actor)
            return store, drows, dbytes

        got = await self._file.run(q)
        if got is None:
            return False
        self._credit(*got)
        return True

    async def discard(self, qid: int, actor: str, reason: str) -> bool:
        """Delete a quarantined record, keeping an audit entry with its body."""
        now = self._clock.now().timestamp()

        def q(db: sqlite3.Connection) -> bool:
            r = db.execute("SELECT store, rid, body FROM quarantine WHERE qid=?", (qid,)).fetchone()
            if r is None:
                return False
            db.execute("DELETE FROM quarantine WHERE qid=?", (qid,))
            detail = orjson.dumps(
                {"by": actor, "reason": reason, "rid": r[1], "body": bytes(r[2]).decode()}
            ).decode()
            audit(db, now, "quarantine.discard", r[0], str(qid), detail)
            return True

        return await self._file.run(q)

    async def audit_log(
        self, limit: int = 100, *, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries newest first (id < `before` when given); `at` ISO-8601 UTC."""
        return await self._file.read(lambda db: lists.audit_entries(db, limit, before))


def audit(
    db: sqlite3.Connection, now: float, action: str, store: str, ref: str, detail: str
) -> None:
    """One audit entry, written inside the caller's transaction."""
    db.execute(
        "INSERT INTO audit(at, action, store, ref, detail) VALUES(?,?,?,?,?)",
        (now, action, store, ref, detail),
    )
