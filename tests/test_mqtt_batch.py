"""A burst of MQTT messages is one `Intake.ingest_batch`: one bad message fails only itself.

Real app (real spool on disk), real Mosquitto. `ingest_batch` must decide every envelope as
`ingest` alone would (same error, same JSON body), spool the good ones, and leave a message
refused for good or failing transiently to its own fate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests import test_push_parse
from tests.appserver import S2_TOKEN, make_config, running
from tests.factories import sale_dict
from tests.test_backfill_parse import sale_lines
from worker import keys
from worker.errors import NotFound, PossyncError, RecordInvalid, SpoolFull
from worker.intake import Envelope, IngestOutcome, NothingAcceptable
from worker.records import RECORD_DECODER, SPOOLED_DECODER
from worker.sources.mqtt_route import JSON, content_type_for

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
WAIT_S = 15
BAD_JSON_FIELD = "$"  # the canonical adapter names the whole body


def canonical(store: str, record: dict[str, Any] | bytes) -> Envelope:
    """An envelope as the MQTT source builds it for `pos/canonical/{store}/sale`."""
    body = record if isinstance(record, bytes) else orjson.dumps(record)
    return Envelope(
        source="canonical",
        store=store,
        body=body,
        content_type="application/json",
        topic="sale",
        authorized=True,
    )


async def test_batch_decides_each_envelope_as_ingest_would(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), NOW) as h:
        intake = h.app[keys.INTAKE]
        customer = {"type": "customer", "id": "C-1", "email": "a@example.com"}
        batch = [
            canonical("S1", sale_dict("B-1", at=NOW)),
            canonical("S1", b"{not json"),
            canonical("S9", sale_dict("B-9", at=NOW)),  # no such store
            canonical("S1", sale_dict("B-1", at=NOW)),  # the same sale again
            canonical("S2", sale_dict("B-2", at=NOW)),
            canonical("S1", orjson.dumps([{"type": "sale", "id": "B-bad"}])),  # nothing valid
            canonical("S1", customer),  # a real-time upsert: ingest's own path
            canonical("S1", sale_dict("B-3", at=NOW)),
        ]
        groups = h.spool.groups
        got = await intake.ingest_batch(batch)
        assert len(got) == len(batch)
        bad_json, unknown, nothing = got[1], got[2], got[5]
        assert isinstance(bad_json, RecordInvalid)
        assert isinstance(unknown, NotFound)
        assert isinstance(nothing, NothingAcceptable)
        ok = [got[i] for i in (0, 3, 4, 6, 7)]
        assert all(isinstance(o, IngestOutcome) for o in ok)
        outcomes = [o for o in ok if isinstance(o, IngestOutcome)]
        assert sum(o.accepted for o in outcomes) == 4  # B-1, B-2, the customer, B-3
        assert sum(o.duplicates for o in outcomes) == 1  # B-1's second copy
        assert [o.accepted + o.duplicates for o in outcomes] == [1, 1, 1, 1, 1]
        assert outcomes[3].realtime == 1
        assert h.spool.stats("S1").pending == 2
        assert h.spool.stats("S2").pending == 1
        # The metrics count every record once, duplicates and refusals as `ingest` would.
        reg = h.app[keys.METRICS].registry

        def sample(name: str, **labels: str) -> float | None:
            value: float | None = reg.get_sample_value(name, {"source": "canonical", **labels})
            return value

        s1_sales = {"store": "S1", "type": "sale"}
        assert sample("possync_records_received_total", **s1_sales) == 3  # B-1 twice, B-3
        assert sample("possync_records_duplicate_total", **s1_sales) == 1
        assert sample("possync_records_received_total", store="S2", type="sale") == 1
        # S1's and S2's spooled records: one append each, both in the same group commit.
        assert h.spool.groups - groups <= 2
        # Every refusal is exactly the one `ingest` gives for that envelope alone.
        for i in (1, 2, 5):
            refusal = got[i]
            assert isinstance(refusal, PossyncError)
            try:
                await intake.ingest(batch[i])
            except PossyncError as alone:
                assert type(alone) is type(refusal)
                assert alone.status == refusal.status
                assert alone.to_json() == refusal.to_json()
            else:
                raise AssertionError(f"envelope {i} was accepted alone")


async def test_batch_spool_full_for_one_store_fails_only_that_store(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, spool={"max_records_per_store": 2, "retry_after_s": 42})
    async with running(cfg, NOW) as h:
        intake = h.app[keys.INTAKE]
        resp = await h.client.post(
            "/v1/push/canonical/S2",
            data=orjson.dumps([sale_dict("F-1", at=NOW), sale_dict("F-2", at=NOW)]),
            headers={**h.store(S2_TOKEN), "Content-Type": "application/json"},
        )
        assert resp.status == 202, await resp.text()
        batch = [
            canonical("S1", sale_dict("G-1", at=NOW)),
            canonical("S2", sale_dict("F-3", at=NOW)),  # S2 is full
            canonical("S1", sale_dict("G-2", at=NOW)),
        ]
        got = await intake.ingest_batch(batch)
        assert isinstance(got[1], SpoolFull)
        assert got[1].retry_after_s == 42
        assert [isinstance(o, IngestOutcome) and o.accepted for o in (got[0], got[2])] == [1, 1]
        assert h.spool.stats("S1").pending == 2
        assert h.spool.stats("S2").pending == 2


@asynccontextmanager
async def rejected_watcher(broker: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    """A real MQTT 5 client subscribed (SUBACKed) to every rejection notice."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="batch-watcher", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("pos/rejected/#", qos=1)
        yield client


async def test_burst_with_bad_and_held_messages_over_a_real_broker(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    cfg = make_config(
        tmp_path,
        mqtt={"enabled": True, "port": mosquitto.port, "client_id": "possync-batch"},
        spool={"max_records_per_store": 2, "retry_after_s": 1},
    )
    # First run: the session exists (subscribed), and S2's spool is filled to its cap.
    async with running(cfg, NOW) as h:
        source = h.app[keys.MQTT]
        await asyncio.wait_for(source.wait_for(lambda s: s.subscribed), WAIT_S)
        resp = await h.client.post(
            "/v1/push/canonical/S2",
            data=orjson.dumps([sale_dict("F-1", at=NOW), sale_dict("F-2", at=NOW)]),
            headers={**h.store(S2_TOKEN), "Content-Type": "application/json"},
        )
        assert resp.status == 202, await resp.text()
    # While we are away, the broker queues a mixed backlog on our session; on resume it
    # re-sends it in one go, read as one burst.
    backlog = [
        ("pos/canonical/S1/sale", orjson.dumps(sale_dict("R-1", at=NOW))),
        ("pos/canonical/S1/sale", b"{not json"),
        ("pos/canonical/S2/sale", orjson.dumps(sale_dict("F-3", at=NOW))),  # S2 full: held
        ("pos/canonical/S9/sale", orjson.dumps(sale_dict("R-9", at=NOW))),  # unknown store
        ("pos/canonical/S1/sale", orjson.dumps(sale_dict("R-2", at=NOW))),
    ]
    async with rejected_watcher(mosquitto) as watcher:
        for topic, payload in backlog:
            await asyncio.to_thread(mosquitto.publish, topic, payload)
        async with running(cfg, NOW) as h:
            source = h.app[keys.MQTT]
            # Acks are in arrival order: R-1 and the bad JSON; the held F-3 blocks the rest.
            await asyncio.wait_for(source.wait_for(lambda s: s.retries >= 1), WAIT_S)
            await asyncio.wait_for(source.wait_for(lambda s: s.rejected == 2), WAIT_S)
            await asyncio.wait_for(source.wait_for(lambda s: s.acked >= 2), WAIT_S)
            assert h.spool.stats("S1").pending == 2  # are on disk
            assert h.spool.stats("S2").pending == 2  # F-3 is not
            notices: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT_S):
                async for message in watcher.messages:
                    assert isinstance(message.payload, bytes)
                    notices.append(orjson.loads(message.payload))
                    if len(notices) == 2:
                        break
            assert sorted(n["topic"] for n in notices) == [
                "pos/canonical/S1/sale",
                "pos/canonical/S9/sale",
            ]
            assert sorted(n["field"] for n in notices) == sorted([BAD_JSON_FIELD, "store"])
            # The held message is never acked while S2 is full; leaving abandons it.
        assert source.state.acked == 2
        assert source.state.abandoned >= 1


class _RefusesOneId:
    """The real spool, except that an append holding record `poison` raises a plain bug."""

    def __init__(self, spool: Any, poison: str) -> None:
        self._spool = spool
        self._poison = poison
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spool, name)

    async def append(self, store: str, records: Any, *, priority: Any = "live") -> Any:
        ids = [r.id for r in records]
        self.calls.append(ids)
        if self._poison in ids:
            raise ValueError("cannot encode this record")
        return await self._spool.append(store, records, priority=priority)

    async def append_rows(
        self, store: str, rows: Any, *, priority: Any = "live", nbytes: Any = None
    ) -> Any:
        ids = [row[1] for row in rows]  # (kind, id, version, origin, body)
        self.calls.append(ids)
        if self._poison in ids:
            raise ValueError("cannot encode this record")
        return await self._spool.append_rows(store, rows, priority=priority, nbytes=nbytes)


async def test_shared_append_failing_on_one_record_fails_only_its_envelope(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path), NOW) as h:
        intake = h.app[keys.INTAKE]
        real = intake.spool
        intake.spool = wrapped = _RefusesOneId(real, "P-2")
        try:
            got = await intake.ingest_batch(
                [canonical("S1", sale_dict(f"P-{i}", at=NOW)) for i in (1, 2, 3)]
            )
        finally:
            intake.spool = real
        assert isinstance(got[1], ValueError)
        assert [isinstance(o, IngestOutcome) and o.accepted for o in (got[0], got[2])] == [1, 1]
        assert h.spool.stats("S1").pending == 2
        assert intake.spool is real
        # One append shared by the burst, then each member alone.
        assert wrapped.calls == [["P-1", "P-2", "P-3"], ["P-1"], ["P-2"], ["P-3"]]


async def test_a_burst_of_canonical_sales_is_one_thin_append(tmp_path: Path) -> None:
    """Decoded once by the thin parse (bodies without default fields), one append for all."""
    async with running(make_config(tmp_path), NOW) as h:
        intake = h.app[keys.INTAKE]
        real = intake.spool
        intake.spool = wrapped = _RefusesOneId(real, "none")
        bodies = [orjson.dumps(sale_dict(f"T-{i}", lines=i % 3, at=NOW)) for i in range(5)]
        void = orjson.dumps({"type": "void", "id": "T-0", "occurred_at": NOW.isoformat()})
        try:
            got = await intake.ingest_batch([canonical("S1", b) for b in [*bodies, void]])
            again = await intake.ingest_batch([canonical("S1", bodies[0])])
        finally:
            intake.spool = real
        assert [isinstance(o, IngestOutcome) and o.accepted for o in got] == [1] * 6
        assert isinstance(again[0], IngestOutcome)
        assert (again[0].accepted, again[0].duplicates) == (0, 1)
        assert wrapped.calls == [[f"T-{i}" for i in range(5)] + ["T-0"], ["T-0"]]
        entries = await h.spool.pending_entries("S1")
        sales = {e.rid: e.body for e in entries if e.kind == "sale"}
        assert len(sales) == 5 and [e.kind for e in entries].count("void") == 1
        for i, body in enumerate(bodies):
            stored = sales[f"T-{i}"]
            assert SPOOLED_DECODER.decode(stored) == RECORD_DECODER.decode(body)
            assert b"business_date" not in stored  # the thin rows', not the full encoding


_pads = st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t"])
_voids = st.fixed_dictionaries(
    {"type": st.just("void"), "id": st.sampled_from(["V-1", ""])},
    optional={
        "occurred_at": st.sampled_from(["2026-03-08T06:30:00Z", "2026-03-08T06:30:00"]),
        "version": st.sampled_from([0, 3, "3", None]),
    },
).map(orjson.dumps)


@given(st.lists(st.one_of(sale_lines(), _voids), min_size=1, max_size=3), _pads)
def test_the_thin_parse_of_an_mqtt_payload_equals_the_general_path(
    items: list[bytes], pad: bytes
) -> None:
    """With the content type the MQTT source gives a payload (sniffed, no property), the thin
    parse answers only what the adapter and full decoder would: one object, an array, or
    several objects a line each (NDJSON, always the general path's)."""
    for body in (items[0], b"[" + b",".join(items) + b"]", b"\n".join(items)):
        body = pad + body + pad
        content_type = content_type_for("sale", body)
        answered = test_push_parse.check(body, content_type)
        if content_type != JSON:
            assert not answered


def test_the_common_mqtt_payload_takes_the_thin_parse() -> None:
    for body in (
        orjson.dumps(sale_dict("S-1", lines=2, at=NOW)),
        b"\n" + orjson.dumps([sale_dict("S-2", at=NOW)]),
    ):
        assert test_push_parse.check(body, content_type_for("sale", body))
