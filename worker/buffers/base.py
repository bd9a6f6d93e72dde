"""The Buffer extension point: durable per-store buffers for sales and voids.

A buffer is passive: callers append (durable on return), lease a page of pending rows,
then ack (after the sink confirmed), hold (re-offer next window), or quarantine them.
Leases live in memory only, so a crash "returns" every leased row by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec

from worker.records import Spooled

Priority = Literal["live", "bulk"]


class AppendResult(msgspec.Struct, frozen=True):
    """Per request: records newly durable vs. records the buffer already had (same or newer)."""

    accepted: int
    duplicates: int


class Entry(msgspec.Struct, frozen=True):
    """One pending row."""

    seq: int
    store: str
    kind: str  # "sale" | "void"
    rid: str
    version: int
    origin: str
    received_at: float  # unix seconds
    held: int
    body: bytes


class Lease(msgspec.Struct, frozen=True):
    """A page of pending rows handed to the committer."""

    lease_id: int
    store: str
    entries: list[Entry]

    @property
    def last_seq(self) -> int:
        """Highest seq in the page (page cursor), 0 when empty."""
        return self.entries[-1].seq if self.entries else 0


class StoreStats(msgspec.Struct, frozen=True):
    """A store's buffer occupancy."""

    pending: int
    bytes: int
    oldest_received_at: float | None


class QuarantineItem(msgspec.Struct, frozen=True):
    """One quarantined record with every reason it failed."""

    qid: int
    store: str
    kind: str
    rid: str
    version: int
    received_at: float
    quarantined_at: float
    reasons: list[dict[str, Any]]
    body: bytes


class Buffer(Protocol):
    """Durable per-store buffer with one writer."""

    async def append(
        self, store: str, records: Sequence[Spooled], *, priority: Priority = "live"
    ) -> AppendResult:
        """Stage, group-commit, and return once every accepted record is on disk."""
        ...

    async def lease(self, store: str, *, upto: datetime, after_seq: int, limit: int) -> Lease:
        """Pending rows received at or before `upto`, seq > after_seq, in seq order."""
        ...

    async def ack(self, lease_id: int, seqs: Sequence[int]) -> None:
        """The sink committed these rows: retire them (keeping key+version for dedup)."""
        ...

    async def release(self, lease_id: int) -> None:
        """Drop the lease without retiring its rows."""
        ...

    async def hold(self, lease_id: int, seqs: Sequence[int]) -> None:
        """Keep these rows for the next window and count one more hold."""
        ...

    async def quarantine(
        self, lease_id: int, items: Sequence[tuple[int, list[dict[str, Any]]]]
    ) -> None:
        """Move rows out of the buffer into quarantine with their reasons."""
        ...

    def stats(self, store: str) -> StoreStats:
        """Occupancy from memory (exact; maintained by the writer)."""
        ...
