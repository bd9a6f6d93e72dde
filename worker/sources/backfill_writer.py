"""Backfill writing: parsed batches routed to the spool (and the sink for entities), one batch
or two in flight while the next is parsed, and commit-now commits as the stream goes.

Invariants

* Durable before 200: the handler awaits `BackfillWriter.finish`, which awaits every route
  call; `Intake.ingest` / `append_rows` return only after the spool group holding the rows
  committed (fsync).
* Live first: each batch yields to the loop, longer while `spool.live_waiting()`; rows go
  to the spool with `priority="bulk"`, which the spool writer serves after live appends.
* Owned tasks: `close()` cancels and awaits the route and commit tasks still running, so a
  failed request leaves nothing behind (spool appends are shielded and still finish).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from worker import keys
from worker.buffers.base import Buffer
from worker.committer import WindowResult
from worker.config import StoreConfig
from worker.errors import PossyncError
from worker.intake import Envelope, IngestOutcome, Intake
from worker.records import Record, Sale
from worker.sources.backfill_parse import Chunk, mark_history
from worker.sources.backfill_runs import BACKFILLS, BackfillRun

log = logging.getLogger("possync.backfill")

# NDJSON batches of rows being written at once (see BackfillWriter.submit_chunk).
ROUTES_IN_FLIGHT = 2
# How many extra event-loop turns the parser gives away while live appends are staged.
_LIVE_YIELDS = 64


class BackfillWriter:
    """Routes batches (up to `ROUTES_IN_FLIGHT` at once), and commits as it goes when asked.

    Owns its tasks: `close()` cancels and awaits whatever is still running, so a failed or
    abandoned request leaves nothing behind (spool appends are shielded and still finish).
    """

    def __init__(
        self,
        app: web.Application,
        store: StoreConfig,
        source: str,
        run: BackfillRun,
        *,
        commit_now: bool,
        commit_every_s: float,
        progress_every: int,
    ) -> None:
        self.app = app
        self.intake: Intake = app[keys.INTAKE]
        self.spool = app[keys.SPOOL]
        self.store = store
        self.source = source
        self.run = run
        self.commit_now = commit_now
        self.commit_every_s = commit_every_s
        self.state = app[BACKFILLS]
        self.clock = app[keys.CLOCK]
        self.zone = app[keys.CONFIG].store_zone(store)
        self._routes: deque[asyncio.Task[IngestOutcome]] = deque()  # oldest first
        self._barrier = False  # the newest in flight upserts entities (see submit_chunk)
        self._commit: asyncio.Task[WindowResult] | None = None
        self._uncommitted = False
        self._progress_every = progress_every
        self._next_progress = progress_every

    async def submit(self, records: list[Record]) -> None:
        """Wait for the batches in flight, then start writing this one."""
        self._progress()
        _mark_history(records, self.zone)
        await self._drain_routes(keep=0)
        await yield_to_live(self.spool)
        self._start(self.intake.ingest(self._envelope(records)), barrier=True)

    async def submit_chunk(self, chunk: Chunk) -> None:
        """`submit` for NDJSON already decoded and encoded off the loop (`parse_lines`).

        Batches of rows only are written `ROUTES_IN_FLIGHT` deep: the spool writer finds the
        next one staged when a group commits (and may take both in one group). They are
        staged in file order: each task stages its rows before its first await, and tasks
        start in the order they were created. A batch with entities upserts them first, so
        it is a barrier: it waits for every batch before it, and the next one waits for it.
        """
        self._progress()
        barrier = bool(chunk.entities)
        await self._drain_routes(keep=0 if barrier or self._barrier else ROUTES_IN_FLIGHT - 1)
        await yield_to_live(self.spool)
        self._start(self._write_chunk(chunk), barrier=barrier)

    def _start(self, coro: Coroutine[Any, Any, IngestOutcome], *, barrier: bool) -> None:
        self._routes.append(asyncio.create_task(coro, name=f"backfill-route-{self.run.id}"))
        self._barrier = barrier

    async def _write_chunk(self, chunk: Chunk) -> IngestOutcome:
        store = self.store.id
        rows = chunk.rows
        entities = IngestOutcome(accepted=0, duplicates=0, rejected=[], dropped={}, visible_at=None)
        spool = self.spool
        if chunk.entities:
            if rows:
                # Decide the whole batch first, as `Intake.route` does for a mixed push: no
                # upsert lands before a 503 for its sales.
                spool.check_room_rows(store, len(rows), chunk.nbytes)
            entities = await self.intake.ingest(self._envelope(chunk.entities))
        if not rows:
            return entities
        res = await spool.append_rows(store, rows, priority="bulk", nbytes=chunk.nbytes)
        return IngestOutcome(
            accepted=entities.accepted + res.accepted,
            duplicates=entities.duplicates + res.duplicates,
            rejected=[],
            dropped={},
            visible_at=self.intake.windows.visible_at(self.store),
            realtime=entities.realtime,
            spooled=len(rows),
            realtime_duplicates=entities.realtime_duplicates,
            spooled_duplicates=res.duplicates,
        )

    def _envelope(self, records: Sequence[Record]) -> Envelope:
        return Envelope(
            source=self.source,
            store=self.store.id,
            records=records,
            priority="bulk",
            origin="backfill",
            authorized=True,  # the admin token, checked by the handler
        )

    def _progress(self) -> None:
        run = self.run
        if run.records >= self._next_progress:
            self._next_progress = run.records + self._progress_every
            fields = run.log_fields()
            log.info("backfill progress", extra={"event": "backfill.progress", **fields})

    async def _drain_routes(self, *, keep: int) -> None:
        """Account for the oldest batches in flight until at most `keep` are left."""
        while len(self._routes) > keep:
            out = await self._routes[0]
            self._routes.popleft()
            run = self.run
            run.accepted += out.accepted
            run.duplicates += out.duplicates
            run.realtime += out.realtime
            run.spooled += out.spooled
            if out.visible_at is not None:
                run.visible_at = out.visible_at.isoformat()
            if out.spooled:
                self._uncommitted = True
            await self._maybe_commit(force=False)

    async def _maybe_commit(self, *, force: bool) -> None:
        if not self.commit_now or not self._uncommitted:
            return
        if self._commit is not None:
            if not self._commit.done():
                if not force:
                    return  # one commit at a time; this batch waits for the next one
                await asyncio.wait({self._commit})
            self._collect_commit()
        now = self.clock.monotonic()
        last = self.state.last_commit.get(self.store.id, -math.inf)
        if not force and now - last < self.commit_every_s:
            return
        self.state.last_commit[self.store.id] = now
        self._uncommitted = False
        # The commit runs while the next batches are parsed and spooled; it takes rows
        # received up to now (later ones wait for the next commit or window).
        self._commit = asyncio.create_task(
            self.app[keys.COMMITTER].commit_store(self.store, self.clock.now(), force=True),
            name=f"backfill-commit-{self.run.id}",
        )

    def _collect_commit(self) -> None:
        task, self._commit = self._commit, None
        if task is None:
            return
        try:
            res = task.result()
        except PossyncError as exc:
            # The records are durable in the spool; the next window (or commit) takes them.
            self.run.commit_error = exc.message
            self._uncommitted = True
            log.warning("backfill %s: commit-now failed: %s", self.run.id, exc.message)
            return
        self.run.commits += 1
        self.run.committed += res.committed
        self.run.quarantined += res.quarantined
        if res.skipped:
            self._uncommitted = True

    async def finish(self, *, final: bool) -> None:
        """Wait for the last batches (and the running commit); commit once more if `final`."""
        await self._drain_routes(keep=0)
        if self._commit is not None:
            await asyncio.wait({self._commit})
            self._collect_commit()
        if self.commit_now:
            await self._maybe_commit(force=final)
            if self._commit is not None:
                await asyncio.wait({self._commit})
                self._collect_commit()

    async def close(self) -> None:
        """Cancel and await anything still running (error paths)."""
        tasks = [*self._routes, *([self._commit] if self._commit is not None else [])]
        self._routes.clear()
        self._commit = None
        for task in tasks:
            task.cancel()
        # Their outcome no longer matters (the request failed); awaiting them is what does.
        await asyncio.gather(*tasks, return_exceptions=True)


def _mark_history(records: list[Record], zone: ZoneInfo) -> None:
    """`mark_history` on the freshly parsed sales of a batch (`Intake.route` would copy each)."""
    for r in records:
        if type(r) is Sale:
            mark_history(r, zone)


async def yield_to_live(spool: Buffer) -> None:
    """Give the event loop away once, and for a bounded while more when live appends wait."""
    await asyncio.sleep(0)
    for _ in range(_LIVE_YIELDS):
        if not spool.live_waiting():
            return
        await asyncio.sleep(0)
