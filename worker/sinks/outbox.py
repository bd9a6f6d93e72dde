"""The durable outbox: committed events waiting for each `[[outputs]]` destination.

One SQLite file, `<data_dir>/outbox.db` (WAL, `synchronous=FULL`), with its one connection on
its own one-thread executor (`worker.sqlite_files.SqliteFile`, as the spool's: the loop never
blocks on SQLite or fsync, and the file has exactly one writer). It is its own file, not a table of the sink:
the sink may be PostgreSQL shared by many instances, while the outbox is this instance's
delivery queue; and not a table of the spool, whose file has its own salvage rules.

Schema:

    outbox(seq, output, event_id, kind, store, sale_id, lane, at, due_at, state, attempts,
           reason, done_at, body)   UNIQUE(output, event_id)
    voided(store, sale_id)          sales whose void was appended (their triggers never go)
    lanes(output, lanes)            the lane count the pending rows were split with

States: 0 ready, 1 delivered, 2 parked (a fatal error; `reason` names the rule, never a
value), 3 waiting (a trigger before its `due_at`), 4 cancelled (a trigger of a voided sale).

Invariants:

* `append` fans each event to every output whose `records` include its kind, in ONE
  transaction that has committed (fsync) when it returns; a second append of the same
  (output, event_id) is a no-op (`INSERT OR IGNORE`), so a re-run window appends safely.
* A trigger is never handed to an output before its `due_at` (state 3 until then). A void
  appended for a sale cancels that sale's triggers not yet delivered, and a trigger
  appended after its sale's void is stored cancelled.
* Each output's rows are split into lanes by store (`concurrency` of the output, else 1);
  a lane delivers one page at a time in `seq` order, so order per store holds and at most
  `lanes` pages are in flight. A page is marked delivered only after `Output.deliver`
  returned; a retriable `SinkError` retries the SAME page (same events, so the same
  idempotency key) with backoff and jitter up to `retry_max_s`, never sooner than its
  `retry_after_s`; a fatal one parks the page and the lane goes on.
* Delivered and cancelled rows are deleted after `KEEP_DONE_S`; parked rows stay.

Recovery: nothing is in memory that the file does not hold. A crash re-delivers the pages
that were in flight (receivers deduplicate by `event_id`); a damaged file fails the open
loudly (the events it held are also in the sink; a re-run of their windows re-appends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from worker.clock import Clock
from worker.config import Config, OutputConfig
from worker.errors import SinkError
from worker.health import Health
from worker.metrics import Metrics
from worker.sinks.base import utc_text
from worker.sinks.outputs import OutEvent, Output
from worker.sqlite_files import SqliteFile

log = logging.getLogger("possync.outbox")
T = TypeVar("T")

READY, DELIVERED, PARKED, WAITING, CANCELLED = 0, 1, 2, 3, 4
KEEP_DONE_S = 24 * 3600.0  # delivered / cancelled rows are kept this long (for /status, audit)
PRUNE_EVERY_S = 3600.0
DEFAULT_PAGE = 500
IDLE_CHECK_S = 60.0  # a lane with nothing to do still looks every minute (due triggers)
RETRY_FIRST_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    output TEXT NOT NULL, event_id TEXT NOT NULL, kind TEXT NOT NULL, store TEXT NOT NULL,
    sale_id TEXT, lane INTEGER NOT NULL, at TEXT NOT NULL, due_at REAL,
    state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, reason TEXT, done_at REAL,
    body BLOB NOT NULL,
    UNIQUE(output, event_id));
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox(output, lane, state, seq);
CREATE INDEX IF NOT EXISTS outbox_waiting ON outbox(due_at) WHERE state = 3;
CREATE INDEX IF NOT EXISTS outbox_sale ON outbox(store, sale_id) WHERE sale_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_done ON outbox(done_at) WHERE state IN (1, 4);
CREATE TABLE IF NOT EXISTS voided(
    store TEXT NOT NULL, sale_id TEXT NOT NULL, PRIMARY KEY(store, sale_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lanes(output TEXT PRIMARY KEY, lanes INTEGER NOT NULL);
"""

_INSERT = (
    "INSERT OR IGNORE INTO outbox(output, event_id, kind, store, sale_id, lane, at, due_at,"
    " state, body, done_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)"
)


class Staged(msgspec.Struct, frozen=True, kw_only=True):
    """An event for the outbox, with what the outbox needs beyond the event itself."""

    event: OutEvent
    due_at: datetime | None = None  # triggers: not delivered before this instant
    sale_id: str | None = None  # triggers and voids: the sale they belong to


def lane_of(store: str, lanes: int) -> int:
    """The lane of a store's events: stable across processes (crc32, not `hash`)."""
    return zlib.crc32(store.encode()) % lanes if lanes > 1 else 0


def lanes_of(cfg: OutputConfig) -> int:
    """Pages in flight at most for this output (its `concurrency`, else one)."""
    return int(getattr(cfg, "concurrency", 1))


def page_size_of(cfg: OutputConfig) -> int:
    """Events per page handed to `Output.deliver` (its `page_size`, else DEFAULT_PAGE)."""
    return int(getattr(cfg, "page_size", DEFAULT_PAGE))


@dataclass
class OutputState:
    """What /status shows of one output, kept in memory beside the file's counts."""

    last_error: str | None = None
    last_error_at: str | None = None
    retrying: int = 0  # lanes currently backing off
    retry_at: str | None = None  # when the latest backoff ends (ISO-8601 UTC)
    delivered: int = 0  # pages delivered since start
    parked: int = 0  # pages parked since start


class Progress:
    """A pulse on every delivery state change, so tests and callers wait instead of polling."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def pulse(self) -> None:
        """Wake every waiter (synchronous: callable right before a clock wait)."""
        self._event.set()
        self._event = asyncio.Event()

    def mark(self) -> asyncio.Event:
        """The event the next pulse sets (take it before reading the state it is about)."""
        return self._event


@dataclass
class _Lane:
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class OutboxFile(SqliteFile):
    """The outbox's file: its schema, always synchronous=FULL between bookkeeping writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "FULL", SCHEMA, "outbox")


class Outbox:
    """The outbox of every configured output: `append`, and one delivery task per output."""

    def __init__(
        self, file: OutboxFile, outputs: Sequence[OutputConfig], clock: Clock, metrics: Metrics
    ) -> None:
        self.file = file
        self.clock = clock
        self.metrics = metrics
        self.outputs = {o.name: o for o in outputs}
        self.state = {o.name: OutputState() for o in outputs}
        self.stop = asyncio.Event()
        self.progress = Progress()
        self._lanes: dict[str, list[_Lane]] = {
            o.name: [_Lane() for _ in range(lanes_of(o))] for o in outputs
        }
        self._width = {o.name: lanes_of(o) for o in outputs}
        self._routes: dict[str, list[OutputConfig]] = {}
        for o in outputs:
            for kind in o.records:
                self._routes.setdefault(kind, []).append(o)

    def halt(self) -> None:
        """Stop every lane and retry wait (the owned tasks are then awaited by their owner)."""
        self.stop.set()
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.wake.set()

    def wants(self, kind: str) -> bool:
        """Whether any output takes events of `kind` (callers skip building the others)."""
        return kind in self._routes

    async def relane(self) -> None:
        """Split pending rows again where an output's lane count changed since the last run."""
        want = {name: lanes_of(o) for name, o in self.outputs.items()}

        def go(db: sqlite3.Connection) -> None:
            had = dict(db.execute("SELECT output, lanes FROM lanes").fetchall())
            for name, n in want.items():
                if had.get(name) == n:
                    continue
                rows = db.execute(
                    "SELECT DISTINCT store FROM outbox WHERE output = ? AND state IN (0, 3)",
                    (name,),
                ).fetchall()
                db.executemany(
                    "UPDATE outbox SET lane = ? WHERE output = ? AND store = ? AND state IN (0, 3)",
                    [(lane_of(s, n), name, s) for (s,) in rows],
                )
                db.execute("INSERT OR REPLACE INTO lanes(output, lanes) VALUES(?, ?)", (name, n))

        await self.file.run(go)

    async def append(self, items: Sequence[Staged]) -> int:
        """Fan `items` out to the outputs that take their kind; on disk when this returns.

        Idempotent by (output, event_id). Returns the rows newly written."""
        rows: list[tuple[Any, ...]] = []
        voids: list[tuple[str, str]] = []
        now = self.clock.now().timestamp()
        for it in items:
            ev = it.event
            if ev.kind == "void" and it.sale_id is not None:
                voids.append((ev.store, it.sale_id))
            targets = self._routes.get(ev.kind)
            if not targets:
                continue
            due = it.due_at.timestamp() if it.due_at is not None else None
            state = WAITING if due is not None and due > now else READY
            at, body = utc_text(ev.at), bytes(ev.body)
            for o in targets:
                lane = lane_of(ev.store, self._width[o.name])
                rows.append(
                    (o.name, ev.event_id, ev.kind, ev.store, it.sale_id, lane, at, due, state, body)
                )
        if not rows and not voids:
            return 0

        def go(db: sqlite3.Connection) -> int:
            if voids:
                db.executemany("INSERT OR IGNORE INTO voided(store, sale_id) VALUES(?, ?)", voids)
                # Triggers of a voided sale never go out (those already delivered did).
                db.executemany(
                    "UPDATE outbox SET state = 4, done_at = ? WHERE store = ? AND sale_id = ?"
                    " AND kind = 'trigger' AND state IN (0, 3)",
                    [(now, s, sid) for s, sid in voids],
                )
            pairs = {(r[3], r[4]) for r in rows if r[2] == "trigger" and r[4] is not None}
            gone = {
                p
                for p in pairs
                if db.execute("SELECT 1 FROM voided WHERE store = ? AND sale_id = ?", p).fetchone()
            }
            before = db.total_changes
            db.executemany(
                _INSERT,
                [
                    (*r[:8], CANCELLED, r[9], now)
                    if r[2] == "trigger" and (r[3], r[4]) in gone
                    else (*r, None)
                    for r in rows
                ],
            )
            return db.total_changes - before

        written = await self.file.run(go)
        for (name, kind), n in Counter((r[0], r[2]) for r in rows).items():
            self.metrics.outbox_appended.labels(name, kind).inc(n)
        touched = {(r[0], r[5]) for r in rows}
        for name, lane in touched:
            self._lanes[name][lane].wake.set()
        return written

    # ----------------------------------------------------------------- delivery

    async def deliver_forever(self, output: Output) -> None:
        """The delivery task of one output: its lanes, until stopped (owned by `open_outbox`)."""
        cfg = self.outputs[output.name]
        async with asyncio.TaskGroup() as tg:
            for i in range(lanes_of(cfg)):
                tg.create_task(self._lane(output, cfg, i), name=f"outbox:{output.name}:{i}")

    async def _lane(self, output: Output, cfg: OutputConfig, lane: int) -> None:
        me = self._lanes[cfg.name][lane]
        size = page_size_of(cfg)
        while not self.stop.is_set():
            me.wake.clear()
            page = await self._page(cfg.name, lane, size)
            if page:
                await self._deliver_page(output, cfg, page)
                continue
            # Nothing ready: sleep until an append wakes us, the next trigger is due, or stop.
            due = await self._next_due(cfg.name, lane)
            now = self.clock.now()
            deadline = now + timedelta(seconds=IDLE_CHECK_S)
            if due is not None:
                deadline = min(deadline, datetime.fromtimestamp(due, UTC))
            await self.clock.wait_until(deadline, me.wake)

    async def _page(self, output: str, lane: int, size: int) -> list[tuple[int, OutEvent]]:
        now = self.clock.now().timestamp()

        def go(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            # Due triggers become ready first, so they go in seq order with the rest.
            db.execute(
                "UPDATE outbox SET state = 0 WHERE state = 3 AND due_at <= ? AND output = ?"
                " AND lane = ?",
                (now, output, lane),
            )
            return db.execute(
                "SELECT seq, event_id, kind, store, at, body FROM outbox"
                " WHERE output = ? AND lane = ? AND state = 0 ORDER BY seq LIMIT ?",
                (output, lane, size),
            ).fetchall()

        rows = await self.file.run(go, durable=False)
        return [
            (
                r[0],
                OutEvent(
                    event_id=r[1],
                    kind=r[2],
                    store=r[3],
                    at=datetime.fromisoformat(r[4]),
                    body=msgspec.Raw(r[5]),
                ),
            )
            for r in rows
        ]

    async def _next_due(self, output: str, lane: int) -> float | None:
        def go(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT min(due_at) FROM outbox WHERE state = 3 AND output = ? AND lane = ?",
                (output, lane),
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self.file.run(go)

    async def _deliver_page(
        self, output: Output, cfg: OutputConfig, page: list[tuple[int, OutEvent]]
    ) -> None:
        """Deliver one page until it is delivered, parked, or the outbox stops."""
        events = [ev for _, ev in page]
        seqs = [seq for seq, _ in page]
        st = self.state[cfg.name]
        delay = RETRY_FIRST_S
        retrying = False
        try:
            while True:
                try:
                    await output.deliver(events)
                except SinkError as exc:
                    self._note_error(cfg.name, exc)
                    if not exc.retriable:
                        await self._settle(seqs, PARKED, exc.message)
                        st.parked += 1
                        self.metrics.outbox_parked.labels(cfg.name).inc(len(seqs))
                        log.error(  # noqa: TRY400 (the message names the rule; no traceback)
                            "output %s: page of %d events parked: %s",
                            cfg.name,
                            len(seqs),
                            exc.message,
                            extra={"event": "outbox.parked", "output": cfg.name},
                        )
                        self.progress.pulse()
                        return
                    if not retrying:
                        retrying = True
                        st.retrying += 1
                    self.metrics.outbox_retries.labels(cfg.name).inc()
                    wait = min(delay, cfg.retry_max_s) * (0.5 + random.random())
                    wait = max(min(wait, cfg.retry_max_s), float(exc.retry_after_s or 0))
                    log.warning(
                        "output %s failed (%s); retrying in %.1fs",
                        cfg.name,
                        exc.message,
                        wait,
                        extra={"event": "outbox.retry", "output": cfg.name},
                    )
                    until = self.clock.now() + timedelta(seconds=wait)
                    st.retry_at = until.isoformat()
                    self.progress.pulse()
                    await self.clock.wait_until(until, self.stop)
                    if self.stop.is_set():
                        return
                    delay = min(delay * 2, cfg.retry_max_s)
                    continue
                await self._settle(seqs, DELIVERED, None)
                st.delivered += 1
                st.retry_at = None
                self.metrics.outbox_delivered.labels(cfg.name).inc(len(seqs))
                self.progress.pulse()
                return
        finally:
            if retrying:
                st.retrying -= 1

    def _note_error(self, name: str, exc: SinkError) -> None:
        st = self.state[name]
        st.last_error = exc.message
        st.last_error_at = self.clock.now().isoformat()

    async def _settle(self, seqs: Sequence[int], state: int, reason: str | None) -> None:
        now = self.clock.now().timestamp()

        def go(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE outbox SET state = ?, reason = ?, done_at = ?, attempts = attempts + 1"
                " WHERE seq = ?",
                [(state, reason, now, s) for s in seqs],
            )

        await self.file.run(go, durable=False)

    async def prune_forever(self) -> None:
        """Delete delivered and cancelled rows older than KEEP_DONE_S, every PRUNE_EVERY_S."""
        while not self.stop.is_set():
            await self.prune()
            until = self.clock.now() + timedelta(seconds=PRUNE_EVERY_S)
            await self.clock.wait_until(until, self.stop)

    async def prune(self) -> int:
        """One prune pass; the rows deleted."""
        cutoff = self.clock.now().timestamp() - KEEP_DONE_S

        def go(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM outbox WHERE state IN (1, 4) AND done_at < ?", (cutoff,))
            return cur.rowcount

        return await self.file.run(go)

    # ----------------------------------------------------------------- status

    async def counts(self) -> dict[str, dict[str, int]]:
        """Rows per output and state name."""
        names = {
            READY: "pending",
            DELIVERED: "delivered",
            PARKED: "parked",
            WAITING: "waiting",
            CANCELLED: "cancelled",
        }

        def go(db: sqlite3.Connection) -> list[tuple[str, int, int]]:
            return db.execute(
                "SELECT output, state, count(*) FROM outbox GROUP BY output, state"
            ).fetchall()

        out = {name: dict.fromkeys(names.values(), 0) for name in self.outputs}
        for output, state, n in await self.file.run(go):
            if output in out:
                out[output][names[state]] = n
        return out

    async def status(self) -> dict[str, dict[str, Any]]:
        """The /status `outputs` section: per output its counts and its last error."""
        counts = await self.counts()
        out: dict[str, dict[str, Any]] = {}
        for name, cfg in self.outputs.items():
            st = self.state[name]
            out[name] = {
                "kind": str(type(cfg).__struct_config__.tag),
                "records": list(cfg.records),
                **counts[name],
                "retrying": st.retrying > 0,
                "retry_at": st.retry_at if st.retrying else None,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at,
            }
        return out

    async def parked(self, output: str) -> list[dict[str, Any]]:
        """Parked rows of an output (event id, kind, store, reason), oldest first."""

        def go(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT event_id, kind, store, reason FROM outbox WHERE output = ? AND state = 2"
                " ORDER BY seq",
                (output,),
            ).fetchall()

        return [
            {"event_id": r[0], "kind": r[1], "store": r[2], "reason": r[3]}
            for r in await self.file.run(go)
        ]


@contextlib.asynccontextmanager
async def open_outbox(
    cfg: Config, clock: Clock, metrics: Metrics, path: Path | None = None
) -> AsyncIterator[Outbox]:
    """Open `<data_dir>/outbox.db` and yield the Outbox (delivery is started separately)."""
    path = path or cfg.data_path / "outbox.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    file = OutboxFile(path)
    try:
        await file.connect()
        outbox = Outbox(file, cfg.outputs, clock, metrics)
        await outbox.relane()
        yield outbox
    finally:
        await file.close(checkpoint=True)


@contextlib.asynccontextmanager
async def delivering(
    outbox: Outbox, outputs: Mapping[str, Output], health: Health
) -> AsyncIterator[None]:
    """Run one owned delivery task per output and the prune task; stop and await them on exit."""
    async with contextlib.AsyncExitStack() as stack:
        for name, output in outputs.items():
            await stack.enter_async_context(
                health.owned_task(f"output:{name}", outbox.deliver_forever(output))
            )
        await stack.enter_async_context(health.owned_task("outbox:prune", outbox.prune_forever()))
        try:
            yield
        finally:
            outbox.halt()


def kinds(items: Iterable[Staged]) -> set[str]:
    """The kinds among `items` (for tests and logs)."""
    return {it.event.kind for it in items}
