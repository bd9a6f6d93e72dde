"""The Adapter extension point: a native POS payload in, canonical records out.

An adapter is a pure, synchronous parser (no I/O): `parse(body, ctx)` returns the records
it could read plus per-item rejections. A payload it cannot read at all raises
`RecordInvalid` (400, naming the field); a bad signature raises `AuthError` (401); a
content type it does not speak raises `UnsupportedMediaType` (415). Nothing is applied
until the whole payload has been parsed, so a 400 never half-applies.

Rejections are capped where they are made: an adapter calls `Parsed.reject`, which keeps
the `MAX_REJECTIONS` lowest-indexed ones itemized and only counts the rest
(`rejected_count`), so a payload of a million bad items costs a thousand `Rejection`s, not
a million (every answer, report and notice itemizes the same first N and states the total).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import msgspec

from worker.config import RulePolicy, StoreConfig
from worker.records import Record

if TYPE_CHECKING:
    from worker.adapters.mapping.spec import MappingSpec


# How many rejections a parse keeps itemized (and every answer, inbox report, MQTT notice and
# backfill result shows); beyond it they are only counted, in `rejected_count`.
MAX_REJECTIONS = 1_000


class Rejection(msgspec.Struct, frozen=True):
    """One item of a payload that could not be read: index in the payload, reason, field path."""

    index: int
    error: str
    field: str | None


class AdapterContext(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter knows besides the body."""

    store: StoreConfig
    zone: ZoneInfo
    headers: Mapping[str, str]  # lower-cased header names
    content_type: str  # media type only, lower-case, e.g. "application/json"
    received_at: datetime
    topic: str | None = None  # MQTT kind / Shopify topic / file name
    filename: str | None = None  # for file drops and uploads
    mapping: Mapping[str, Any] | None = None  # declarative mapping for file/CSV sources
    spec: MappingSpec | None = None  # the same mapping compiled (mapping sources), if known


class StoreContext(msgspec.Struct, frozen=True, kw_only=True):
    """What every push of one store shares: built once per store at start-up.

    `mapping` is the store's mapping table (mapping sources; a the_edge `fields` table),
    `spec` the mapping compiled, so no push compiles it again.
    """

    store: StoreConfig
    zone: ZoneInfo
    mapping: Mapping[str, Any] | None = None
    spec: MappingSpec | None = None

    def for_push(
        self,
        *,
        headers: Mapping[str, str],
        content_type: str,
        received_at: datetime,
        topic: str | None = None,
        filename: str | None = None,
    ) -> AdapterContext:
        """The adapter context of one push of this store (header names lower-cased here)."""
        return AdapterContext(
            store=self.store,
            zone=self.zone,
            headers={k.lower(): v for k, v in headers.items()},
            content_type=content_type,
            received_at=received_at,
            topic=topic,
            filename=filename,
            mapping=self.mapping,
            spec=self.spec,
        )


def _index(r: Rejection) -> int:
    return r.index


class Parsed(msgspec.Struct, kw_only=True):
    """An adapter's output.

    `rejected` holds at most `MAX_REJECTIONS` rejections, the lowest indices, in index
    order; `rejected_count` counts all of them (never less than `len(rejected)`).
    """

    records: list[Record] = msgspec.field(default_factory=list)
    rejected: list[Rejection] = msgspec.field(default_factory=list)
    rejected_count: int = 0
    dropped: dict[str, int] = msgspec.field(default_factory=dict)  # e.g. {"test_order": 1}
    delivery_id: str | None = None  # transport-level dedup key (X-Shopify-Webhook-Id, file hash)

    def __post_init__(self) -> None:
        self.rejected_count = max(self.rejected_count, len(self.rejected))

    def reject(self, index: int, error: str, field: str | None) -> None:
        """Count one unreadable item; keep it itemized only while it is among the first N.

        No `Rejection` is built for an item past the cap, so memory stays bounded whatever
        the payload. Items usually come in index order (an append); an adapter that finds
        some late (grouped sales) still ends with the N lowest indices, sorted.
        """
        self.rejected_count += 1
        kept = self.rejected
        if kept and index < kept[-1].index:
            bisect.insort(kept, Rejection(index, error, field), key=_index)
            if len(kept) > MAX_REJECTIONS:
                kept.pop()
        elif len(kept) < MAX_REJECTIONS:
            kept.append(Rejection(index, error, field))


class Adapter(Protocol):
    """Turns one native payload into canonical records."""

    name: str
    # True when the payload carries its own credential (an HMAC over the raw body) that
    # `parse` verifies before reading anything; the intake then skips the bearer token.
    signed: bool
    # Window-rule policies for this source's sales, where a correct export of the POS
    # cannot satisfy a rule (see `worker.validation`); a store's `rules` override them.
    rule_defaults: Mapping[str, RulePolicy]

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Parse a whole payload. Raise RecordInvalid/AuthError/UnsupportedMediaType."""
        ...
