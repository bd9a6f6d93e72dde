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

Every source (HTTP push, MQTT, inbox files, uploads, backfill) hands the intake one
`Envelope` through the `Ingest` protocol (`ingest(envelope) -> IngestOutcome`); an envelope
carries either the raw body (parsed here by the source's adapter, with the store's
`StoreContext` built once at start-up) or records a streaming source already read.

A canonical payload of sales and voids only (the common push and MQTT message) takes the
thin path: `worker.sources.push_parse` decodes it once with the lean decoder into spool rows;
whatever it declines is parsed by the adapter as above, which decides every refusal.

Credentials come first (`admit`, from the headers, before the body is read): push routes take
only the store's own token (the admin token is for reads and operations); a signed source
(Shopify) needs its signature header and a configured secret, and is verified against the
body by its adapter. An unknown store answers exactly as a wrong credential does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from worker.adapters import adapter_for, get_adapter, store_context
from worker.adapters.base import MAX_REJECTIONS, Adapter, Parsed, Rejection, StoreContext
from worker.buffers.base import Buffer, SpoolRow
from worker.clock import Clock
from worker.config import Config, StoreConfig
from worker.errors import AuthError, NotFound, PossyncError, RecordInvalid
from worker.metrics import Metrics, group_type
from worker.records import Customer, Entity, Product, Record, Sale, Spooled, Void
from worker.sinks.base import Sink
from worker.sources.push_parse import LeanRows, lean_rows, spool_row
from worker.web import token_ok

if TYPE_CHECKING:
    from worker.committer import Committer
    from worker.windows import NextWindows

log = logging.getLogger("possync.intake")

# Bodies above this are parsed off the event loop so one big push cannot stall the rest.
_THREAD_PARSE_BYTES = 256 * 1024
# A push's answer itemizes at most `MAX_REJECTIONS` rejections (the adapter kept no more:
# `Parsed.reject`) and counts them all in `rejected_count`: a million bad lines must make
# neither an 80 MB answer nor a million objects while parsing.

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
        if value.isascii():  # nearly every header: nothing to encode
            continue
        if name.lower() == "authorization":
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            header = str(name)  # aiohttp's header names are `istr`: plain text for JSON
            raise RecordInvalid(f"header {header} is not valid UTF-8", field=header) from None


class NothingAcceptable(RecordInvalid):
    """400: every item of the payload was rejected (`count` of them; the first ones listed)."""

    def __init__(self, rejected: list[Rejection], count: int | None = None) -> None:
        first = rejected[0]
        super().__init__(f"no acceptable record: {first.error}", field=first.field)
        self.rejected = rejected
        self.rejected_count = max(count or 0, len(rejected))

    def to_json(self) -> dict[str, object]:
        """Error body plus the first MAX_REJECTIONS rejections and the count of all."""
        body = super().to_json()
        body["rejected"] = rejections_json(self.rejected)
        body["rejected_count"] = self.rejected_count
        return body


class IngestOutcome(msgspec.Struct, kw_only=True):
    """What a push did (the 202 body)."""

    accepted: int
    duplicates: int
    rejected: list[Rejection]  # the first MAX_REJECTIONS of them
    dropped: dict[str, int]
    visible_at: datetime | None
    rejected_count: int = 0  # all of them (at least len(rejected))
    realtime: int = 0
    spooled: int = 0
    manual: int = 0
    # Of `duplicates`, those of the real-time upsert and of the spool append (for metrics).
    realtime_duplicates: int = 0
    spooled_duplicates: int = 0

    def __post_init__(self) -> None:
        self.rejected_count = max(self.rejected_count, len(self.rejected))


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One push as a source hands it to the intake, whatever the transport.

    `body` is the raw payload for the source's adapter; a streaming source that already read
    its records (backfill) passes them as `records` instead and they are routed as they are.
    `authorized`: the source checked the credential itself (HTTP `admit`, an upload's token,
    the broker for MQTT, the file system for drop folders); else `token` is checked here.
    """

    source: str
    store: str
    body: bytes = b""
    records: Sequence[Record] | None = None
    headers: Mapping[str, str] = {}
    content_type: str = ""
    topic: str | None = None  # MQTT kind / Shopify topic
    filename: str | None = None  # file drops and uploads
    received_at: datetime | None = None  # None: the intake's clock, when it parses
    origin: Literal["backfill"] | None = None
    priority: Literal["live", "bulk"] = "live"
    authorized: bool = False
    token: str | None = None


class Ingest(Protocol):
    """What every source calls: one envelope in, durable (or refused) before it returns."""

    async def ingest(self, envelope: Envelope) -> IngestOutcome:
        """Parse, route and durably write one push; raise a PossyncError when refused."""
        ...


class BatchIngest(Ingest, Protocol):
    """`Ingest` plus a batch entry (the MQTT source's bursts)."""

    async def ingest_batch(self, envelopes: Sequence[Envelope]) -> list[IngestOutcome | Exception]:
        """One outcome or error per envelope, each decided on its own (see Intake)."""
        ...


class Intake:
    """Routes parsed records to the sink or the spool. One per app; the `Ingest` of every source."""

    def __init__(
        self,
        cfg: Config,
        spool: Buffer,
        sink: Sink,
        committer: Committer,
        clock: Clock,
        metrics: Metrics,
        windows: NextWindows,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.sink = sink
        self.committer = committer
        self.clock = clock
        self.metrics = metrics
        self.windows = windows
        self._stores = {s.id: s for s in cfg.stores}
        # Built once: zone and compiled mapping per store (a bad mapping is a ConfigError
        # naming the key, so the service refuses to start rather than reject every file).
        self._contexts = {s.id: store_context(cfg, s) for s in cfg.stores}
        # Compared against when the store is unknown, so that path costs what a wrong token
        # costs (no timing difference between "no such store" and "wrong token").
        self._decoy = secrets.token_urlsafe(24)

    def knows(self, store_id: str | None) -> bool:
        """Whether `store_id` is a configured store (for logs that may name it)."""
        return store_id in self._stores

    def store(self, store_id: str) -> StoreConfig:
        """The store's config or 404."""
        store = self._stores.get(store_id)
        if store is None:
            raise NotFound("unknown store", field="store")
        return store

    def context(self, store_id: str) -> StoreContext:
        """The store's adapter context (config, zone, compiled mapping), built at start-up."""
        return self._contexts[store_id]

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

    def parse(self, envelope: Envelope, store: StoreConfig) -> Parsed:
        """Run the source's adapter (pure) on a whole payload."""
        adapter = adapter_for(envelope.source, store)
        ctx = self._contexts[store.id].for_push(
            headers=envelope.headers,
            content_type=envelope.content_type,
            received_at=envelope.received_at or self.clock.now(),
            topic=envelope.topic,
            filename=envelope.filename,
        )
        return adapter.parse(envelope.body, ctx)

    async def ingest(self, envelope: Envelope) -> IngestOutcome:
        """Parse, route and durably write one payload; see the module docstring."""
        store = self.store(envelope.store)
        if envelope.records is not None:
            # Already read by a streaming source (admitted by it): routed as they are.
            return await self.route(
                store, envelope.records, priority=envelope.priority, origin=envelope.origin
            )
        adapter = self._admitted_adapter(envelope, store)
        if len(envelope.body) > _THREAD_PARSE_BYTES:
            parsed = await asyncio.to_thread(self._parse_checked, envelope, store, adapter.signed)
            return await self._write(envelope, store, parsed)
        if envelope.source == "canonical" and envelope.origin is None:
            # The thin path: sales and voids the lean decoder takes go to the spool as rows,
            # decoded and checked once; anything else is None and decided below, as before.
            # (Every store takes `canonical`: `adapter_for` has nothing to refuse here.)
            lean = lean_rows(envelope.body, envelope.content_type)
            if lean is not None:
                accepted, duplicates = await self.append_lean(
                    store, envelope.source, lean, envelope.priority
                )
                return IngestOutcome(
                    accepted=accepted,
                    duplicates=duplicates,
                    rejected=[],
                    dropped={},
                    visible_at=self.windows.visible_at(store),
                    spooled=len(lean.rows),
                    spooled_duplicates=duplicates,
                )
        parsed = self._parse_checked(envelope, store, adapter.signed)
        return await self._write(envelope, store, parsed)

    async def append_lean(
        self,
        store: StoreConfig,
        source: str,
        lean: LeanRows,
        priority: Literal["live", "bulk"] = "live",
    ) -> tuple[int, int]:
        """Spool a thin push's rows and count them as `_write` counts the same records.

        (accepted, duplicates); the push is spooled only, so its `visible_at` is the store's.
        """
        n = len(lean.rows)
        res = await self.spool.append_rows(
            store.id, lean.rows, priority=priority, nbytes=lean.nbytes
        )
        self._count_spooled(source, store.id, n - lean.voids, lean.voids, res.duplicates)
        return res.accepted, res.duplicates

    def _count_spooled(
        self, source: str, store_id: str, sales: int, voids: int, duplicates: int
    ) -> None:
        """What `Metrics.count_push` counts for one spool append of sales and voids only."""
        m = self.metrics
        if sales:
            m.child(m.received, source, store_id, "sale").inc(sales)
        if voids:
            m.child(m.received, source, store_id, "void").inc(voids)
        if duplicates:
            kind = group_type("sale", sales, "void", voids)
            m.child(m.duplicates, source, store_id, kind).inc(duplicates)

    def _admitted_adapter(self, envelope: Envelope, store: StoreConfig) -> Adapter:
        """The envelope's adapter, after its credential check (404 / 401)."""
        source = envelope.source
        adapter = get_adapter(source)
        if adapter is None:
            raise NotFound(f"unknown source {source!r}", field="source")
        # Signed sources (Shopify) authenticate by HMAC of the raw body inside the adapter.
        if not envelope.authorized and not adapter.signed:
            self.authorize(store, envelope.token)
        return adapter

    def _parse_checked(self, envelope: Envelope, store: StoreConfig, signed: bool) -> Parsed:
        """`parse`, with a signed source's every AuthError as its one 401."""
        try:
            return self.parse(envelope, store)
        except AuthError:
            if not signed:
                raise
            # Bad base64, wrong signature, no secret: one answer, whatever the reason.
            raise signed_denied(envelope.source) from None

    def _nothing_acceptable(self, envelope: Envelope, store: StoreConfig, parsed: Parsed) -> None:
        """400 (counted) when every item of the payload was rejected."""
        if not parsed.records and parsed.rejected:
            m = self.metrics
            m.child(m.rejected, envelope.source, store.id).inc(parsed.rejected_count)
            raise NothingAcceptable(parsed.rejected, parsed.rejected_count)

    async def _write(self, envelope: Envelope, store: StoreConfig, parsed: Parsed) -> IngestOutcome:
        """Route a parsed payload (delivery-id dedup first) and count it."""
        source = envelope.source
        if parsed.delivery_id and await self.spool.state.seen_delivery(
            store.id, source, parsed.delivery_id
        ):
            self.metrics.count_push(source, store.id, parsed.records, None)
            return IngestOutcome(
                accepted=0,
                duplicates=len(parsed.records),
                rejected=parsed.rejected,
                rejected_count=parsed.rejected_count,
                dropped=parsed.dropped,
                visible_at=self.windows.visible_at(store),
            )
        self._nothing_acceptable(envelope, store, parsed)
        outcome = await self.route(
            store, parsed.records, priority=envelope.priority, origin=envelope.origin
        )
        if parsed.delivery_id:
            await self.spool.state.remember_delivery(store.id, source, parsed.delivery_id)
        self._count(envelope, store, parsed, outcome)
        return outcome

    def _count(
        self, envelope: Envelope, store: StoreConfig, parsed: Parsed, outcome: IngestOutcome
    ) -> None:
        """Give `outcome` the parse's refusals and drops, and count the push."""
        outcome.rejected = parsed.rejected
        outcome.rejected_count = parsed.rejected_count
        outcome.dropped = parsed.dropped
        m = self.metrics
        source = envelope.source
        m.count_push(source, store.id, parsed.records, outcome)
        if parsed.rejected_count:
            m.child(m.rejected, source, store.id).inc(parsed.rejected_count)
        for reason, n in parsed.dropped.items():
            m.child(m.dropped, source, store.id, reason).inc(n)

    async def ingest_batch(self, envelopes: Sequence[Envelope]) -> list[IngestOutcome | Exception]:
        """Ingest many payloads at once (an MQTT burst): one outcome or error per envelope.

        Each envelope is decided on its own, exactly as `ingest` decides it (404, 401, 400,
        NothingAcceptable, item rejections): one bad payload fails only itself. Payloads of
        spooled records only (sales, voids: the common case) share ONE `spool.append` per
        store and priority, so a burst costs one group commit and one wake-up; any other
        payload (entities, manual sales, delivery ids, large bodies) takes `ingest`'s own
        path, concurrently. A failed shared append (SpoolFull, Unavailable, ...) is the
        error of every envelope of it: the caller retries them one by one.

        Accepted and duplicates: one append reports its group's totals only. When it found
        no duplicate (the all-new case) every envelope's split is exact; otherwise the
        duplicates are assigned to the group's envelopes in order. Totals and metrics are
        exact either way; durability is the same for both (every record is on disk).
        """
        results: list[IngestOutcome | Exception | None] = [None] * len(envelopes)
        groups: dict[tuple[str, str, str, str | None], _Shared] = {}
        others: list[tuple[int, Coroutine[Any, Any, IngestOutcome]]] = []
        for i, envelope in enumerate(envelopes):
            try:
                store = self.store(envelope.store)
                if envelope.records is not None or len(envelope.body) > _THREAD_PARSE_BYTES:
                    others.append((i, self.ingest(envelope)))
                    continue
                adapter = self._admitted_adapter(envelope, store)
                lean = None
                if envelope.source == "canonical" and envelope.origin is None:
                    lean = lean_rows(envelope.body, envelope.content_type)  # as in `ingest`
                if lean is not None:
                    parsed = Parsed()
                    rows, voids = lean.rows, lean.voids
                else:
                    parsed = self._parse_checked(envelope, store, adapter.signed)
                    spooled = (
                        None if parsed.delivery_id else _spooled_only(parsed.records, envelope)
                    )
                    if spooled is None:
                        others.append((i, self._write(envelope, store, parsed)))
                        continue
                    self._nothing_acceptable(envelope, store, parsed)
                    rows = [spool_row(r) for r in spooled]
                    voids = sum(row[0] == "void" for row in rows)
            except Exception as exc:  # noqa: BLE001 - this envelope's own outcome
                results[i] = exc
                continue
            key = (envelope.source, store.id, envelope.priority, envelope.origin)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Shared(store)
            group.members.append((i, envelope, parsed, len(rows), voids))
            group.rows.extend(rows)
        jobs = [self._append_shared(g, results) for g in groups.values()]
        jobs += [_into(results, i, coro) for i, coro in others]
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            await asyncio.gather(*jobs)
        out: list[IngestOutcome | Exception] = []
        for res in results:
            assert res is not None
            out.append(res)
        return out

    async def _append_shared(
        self, group: _Shared, results: list[IngestOutcome | Exception | None]
    ) -> None:
        """One append for the group's records; then each member's outcome (see ingest_batch)."""
        store = group.store
        first = group.members[0][1]
        try:
            res = await self.spool.append_rows(store.id, group.rows, priority=first.priority)
        except Exception as exc:  # noqa: BLE001 - the outcome of every member
            if len(group.members) > 1 and not (isinstance(exc, PossyncError) and exc.retriable):
                # Not a state of the spool (full, down) but maybe one member's records: each
                # member alone, so the culprit fails only itself.
                await asyncio.gather(*(self._append_shared(g, results) for g in group.split()))
                return
            for i, *_ in group.members:
                results[i] = exc
            return
        duplicates = res.duplicates
        visible_at = self.windows.visible_at(store)
        rejected = 0
        dropped: dict[str, int] = {}
        voids = 0
        for i, _, parsed, n, v in group.members:
            voids += v
            dups = min(n, duplicates)
            duplicates -= dups
            results[i] = IngestOutcome(
                accepted=n - dups,
                duplicates=dups,
                rejected=parsed.rejected,
                rejected_count=parsed.rejected_count,
                dropped=parsed.dropped,
                visible_at=visible_at,
                spooled=n,
                spooled_duplicates=dups,
            )
            rejected += parsed.rejected_count
            for reason, k in parsed.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + k
        # Counted once for the group: the same totals as `_count` per envelope would add.
        m = self.metrics
        source = first.source
        self._count_spooled(source, store.id, len(group.rows) - voids, voids, res.duplicates)
        if rejected:
            m.child(m.rejected, source, store.id).inc(rejected)
        for reason, k in dropped.items():
            m.child(m.dropped, source, store.id, reason).inc(k)

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
        parts = bool(entities) + bool(spooled) + bool(manual)
        if spooled and parts > 1:
            # Decide the whole push first: if the spool cannot take its sales, nothing of it
            # is written (the real-time upserts would otherwise land before the 503).
            self.spool.check_room(store.id, spooled)
        jobs: list[asyncio.Future[tuple[int, int]]] = []
        if parts == 1:
            # The common push (one kind of record): one write awaited in place, no Task.
            if spooled:
                accepted, duplicates = await self._spool(store.id, spooled, priority)
                spooled_dups = duplicates
            elif entities:
                accepted, duplicates = await self._upsert(store.id, entities)
                realtime_dups = duplicates
            else:
                accepted, duplicates = await self.committer.commit_manual(store, manual)
        elif parts:
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
            visible_at=self.windows.visible_at(store) if spooled else None,
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


class _Shared:
    """The envelopes of one batch (one source, store, priority, origin) sharing one append."""

    __slots__ = ("members", "rows", "store")

    def __init__(self, store: StoreConfig) -> None:
        self.store = store
        # (index in the batch, envelope, its parse, how many of `rows` are its own, voids
        # among them); a thin member's parse is empty (nothing refused or dropped)
        self.members: list[tuple[int, Envelope, Parsed, int, int]] = []
        self.rows: list[SpoolRow] = []

    def split(self) -> list[_Shared]:
        """One group per member."""
        out: list[_Shared] = []
        start = 0
        for member in self.members:
            one = _Shared(self.store)
            one.members.append(member)
            one.rows = self.rows[start : start + member[3]]
            start += member[3]
            out.append(one)
        return out


def _spooled_only(records: Sequence[Record], envelope: Envelope) -> list[Spooled] | None:
    """The records as `route` would spool them, or None unless every one goes to the spool."""
    origin = envelope.origin
    out: list[Spooled] = []
    for r in records:
        if isinstance(r, Sale):
            if origin is not None and r.origin != origin:
                r = msgspec.structs.replace(r, origin=origin)
            if r.origin == "manual":
                return None
            out.append(r)
        elif isinstance(r, Void):
            out.append(r)
        else:
            return None
    return out or None


async def _into(
    results: list[IngestOutcome | Exception | None],
    i: int,
    coro: Coroutine[Any, Any, IngestOutcome],
) -> None:
    try:
        results[i] = await coro
    except Exception as exc:  # noqa: BLE001 - this envelope's own outcome
        results[i] = exc
