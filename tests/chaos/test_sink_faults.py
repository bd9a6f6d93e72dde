"""The SQLite sink locked during a window commit: /readyz names it, intake keeps going, and
once the lock is gone the commit completes with every sale exactly once.

The sink file deleted in the middle of a large window (issue 12, item 2): the page being
written when the file left is not retired, nor is any later one; every row the spool did
retire is in the file that comes back; once it is back the window finishes and every sale
is in it exactly once. Quick: 3,000 sales in pages of 1,000. Long (`POSSYNC_LONG=1`, marker
`long`): 20,000.

In-process app (tests/appserver) on a FakeClock: the committer's backoff waits on
`clock.wait_until`, so the test drives each retry by advancing the clock and waits for
state changes with bounded `asyncio.wait_for`, never with sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests import test_sink_identity as identity
from tests.appserver import Harness, make_config, running, until
from tests.peek import sink_sales
from worker import keys
from worker.sinks.sqlite import sink_path

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 New York: no window due for hours
URL = "/v1/push/canonical/S1"


def _sink_error(h: Harness) -> str | None:
    """The committer's current sink error (read fresh: it changes under the test)."""
    error: str | None = h.app[keys.COMMITTER].sink_error
    return error


async def test_sink_locked_during_commit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    # A short busy timeout so each attempt (and the readiness probe) fails fast. The admin
    # commit here stands for a window that waits the lock out: no deadline within the test.
    cfg = make_config(
        tmp_path,
        sink={"kind": "sqlite", "busy_timeout_ms": 50},
        windows={"admin_commit_timeout_s": 86_400},
    )
    async with running(cfg, NOW) as h:
        committer = h.app[keys.COMMITTER]
        before = [f"B-{n}" for n in range(300)]
        await identity.push_sales(h, before)
        assert (await identity.readyz(h))[0] == 200

        # The fault: another process-like connection holds the database's write lock.
        locker = sqlite3.connect(sink_path(cfg), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            commit = asyncio.create_task(
                h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
            )
            await until(lambda: committer.sink_error is not None)
            assert committer.sink_error is not None and "locked" in committer.sink_error

            status, ready = await identity.readyz(h)
            assert status == 503, ready
            assert ready["field"] == "sink" and ready["checks"]["sink"] != "ok", ready
            assert str(ready["error"]).startswith("sink:")

            # A customer goes to the sink in real time: refused, retry later, naming the sink.
            status, body, headers = await identity.push_customer(h, "C-locked")
            assert status == 503, body
            assert body["field"] == "sink" and "locked" in body["error"], body
            assert int(headers["Retry-After"]) > 0, headers

            # Intake keeps accepting sales into the spool while the sink is down.
            during = [f"D-{n}" for n in range(200)]
            for i in range(0, len(during), 50):
                await identity.push_sales(h, during[i : i + 50])
            assert h.spool.stats("S1").pending == len(before) + len(during)

            # Drive two retries through the fake clock; each fails again while locked.
            for _ in range(2):
                seen = identity.retries(caplog)
                h.clock.advance(cfg.windows.commit_retry_max_s)
                await until(identity.more_retries(caplog, seen))
            assert not commit.done()
            assert sink_sales(sink_path(cfg)) == []
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        # Fault cleared: the next retry commits; the request answers.
        h.clock.advance(cfg.windows.commit_retry_max_s)
        resp = await asyncio.wait_for(commit, 20)
        first = await resp.json()
        assert resp.status == 200, first
        assert _sink_error(h) is None
        assert (await identity.readyz(h))[0] == 200

        # A second window takes whatever arrived after the first one's instant.
        resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
        second = await resp.json()
        assert resp.status == 200, second
        committed = first["stores"]["S1"]["committed"] + second["stores"]["S1"]["committed"]
        ids = sink_sales(sink_path(cfg))
        assert len(ids) == len(set(ids)), "a sale committed twice"
        assert set(ids) == set(before) | set(during)
        assert committed == len(ids)
        assert h.spool.stats("S1").pending == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        print(
            f"sink-locked: records={len(before) + len(during)} lost=0 duplicated=0"
            f" retries={identity.retries(caplog)}"
        )


def _inserted(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT outcome FROM commit_batches WHERE store = 'S1'").fetchall()
    finally:
        con.close()
    return sum(int(orjson.loads(r[0])["inserted"]) for r in rows)


async def _deleted_mid_window(tmp_path: Path, caplog: pytest.LogCaptureFixture, sales: int) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    cfg = make_config(tmp_path, windows={"commit_retry_max_s": 5, "batch_size": 1000})
    path = sink_path(cfg)
    ids = [f"M-{n}" for n in range(sales)]
    async with running(cfg, NOW) as h:
        sink = h.sink
        for i in range(0, sales, 1000):
            await identity.push_sales(h, ids[i : i + 1000])
        window = await identity.start_window(h)
        # The first page is retired: the window is under way. Now the file leaves the path
        # (kept under another name by a hard link, as a `mv` away would) with its -wal/-shm.
        await until(lambda: h.spool.stats("S1").pending <= sales - 1000, 120)
        keep = tmp_path / "moved-away.db"
        os.link(path, keep)
        identity.delete_sink_files(path)
        # /readyz runs the sink's check: it notices, folds the WAL in and closes the file.
        status, ready = await identity.readyz(h)
        assert status == 503 and ready["field"] == "sink", ready
        assert sink.lost is not None
        # Nothing is retired while the file is away (two more failed attempts).
        pending = await identity.held_through_retries(h, cfg, caplog, window, 120)
        # Every row the spool retired is in the file that is coming back.
        retired = set(ids) - await h.spool.pending_ids("S1", "sale", ids)
        assert len(retired) == sales - pending
        kept = set(sink_sales(keep))
        assert retired <= kept, sorted(retired - kept)[:5]

        os.replace(keep, path)  # the file returns
        h.clock.advance(cfg.windows.commit_retry_max_s)
        result = await asyncio.wait_for(window, 300)
        assert result.error is None, result.error
        assert h.spool.stats("S1").pending == 0
        assert (await identity.readyz(h))[0] == 200
    assert sorted(sink_sales(path)) == sorted(ids), "a sale lost or committed twice"
    assert _inserted(path) == sales
    print(
        f"sink-deleted-mid-window: sales={sales} retired_before={sales - pending}"
        f" held_back={pending} lost=0 duplicated=0 retries={identity.retries(caplog)}"
    )


async def test_sink_file_deleted_mid_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _deleted_mid_window(tmp_path, caplog, 3_000)


@pytest.mark.long
async def test_sink_file_deleted_mid_window_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _deleted_mid_window(tmp_path, caplog, 20_000)
