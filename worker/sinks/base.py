"""The Sink extension point: where committed data lands (the clienteling database).

A sink is opened as one async context (`open_sink(config)` in `worker.sinks`) and offers:

* `upsert_entities`: customers/products in real time, one transaction, version-guarded
  (an older version never overwrites a newer one; equal version is a no-op).
* `commit_sales`: one window batch (sales + lines + tenders + voids + trigger outbox rows +
  a manifest) in ONE transaction, idempotent by `batch_id` and by (store, sale id, version).
  Re-running a batch that already committed returns `already_committed=True` and writes
  nothing. A sale whose stored version is >= the batch's version is left alone (unchanged).
* `deliver_due_triggers`: moves due outbox events to the trigger sink (`trigger_events`)
  exactly once (both in one transaction).
* reads for the HTTP API and validation (existence checks, sales log, report, triggers).
* `health`: raise `SinkError` when the sink cannot take writes.

Every failure is a `SinkError` whose `retriable` flag drives the caller's backoff.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import msgspec

from worker.records import Entity, Sale, Void


class EntityOutcome(msgspec.Struct, frozen=True):
    """Result of an entity upsert: rows written vs. rows skipped as stale or equal."""

    applied: int
    stale: int


class SaleRow(msgspec.Struct, frozen=True, kw_only=True):
    """A validated sale ready for commit. `sale.business_date` is always set."""

    sale: Sale
    version: int
    customer_linked: bool = True
    # What validation let through but wants seen: "rule: message", one per warning.
    warnings: tuple[str, ...] = ()

    def warning_text(self) -> str | None:
        """The warnings as the sinks store them: a JSON array, or NULL when there are none."""
        return msgspec.json.encode(list(self.warnings)).decode() if self.warnings else None


def warnings_of(stored: str | None) -> list[str]:
    """The stored `warning` column back as a list (older rows hold one plain message)."""
    if not stored:
        return []
    if stored.startswith("["):
        try:
            return list(msgspec.json.decode(stored, type=list[str]))
        except msgspec.DecodeError:
            pass
    return [stored]


class TriggerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One sales-trigger event (outbox row). `event_id` is deterministic: store:sale:trigger."""

    event_id: str
    store: str
    sale_id: str
    trigger: str
    action: str
    customer_id: str | None
    total: Decimal
    business_date: date
    due_date: date
    due_at: datetime  # UTC instant of store-local midnight of due_date
    created_at: datetime


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Counts, sums and a hash of the ids of one committed batch (for audit)."""

    batch_id: str
    store: str
    window_at: datetime
    sales: int
    voids: int
    triggers: int
    total_sum: Decimal
    ids_sha256: str


class CommitBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one sink transaction writes."""

    batch_id: str
    store: str
    window_at: datetime
    sales: Sequence[SaleRow]
    voids: Sequence[Void]
    triggers: Sequence[TriggerEvent]
    manifest: Manifest


class CommitOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a commit did."""

    batch_id: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    voided: int = 0
    triggers: int = 0
    already_committed: bool = False


class ReportRow(msgspec.Struct, frozen=True, kw_only=True):
    """A Sales Report row for one (business date, currency); voided sales are left out of
    the sums and counted in `voided`. `returns` is the sum of negative totals (as a positive
    figure), `returns_count` the number of returns (kind "return" or a negative total)."""

    date: date
    currency: str
    count: int
    gross: Decimal
    returns: Decimal
    returns_count: int
    net: Decimal
    voided: int


class ReportDay:
    """Running Sales Report sums of one (business date, currency), in exact Decimals."""

    __slots__ = ("count", "gross", "returns", "returns_count", "voided")

    def __init__(self) -> None:
        self.count = 0
        self.gross = Decimal(0)
        self.returns = Decimal(0)
        self.returns_count = 0
        self.voided = 0

    def add(self, total: Decimal, kind: str, voided: bool) -> None:
        """Count one committed sale."""
        if voided:
            self.voided += 1
            return
        self.count += 1
        if total > 0:
            self.gross += total
        elif total < 0:
            self.returns -= total
        if kind == "return" or total < 0:
            self.returns_count += 1

    def row(self, day: date, currency: str) -> ReportRow:
        """The finished row."""
        return ReportRow(
            date=day,
            currency=currency,
            count=self.count,
            gross=self.gross,
            returns=self.returns,
            returns_count=self.returns_count,
            net=self.gross - self.returns,
            voided=self.voided,
        )


# The Sales Log's fields, in order, as both sinks return them (`warning` comes back as
# the list `warnings`). Those in SALE_LOG_FROM_BODY live only in the canonical body (one
# source of truth); the value is what a body written before the field existed means.
SALE_LOG_COLUMNS: tuple[str, ...] = (
    "id",
    "version",
    "business_date",
    "occurred_at",
    "kind",
    "origin",
    "channel",
    "customer_id",
    "customer_linked",
    "employee_id",
    "original_id",
    "display_number",
    "location_id",
    "register_id",
    "currency",
    "subtotal",
    "discount",
    "tax",
    "shipping",
    "fees",
    "tip",
    "rounding",
    "total",
    "tax_included",
    "line_count",
    "voided",
    "voided_at",
    "warning",
    "committed_at",
    "batch_id",
)
SALE_LOG_FROM_BODY: dict[str, str | bool | None] = {
    "discount": None,
    "rounding": "0",
    "tax_included": False,
}


# A list page's position (`worker.pages`): the last row's sort key, instants as `utc_text`.
# The Sales Log's is (occurred_at, id), the trigger events' (created_at, event_id).
PageKey = tuple[str, str]

# What `list_triggers(state=...)` filters on: `due` is pending with due_at <= now.
TRIGGER_STATES = ("pending", "due", "delivered", "cancelled")


class Sink(Protocol):
    """A destination for customers, products and committed sales."""

    name: str

    async def health(self) -> None:
        """Raise SinkError if the sink cannot take writes now."""
        ...

    async def upsert_entities(self, store: str, records: Sequence[Entity]) -> EntityOutcome:
        """Upsert customers/products in one transaction, never going back in version."""
        ...

    async def commit_sales(self, batch: CommitBatch) -> CommitOutcome:
        """Write one batch atomically and idempotently."""
        ...

    async def deliver_due_triggers(self, now: datetime, limit: int = 1000) -> list[TriggerEvent]:
        """Move outbox events with due_at <= now to trigger_events, exactly once."""
        ...

    async def existing_customers(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are customers of `store` in the sink."""
        ...

    async def existing_sales(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are committed sales of `store`."""
        ...

    async def get_customer(self, store: str, customer_id: str) -> dict[str, Any] | None:
        """The stored customer as a JSON-able dict (its canonical record + version)."""
        ...

    async def get_product(self, store: str, product_id: str) -> dict[str, Any] | None:
        """The stored product as a JSON-able dict."""
        ...

    async def get_sale(self, store: str, sale_id: str) -> dict[str, Any] | None:
        """One committed sale: the canonical record's fields with `lines` and `tenders` read
        from their tables, the sink's state (version, voided, voided_at, customer_linked,
        warnings, committed_at, batch_id) and `record`, the canonical record as stored."""
        ...

    async def sales_log(
        self,
        store: str,
        day: date,
        limit: int = 10_000,
        *,
        after: PageKey | None = None,
        customer: str | None = None,
    ) -> list[dict[str, Any]]:
        """Committed sales of a business date (voided ones included, flagged) in
        (occurred_at, id) order, the first `limit` after the position `after`, only
        `customer`'s when given: one dict per sale with the SALE_LOG_COLUMNS (exact money
        text) and `warnings` (a list)."""
        ...

    async def count_sales(self, store: str, day: date, *, customer: str | None = None) -> int:
        """How many sales the whole Sales Log of `day` (only `customer`'s when given) holds."""
        ...

    async def sales_report(self, store: str, start: date, end: date) -> list[ReportRow]:
        """One row per (business date, currency) in [start, end] that has sales."""
        ...

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
        """Trigger events of a store: outbox (pending) and delivered, newest first by
        (created_at, event_id), the first `limit` before the position `before`; only those
        in `state` (one of TRIGGER_STATES; `due` needs `now`) and of rule `trigger`."""
        ...

    async def counts(self) -> dict[str, int]:
        """Row counts per table, for /status and tests."""
        ...


def latest_per_sale(rows: Sequence[SaleRow]) -> tuple[dict[str, SaleRow], int]:
    """The highest version of each sale id in a batch, and how many rows lost to it."""
    best: dict[str, SaleRow] = {}
    for row in rows:
        seen = best.get(row.sale.id)
        if seen is None or row.version > seen.version:
            best[row.sale.id] = row
    return best, len(rows) - len(best)


def utc_text(value: datetime) -> str:
    """Fixed-width UTC text, so comparing strings compares instants."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: sinks store aware UTC instants only")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def utc_text_opt(value: datetime | None) -> str | None:
    """`utc_text` or None."""
    return None if value is None else utc_text(value)
