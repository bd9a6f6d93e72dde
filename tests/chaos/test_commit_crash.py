"""kill -9 at random moments during a window commit; rerun; every sale lands exactly once.

A real `possync serve` subprocess gets sales pushed in NDJSON batches, then
`POST /v1/admin/commit` runs and the server is killed at a random moment inside the commit:
alternately once the sink's `sales` count (read through the test's own WAL connection)
passes a random threshold, which lands between a page's sink commit and its spool ack, and
a random delay after the first page landed (drawn from the measured duration of an
uncrashed commit in the same run), which lands anywhere, mostly inside a sink or spool
transaction. Either way the kill comes before the last page (a round spans several pages
of `BATCH` sales), and each kill is checked to have landed mid-commit: the commit never
answered, and the sink holds some but not all of the sales pending when it began.
After every restart the invariants must hold; at the end a final uncrashed commit must
leave every pushed sale in the sink exactly once, nothing pending in the spool, and no
duplicate trigger outbox rows or events.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sqlite3
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.procserver import ADMIN, ServerProcess, free_port, headers, sale_body, write_config

LONG = bool(os.environ.get("POSSYNC_LONG"))
PUSH_BATCH = 1000
BATCH = 1000  # [windows] batch_size: the sales one commit page holds
SALES = "SELECT count(*) FROM sales"
PENDING = "SELECT count(*) FROM spool WHERE state = 0"
TRIGGERS = [{"name": "thank-you", "days_after": 0}, {"name": "follow-up", "days_after": 30}]


def _config(tmp: Path, port: int, batch_size: int) -> Path:
    return write_config(tmp, port, windows={"batch_size": batch_size}, triggers=TRIGGERS)


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    return con


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    con = _connect(db)
    try:
        try:
            return int(con.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # schema not created yet
    finally:
        con.close()


CUSTOMER = b'{"type": "customer", "id": "C-1", "first_name": "Ada"}'


async def _push(session: aiohttp.ClientSession, url: str, ids: list[str]) -> None:
    # Every sale has a customer the sink holds: sales without one fire no trigger events,
    # and this test checks the outbox is written with the sales exactly once.
    async with session.post(url, data=CUSTOMER, headers=headers()) as resp:
        assert resp.status == 202, await resp.text()
    hdrs = {**headers(), "Content-Type": "application/x-ndjson"}
    for i in range(0, len(ids), PUSH_BATCH):
        chunk = ids[i : i + PUSH_BATCH]
        body = b"\n".join(sale_body(sid, customer_id="C-1") for sid in chunk)
        async with session.post(url, data=body, headers=hdrs) as resp:
            got = await resp.json()
            assert resp.status == 202, got
            assert got["accepted"] == len(chunk), got


async def _commit(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.post(
        f"{url}/v1/admin/commit", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body["stores"]["S1"])


async def _commit_until_drained(session: aiohttp.ClientSession, url: str, spool: Path) -> None:
    """Commit until nothing is pending (a start-up catch-up commit may answer 'busy')."""
    for _ in range(50):
        res = await _commit(session, url)
        if res["skipped"] is None and _count(spool, PENDING) == 0:
            return
        await asyncio.sleep(0.05)  # only when a catch-up commit owns the store lock
    raise AssertionError("spool never drained")


def _groups(con: sqlite3.Connection, table: str, keys: str, having: str) -> int:
    """How many groups of `table`'s rows by `keys` have a row count `c` with `having`."""
    grouped = f"SELECT {keys}, count(*) c FROM {table} GROUP BY {keys} HAVING {having}"
    sql = f"SELECT count(*) FROM ({grouped})"
    return int(con.execute(sql).fetchone()[0])


def _check_sink(sink: Path, expected: set[str] | None) -> dict[str, int]:
    """Invariants that hold after any crash; with `expected`, the final exactly-once oracle."""
    con = _connect(sink)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM sales WHERE store='S1'")]
        dup = len(ids) - len(set(ids))
        lines_bad = _groups(con, "sale_lines", "store, sale_id", "c != 1")
        tenders_bad = _groups(con, "tenders", "store, sale_id", "c != 1")
        orphan_lines = con.execute(
            "SELECT count(*) FROM sale_lines l LEFT JOIN sales s"
            " ON s.store = l.store AND s.id = l.sale_id WHERE s.id IS NULL"
        ).fetchone()[0]
        outbox_dup = _groups(con, "trigger_outbox", "store, sale_id, trigger_name", "c > 1")
        events_dup = _groups(con, "trigger_events", "store, sale_id, trigger_name", "c > 1")
        events_ids = [r[0] for r in con.execute("SELECT event_id FROM trigger_events")]
        outbox_ids = [r[0] for r in con.execute("SELECT event_id FROM trigger_outbox")]
        inserted = sum(
            orjson.loads(r[0])["inserted"]
            for r in con.execute("SELECT outcome FROM commit_batches")
        )
        # Every committed sale's outbox rows were written in the same transaction as the sale.
        outbox_sales = {r[0] for r in con.execute("SELECT DISTINCT sale_id FROM trigger_outbox")}
        per_sale = _groups(con, "trigger_outbox", "sale_id", "c != 2")
        # A delivered event is marked in the outbox in the same transaction, and vice versa.
        mismatched = con.execute(
            "SELECT count(*) FROM trigger_outbox o LEFT JOIN trigger_events e"
            " ON e.event_id = o.event_id"
            " WHERE (o.delivered_at IS NULL) != (e.event_id IS NULL)"
        ).fetchone()[0]
    finally:
        con.close()
    assert dup == 0
    assert lines_bad == 0 and tenders_bad == 0 and orphan_lines == 0
    assert outbox_dup == 0 and events_dup == 0
    assert len(events_ids) == len(set(events_ids)) and len(outbox_ids) == len(set(outbox_ids))
    assert outbox_sales == set(ids), "outbox and sales are written in one transaction"
    assert per_sale == 0
    assert mismatched == 0
    assert inserted == len(ids), "each sale is inserted by exactly one committed batch"
    if expected is not None:
        assert set(ids) == expected
    return {"sales": len(ids), "duplicated": dup, "events": len(events_ids)}


async def _sink_reaches(
    commit: asyncio.Task[dict[str, object]], sink: Path, threshold: int, until: float = math.inf
) -> None:
    """Return once the sink holds `threshold` sales, the commit ends, or `until` passes."""
    # Another process's database has no event to wait on: look every turn.
    while (  # noqa: ASYNC110
        not commit.done() and _count(sink, SALES) < threshold and time.monotonic() < until
    ):
        await asyncio.sleep(0)


async def _run(tmp_path: Path, kills: int, per_round: int, seed: int) -> None:
    assert per_round > BATCH, "a round must span several pages to be killed mid-commit"
    port = free_port()
    rng = random.Random(seed)
    server = ServerProcess(_config(tmp_path, port, BATCH), port, tmp_path / "server.log")
    sink = tmp_path / "data" / "clientbook.db"
    spool = tmp_path / "data" / "spool.db"
    pushed: set[str] = set()
    timeout = aiohttp.ClientTimeout(total=120)
    t_start = time.monotonic()
    interrupted = 0
    try:
        # Calibration: one uncrashed commit of a round's worth of sales, timed.
        await server.start()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ids = [f"cal-{n}" for n in range(per_round)]
            await _push(session, f"{server.url}/v1/push/canonical/S1", ids)
            pushed.update(ids)
            t0 = time.monotonic()
            assert (await _commit(session, server.url))["committed"] == per_round
            duration = time.monotonic() - t0
        server.kill9()
        await server.wait()
        for round_no in range(kills):
            await server.start()
            async with aiohttp.ClientSession(timeout=timeout) as session:
                ids = [f"k{round_no}-{n}" for n in range(per_round)]
                await _push(session, f"{server.url}/v1/push/canonical/S1", ids)
                pushed.update(ids)
                before = _count(sink, "SELECT count(*) FROM sales")
                pending = len(pushed) - before
                # The sink count at which at most the last page is still to come.
                last_page = before + pending - BATCH
                commit = asyncio.create_task(_commit(session, server.url))
                if round_no % 2 == 0:
                    # Kill once the sink holds a random number of the pending sales (at
                    # least one page, not the last): lands between a page's sink commit and
                    # its spool ack.
                    threshold = before + 1 + rng.randrange(last_page - before)
                    how = f"sink count >= {threshold}"
                    await _sink_reaches(commit, sink, threshold)
                else:
                    # Kill a random delay after the first page landed, within the measured
                    # uncrashed duration scaled to what is pending (and before the last
                    # page): lands anywhere, mostly inside a sink or spool transaction.
                    await _sink_reaches(commit, sink, before + 1)
                    delay = rng.uniform(0, duration * pending / per_round)
                    how = f"{delay * 1000:.0f} ms after the first page"
                    await _sink_reaches(commit, sink, last_page, time.monotonic() + delay)
                server.kill9()
                await server.wait()
                answered = None
                try:
                    answered = await commit
                except (aiohttp.ClientError, TimeoutError):
                    interrupted += 1  # the commit never answered: the kill was inside it
                at = _count(sink, SALES)
            # The kill landed mid-commit: no answer, and some but not all pending sales in.
            assert answered is None, f"round {round_no}: kill {how} came after the commit"
            assert before < at < before + pending, (
                f"round {round_no}: kill {how} not mid-commit: sink={at}"
                f" before={before} pending={pending}"
            )
            figures = _check_sink(sink, None)
            print(
                f"round {round_no}: kill {how}: sink={at}/{len(pushed)}"
                f" spool pending={_count(spool, PENDING)} duplicated={figures['duplicated']}"
            )
        # Recovery: restart, commit until drained, check the exactly-once oracle.
        await server.start()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await _commit_until_drained(session, server.url, spool)
        figures = _check_sink(sink, pushed)
        assert _count(spool, PENDING) == 0
        lost = len(pushed) - figures["sales"]
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        assert interrupted == kills
        print(
            f"commit-crash: kills={kills} interrupted={interrupted} records={len(pushed)}"
            f" lost={lost} duplicated={figures['duplicated']} uncrashed_commit={duration:.2f}s"
            f" elapsed={time.monotonic() - t_start:.1f}s"
        )
    finally:
        await server.stop()


async def test_kill9_during_commit_commits_each_sale_exactly_once(tmp_path: Path) -> None:
    await _run(tmp_path, kills=3, per_round=20_000 // 3, seed=20261125)


@pytest.mark.long
async def test_kill9_during_commit_long(tmp_path: Path) -> None:
    await _run(tmp_path, kills=50, per_round=4000, seed=int(time.time()))
