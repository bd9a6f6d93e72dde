"""Intake: a push in any transport -> adapter -> router -> sink (now) or spool (window).

    body --adapter--> canonical records --+-- customers, products --> sink.upsert (real time)
                                          +-- sales, voids --------> spool.append (durable)
                                          +-- manual sales ---------> committer (at once)

`ingest` returns only when every accepted record is durable: the spool group containing it
has committed (fsync) and/or the sink transaction has committed. Any failure raises a
`PossyncError` and the whole request may be retried: every write is idempotent by natural
key and version, so a retry after a partial failure cannot double anything.

A push is decided whole before any of it is written: when the spool cannot take its sales
(`SpoolFull`, 503) none of its customers or products are upserted either.

Credentials come first (`admit`, from the headers, before the body is read): push routes take
only the store's own token (the admin token is for reads and operations); a signed source
(Shopify) needs its signature header and a configured secret, and is verified against the
body by its adapter. An unknown store answers exactly as a wrong credential does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import msgspec

from worker.adapters import get_adapter
from worker.adapters.base import AdapterContext, Parsed, Rejection
from worker.buffers.sqlite import SqliteSpool
from worker.clock import Clock
from worker.config import Config, StoreConfig
from worker.errors import AuthError, NotFound, RecordInvalid
from worker.metrics import Metrics
from worker.records import Customer, Entity, Product, Record, Sale, Spooled, Void
from worker.sinks.base import Sink
from worker.web import token_ok

if TYPE_CHECKING:
    from worker.committer import Committer

log = logging.getLogger("possync.intake")

# Bodies above this are parsed off the event loop so one big push cannot stall the rest.
_THREAD_PARSE_BYTES = 256 * 1024
# A push's answer itemizes at most this many rejections (as backfill does) and counts them
# all in `rejected_count`: a million bad lines must not make an 80 MB answer.
MAX_REJECTIONS = 1_000

DENIED = "missing or invalid bearer token for this store"
# Signed sources: the headers that carry the signature (any one of them), the first named in
# the 401. The adapter checks the signature against the body; this is only its presence.
SIGNATURE_HEADERS: dict[str, tuple[str, ...]] = {
    "shopify": ("X-Shopify-Hmac-Sha256", "Shopify-Hmac-Sha256"),
}


def signed_denied(source: str) -> AuthError:
    """The one 401 of a signed source: no secret, unknown store, missing or wrong signature."""
    header = SIGNATURE_HEADERS.get(source, ("signature",))[0]
    return AuthError(f"missing or invalid {header} for this store", field=header)


def rejections_json(rejected: Sequence[Rejection]) -> list[dict[str, object]]:
    """The first MAX_REJECTIONS rejections as JSON objects."""
    return [msgspec.structs.asdict(r) for r in rejected[:MAX_REJECTIONS]]


def check_headers(headers: Mapping[str, str]) -> None:
    """400 naming the first header whose value is not UTF-8 (adapters read headers as text).

    `Authorization` is left to the credential check (a token that is not UTF-8 is a 401).
    """
    for name, value in headers.items():
        if name.lower() == "authorization":
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            header = str(name)  # aiohttp's header names are `istr`: plain text for JSON
            raise RecordInvalid(f"header {header} is not valid UTF-8", field=header) from None


class NothingAcceptable(RecordInvalid):
    """400: every item of the payload was rejected."""

    def __init__(self, rejected: list[Rejection]) -> None:
        first = rejected[0]
        super().__init__(f"no acceptable record: {first.error}", field=first.field)
        self.rejected = rejected

    def to_json(self) -> dict[str, object]:
        """Error body plus the first MAX_REJECTIONS rejections and the count of all."""
        body = super().to_json()
        body["rejected"] = rejections_json(self.rejected)
        body["rejected_count"] = len(self.rejected)
        return body


class IngestOutcome(msgspec.Struct, kw_only=True):
    """What a push did (the 202 body)."""

    accepted: int
    duplicates: int
    rejected: list[Rejection]
    dropped: dict[str, int]
    visible_at: datetime | None
    realtime: int = 0
    spooled: int = 0
    manual: int = 0
    # Of `duplicates`, those of the real-time upsert and of the spool append (for metrics).
    realtime_duplicates: int = 0
    spooled_duplicates: int = 0


class Intake:
    """Routes parsed records to the sink or the spool. One per app."""

    def __init__(
        self,
        cfg: Config,
        spool: SqliteSpool,
        sink: Sink,
        committer: Committer,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.sink = sink
        self.committer = committer
        self.clock = clock
        self.metrics = metrics
        self._stores = {s.id: s for s in cfg.stores}
        self._zones = {s.id: cfg.store_zone(s) for s in cfg.stores}
        self._mappings = _load_mappings(cfg)
        # Compared against when the store is unknown, so that path costs what a wrong token
        # costs (no timing difference between "no such store" and "wrong token").
        self._decoy = secrets.token_urlsafe(24)

    def store(self, store_id: str) -> StoreConfig:
        """The store's config or 404."""
        store = self._stores.get(store_id)
        if store is None:
            raise NotFound(f"unknown store {store_id!r}", field="store")
        return store

    def authorize(self, store: StoreConfig, token: str | None) -> None:
        """The store's own token or 401 (the admin token is not a push credential)."""
        if not token_ok(token, store.token):
            raise AuthError(DENIED, field="Authorization")

    def authorized_store(self, store_id: str, token: str | None) -> StoreConfig:
        """The store whose own token this is, else 401 (the same 401 for an unknown store)."""
        store = self._stores.get(store_id)
        ok = token_ok(token, store.token if store is not None else self._decoy)
        if store is None or not ok:
            raise AuthError(DENIED, field="Authorization")
        return store

    def admit(
        self, source: str, store_id: str, headers: Mapping[str, str], token: str | None
    ) -> StoreConfig:
        """Check a push's credentials from its headers alone, before its body is read.

        Bearer sources: the store's own token. Signed sources: a configured secret and the
        signature header present (the adapter verifies it against the body). Unknown store,
        missing or wrong credential: one 401 body each way, so store ids cannot be probed.
        """
        adapter = get_adapter(source)
        if adapter is None or not adapter.signed:
            return self.authorized_store(store_id, token)
        store = self._stores.get(store_id)
        if store is None or store.source != source:
            # Not a store of this signed source: only its own bearer token gets further (to
            # the 404 naming the source); any failure is this route's one 401.
            try:
                return self.authorized_store(store_id, token)
            except AuthError:
                raise signed_denied(source) from None
        if not (store.secret or store.previous_secret):
            log.warning("store %s takes a signed source but has no secret configured", store.id)
            raise signed_denied(source)
        present = {k.lower() for k in headers}
        if not any(h.lower() in present for h in SIGNATURE_HEADERS.get(source, ())):
            raise signed_denied(source)
        return store

    def parse(
        self,
        source: str,
        store: StoreConfig,
        body: bytes,
        *,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        topic: str | None = None,
        filename: str | None = None,
    ) -> Parsed:
        """Run the source's adapter (pure) on a whole payload."""
        adapter = get_adapter(source)
        if adapter is None:
            raise NotFound(f"unknown source {source!r}", field="source")
        if source not in ("canonical", store.source):
            raise NotFound(
                f"store {store.id!r} is configured for source {store.source!r}, not {source!r}",
                field="source",
            )
        ctx = AdapterContext(
            store=store,
            zone=self._zones[store.id],
            headers={k.lower(): v for k, v in (headers or {}).items()},
            content_type=content_type,
            received_at=self.clock.now(),
            topic=topic,
            filename=filename,
            mapping=self._mappings.get(store.id),
        )
        return adapter.parse(body, ctx)

    async def ingest(
        self,
        source: str,
        store_id: str,
        body: bytes,
        *,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        topic: str | None = None,
        filename: str | None = None,
        priority: Literal["live", "bulk"] = "live",
        authorized: bool = False,
        token: str | None = None,
        origin: Literal["backfill"] | None = None,
    ) -> IngestOutcome:
        """Parse, route and durably write one payload; see the module docstring."""
        store = self.store(store_id)
        adapter = get_adapter(source)
        if adapter is None:
            raise NotFound(f"unknown source {source!r}", field="source")
        # Signed sources (Shopify) authenticate by HMAC of the raw body inside the adapter.
        if not authorized and not adapter.signed:
            self.authorize(store, token)
        try:
            if len(body) > _THREAD_PARSE_BYTES:
                parsed = await asyncio.to_thread(
                    self.parse,
                    source,
                    store,
                    body,
                    content_type=content_type,
                    headers=headers,
                    topic=topic,
                    filename=filename,
                )
            else:
                parsed = self.parse(
                    source,
                    store,
                    body,
                    content_type=content_type,
                    headers=headers,
                    topic=topic,
                    filename=filename,
                )
        except AuthError:
            if not adapter.signed:
                raise
            # Bad base64, wrong signature, no secret: one answer, whatever the reason.
            raise signed_denied(source) from None
        if parsed.delivery_id and await self.spool.seen_delivery(
            store.id, source, parsed.delivery_id
        ):
            self.metrics.count_push(source, store.id, parsed.records, None)
            return IngestOutcome(
                accepted=0,
                duplicates=len(parsed.records),
                rejected=parsed.rejected,
                dropped=parsed.dropped,
                visible_at=self.committer.visible_at(store),
            )
        if not parsed.records and parsed.rejected:
            self.metrics.child(self.metrics.rejected, source, store.id).inc(len(parsed.rejected))
            raise NothingAcceptable(parsed.rejected)
        outcome = await self.route(store, parsed.records, priority=priority, origin=origin)
        if parsed.delivery_id:
            await self.spool.remember_delivery(store.id, source, parsed.delivery_id)
        outcome.rejected = parsed.rejected
        outcome.dropped = parsed.dropped
        m = self.metrics
        m.count_push(source, store.id, parsed.records, outcome)
        if parsed.rejected:
            m.child(m.rejected, source, store.id).inc(len(parsed.rejected))
        for reason, n in parsed.dropped.items():
            m.child(m.dropped, source, store.id, reason).inc(n)
        return outcome

    async def route(
        self,
        store: StoreConfig,
        records: Sequence[Record],
        *,
        priority: Literal["live", "bulk"] = "live",
        origin: Literal["backfill"] | None = None,
    ) -> IngestOutcome:
        """Entities to the sink now, sales/voids to the spool, manual sales to the committer."""
        entities: list[Entity] = []
        spooled: list[Spooled] = []
        manual: list[Sale] = []
        for r in records:
            if isinstance(r, Customer | Product):
                entities.append(r)
            elif isinstance(r, Sale):
                sale = r
                if origin is not None and sale.origin != origin:
                    sale = msgspec.structs.replace(sale, origin=origin)
                # The business date is derived at the window (and for manual sales at once),
                # so the hot path does not copy and re-validate every spooled sale.
                (manual if sale.origin == "manual" else spooled).append(sale)
            elif isinstance(r, Void):
                spooled.append(r)
        accepted = 0
        duplicates = 0
        realtime_dups = spooled_dups = 0
        if spooled and (entities or manual):
            # Decide the whole push first: if the spool cannot take its sales, nothing of it
            # is written (the real-time upserts would otherwise land before the 503).
            self.spool.check_room(store.id, spooled)
        jobs: list[asyncio.Future[tuple[int, int]]] = []
        if entities:
            jobs.append(asyncio.ensure_future(self._upsert(store.id, entities)))
        if spooled:
            jobs.append(asyncio.ensure_future(self._spool(store.id, spooled, priority)))
        if manual:
            jobs.append(asyncio.ensure_future(self.committer.commit_manual(store, manual)))
        if jobs:
            # Wait for every part even if one fails, so nothing is left running unobserved;
            # then surface the first failure (the client retries; writes are idempotent).
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException):
                    raise res
            dups: list[int] = []
            for res in results:
                assert not isinstance(res, BaseException)
                accepted += res[0]
                duplicates += res[1]
                dups.append(res[1])
            # The jobs ran in this order: entities, spooled, manual.
            realtime_dups = dups[0] if entities else 0
            spooled_dups = dups[1 if entities else 0] if spooled else 0
        return IngestOutcome(
            accepted=accepted,
            duplicates=duplicates,
            rejected=[],
            dropped={},
            visible_at=self.committer.visible_at(store) if spooled else None,
            realtime=len(entities),
            spooled=len(spooled),
            manual=len(manual),
            realtime_duplicates=realtime_dups,
            spooled_duplicates=spooled_dups,
        )

    async def _upsert(self, store: str, entities: list[Entity]) -> tuple[int, int]:
        with self.metrics.sink_call("upsert"):
            out = await self.sink.upsert_entities(store, entities)
        return out.applied, out.stale

    async def _spool(
        self, store: str, records: list[Spooled], priority: Literal["live", "bulk"]
    ) -> tuple[int, int]:
        res = await self.spool.append(store, records, priority=priority)
        return res.accepted, res.duplicates


def _load_mappings(cfg: Config) -> dict[str, Mapping[str, object]]:
    """Per store: its declarative mapping or field overrides, validated at start-up.

    A bad mapping raises ConfigError naming the key, so the service refuses to start
    rather than rejecting every file later.
    """
    from worker.adapters import mapping_context

    out: dict[str, Mapping[str, object]] = {}
    for store in cfg.stores:
        ctx = mapping_context(cfg, store)
        if ctx is not None:
            out[store.id] = ctx
    return out
