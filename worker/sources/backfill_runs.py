"""Backfill runs: one request's counters (the response, /status, progress logs), and the app's
registry of running and recent backfills with the commit-now rate limit per store.

The handler (`worker.sources.backfill`) starts a `BackfillRun` per request and finishes it
in `finally`, so a failed request is listed as failed, never as running forever.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Literal

import msgspec
from aiohttp import web

from worker import keys
from worker.adapters.base import MAX_REJECTIONS, Parsed
from worker.errors import PossyncError
from worker.sources.backfill_proc import add_parse_pool

_RECENT = 20


class BackfillRejection(msgspec.Struct, frozen=True):
    """One line that could not be read: record index, 1-based line in the body, absolute byte
    offset of the line (request `offset` + position), reason and field path."""

    index: int
    line: int | None
    offset: int | None
    error: str
    field: str | None


class BackfillRun:
    """One running (or finished) backfill request: counters for /status and the response."""

    def __init__(self, run_id: str, store: str, source: str, offset: int, started: str) -> None:
        self.id = run_id
        self.store = store
        self.source = source
        self.offset = offset
        self.started = started
        self._t0 = time.perf_counter()  # real elapsed time: a measurement, not a schedule
        self.elapsed_s: float | None = None
        self.state: Literal["running", "done", "failed"] = "running"
        self.error: str | None = None
        self.bytes = 0
        self.records = 0
        self.accepted = 0
        self.duplicates = 0
        self.realtime = 0
        self.spooled = 0
        self.rejected: list[BackfillRejection] = []
        self.rejected_count = 0
        self.dropped: dict[str, int] = {}
        self.commits = 0
        self.committed = 0
        self.quarantined = 0
        self.commit_error: str | None = None
        self.visible_at: str | None = None

    def reject(
        self, index: int, line: int | None, offset: int | None, error: str, field: str | None
    ) -> None:
        """Count a rejection; keep the first `MAX_REJECTIONS` of them itemized (built only then)."""
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTIONS:
            self.rejected.append(BackfillRejection(index, line, offset, error, field))

    def take_rejections(self, parsed: Parsed) -> None:
        """An adapter's rejections: its itemized ones, then the ones it only counted."""
        for r in parsed.rejected:
            self.reject(r.index, None, None, r.error, r.field)
        self.rejected_count += parsed.rejected_count - len(parsed.rejected)

    def log_fields(self) -> dict[str, Any]:
        """The figures of a backfill.progress / backfill.end log event."""
        return {
            "store": self.store,
            "source": self.source,
            "backfill": self.id,
            "records": self.records,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected_count,
            "bytes": self.bytes,
            "rate_records_s": self.rate(),
        }

    def elapsed(self) -> float:
        """Seconds since the request started (frozen once it ended)."""
        if self.elapsed_s is not None:
            return self.elapsed_s
        return time.perf_counter() - self._t0

    def rate(self) -> float:
        """Records read per second so far."""
        elapsed = self.elapsed()
        return round(self.records / elapsed, 1) if elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The /status entry."""
        return {
            "id": self.id,
            "store": self.store,
            "source": self.source,
            "state": self.state,
            "started": self.started,
            "elapsed_s": round(self.elapsed(), 3),
            "records": self.records,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected_count,
            "bytes": self.bytes,
            "rate_records_s": self.rate(),
            "offset": self.offset,
            "commits": self.commits,
            "error": self.error,
        }

    def result(self) -> dict[str, Any]:
        """The response body."""
        return {
            "id": self.id,
            "store": self.store,
            "source": self.source,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [msgspec.structs.asdict(r) for r in self.rejected],
            "rejected_count": self.rejected_count,
            "dropped": self.dropped,
            "records": self.records,
            "realtime": self.realtime,
            "spooled": self.spooled,
            "bytes": self.bytes,
            "offset": self.offset,
            "last_offset": self.offset + self.bytes,
            "elapsed_s": round(self.elapsed(), 3),
            "rate_records_s": self.rate(),
            "visible_at": self.visible_at,
            "commits": self.commits,
            "committed": self.committed,
            "quarantined": self.quarantined,
            "commit_error": self.commit_error,
        }


class Backfills:
    """Per app: the running backfills, the last few finished ones, and the commit rate limit."""

    def __init__(self) -> None:
        self.running: dict[str, BackfillRun] = {}
        self.recent: deque[BackfillRun] = deque(maxlen=_RECENT)
        # store -> clock.monotonic() of the last commit-now commit (shared by all requests).
        self.last_commit: dict[str, float] = {}
        self._ids = itertools.count(1)

    def start(self, store: str, source: str, offset: int, started: str) -> BackfillRun:
        """Register a new running backfill."""
        run = BackfillRun(f"bf-{next(self._ids)}", store, source, offset, started)
        self.running[run.id] = run
        return run

    def finish(self, run: BackfillRun, error: BaseException | None) -> None:
        """Move a run from running to recent."""
        run.elapsed_s = run.elapsed()
        if error is not None:
            run.state = "failed"
            run.error = error.message if isinstance(error, PossyncError) else type(error).__name__
        else:
            run.state = "done"
        self.running.pop(run.id, None)
        self.recent.append(run)

    def snapshot(self) -> dict[str, Any]:
        """/status `backfills` section."""
        return {
            "running": [r.snapshot() for r in self.running.values()],
            "recent": [r.snapshot() for r in reversed(self.recent)],
        }


BACKFILLS: web.AppKey[Backfills] = web.AppKey("backfills", Backfills)


def backfill_status(app: web.Application) -> dict[str, Any]:
    """Snapshot of running and recent backfills (the /status `backfills` section)."""
    state = app.get(BACKFILLS)
    return state.snapshot() if state is not None else {"running": [], "recent": []}


def add_backfills(app: web.Application) -> None:
    """The backfills' state, their metrics and /status section (idempotent); the route is
    in `worker.api.routes`."""
    if BACKFILLS in app:
        return
    app[BACKFILLS] = Backfills()
    add_parse_pool(app)
    metrics = app.get(keys.METRICS)
    if metrics is not None:
        stores = [s.id for s in app[keys.CONFIG].stores]
        metrics.watch_backfills(lambda: app[BACKFILLS].running.values(), stores)
    extra = app.get(keys.STATUS_EXTRA)
    if extra is not None:
        extra["backfills"] = lambda: backfill_status(app)
