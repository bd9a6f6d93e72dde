"""Salvage a damaged spool: every pending row that still reads, by SQL and by page.

Two readers, merged by natural key (store, kind, rid), newest version winning:

* SQL over rowid ranges, bisecting around pages that fail (`sqlite_files.salvage_rows`).
  A truncated file is opened with `writable_schema` so the pages still present read.
* A page scan: every page of the file is decoded as a table b-tree leaf (format:
  https://www.sqlite.org/fileformat2.html#b_tree_pages) and cells shaped like a spool or
  quarantine row are kept. This reaches rows whose interior page is damaged, which no SQL
  query can reach. Freelist pages (parsed from the header when it reads) are skipped: they
  hold stale copies.

The same decoder reads the page images of WAL frames that SQLite would drop past a bad
checksum (`wal.lost_pages`): rows committed after the damage are put back into the spool.

What a salvage can re-offer: a row that was committed (retired) on a page that is now
lost comes back as pending. The next window finds it unchanged in the sink and retires it
again (commits are idempotent by key and version), so it is counted, not duplicated.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from worker.buffers.wal import WalReport, check_wal, damaged_pages, lost_pages, prefix_pages
from worker.sqlite_files import (
    SalvageStats,
    cheap_check,
    flag_file,
    keep_copy,
    missing_problem,
    move_aside,
    salvage_rows,
)

log = logging.getLogger("possync.spool")

SPOOL_COLS = "store, kind, rid, version, origin, received_at, state, held, size, body"
QUARANTINE_COLS = "store, kind, rid, version, received_at, quarantined_at, reasons, body"
_DB_MAGIC = b"SQLite format 3\x00"
_DEFAULT_PAGE = 4096
# SQL bisection stops at failing ranges this many rowids wide: the rows of good pages in
# them are the page scan's to find, so a lost region costs O(width / 32) reads, not O(width).
_GIVE_UP = 32  # SQLite's default: the guess when page 1 is unreadable

Blob = bytes | mmap.mmap  # a file's content, read or mapped
SpoolRow = tuple[str, str, str, int, str, float, int, int, int, bytes | None]
QuarantineRow = tuple[str, str, str, int, float, float, str, bytes]


@dataclass(slots=True)
class Salvaged:
    """What a salvage found, and the work it took."""

    pending: list[SpoolRow] = field(default_factory=list)
    quarantined: list[QuarantineRow] = field(default_factory=list)
    sql: SalvageStats = field(default_factory=SalvageStats)
    pages_scanned: int = 0
    from_pages: int = 0  # pending rows only the page scan found


# ---------------------------------------------------------------- record decoding


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        b = buf[pos + i]
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def decode_record(payload: bytes) -> list[Any]:
    """The values of one SQLite record (raises on malformed input)."""
    hlen, pos = _varint(payload, 0)
    types: list[int] = []
    while pos < hlen:
        t, pos = _varint(payload, pos)
        types.append(t)
    if pos != hlen:
        raise ValueError("record header overruns")
    out: list[Any] = []
    at = hlen
    for t in types:
        if t == 0:
            out.append(None)
        elif t in _INT_SIZES:
            n = _INT_SIZES[t]
            out.append(int.from_bytes(payload[at : at + n], "big", signed=True))
            at += n
        elif t == 7:
            out.append(struct.unpack_from(">d", payload, at)[0])
            at += 8
        elif t in (8, 9):
            out.append(t - 8)
        elif t >= 12:
            n = (t - 12) // 2
            raw = payload[at : at + n]
            out.append(raw.decode("utf-8") if t % 2 else bytes(raw))
            at += n
        else:
            raise ValueError("reserved serial type")
        if at > len(payload):
            raise ValueError("record overruns its payload")
    return out


def leaf_cells(
    page: bytes, pgno: int, usable: int, get_page: Callable[[int], bytes | None]
) -> Iterator[tuple[int, list[Any]]]:
    """(rowid, values) of each cell of a table b-tree leaf page; nothing for other pages."""
    base = 100 if pgno == 1 else 0
    if len(page) < base + 8 or page[base] != 0x0D:
        return
    ncells = int.from_bytes(page[base + 3 : base + 5], "big")
    if ncells * 2 + base + 8 > len(page):
        return
    max_local = usable - 35
    min_local = (usable - 12) * 32 // 255 - 23
    for i in range(ncells):
        ptr = int.from_bytes(page[base + 8 + 2 * i : base + 10 + 2 * i], "big")
        try:
            size, pos = _varint(page, ptr)
            rowid, pos = _varint(page, pos)
            if size <= max_local:
                payload = page[pos : pos + size]
            else:
                k = min_local + (size - min_local) % (usable - 4)
                local = k if k <= max_local else min_local
                payload = page[pos : pos + local] + _overflow(
                    int.from_bytes(page[pos + local : pos + local + 4], "big"),
                    size - local,
                    usable,
                    get_page,
                )
            if len(payload) != size:
                continue
            yield rowid, decode_record(payload)
        except (IndexError, ValueError, UnicodeDecodeError, struct.error):
            continue  # a damaged cell: skip it, keep the page's others


def _overflow(first: int, need: int, usable: int, get_page: Callable[[int], bytes | None]) -> bytes:
    parts: list[bytes] = []
    pgno = first
    hops = 0
    while need > 0 and pgno and hops < 1 << 16:
        page = get_page(pgno)
        if page is None:
            raise ValueError("overflow page missing")
        chunk = page[4 : 4 + min(need, usable - 4)]
        parts.append(chunk)
        need -= len(chunk)
        pgno = int.from_bytes(page[:4], "big")
        hops += 1
    if need > 0:
        raise ValueError("overflow chain ends early")
    return b"".join(parts)


def as_spool_row(values: list[Any]) -> SpoolRow | None:
    """The values of a cell if they have the spool table's shape, else None."""
    if len(values) != 11 or values[0] is not None:
        return None
    _, store, kind, rid, version, origin, at, state, held, size, body = values
    if not (
        isinstance(store, str)
        and isinstance(kind, str)
        and isinstance(rid, str)
        and isinstance(origin, str)
        and isinstance(version, int)
        and isinstance(at, int | float)
        and state in (0, 2)
        and isinstance(held, int)
        and isinstance(size, int)
        and (body is None or isinstance(body, bytes))
    ):
        return None
    if body is not None and (state != 0 or size != len(body) or not _is_json(body)):
        return None
    return (store, kind, rid, version, origin, float(at), state, held, size, body)


def as_quarantine_row(values: list[Any]) -> QuarantineRow | None:
    """The values of a cell if they have the quarantine table's shape, else None."""
    if len(values) != 9 or values[0] is not None:
        return None
    _, store, kind, rid, version, at, qat, reasons, body = values
    if not (
        isinstance(store, str)
        and isinstance(kind, str)
        and isinstance(rid, str)
        and isinstance(version, int)
        and isinstance(at, int | float)
        and isinstance(qat, int | float)
        and isinstance(reasons, str)
        and isinstance(body, bytes)
        and _is_json(body)
        and _is_json(reasons.encode())
    ):
        return None
    return (store, kind, rid, version, float(at), float(qat), reasons, body)


def _names_itself(row: SpoolRow) -> bool:
    """A pending row whose body is an object with its own kind and id (a strict check)."""
    if row[9] is None:
        return False
    body = orjson.loads(row[9])
    return isinstance(body, dict) and body.get("type") == row[1] and body.get("id") == row[2]


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


# ---------------------------------------------------------------- the damaged file


class _File:
    """Pages of a (possibly damaged) database file, optionally overlaid by WAL pages."""

    def __init__(self, data: Blob, overlay: dict[int, bytes] | None = None) -> None:
        self.data = data
        self.overlay = overlay or {}
        head = overlay.get(1, data[:100]) if overlay else data[:100]
        self.header_ok = head[:16] == _DB_MAGIC
        size = int.from_bytes(head[16:18], "big") if self.header_ok else 0
        size = 65536 if size == 1 else size
        if size < 512 or size & (size - 1):
            size, self.header_ok = _DEFAULT_PAGE, False
        self.page_size = size
        self.usable = size - (head[20] if self.header_ok else 0)

    def page(self, pgno: int) -> bytes | None:
        if pgno in self.overlay:
            return self.overlay[pgno]
        start = (pgno - 1) * self.page_size
        if pgno < 1 or start >= len(self.data):
            return None
        page = self.data[start : start + self.page_size]
        # A file cut mid-page: SQLite reads the missing tail as zeros, and so do we.
        return page + bytes(self.page_size - len(page))

    def count(self) -> int:
        return max([-(-len(self.data) // self.page_size), *self.overlay])

    def freelist(self) -> set[int]:
        """Freelist trunk and leaf pages, as far as the chain reads."""
        out: set[int] = set()
        if not self.header_ok:
            return out
        head = self.page(1) or b""
        trunk = int.from_bytes(head[32:36], "big")
        while trunk and trunk not in out and len(out) < self.count():
            page = self.page(trunk)
            if page is None:
                break
            out.add(trunk)
            n = int.from_bytes(page[4:8], "big")
            for i in range(min(n, (self.usable - 8) // 4)):
                out.add(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big"))
            trunk = int.from_bytes(page[:4], "big")
        return out


def scan_pages(
    f: _File, pages: list[int] | None = None
) -> tuple[list[tuple[int, SpoolRow]], list[QuarantineRow], int]:
    """Spool rows (with their old seq) and quarantine rows decoded from leaf pages."""
    spool: list[tuple[int, SpoolRow]] = []
    quarantine: list[QuarantineRow] = []
    skip = f.freelist()
    wanted = pages if pages is not None else range(1, f.count() + 1)
    scanned = 0
    for pgno in wanted:
        if pgno in skip:
            continue
        page = f.page(pgno)
        if page is None:
            continue
        scanned += 1
        for rowid, values in leaf_cells(page, pgno, f.usable, f.page):
            row = as_spool_row(values)
            if row is not None:
                spool.append((rowid, row))
                continue
            q = as_quarantine_row(values)
            if q is not None:
                quarantine.append(q)
    return spool, quarantine, scanned


def _merge(
    sql: list[tuple[int, SpoolRow]], scanned: list[tuple[int, SpoolRow]]
) -> tuple[list[SpoolRow], int]:
    """Newest version per natural key; SQL's reading wins a tie. Pending rows only."""
    best: dict[tuple[str, str, str], tuple[int, int, SpoolRow]] = {}
    for prio, rows in ((1, sql), (0, scanned)):
        for seq, row in rows:
            key = (row[0], row[1], row[2])
            have = best.get(key)
            if have is None or (row[3], prio) > (have[2][3], have[1]):
                best[key] = (seq, prio, row)
    pending = sorted(
        ((seq, prio, row) for seq, prio, row in best.values() if row[6] == 0 and row[9]),
        key=lambda t: t[0],
    )
    return [row for _, _, row in pending], sum(1 for _, prio, _ in pending if prio == 0)


def read_damaged(old: Path) -> Salvaged:
    """Everything that still reads from a damaged spool file (and its -wal)."""
    out = Salvaged()
    # A row SQLite reads off a page cut short has zeros for a body: checked like the scan's.
    cols = f"seq, {SPOOL_COLS}"
    sql_spool = [
        (int(r[0]), row)
        for r in salvage_rows(old, "spool", cols, min_width=_GIVE_UP, stats=out.sql)
        if (row := as_spool_row([None, *r[1:]])) is not None
    ]
    q_sql = [
        q
        for r in salvage_rows(old, "quarantine", QUARANTINE_COLS, min_width=_GIVE_UP, stats=out.sql)
        if (q := as_quarantine_row([None, *r])) is not None
    ]
    with _mapped(old) as data:
        scanned, q_scan, out.pages_scanned = scan_pages(_File(data))
    out.pending, out.from_pages = _merge(sql_spool, scanned)
    seen = {(q[0], q[1], q[2], q[3], q[5]) for q in q_sql}
    out.quarantined = q_sql + [q for q in q_scan if (q[0], q[1], q[2], q[3], q[5]) not in seen]
    return out


def salvage_into(old: Path, db: sqlite3.Connection) -> Salvaged:
    """Copy every pending row and quarantined record that still reads into the fresh spool."""
    got = read_damaged(old)
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        f"INSERT OR IGNORE INTO spool({SPOOL_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?)", got.pending
    )
    db.executemany(
        f"INSERT INTO quarantine({QUARANTINE_COLS}) VALUES(?,?,?,?,?,?,?,?)", got.quarantined
    )
    db.execute("COMMIT")
    log.error(
        "spool salvage from %s: %d pending rows (%d only by page scan), %d quarantined; "
        "%d reads (%d failed), %d pages scanned",
        old,
        len(got.pending),
        got.from_pages,
        len(got.quarantined),
        got.sql.reads,
        got.sql.failed_reads,
        got.pages_scanned,
    )
    return got


# ---------------------------------------------------------------- WAL frames SQLite drops


@dataclass(slots=True)
class WalSalvage:
    """Rows put back from WAL frames past a bad checksum."""

    pages: int = 0  # intact lost page images decoded
    pending: int = 0  # pending rows written back (new, or newer than the spool's)
    retired: int = 0  # acks (retires) completed from lost commits
    quarantined: int = 0  # quarantine moves completed from lost commits
    from_damaged: int = 0  # rows taken from cells of a damaged frame that check out


def salvage_wal(report: WalReport, wal: bytes, db_file: Blob, db: sqlite3.Connection) -> WalSalvage:
    """Replay the rows of the lost, intact frames into the spool SQLite opened.

    Pages are read as the database stood at the last lost commit: lost frames over the
    valid prefix over the database file. Only frames up to the last lost commit frame are
    used, so every row image comes from a committed transaction. Per natural key:

    * a newer version (pending, or already retired) replaces the spool's row, new seq;
    * the same version retired there retires it here (its sink commit was confirmed
      before the retire committed, so this only completes a finished ack);
    * a quarantine row not yet present is added and its pending row removed (the move).
    """
    lost = lost_pages(wal, report)
    f = _File(db_file, {**prefix_pages(wal, report), **lost})
    spool, quarantine, scanned = scan_pages(f, sorted(lost))
    out = WalSalvage(pages=scanned)
    # Cells of a damaged page image that still decode and whose body names its own key
    # (64 bad bytes rarely reach more than a cell or two): only for keys found nowhere else.
    bad = damaged_pages(wal, report)
    if bad:
        g = _File(db_file, {**prefix_pages(wal, report), **lost, **bad})
        extra, _, _ = scan_pages(g, sorted(bad))
        known = {row[:3] for _, row in spool}
        for seq, row in extra:
            if row[:3] not in known and _names_itself(row):
                spool.append((seq, row))
                out.from_damaged += 1
    key = "store=? AND kind=? AND rid=?"
    db.execute("BEGIN IMMEDIATE")
    for _, row in sorted(spool, key=lambda t: t[0]):
        have = db.execute(f"SELECT version, state FROM spool WHERE {key}", row[:3]).fetchone()
        if have is None or have[0] < row[3]:
            if have is not None:
                db.execute(f"DELETE FROM spool WHERE {key}", row[:3])
            db.execute(f"INSERT INTO spool({SPOOL_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?)", row)
            out.pending += row[6] == 0
            out.retired += row[6] == 2
        elif have[0] == row[3] and have[1] == 0 and row[6] == 2:
            db.execute(f"UPDATE spool SET state=2, body=NULL, size=0 WHERE {key}", row[:3])
            out.retired += 1
    for q in quarantine:
        dup = db.execute(
            f"SELECT 1 FROM quarantine WHERE {key} AND version=? AND quarantined_at=?",
            (q[0], q[1], q[2], q[3], q[5]),
        ).fetchone()
        if dup is None:
            db.execute(f"INSERT INTO quarantine({QUARANTINE_COLS}) VALUES(?,?,?,?,?,?,?,?)", q)
            db.execute(f"DELETE FROM spool WHERE {key} AND version=? AND state=0", q[:4])
            out.quarantined += 1
    db.execute("COMMIT")
    return out


# ---------------------------------------------------------------- before and after the open


@dataclass(slots=True)
class Preflight:
    """What the files looked like before SQLite opened them."""

    missing: str | None = None  # a spool opened before is now missing or zero-length
    wal: WalReport | None = None  # set when the WAL would silently drop commits
    kept: Path | None = None  # the copy of db + WAL kept aside for forensics and salvage
    note: str | None = None  # what the WAL salvage did, once the spool is open


def wal_flag(path: Path) -> Path:
    """While this file exists /readyz is red on `spool_wal`: an operator must look."""
    return path.with_name(path.name + ".wal-lost")


def preflight(path: Path) -> Preflight:
    """Check the WAL frame by frame and the file's presence; keep a copy of a bad WAL."""
    out = Preflight(missing=missing_problem(path))
    if out.missing:
        log.warning("spool %s: %s", path, out.missing)
    report = check_wal(Path(str(path) + "-wal"))
    if report.drops_data:
        out.wal = report
        out.kept = keep_copy(path, "wal-damaged")
        log.error("spool %s: %s; copy kept at %s", path, report.summary(), out.kept)
    return out


def after_open(pre: Preflight, path: Path, db: sqlite3.Connection) -> str | None:
    """Put back what the lost WAL frames hold; flag it for /readyz. Returns the note."""
    if pre.wal is None or pre.kept is None:
        return None
    wal = _read(Path(str(pre.kept) + "-wal"))
    with _mapped(pre.kept) as db_file:
        got = salvage_wal(pre.wal, wal, db_file, db)
    note = (
        f"{pre.wal.summary()}; salvaged {got.pending} pending rows ({got.from_damaged} "
        f"from cells of damaged frames), {got.retired} retires and {got.quarantined} "
        f"quarantine moves from {got.pages} intact lost pages; the damaged WAL and its "
        f"database are kept at {pre.kept}(-wal). Delete {wal_flag(path).name} once reviewed."
    )
    wal_flag(path).write_text(note, encoding="utf-8")
    log.error("spool %s: %s", path, note)
    return note


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[Blob]:
    """The file's bytes without reading them all into memory (a spool can be large)."""
    try:
        with path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                yield mm
    except FileNotFoundError:
        yield b""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def prepare_files(path: Path) -> tuple[Preflight, Path | None]:
    """Every start-up check before SQLite opens the spool; returns the damaged file moved aside.

    Damage is what the WAL check, an earlier background `quick_check` (its flag file) or the
    cheap start-up check found. A damaged file is moved aside for `salvage_into`.
    """
    pre = preflight(path)
    flag = flag_file(path)
    if flag.exists():  # the background check of an earlier run found damage
        problem: str | None = (
            flag.read_text(encoding="utf-8", errors="replace") or "flagged damaged"
        )
    else:
        problem = cheap_check(path)
    damaged = move_aside(path, problem, "spool") if problem else None
    flag.unlink(missing_ok=True)
    return pre, damaged


def recovered_note(damaged: Path | None, salvaged: tuple[int, int], pre: Preflight) -> str | None:
    """`/status` spool.recovered_from: where the damaged files went and what was salvaged."""
    parts = []
    if damaged is not None:
        parts.append(
            f"{damaged} (salvaged {salvaged[0]} pending rows, {salvaged[1]} quarantined records)"
        )
    if pre.kept is not None:
        note = pre.note or (pre.wal and pre.wal.summary())
        parts.append(f"{pre.kept} (a copy, the spool itself stays in place; WAL damaged: {note})")
    return "; ".join(parts) or None
