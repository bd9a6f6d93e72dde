"""Window commits: lease a store's spooled sales, validate, commit to the sink, then ack.

    lease page (rows received <= window instant) -> decode -> validate_batch
        -> sink.commit_sales(sales + voids + trigger outbox + manifest)   [one transaction]
        -> spool.ack(committed) ; spool.quarantine(invalid) ; spool.hold(waiting for customer)

Finalize only after the sink confirms: rows are acked after `commit_sales` returned. A crash
anywhere re-leases the same rows; the sink is idempotent by batch id and by (sale, version),
and trigger events by event id, so a rerun leaves each sale in the sink exactly once.

Rows are checked once: a page decodes what this code spooled without its intake checks
(`worker.page_decode`); validation runs the rules of the window.

Also here, on the same validation and sink machinery: manual sales (validated and committed
at once, `commit_manual`), a quarantined record's recheck, and the dry-run preview. The timing
is not here: `worker.scheduler` fires `commit_store` at the instants `worker.windows` gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from worker.adapters import get_adapter
from worker.batch import CommitBatch, SaleRow, TriggerEvent
from worker.buffers.base import Buffer, Entry, Lease
from worker.clock import Clock
from worker.config import Config, RulePolicy, StoreConfig
from worker.errors import RecordInvalid, SinkError, SpoolDamaged
from worker.locks import LocalLock, WindowLock, WindowLocked
from worker.metrics import Metrics
from worker.page_decode import SPOOL_KEY, decode_page, keep_mark, load_mark
from worker.records import Sale, Void, business_date, localize
from worker.sinks.base import Sink
from worker.triggers import match_triggers
from worker.validation import (
    BatchItem,
    BatchVerdict,
    Failure,
    ValidationContext,
    context_ids,
    rule_policy,
    validate_batch,
    validate_sale,
)
from worker.windows import NextWindows

log = logging.getLogger("possync.committer")
T = TypeVar("T")
# When the sink retries of the running commit give up (an admin commit's deadline); None:
# retry until the sink is back or the service stops.
_DEADLINE: contextvars.ContextVar[datetime | None] = contextvars.ContextVar(
    "commit_deadline", default=None
)


class WindowResult(msgspec.Struct, kw_only=True):
    """One store-window commit, as shown on /status and returned by /v1/admin/commit."""

    store: str
    window_at: datetime
    started_at: datetime
    committed: int = 0
    voids: int = 0
    quarantined: int = 0
    held: int = 0
    superseded: int = 0
    triggers: int = 0
    # Trigger events not written, by reason ("no_customer": nobody could receive them).
    triggers_skipped: dict[str, int] = msgspec.field(default_factory=dict)
    warnings: int = 0
    duration_s: float = 0.0
    skipped: str | None = None  # "paused" | "busy" | "locked" (another instance holds it)
    locked_by: str | None = None  # with "locked": the holding instance's id, when known
    error: str | None = None


class Committer:
    """Commits spooled sales of one store at a time; also commits manual sales at once.

    An async context (`async with Committer(...)`): entering restores paused flags and last
    windows from the spool, leaving sets `stop`.
    """

    def __init__(
        self,
        cfg: Config,
        spool: Buffer,
        sink: Sink,
        clock: Clock,
        metrics: Metrics,
        windows: NextWindows,
        window_lock: WindowLock | None = None,
    ) -> None:
        self.cfg = cfg
        # Across instances on one sink; in-process when not given (one process, one sink).
        self.window_lock: WindowLock = window_lock or LocalLock()
        self.spool = spool
        self.sink = sink
        self.clock = clock
        self.metrics = metrics
        self.windows = windows
        self.stop = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {s.id: asyncio.Lock() for s in cfg.stores}
        self._zones = {s.id: cfg.store_zone(s) for s in cfg.stores}
        self._policies = {s.id: _store_policy(s) for s in cfg.stores}
        self._cash_steps = {
            s.id: Decimal(s.cash_rounding) if s.cash_rounding else None for s in cfg.stores
        }
        self.paused: set[str] = set()
        self.last: dict[str, WindowResult] = {}
        self.last_window: dict[str, datetime] = {}
        self.sink_error: str | None = None
        # Spool seqs are per spool: on a shared sink the batch ids of two instances' spools
        # must not meet (the second would be taken for a rerun of the first and dropped).
        self.batch_prefix = ""
        # Rows of seq >= this were checked at intake by this code (None: no row is).
        self.checked_from: int | None = None

    # ----------------------------------------------------------------- state

    async def __aenter__(self) -> Committer:
        """Restore the window state; the committer is then ready."""
        await self.load_state()
        self.checked_from = await load_mark(self.spool)
        if type(self.cfg.sink).__struct_config__.tag != "sqlite":
            self.batch_prefix = await self._spool_id() + "/"
        return self

    async def _spool_id(self) -> str:
        """A random id kept in the spool for its life (stable across restarts)."""
        state = await self.spool.state.get(SPOOL_KEY)
        sid = state.get("id")
        if not isinstance(sid, str) or not sid:
            sid = secrets.token_hex(8)
            await self.spool.state.put(SPOOL_KEY, {"id": sid})
        return sid

    async def __aexit__(self, *exc: object) -> None:
        """Set the stop event, so running sink retries end promptly; record a clean stop."""
        self.stop.set()
        if self.checked_from is not None:
            await keep_mark(self.spool, self.checked_from)

    async def load_state(self) -> None:
        """Restore paused flags and last windows from the spool's state table."""
        for store in self.cfg.stores:
            state = await self.spool.state.get(store.id)
            if state.get("paused"):
                self.paused.add(store.id)
            if "last_window" in state:
                self.last_window[store.id] = datetime.fromisoformat(state["last_window"])
            if "last_result" in state:
                with contextlib.suppress(msgspec.ValidationError):
                    self.last[store.id] = msgspec.convert(state["last_result"], WindowResult)

    async def set_paused(self, store: StoreConfig, paused: bool) -> None:
        """Pause or resume a store's windows (pushes are still accepted)."""
        (self.paused.add if paused else self.paused.discard)(store.id)
        await self.spool.state.put(store.id, {"paused": paused})

    # ----------------------------------------------------------------- window commit

    async def commit_store(
        self,
        store: StoreConfig,
        window_at: datetime,
        *,
        force: bool = False,
        deadline: datetime | None = None,
    ) -> WindowResult:
        """Run one store-window: commit what the spool held at `window_at`.

        A failing sink is retried with backoff until it is back, or, given a `deadline`
        (an admin call), until then: the last error is raised and the rows stay pending.
        """
        started = self.clock.now()
        result = WindowResult(store=store.id, window_at=window_at, started_at=started)
        if store.id in self.paused and not force:
            result.skipped = "paused"
            self.metrics.child(self.metrics.window_commits, store.id, "skipped_paused").inc()
            return result
        lock = self._locks[store.id]
        if lock.locked():
            result.skipped = "busy"  # a commit that overruns the next window is not doubled
            self.metrics.child(self.metrics.window_commits, store.id, "skipped_busy").inc()
            return result
        t0 = self.clock.monotonic()
        async with lock, contextlib.AsyncExitStack() as held:
            try:
                token = _DEADLINE.set(deadline)  # copied into the page tasks it creates
                try:
                    try:
                        # Across instances: exactly one commits this store-window
                        # (worker.locks). Taking it is a sink call like any other: while
                        # the database is down it is retried until the deadline.
                        await self._with_retry(
                            "window lock",
                            lambda: held.enter_async_context(
                                self.window_lock.hold(store.id, self.cfg.instance.lock_wait_s)
                            ),
                            op="lock",
                        )
                    except WindowLocked as exc:
                        return self._locked(store, window_at, result, exc)
                    log.info(
                        "store %s: window %s starts",
                        store.id,
                        window_at.isoformat(),
                        extra={"event": "window.start", "store": store.id, "source": store.source},
                    )
                    await self._commit_pages(store, window_at, result)
                finally:
                    _DEADLINE.reset(token)
            except (SinkError, SpoolDamaged) as exc:
                result.error = exc.message
                m = self.metrics
                m.child(m.window_commits, store.id, "error").inc()
                m.child(m.window_seconds, "error").observe(self.clock.monotonic() - t0)
                log.error(  # noqa: TRY400 (the message names the failure; no traceback needed)
                    "store %s: window %s failed: %s",
                    store.id,
                    window_at.isoformat(),
                    exc.message,
                    extra={"event": "window.failed", "store": store.id, "source": store.source},
                )
                raise
            finally:
                result.duration_s = round(self.clock.monotonic() - t0, 6)
                self.last[store.id] = result
            log.info(
                "store %s: window %s committed %d, quarantined %d, held %d in %.3f s",
                store.id,
                window_at.isoformat(),
                result.committed,
                result.quarantined,
                result.held,
                result.duration_s,
                extra={
                    "event": "window.end",
                    "store": store.id,
                    "source": store.source,
                    "window_at": window_at.isoformat(),
                    "committed": result.committed,
                    "voids": result.voids,
                    "quarantined": result.quarantined,
                    "held": result.held,
                    "superseded": result.superseded,
                    "triggers": result.triggers,
                    "triggers_skipped": result.triggers_skipped,
                    "warnings": result.warnings,
                    "duration_s": result.duration_s,
                },
            )
            self.metrics.child(self.metrics.window_commits, store.id, "ok").inc()
            self.metrics.child(self.metrics.window_seconds, "ok").observe(result.duration_s)
            await self.spool.state.put(
                store.id,
                {"last_window": window_at.isoformat(), "last_result": msgspec.to_builtins(result)},
            )
            self.last_window[store.id] = window_at
        await self.deliver_triggers()
        return result

    def _locked(
        self, store: StoreConfig, window_at: datetime, result: WindowResult, exc: WindowLocked
    ) -> WindowResult:
        """Another instance is committing this store: skip, visibly (result, metric, log)."""
        result.skipped = "locked"
        result.locked_by = exc.holder
        self.metrics.child(self.metrics.window_commits, store.id, "skipped_locked").inc()
        self.metrics.child(self.metrics.window_locked, store.id).inc()
        log.info(
            "store %s: window %s skipped: lock held by %s",
            store.id,
            window_at.isoformat(),
            exc.holder or "another instance",
            extra={
                "event": "window.locked",
                "store": store.id,
                "window_at": window_at.isoformat(),
                "holder": exc.holder,
            },
        )
        return result

    async def _commit_pages(
        self, store: StoreConfig, window_at: datetime, result: WindowResult
    ) -> None:
        """Commit the window page by page, three pages in flight.

        While page n is written to the sink, page n+1 is prepared (lease, decode, validate:
        Python work) and page n-1 is settled in the spool (ack, quarantine, hold: SQLite
        work on the spool's thread). Finalize-after-confirm holds per page: a page is
        settled only once its own sink transaction has returned. Pages settle in order. A
        reference from page n+1 to a sale of page n still resolves: that sale is pending in
        the spool until page n is acked, and committed in the sink once it is.
        """
        nxt: asyncio.Task[_Page | None] = asyncio.create_task(self._next_page(store, window_at, 0))
        settling: asyncio.Task[None] | None = None
        try:
            while True:
                page = await nxt
                if page is None:
                    break
                nxt = asyncio.create_task(self._next_page(store, window_at, page.lease.last_seq))
                try:
                    await self._sink_write(page)
                    if settling is not None:
                        await settling  # pages settle in order
                except BaseException:
                    # Not settled (its sink write failed, or the page before failed to
                    # settle): its rows stay pending for the next window.
                    await self.spool.release(page.lease.lease_id)
                    raise
                settling = asyncio.create_task(self._settle(page, result))
            if settling is not None:
                await settling
        except BaseException:
            # The first failure is what the caller sees; a page still settling is awaited
            # so nothing is left running unobserved (cut short, its rows stay pending and
            # the next window finds them already in the sink).
            if settling is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await settling
            raise
        finally:
            if not nxt.done():
                nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, SinkError, SpoolDamaged):
                got = await nxt
                if got is not None:
                    await self.spool.release(got.lease.lease_id)

    async def _next_page(self, store: StoreConfig, window_at: datetime, after: int) -> _Page | None:
        """Lease, decode and validate the page after seq `after` (None when none is left)."""
        lease = await self.spool.lease(
            store.id, upto=window_at, after_seq=after, limit=self.cfg.windows.batch_size
        )
        if not lease.entries:
            await self.spool.release(lease.lease_id)
            return None
        try:
            # Decoding and validating a page is pure CPU; it runs in a worker thread so the
            # event loop keeps answering pushes (the GIL is handed back every switch interval).
            items, broken, ids = await asyncio.to_thread(_decode, lease.entries, self.checked_from)
            # The lookups are retried like the write itself: a window that starts while the
            # sink is down waits for it instead of failing until the next window.
            ctx = await self._with_retry(
                "lookup", lambda: self._context(store, items, ids), op="lookup"
            )
            verdict, batch = await asyncio.to_thread(
                self._prepare, store, window_at, lease.entries, items, ctx, self.clock.now()
            )
        except BaseException:
            await self.spool.release(lease.lease_id)
            raise
        return _Page(lease=lease, verdict=verdict, batch=batch, broken=broken)

    async def _sink_write(self, page: _Page) -> None:
        """Write one prepared page to the sink (retried like every sink call)."""
        batch = page.batch
        if batch.sales or batch.voids:
            await self._with_retry(
                f"commit of {batch.batch_id}", lambda: self.sink.commit_sales(batch), op="commit"
            )

    async def _settle(self, page: _Page, result: WindowResult) -> None:
        """Settle a page the sink has confirmed: ack, quarantine, hold; then free its lease."""
        try:
            await self._settle_rows(page, result)
        finally:
            await self.spool.release(page.lease.lease_id)

    async def _settle_rows(self, page: _Page, result: WindowResult) -> None:
        verdict, batch, broken, lease_id = (
            page.verdict,
            page.batch,
            page.broken,
            page.lease.lease_id,
        )
        rows, voids, triggers = batch.sales, batch.voids, batch.triggers
        done = (
            [s for s, _ in verdict.sales] + [s for s, _ in verdict.voids] + list(verdict.superseded)
        )
        # Finalize only now that the sink has confirmed.
        await self.spool.ack(lease_id, done)
        quarantined = broken + [
            (s, [msgspec.structs.asdict(f) for f in fs]) for s, fs in verdict.quarantined
        ]
        if quarantined:
            await self.spool.quarantine(lease_id, quarantined)
            rids = {e.seq: e.rid for e in page.lease.entries}
            for seq, reasons in quarantined:
                log.info(
                    "store %s: record %s quarantined (%s)",
                    batch.store,
                    rids.get(seq, "?"),
                    ", ".join(sorted({str(r["rule"]) for r in reasons})),
                    extra={
                        "event": "sale.quarantined",
                        "store": batch.store,
                        "record_id": rids.get(seq),
                        "rules": sorted({str(r["rule"]) for r in reasons}),
                    },
                )
        if verdict.held:
            await self.spool.hold(lease_id, verdict.held)
        result.committed += len(rows)
        result.voids += len(voids)
        result.quarantined += len(quarantined)
        result.held += len(verdict.held)
        result.superseded += len(verdict.superseded)
        result.triggers += len(triggers)
        result.warnings += sum(1 for r in rows if r.warnings)
        for reason, n in verdict.skipped.items():
            result.triggers_skipped[reason] = result.triggers_skipped.get(reason, 0) + n
        counts = (rows, voids, quarantined, verdict.held, verdict.superseded, triggers)
        self.metrics.count_page(batch.store, *map(len, counts), skipped=verdict.skipped)

    def _prepare(
        self,
        store: StoreConfig,
        window_at: datetime,
        entries: list[Entry],
        items: list[BatchItem],
        ctx: ValidationContext,
        now: datetime,
    ) -> tuple[BatchVerdict, CommitBatch]:
        """Validate a decoded page and build its sink batch (pure; runs in a thread)."""
        verdict = validate_batch(items, ctx)
        voided = {v.id for _, v in verdict.voids}
        triggers: list[TriggerEvent] = []
        today = business_date(now, self._zones[store.id])
        for _, row in verdict.sales:
            triggers.extend(
                self._triggers_for(
                    row,
                    store,
                    now,
                    voided=row.sale.id in voided,
                    skipped=verdict.skipped,
                    today=today,
                )
            )
        rows = [row for _, row in verdict.sales]
        voids = [v for _, v in verdict.voids]
        batch_id = (
            f"{self.batch_prefix}{store.id}:{window_at.isoformat()}"
            f":{entries[0].seq}-{entries[-1].seq}"
        )
        return verdict, CommitBatch.build(batch_id, store.id, window_at, rows, voids, triggers)

    def _triggers_for(
        self,
        row: SaleRow,
        store: StoreConfig,
        now: datetime,
        *,
        voided: bool = False,
        skipped: Counter[str] | None = None,
        today: date | None = None,
    ) -> list[TriggerEvent]:
        """Trigger events of one committed sale (none once it is voided in the same batch)."""
        return match_triggers(
            row,
            store.id,
            self._zones[store.id],
            self.cfg.triggers,
            now,
            self.cfg.trigger_max_age_days,
            voided=voided,
            skipped=skipped,
            today=today,
        )

    async def _context(
        self,
        store: StoreConfig,
        items: Sequence[BatchItem],
        ids: tuple[set[str], set[str]] | None = None,
    ) -> ValidationContext:
        """The sink's and spool's answers for a batch (`ids`: its `context_ids`, if known)."""
        # References to sales of this same page need no lookup (validation sees the page).
        customers, refs = context_ids(items) if ids is None else ids
        existing_customers = (
            await self.sink.existing_customers(store.id, customers) if customers else set()
        )
        existing_sales = await self.sink.existing_sales(store.id, refs) if refs else set()
        # A return's original or a void's target may sit in a later page of this window.
        missing = sorted(refs - existing_sales)
        pending = await self.spool.pending_ids(store.id, "sale", missing) if missing else set()
        # The page before may have been committed and retired between the two lookups (the
        # sink confirms before the spool retires): what neither had is asked again.
        if gone := set(missing) - pending:
            existing_sales |= await self.sink.existing_sales(store.id, gone)
        return ValidationContext(
            store=store.id,
            zone=self._zones[store.id],
            now=self.clock.now(),
            existing_customers=frozenset(existing_customers),
            existing_sales=frozenset(existing_sales),
            pending_sale_ids=frozenset(pending),
            hold_windows=self.cfg.windows.hold_windows,
            policy=self._policies[store.id],
            cash_rounding=self._cash_steps[store.id],
        )

    async def _with_retry(self, what: str, fn: Callable[[], Awaitable[T]], *, op: str) -> T:
        """Run a sink call, retrying retriable errors with backoff and jitter until stopped
        or until the admin call's `_DEADLINE` (one last attempt then; its error is raised).
        A sink whose file vanished is retriable: nothing was written, rows stay spooled."""
        delay = 0.5
        deadline = _DEADLINE.get()
        while True:
            try:
                result = await fn()
                if self.sink_error is not None:
                    log.info(
                        "sink recovered (%s)", what, extra={"event": "sink.recovered", "what": what}
                    )
                self.sink_error = None
                return result
            except SinkError as exc:
                self.metrics.sink_error(exc.retriable, op)
                if self.sink_error is None:
                    log.warning(
                        "sink failing: %s",
                        exc.message,
                        extra={"event": "sink.failing", "retriable": exc.retriable, "what": what},
                    )
                self.sink_error = exc.message
                if not exc.retriable or self.stop.is_set():
                    raise
                now = self.clock.now().timestamp()
                wait = delay * (0.5 + random.random())
                if deadline is not None:
                    left = deadline.timestamp() - now
                    if left <= 0:
                        raise
                    wait = min(wait, left)
                log.warning("sink %s failed (%s); retrying in %.1fs", what, exc.message, wait)
                await self.clock.wait_until(datetime.fromtimestamp(now + wait, UTC), self.stop)
                if self.stop.is_set():
                    raise
                delay = min(delay * 2, self.cfg.windows.commit_retry_max_s)

    async def deliver_triggers(self) -> int:
        """Deliver every due outbox event to the trigger sink (exactly once)."""
        total = 0
        limit = 1000
        while True:
            with self.metrics.sink_call("deliver"):
                delivered = await self.sink.deliver_due_triggers(self.clock.now(), limit)
            total += len(delivered)
            self.metrics.triggers_delivered.inc(len(delivered))
            if len(delivered) < limit:
                return total

    # ----------------------------------------------------------------- manual sales

    async def commit_manual(self, store: StoreConfig, sales: Sequence[Sale]) -> tuple[int, int]:
        """Manual entries bypass the window: validated and committed at once, triggers fire."""
        zone = self._zones[store.id]
        items = [
            BatchItem(seq=i, record=localize(s, zone), held=self.cfg.windows.hold_windows)
            for i, s in enumerate(sales)
        ]
        with self.metrics.sink_call("lookup"):
            ctx = await self._context(store, items)
        for item in items:
            assert isinstance(item.record, Sale)
            failures = validate_sale(item.record, ctx)
            if failures:
                raise _invalid(failures)
        verdict = validate_batch(items, ctx)
        if verdict.quarantined:
            raise _invalid(verdict.quarantined[0][1])
        now = self.clock.now()
        rows = [row for _, row in verdict.sales]
        skipped: Counter[str] = Counter()
        triggers = [
            ev for row in rows for ev in self._triggers_for(row, store, now, skipped=skipped)
        ]
        digest = hashlib.sha256(
            "|".join(f"{r.sale.id}@{r.version}" for r in rows).encode()
        ).hexdigest()[:16]
        batch = CommitBatch.build(f"manual:{store.id}:{digest}", store.id, now, rows, [], triggers)
        with self.metrics.sink_call("commit"):
            outcome = await self.sink.commit_sales(batch)
        written = 0 if outcome.already_committed else outcome.inserted + outcome.updated
        emitted = 0 if outcome.already_committed else len(triggers)
        self.metrics.count_page(store.id, written, 0, 0, 0, 0, emitted, skipped=skipped)
        await self.deliver_triggers()
        return written, len(sales) - written

    async def recheck(self, store: StoreConfig, record: Sale | Void) -> list[Failure]:
        """Validate one record as its window would (quarantine release); [] when valid."""
        items = [BatchItem(seq=0, record=record, held=0)]
        verdict = validate_batch(items, await self._context(store, items))
        return verdict.quarantined[0][1] if verdict.quarantined else []

    async def preview(self, store: StoreConfig) -> dict[str, Any]:
        """Dry run: validate everything pending for a store without writing."""
        entries = await self.spool.pending_entries(store.id)
        items, failed = await asyncio.to_thread(decode_page, entries, self.checked_from)
        rids = {e.seq: e.rid for e in entries}
        broken = [{"seq": seq, "rid": rids[seq], "failures": fs} for seq, fs in failed]
        verdict = validate_batch(items, await self._context(store, items))
        by_seq = {i.seq: i.record.id for i in items}
        return {
            "store": store.id,
            "pending": len(entries),
            "would_commit": len(verdict.sales),
            "voids": len(verdict.voids),
            "held": [by_seq[s] for s in verdict.held],
            "superseded": len(verdict.superseded),
            "invalid": broken
            + [
                {"seq": s, "rid": by_seq[s], "failures": [msgspec.structs.asdict(f) for f in fs]}
                for s, fs in verdict.quarantined
            ],
            "next_window": self.windows.visible_at(store).isoformat(),
        }


class _Page(msgspec.Struct, frozen=True):
    """A leased, decoded and validated page, ready to be written."""

    lease: Lease
    verdict: BatchVerdict
    batch: CommitBatch
    broken: list[tuple[int, list[dict[str, Any]]]]


def _decode(
    entries: list[Entry], checked_from: int | None
) -> tuple[list[BatchItem], list[tuple[int, list[dict[str, Any]]]], tuple[set[str], set[str]]]:
    """A page decoded, and the ids its context must look up (off the loop, in one hop)."""
    items, broken = decode_page(entries, checked_from)
    return items, broken, context_ids(items)


def _store_policy(store: StoreConfig) -> dict[str, RulePolicy]:
    adapter = get_adapter(store.source)
    return rule_policy(adapter.rule_defaults if adapter is not None else {}, store.rules)


def _invalid(failures: Sequence[Failure]) -> RecordInvalid:
    first = failures[0]
    return RecordInvalid(f"{first.rule}: {first.message}", field=first.field)
