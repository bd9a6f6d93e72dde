"""A window of many pages: references across pages resolve while pages are pipelined, and each
page is settled in the spool only after its own sink commit (while the next one is written)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson

from tests.appserver import Harness, make_config, running
from tests.factories import sale_dict
from worker import keys
from worker.batch import CommitBatch, CommitOutcome
from worker.committer import Committer
from worker.errors import StorageFull

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


async def test_cross_page_return_and_void_commit_exactly_once(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, windows={"batch_size": 10})
    async with running(cfg, NOW) as h:
        records = [sale_dict(f"P-{i:03d}", at=NOW) for i in range(35)]
        # A return of P-001 and a void of P-002, both pages after their originals.
        ret = sale_dict("R-001", at=NOW, kind="return", original_id="P-001")
        for line in ret["lines"]:
            line["quantity"] = str(-int(line["quantity"]))
        for key in ("subtotal", "tax", "total"):
            ret[key] = "-" + ret[key]
        ret["tenders"][0]["amount"] = ret["total"]
        records.append(ret)
        records.append({"type": "void", "id": "P-002", "occurred_at": NOW.isoformat()})
        body = b"\n".join(orjson.dumps(r) for r in records)
        headers = {**h.store(), "Content-Type": "application/x-ndjson"}
        resp = await h.client.post("/v1/push/canonical/S1", data=body, headers=headers)
        assert resp.status == 202 and (await resp.json())["accepted"] == 37
        out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
        s1 = out["stores"]["S1"]
        assert (s1["committed"], s1["voids"], s1["quarantined"], s1["held"]) == (36, 1, 0, 0)
        log = await (
            await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
        ).json()
        ids = [s["id"] for s in log["sales"]]
        assert len(ids) == len(set(ids)) == 36
        voided = {s["id"] for s in log["sales"] if s.get("voided")}
        assert voided == {"P-002"}
        assert h.spool.stats("S1").pending == 0


def _page_records(n: int) -> bytes:
    return b"\n".join(orjson.dumps(sale_dict(f"Q-{i:03d}", at=NOW)) for i in range(n))


async def _push_ndjson(h: Harness, body: bytes) -> None:
    headers = {**h.store(), "Content-Type": "application/x-ndjson"}
    resp = await h.client.post("/v1/push/canonical/S1", data=body, headers=headers)
    assert resp.status == 202, await resp.text()


async def test_page_settles_after_its_own_sink_commit_while_the_next_is_written(
    tmp_path: Path,
) -> None:
    """Page n is acked only after its own sink transaction returned, in page order, and its
    ack overlaps page n+1's sink write (the ack of page 1 waits until page 2's write has
    begun: without the overlap this window would never finish)."""
    cfg = make_config(tmp_path, windows={"batch_size": 10})
    async with running(cfg, NOW) as h:
        await _push_ndjson(h, _page_records(30))
        committer: Committer = h.app[keys.COMMITTER]
        sink, spool = committer.sink, committer.spool
        events: list[tuple[str, int]] = []
        second_write = asyncio.Event()
        real_commit, real_ack = sink.commit_sales, spool.ack
        pages: dict[str, int] = {}

        async def commit_sales(batch: CommitBatch) -> CommitOutcome:
            n = pages.setdefault(batch.batch_id, len(pages) + 1)
            events.append(("write", n))
            if n == 2:
                second_write.set()
            out = await real_commit(batch)
            events.append(("written", n))
            return out

        acks = 0

        async def ack(lease_id: int, seqs: Sequence[int]) -> None:
            nonlocal acks
            acks += 1
            events.append(("ack", acks))
            if acks == 1:
                await asyncio.wait_for(second_write.wait(), 10)
            await real_ack(lease_id, seqs)
            events.append(("acked", acks))

        committer.sink = cast(Any, _Patched(sink, commit_sales=commit_sales))
        committer.spool = cast(Any, _Patched(spool, ack=ack))
        try:
            out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
        finally:
            committer.sink, committer.spool = sink, spool
        assert out["stores"]["S1"]["committed"] == 30
        for n in (1, 2, 3):
            assert events.index(("written", n)) < events.index(("ack", n))  # confirm, then finalize
        assert [n for e, n in events if e == "ack"] == [1, 2, 3]
        assert events.index(("write", 2)) < events.index(("acked", 1))  # the overlap
        assert h.spool.stats("S1").pending == 0


async def test_a_failed_settle_fails_the_window_and_the_rerun_commits_once(
    tmp_path: Path,
) -> None:
    """The spool refuses the ack of page 2 (disk full): the window answers the error, the
    pages already written stay in the sink, nothing is lost; the next window commits every
    sale exactly once."""
    cfg = make_config(tmp_path, windows={"batch_size": 10})
    async with running(cfg, NOW) as h:
        await _push_ndjson(h, _page_records(30))
        committer: Committer = h.app[keys.COMMITTER]
        spool = committer.spool
        real_ack = spool.ack
        acks = 0

        async def ack(lease_id: int, seqs: Sequence[int]) -> None:
            nonlocal acks
            acks += 1
            if acks == 2:
                raise StorageFull("spool disk is full", field="spool")
            await real_ack(lease_id, seqs)

        committer.spool = cast(Any, _Patched(spool, ack=ack))
        try:
            resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
        finally:
            committer.spool = spool
        assert resp.status == 507
        assert (await resp.json())["field"] == "spool"
        assert 0 < h.spool.stats("S1").pending < 30  # page 1 settled; the rest still pending
        out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
        assert out["stores"]["S1"]["quarantined"] == 0
        assert h.spool.stats("S1").pending == 0
        log = await (
            await h.client.get("/v1/stores/S1/sales?date=2026-11-20", headers=h.admin())
        ).json()
        ids = [s["id"] for s in log["sales"]]
        assert sorted(ids) == [f"Q-{i:03d}" for i in range(30)]  # each exactly once


class _Patched:
    """The real object with some of its methods replaced (fault injection, observation)."""

    def __init__(self, real: Any, **methods: Any) -> None:
        self._real = real
        self._methods = methods

    def __getattr__(self, name: str) -> Any:
        return self._methods.get(name) or getattr(self._real, name)
