"""The thin push path (issue 11 step 2) answers byte for byte what the general path answers.

The common push (a plain body with Content-Length, one kind of record, nothing rejected)
is read in one call and answered with cached bytes; everything else takes the general path.
Both are exercised here against the real app on an ephemeral port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from tests.appserver import S1_TOKEN, Harness, make_config, running
from tests.factories import sale_dict
from worker import keys
from worker.cli import SWITCH_INTERVAL_MS, switch_interval_s
from worker.intake import Envelope, IngestOutcome
from worker.records import RECORD_DECODER, SPOOLED_DECODER
from worker.sources.http import outcome_json

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 in New York
URL = "/v1/push/canonical/S1"
VISIBLE = datetime(2026, 11, 20, 19, 0, tzinfo=UTC)  # S1's next window
_JSON = msgspec.json.Encoder(decimal_format="string")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(make_config(tmp_path), NOW) as harness:
        yield harness


def _general(accepted: int, duplicates: int, visible_at: datetime | None) -> bytes:
    """The 202 body as the general path (outcome_json, then the JSON encoder) makes it."""
    out = IngestOutcome(
        accepted=accepted, duplicates=duplicates, rejected=[], dropped={}, visible_at=visible_at
    )
    return _JSON.encode(outcome_json(out))


def _headers(ctype: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": ctype}


async def test_one_sale_gets_the_general_paths_bytes_and_is_spooled(h: Harness) -> None:
    resp = await h.client.post(URL, data=orjson.dumps(sale_dict("T-1", at=NOW)), headers=_headers())
    assert resp.status == 202
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.read() == _general(1, 0, VISIBLE)
    assert h.spool.stats("S1").pending == 1
    again = await h.client.post(
        URL, data=orjson.dumps(sale_dict("T-1", at=NOW)), headers=_headers()
    )
    assert await again.read() == _general(0, 1, VISIBLE)


async def test_a_customer_alone_is_answered_with_no_visible_at(h: Harness) -> None:
    body = {"type": "customer", "id": "C1", "first_name": "Ada", "version": 1}
    resp = await h.client.post(URL, data=orjson.dumps(body), headers=_headers())
    assert resp.status == 202
    assert await resp.read() == _general(1, 0, None)


async def test_a_mixed_push_still_writes_both_parts(h: Harness) -> None:
    body = [
        {"type": "customer", "id": "C1", "first_name": "Ada", "version": 1},
        sale_dict("T-1", at=NOW),
    ]
    resp = await h.client.post(URL, data=orjson.dumps(body), headers=_headers())
    assert resp.status == 202
    assert await resp.read() == _general(2, 0, VISIBLE)
    assert h.spool.stats("S1").pending == 1
    got = await h.client.get("/v1/stores/S1/customers/C1", headers=h.admin())
    assert got.status == 200


async def test_a_push_with_a_rejection_is_itemized_by_the_general_path(h: Harness) -> None:
    bad = {**sale_dict("T-2", at=NOW), "total": "not money"}
    resp = await h.client.post(
        URL, data=orjson.dumps([sale_dict("T-1", at=NOW), bad]), headers=_headers()
    )
    assert resp.status == 202
    got = await resp.json()
    assert got["accepted"] == 1 and got["rejected_count"] == 1
    assert got["rejected"][0]["index"] == 1 and got["rejected"][0]["field"]


async def test_a_chunked_body_takes_the_chunk_loop_and_its_running_cap(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, http={"max_body_bytes": 4096}), NOW) as h:
        one = orjson.dumps(sale_dict("T-1", at=NOW))

        async def chunks(data: bytes) -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100):
                yield data[i : i + 100]

        ok = await h.client.post(URL, data=chunks(one), headers=_headers())
        assert ok.status == 202
        assert await ok.read() == _general(1, 0, VISIBLE)
        big = orjson.dumps([sale_dict(f"T-{i}", at=NOW) for i in range(40)])
        assert len(big) > 4096
        over = await h.client.post(URL, data=chunks(big), headers=_headers())
        assert over.status == 413
        assert (await over.json())["field"] == "body"
        assert h.spool.stats("S1").pending == 1


async def test_a_body_over_the_cap_with_content_length_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    async with running(make_config(tmp_path, http={"max_body_bytes": 4096}), NOW) as h:
        big = orjson.dumps([sale_dict(f"T-{i}", at=NOW) for i in range(40)])
        resp = await h.client.post(URL, data=big, headers=_headers())
        assert resp.status == 413
        assert await resp.json() == {"error": "body larger than 4096 bytes", "field": "body"}


def test_switch_interval_defaults_and_override() -> None:
    assert switch_interval_s({}) == SWITCH_INTERVAL_MS / 1000
    assert switch_interval_s({"POSSYNC_SWITCH_INTERVAL_MS": "5"}) == 0.005
    for bad in ("", "fast", "0", "-1", "5000"):
        assert switch_interval_s({"POSSYNC_SWITCH_INTERVAL_MS": bad}) == SWITCH_INTERVAL_MS / 1000


async def test_a_canonical_sale_is_spooled_by_the_thin_parse(h: Harness) -> None:
    """Decoded once by the lean decoder: the spooled body leaves out the default fields."""
    body = orjson.dumps(sale_dict("T-9", at=NOW))
    resp = await h.client.post(URL, data=body, headers=_headers())
    assert resp.status == 202
    (entry,) = await h.spool.pending_entries("S1")
    assert SPOOLED_DECODER.decode(entry.body) == RECORD_DECODER.decode(body)
    assert b"business_date" not in entry.body
    again = await h.client.post(URL, data=body, headers=_headers())
    assert await again.read() == _general(0, 1, VISIBLE)
    metrics = await (await h.client.get("/metrics", headers=h.admin())).text()
    labels = 'source="canonical",store="S1",type="sale"'
    assert f"possync_records_received_total{{{labels}}} 2.0" in metrics
    assert f"possync_records_duplicate_total{{{labels}}} 1.0" in metrics


async def test_a_burst_spools_thin_and_general_members_in_one_group(h: Harness) -> None:
    """`ingest_batch`: lean rows and the general path's rows share one append, same outcomes."""

    def env(record: dict[str, Any]) -> Envelope:
        return Envelope(
            source="canonical",
            store="S1",
            body=orjson.dumps(record),
            content_type="application/json",
            authorized=True,
        )

    number_money = {**sale_dict("B-2", at=NOW), "tax": 1.5}  # the full decoder's
    void = {"type": "void", "id": "B-0", "occurred_at": NOW.isoformat()}
    intake = h.app[keys.INTAKE]
    groups = h.spool.groups
    got = await intake.ingest_batch([env(sale_dict("B-1", at=NOW)), env(number_money), env(void)])
    assert [(o.accepted, o.duplicates) for o in got if isinstance(o, IngestOutcome)] == [(1, 0)] * 3
    assert h.spool.groups == groups + 1
    bodies = {e.rid: e.body for e in await h.spool.pending_entries("S1")}
    assert b"business_date" not in bodies["B-1"]  # lean
    assert b'"business_date":null' in bodies["B-2"]  # the full encoder's
    assert SPOOLED_DECODER.decode(bodies["B-2"]) == RECORD_DECODER.decode(
        orjson.dumps(number_money)
    )
