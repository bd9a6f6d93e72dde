"""The Sink extension point: where committed data lands (the clienteling database).

A sink is opened as one async context (`open_sink(config)` in `worker.sinks`, the registry)
and has two sides, each the type its consumers use:

* `Sink`, the write side (intake, committer): `health` (raise `SinkError` when the sink
  cannot take writes); `upsert_entities` (customers/products in real time, one
  transaction, version-guarded: an older version never overwrites a newer one, an equal
  one is a no-op); `commit_sales` (one `worker.batch.CommitBatch` in ONE transaction,
  idempotent by `batch_id` and by (store, sale id, version): re-running a committed batch
  returns `already_committed=True` and writes nothing, a sale whose stored version is >= the
  batch's is left alone); `deliver_due_triggers` (moves due outbox events to
  `trigger_events` exactly once); the existence checks validation needs.
* `SinkReader`, the read side (HTTP read API, /status): customers, products, one sale, the
  Sales Log and its count, the Sales Report, trigger events, row counts.

`ClientBook` is both: what the registry yields. Every failure is a `SinkError` whose
`retriable` flag drives the caller's backoff. The SQL sinks share one implementation of
both sides (`worker.sinks.sql`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import msgspec

from worker.batch import CommitBatch, CommitOutcome, TriggerEvent
from worker.records import Entity


class EntityOutcome(msgspec.Struct, frozen=True):
    """Result of an entity upsert: rows written vs. rows skipped as stale or equal."""

    applied: int
    stale: int


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


# A list page's position (`worker.api.pages`): the last row's sort key, instants as `utc_text`.
# The Sales Log's is (occurred_at, id), the trigger events' (created_at, event_id).
PageKey = tuple[str, str]

# What `list_triggers(state=...)` filters on: `due` is pending with due_at <= now.
TRIGGER_STATES = ("pending", "due", "delivered", "cancelled")


class Sink(Protocol):
    """The write side of a sink: where customers, products and committed sales land."""

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


class SinkReader(Protocol):
    """The read side of a sink: what the HTTP read API and /status ask it."""

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


class ClientBook(Sink, SinkReader, Protocol):
    """A configured sink: both sides (what `open_sink` yields)."""


def utc_text(value: datetime) -> str:
    """Fixed-width UTC text, so comparing strings compares instants."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: sinks store aware UTC instants only")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def utc_text_opt(value: datetime | None) -> str | None:
    """`utc_text` or None."""
    return None if value is None else utc_text(value)
