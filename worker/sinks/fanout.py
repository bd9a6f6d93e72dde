"""The fanout: the primary sink, then the outbox, as one `ClientBook`.

`[sink]` stays the system of record (reads, /status, the window's idempotency); when
`[[outputs]]` are configured, `open_sink` yields a `FanoutBook` around it. Each write goes to
the primary first and, once the primary confirmed, its events are appended to the durable
outbox (`worker.sinks.outbox`) before the call returns, so the spool row is acknowledged (or
the push answered) only when both are on disk:

* `commit_sales`: the batch's sales (newest version per id), voids, trigger events (with
  their `due_at`) and manifest. Also when the primary answers `already_committed`: a crash
  between the primary's commit and the append leaves the rows in the spool, the window
  re-runs, the primary does nothing and the append (idempotent by event id) lands.
* `upsert_entities`: the customer and product events, also for versions the primary already
  held (the push may be the retry of one whose append failed).

An append that fails is a retriable `SinkError` naming `outbox`: the committer retries the
batch and a push gets 503, exactly as for a primary failure. Reads delegate to the primary.
Event ids are `worker.sinks.outputs.OutEvent`'s.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Sequence
from datetime import date, datetime
from typing import Any

import msgspec

from worker.batch import CommitBatch, CommitOutcome, TriggerEvent, latest_per_sale
from worker.clock import Clock
from worker.config import RecordKind
from worker.errors import SinkError, SinkFull
from worker.records import ENCODER, Customer, Entity
from worker.sinks.base import ClientBook, EntityOutcome, PageKey, ReportRow
from worker.sinks.outbox import Outbox, Staged
from worker.sinks.outputs import OutEvent

log = logging.getLogger("possync.fanout")


def _event(eid: str, kind: RecordKind, store: str, at: datetime, body: object) -> OutEvent:
    return OutEvent(
        event_id=eid, kind=kind, store=store, at=at, body=msgspec.Raw(ENCODER.encode(body))
    )


def batch_events(batch: CommitBatch, at: datetime) -> list[Staged]:
    """The outbox items of one committed batch: sales, voids, triggers, then the manifest."""
    store = batch.store
    latest, _ = latest_per_sale(batch.sales)
    sales = [
        Staged(
            event=_event(f"sale:{store}:{r.sale.id}:{r.version}", "sale", store, at, r.sale),
            sale_id=r.sale.id,
        )
        for r in latest.values()
    ]
    voids = [
        Staged(
            event=_event(f"void:{store}:{v.id}:{v.effective_version}", "void", store, at, v),
            sale_id=v.id,
        )
        for v in batch.voids
    ]
    triggers = [
        Staged(
            event=_event(f"trigger:{t.event_id}", "trigger", store, at, t),
            due_at=t.due_at,
            sale_id=t.sale_id,
        )
        for t in batch.triggers
    ]
    manifest = Staged(
        event=_event(f"manifest:{batch.batch_id}", "manifest", store, at, batch.manifest)
    )
    return [*sales, *voids, *triggers, manifest]


def entity_events(store: str, records: Sequence[Entity], at: datetime) -> list[Staged]:
    """The outbox items of an entity upsert: the newest version of each (type, id)."""
    best: dict[tuple[RecordKind, str], Entity] = {}
    for rec in records:
        key: tuple[RecordKind, str] = (
            "customer" if isinstance(rec, Customer) else "product",
            rec.id,
        )
        seen = best.get(key)
        if seen is None or rec.effective_version > seen.effective_version:
            best[key] = rec
    return [
        Staged(
            event=_event(f"{kind}:{store}:{rec.id}:{rec.effective_version}", kind, store, at, rec)
        )
        for (kind, _), rec in best.items()
    ]


class FanoutBook:
    """A `ClientBook`: writes go to the primary, then their events to the outbox."""

    def __init__(self, primary: ClientBook, outbox: Outbox, clock: Clock) -> None:
        self.primary = primary
        self.outbox = outbox
        self.clock = clock
        self.name = primary.name

    @property
    def recovered_from(self) -> Any:
        """The primary's note of a damaged file moved aside (SQLite), else None."""
        return getattr(self.primary, "recovered_from", None)

    async def _append(self, items: Sequence[Staged]) -> None:
        try:
            await self.outbox.append(items)
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise SinkFull("outbox: disk full") from None
            raise SinkError(
                f"outbox append failed ({type(exc).__name__})",
                retriable=True,
                field="outbox",
                retry_after_s=5,
            ) from None

    async def health(self) -> None:
        """The primary's health (the outbox's delivery tasks are on /readyz on their own)."""
        await self.primary.health()

    async def upsert_entities(self, store: str, records: Sequence[Entity]) -> EntityOutcome:
        """Primary upsert, then the entities' events into the outbox."""
        out = await self.primary.upsert_entities(store, records)
        if self.outbox.wants("customer") or self.outbox.wants("product"):
            await self._append(entity_events(store, records, self.clock.now()))
        return out

    async def commit_sales(self, batch: CommitBatch) -> CommitOutcome:
        """Primary commit (or its `already_committed`), then the batch's events."""
        outcome = await self.primary.commit_sales(batch)
        await self._append(batch_events(batch, self.clock.now()))
        return outcome

    async def deliver_due_triggers(self, now: datetime, limit: int = 1000) -> list[TriggerEvent]:
        """The primary's own trigger delivery (its `trigger_events` table)."""
        return await self.primary.deliver_due_triggers(now, limit)

    async def existing_customers(self, store: str, ids: Collection[str]) -> set[str]:
        """Delegated to the primary."""
        return await self.primary.existing_customers(store, ids)

    async def existing_sales(self, store: str, ids: Collection[str]) -> set[str]:
        """Delegated to the primary."""
        return await self.primary.existing_sales(store, ids)

    async def get_customer(self, store: str, customer_id: str) -> dict[str, Any] | None:
        """Delegated to the primary."""
        return await self.primary.get_customer(store, customer_id)

    async def get_product(self, store: str, product_id: str) -> dict[str, Any] | None:
        """Delegated to the primary."""
        return await self.primary.get_product(store, product_id)

    async def get_sale(self, store: str, sale_id: str) -> dict[str, Any] | None:
        """Delegated to the primary."""
        return await self.primary.get_sale(store, sale_id)

    async def sales_log(
        self,
        store: str,
        day: date,
        limit: int = 10_000,
        *,
        after: PageKey | None = None,
        customer: str | None = None,
    ) -> list[dict[str, Any]]:
        """Delegated to the primary."""
        return await self.primary.sales_log(store, day, limit, after=after, customer=customer)

    async def count_sales(self, store: str, day: date, *, customer: str | None = None) -> int:
        """Delegated to the primary."""
        return await self.primary.count_sales(store, day, customer=customer)

    async def sales_report(self, store: str, start: date, end: date) -> list[ReportRow]:
        """Delegated to the primary."""
        return await self.primary.sales_report(store, start, end)

    async def list_triggers(
        self,
        store: str,
        limit: int = 1000,
        *,
        before: PageKey | None = None,
        state: str | None = None,
        trigger: str | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Delegated to the primary."""
        return await self.primary.list_triggers(
            store, limit, before=before, state=state, trigger=trigger, now=now
        )

    async def counts(self) -> dict[str, int]:
        """Delegated to the primary."""
        return await self.primary.counts()

    async def outputs_status(self) -> dict[str, dict[str, Any]]:
        """The /status `outputs` section."""
        return await self.outbox.status()
