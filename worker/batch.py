"""The committer-to-sink contract: what one window commit hands a sink, and what it answers.

Produced by the window (`worker.committer`, with `worker.validation` building `SaleRow`s and
`worker.triggers` the `TriggerEvent`s) and consumed by every `Sink.commit_sales`:

* `CommitBatch`: one sink transaction's worth (sales, voids, trigger outbox rows, manifest),
  identified by `batch_id`, which makes the commit idempotent; `CommitBatch.build` makes one
  with its manifest.
* `SaleRow`: a validated sale with the version it is stored under, whether its customer is
  linked, and the warnings validation let through.
* `CommitOutcome`: what the commit did (inserted / updated / unchanged / voided / triggers),
  `already_committed` when the batch id had committed before and nothing was written.
* `latest_per_sale`: the one rule every sink applies to a batch: the highest version wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal

import msgspec

from worker.records import Sale, Void, encode


class SaleRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A validated sale ready for commit. `sale.business_date` is always set."""

    sale: Sale
    version: int
    customer_linked: bool = True
    # What validation let through but wants seen: "rule: message", one per warning.
    warnings: tuple[str, ...] = ()
    # `encode(sale)`, when the window already has it (the spooled bytes with the business
    # date filled in, `records.localized_body`): the sinks store it instead of encoding again.
    body: bytes | None = None

    def body_text(self) -> str:
        """The canonical JSON of the sale, as the sinks store it."""
        return (self.body if self.body is not None else encode(self.sale)).decode()

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


class TriggerEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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

    @classmethod
    def build(
        cls,
        batch_id: str,
        store: str,
        window_at: datetime,
        rows: Sequence[SaleRow],
        voids: Sequence[Void],
        triggers: Sequence[TriggerEvent],
    ) -> CommitBatch:
        """One sink transaction's worth, with the manifest that lets it be checked afterwards:
        the ids hashed are `sale@version` and `void:id`, each group sorted."""
        ids = sorted(f"{r.sale.id}@{r.version}" for r in rows) + sorted(
            f"void:{v.id}" for v in voids
        )
        total = Decimal(0)
        for r in rows:
            total += r.sale.total
        manifest = Manifest(
            batch_id=batch_id,
            store=store,
            window_at=window_at,
            sales=len(rows),
            voids=len(voids),
            triggers=len(triggers),
            total_sum=total,
            ids_sha256=hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        )
        return cls(
            batch_id=batch_id,
            store=store,
            window_at=window_at,
            sales=rows,
            voids=voids,
            triggers=triggers,
            manifest=manifest,
        )


class CommitOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a commit did."""

    batch_id: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    voided: int = 0
    triggers: int = 0
    already_committed: bool = False


def latest_per_sale(rows: Sequence[SaleRow]) -> tuple[dict[str, SaleRow], int]:
    """The highest version of each sale id in a batch, and how many rows lost to it."""
    best: dict[str, SaleRow] = {}
    for row in rows:
        seen = best.get(row.sale.id)
        if seen is None or row.version > seen.version:
            best[row.sale.id] = row
    return best, len(rows) - len(best)
