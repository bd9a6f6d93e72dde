"""The Buffer extension point: durable per-store buffers for sales and voids.

A buffer is passive: callers append (durable on return), lease a page of pending rows,
then ack (after the sink confirmed), hold (re-offer next window), or quarantine them.
Leases live in memory only, so a crash "returns" every leased row by construction.

Three protocols, the types their consumers hold (`keys.SPOOL` is a `Buffer`):

* `Buffer`: append / lease / ack / hold / quarantine and occupancy (intake, committer,
  backfill, /status). One active writer drives its commits.
* `Quarantine` (`Buffer.quarantined`): what the windows quarantined, its admin moves
  (release back to the buffer, discard) and the audit log of those moves.
* `BufferState` (`Buffer.state`): transport delivery ids seen (webhook dedup) and the
  scheduler's per-store state (last window, paused).

The SQLite implementation: `buffers/sqlite.py` (+ `quarantine.py`, `state.py`,
`sqlite_file.py`). A second buffer implements these three and an `open_*` context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from worker.records import SPOOLED_DECODER, Spooled

Priority = Literal["live", "bulk"]


class AppendResult(msgspec.Struct, frozen=True):
    """Per request: records newly durable vs. records the buffer already had (same or newer)."""

    accepted: int
    duplicates: int


# One spooled record as the caller encoded it: (kind, rid, effective version, origin,
# canonical body).
SpoolRow = tuple[str, str, int, str, bytes]


class Entry(msgspec.Struct, frozen=True, gc=False):
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


class QuarantineFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which quarantined records a list or count covers (None: no bound)."""

    store: str | None = None
    rule: str | None = None
    since: float | None = None  # quarantined_at >= since
    until: float | None = None  # quarantined_at < until


def decode_entry(entry: Entry) -> Spooled:
    """The canonical record stored in a buffer row."""
    return SPOOLED_DECODER.decode(entry.body)


class Quarantine(Protocol):
    """Quarantined records (newest first lists, keyset paged on qid) and their admin moves."""

    async def latest(
        self, store: str | None, limit: int = 1000, *, before: int | None = None
    ) -> list[QuarantineItem]:
        """Quarantined records, newest first (qid < `before` when given)."""
        ...

    async def page(
        self, f: QuarantineFilter, limit: int, before: int | None
    ) -> tuple[list[QuarantineItem], int]:
        """One page of the records matching `f` (newest first) and the count of all."""
        ...

    async def rules(self, store: str) -> dict[str, int]:
        """Per rule id, how many of the store's quarantined records failed it."""
        ...

    async def by_rule(self, store: str, rule: str, limit: int = 100_000) -> list[QuarantineItem]:
        """A store's quarantined records that failed `rule` (among others), oldest first."""
        ...

    async def count(self, store: str) -> int:
        """Quarantine size of a store."""
        ...

    async def counts(self) -> dict[str, int]:
        """Quarantine size of every store that has any."""
        ...

    async def get(self, qid: int) -> QuarantineItem | None:
        """One quarantined record."""
        ...

    async def release(self, qid: int, record: Spooled, actor: str) -> bool:
        """Move a record (possibly corrected) back to the buffer, with an audit entry."""
        ...

    async def discard(self, qid: int, actor: str, reason: str) -> bool:
        """Delete a quarantined record, keeping an audit entry with its body."""
        ...

    async def audit_log(
        self, limit: int = 100, *, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries newest first (id < `before` when given); `at` ISO-8601 UTC."""
        ...


class BufferState(Protocol):
    """Small durable state kept beside the buffer: delivery ids and per-store values."""

    async def seen_delivery(self, store: str, source: str, delivery_id: str) -> bool:
        """Whether this transport delivery id was already processed."""
        ...

    async def remember_delivery(
        self, store: str, source: str, delivery_id: str, keep_s: float = 7 * 86400
    ) -> None:
        """Record a processed delivery id (kept `keep_s`)."""
        ...

    async def get(self, store: str) -> dict[str, Any]:
        """Per-store key/value state (JSON values)."""
        ...

    async def put(self, store: str, values: dict[str, Any]) -> None:
        """Upsert per-store state."""
        ...

    async def last_seq(self) -> int:
        """The highest seq any row of the buffer has had (0: none); later rows get higher."""
        ...


class Buffer(Protocol):
    """Durable per-store buffer with one writer."""

    # Called after each committed group with (records, seconds): the metrics hook.
    on_group: Callable[[int, float], None] | None

    @property
    def quarantined(self) -> Quarantine:
        """The quarantine room of this buffer."""
        ...

    @property
    def state(self) -> BufferState:
        """The delivery ids and per-store state kept beside this buffer."""
        ...

    @property
    def path(self) -> Path:
        """Where the buffer lives (shown on /status)."""
        ...

    @property
    def groups(self) -> int:
        """Group commits so far."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last group commit's failure, None once one succeeded."""
        ...

    @property
    def recovered_from(self) -> str | None:
        """Where a damaged buffer went at start-up and what was salvaged from it."""
        ...

    @property
    def file_note(self) -> str | None:
        """A buffer opened before was found missing or empty at start-up."""
        ...

    @property
    def integrity(self) -> str | None:
        """The background integrity check's verdict ("ok"), None until it ran."""
        ...

    @property
    def writer_alive(self) -> bool:
        """Whether the group-commit writer is running."""
        ...

    def check_room(self, store: str, records: Sequence[Spooled]) -> None:
        """Raise now (SpoolFull, Unavailable) if `append(store, records)` would be refused."""
        ...

    def check_room_rows(self, store: str, rows: int, nbytes: int) -> None:
        """`check_room` for rows already encoded: `rows` records of `nbytes` bytes in all."""
        ...

    def live_waiting(self) -> bool:
        """True while live appends are staged (bulk producers yield to them)."""
        ...

    async def append(
        self, store: str, records: Sequence[Spooled], *, priority: Priority = "live"
    ) -> AppendResult:
        """Stage, group-commit, and return once every accepted record is on disk."""
        ...

    async def append_rows(
        self,
        store: str,
        rows: Sequence[SpoolRow],
        *,
        priority: Priority = "live",
        nbytes: int | None = None,
    ) -> AppendResult:
        """`append` of records the caller already encoded (`nbytes`: their bodies' total)."""
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

    def total_pending(self) -> int:
        """Pending rows over all stores."""
        ...

    async def oldest(self, store: str) -> float | None:
        """Arrival time (unix s) of the oldest pending row of a store."""
        ...

    async def oldest_many(self, stores: Sequence[str]) -> dict[str, float]:
        """`oldest` of many stores at once (stores without pending rows are left out)."""
        ...

    async def pending_ids(self, store: str, kind: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are pending (not retired) in the store's buffer."""
        ...

    async def pending_entries(self, store: str, limit: int = 100_000) -> list[Entry]:
        """Every pending row of a store (for previews)."""
        ...

    async def check(self) -> None:
        """Readiness: the buffer accepts a write (raises Unavailable / StorageFull)."""
        ...

    async def check_wal(self) -> None:
        """Readiness: red while lost log frames await an operator's review."""
        ...
