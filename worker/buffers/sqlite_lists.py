"""The spool's paged admin lists: the quarantine (with its filters and count) and the audit.

Run on the spool file's thread (`SpoolFile.read`): one call is one consistent view, so a
quarantine page and its count agree. Both lists are newest first, a keyset
walk on their integer ids (`worker.api.pages`): quarantine by qid descending, audit by id
descending; a row added while a client pages has a higher id, so it lands before the
cursor and is never read twice.

The quarantine's rule filter looks inside the stored reasons with JSON1 (`json_each`);
`since`/`until` bound `quarantined_at` (unix seconds) as [since, until).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.buffers.base import QuarantineFilter, QuarantineItem

ITEM_COLS = "qid, store, kind, rid, version, received_at, quarantined_at, reasons, body"
_HAS_RULE = (
    "EXISTS (SELECT 1 FROM json_each(quarantine.reasons) WHERE json_extract(value, '$.rule') = ?)"
)


def as_item(r: Any) -> QuarantineItem:
    """A quarantine row (`ITEM_COLS` in order) as the item the admin API shows."""
    return QuarantineItem(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7]), r[8])


def _where(f: QuarantineFilter) -> tuple[str, list[Any]]:
    parts: list[str] = []
    args: list[Any] = []
    if f.store is not None:
        parts.append("store = ?")
        args.append(f.store)
    if f.rule is not None:
        parts.append(_HAS_RULE)
        args.append(f.rule)
    if f.since is not None:
        parts.append("quarantined_at >= ?")
        args.append(f.since)
    if f.until is not None:
        parts.append("quarantined_at < ?")
        args.append(f.until)
    return " AND ".join(parts) or "1", args


def quarantine_items(
    db: sqlite3.Connection, f: QuarantineFilter, limit: int, before: int | None
) -> list[QuarantineItem]:
    """Up to `limit` quarantined records matching `f` with qid < `before`, newest first."""
    where, args = _where(f)
    if before is not None:
        where += " AND qid < ?"
        args.append(before)
    cur = db.execute(
        f"SELECT {ITEM_COLS} FROM quarantine WHERE {where} ORDER BY qid DESC LIMIT ?",
        (*args, limit),
    )
    return [as_item(r) for r in cur]


def quarantine_count(db: sqlite3.Connection, f: QuarantineFilter) -> int:
    """How many quarantined records match `f`."""
    where, args = _where(f)
    return int(db.execute(f"SELECT count(*) FROM quarantine WHERE {where}", args).fetchone()[0])


def quarantine_rules(db: sqlite3.Connection, store: str) -> dict[str, int]:
    """Per rule id: how many of the store's quarantined records failed it (each once)."""
    cur = db.execute(
        "SELECT rule, count(*) FROM (SELECT DISTINCT q.qid,"
        " coalesce(json_extract(r.value, '$.rule'), '?') AS rule"
        " FROM quarantine q, json_each(q.reasons) r WHERE q.store = ?)"
        " GROUP BY rule ORDER BY rule",
        (store,),
    )
    return {str(rule): int(n) for rule, n in cur}


def audit_entries(db: sqlite3.Connection, limit: int, before: int | None) -> list[dict[str, Any]]:
    """Up to `limit` audit entries with id < `before`, newest first; `at` ISO-8601 UTC."""
    where, args = ("WHERE id < ?", [before]) if before is not None else ("", [])
    cur = db.execute(
        f"SELECT id, at, action, store, ref, detail FROM audit {where} ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    return [
        {
            "id": r[0],
            "at": datetime.fromtimestamp(r[1], UTC).isoformat(),
            "action": r[2],
            "store": r[3],
            "ref": r[4],
            "detail": r[5],
        }
        for r in cur
    ]
