"""The SQLite sink notices that its file is not the one it opened (issue 12, item 2).

The probe: `clientbook.db` and its -wal/-shm deleted under a running service. Before the
fix, customer pushes still got 202, a window reported `committed` and retired the spool rows,
`/readyz` stayed 200, and after a restart all of it was gone. Now writes answer 503 with
Retry-After naming the sink, `/readyz` is 503 naming it, the window keeps every row in the
spool and retries, and a database file put back at the path is re-opened without a restart:
the next attempt commits each sale exactly once.

In-process app on a FakeClock (tests/appserver): the window's backoff waits on the fake
clock, so the test drives each retry by moving it and waits on state, never on time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.appserver import Harness, make_config, running, until
from tests.factories import sale_dict
from tests.peek import sink_sales
from worker import keys
from worker.committer import WindowResult
from worker.config import Config
from worker.errors import SinkUnavailable
from worker.sinks.sqlite import open_sqlite_sink, sink_path
from worker.sinks.sqlite_file import FileIdentity, space_problem

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 New York: the next window is 14:00
PUSH = "/v1/push/canonical/S1"
EMAIL = "ada.lovelace@example.com"


def retries(caplog: pytest.LogCaptureFixture) -> int:
    """How many sink retries the committer has logged."""
    return sum("retrying in" in r.getMessage() for r in caplog.records)


def more_retries(caplog: pytest.LogCaptureFixture, seen: int) -> Callable[[], bool]:
    """True once the committer has logged a retry after the first `seen`."""
    return lambda: retries(caplog) > seen


async def push_sales(h: Harness, ids: list[str]) -> None:
    """Push sales as NDJSON; each must be accepted into the spool."""
    body = b"\n".join(orjson.dumps(sale_dict(sid, at=NOW)) for sid in ids)
    resp = await h.client.post(
        PUSH, data=body, headers={**h.store(), "Content-Type": "application/x-ndjson"}
    )
    got = await resp.json()
    assert resp.status == 202, got
    assert got["accepted"] == len(ids), got


async def push_customer(h: Harness, cid: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Push one customer (real time, straight to the sink): status, body, headers."""
    rec = {"type": "customer", "id": cid, "first_name": "Ada", "email": EMAIL}
    resp = await h.client.post(PUSH, json=rec, headers=h.store())
    return resp.status, await resp.json(), dict(resp.headers)


async def commit_now(h: Harness) -> dict[str, Any]:
    """POST /v1/admin/commit for S1 (a manual window) and its answer, which must be a 200."""
    resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    got: dict[str, Any] = await resp.json()
    assert resp.status == 200, got
    return got


async def readyz(h: Harness) -> tuple[int, dict[str, Any]]:
    """GET /readyz as the admin."""
    resp = await h.client.get("/readyz", headers=h.admin())
    return resp.status, await resp.json()


def backup(path: Path, to: Path) -> None:
    """The operator's copy of the live database (SQLite's online backup)."""
    src, dst = sqlite3.connect(path), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def delete_sink_files(path: Path) -> None:
    """What the probe did: the database and its -wal/-shm removed under the service."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()


def restore(copy: Path, path: Path) -> None:
    """Put a copy back the way the docs say: a whole file renamed into place."""
    tmp = path.with_name(path.name + ".restoring")
    tmp.write_bytes(copy.read_bytes())
    os.replace(tmp, path)


async def start_window(h: Harness) -> asyncio.Task[WindowResult]:
    """Move the fake clock to S1's next window; the commit task the scheduler starts."""
    scheduler = h.app[keys.SCHEDULER]
    before = scheduler.running.get("S1")
    h.clock.set(scheduler.next_due["S1"])
    await until(lambda: scheduler.running.get("S1") not in (None, before))
    return scheduler.running["S1"]


async def held_through_retries(
    h: Harness,
    cfg: Config,
    caplog: pytest.LogCaptureFixture,
    window: asyncio.Task[WindowResult],
    limit_s: float = 20.0,
) -> int:
    """The sink refuses the window's write: from its first logged retry on, over two more retry
    intervals, the window keeps running and the spool retires nothing. The rows still pending."""
    await until(lambda: retries(caplog) >= 1, limit_s)
    pending: int = h.spool.stats("S1").pending
    assert pending > 0, "the window ended before the sink failed: not mid-window"
    for _ in range(2):
        seen = retries(caplog)
        h.clock.advance(cfg.windows.commit_retry_max_s)
        await until(more_retries(caplog, seen), limit_s)
    assert not window.done()
    assert h.spool.stats("S1").pending == pending
    return pending


def config(tmp_path: Path) -> Config:
    """One app config for these tests: short retries, the default sink path."""
    return make_config(tmp_path, windows={"commit_retry_max_s": 5})


async def test_deleted_sink_refuses_keeps_rows_and_a_restored_file_commits_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    cfg = config(tmp_path)
    path = sink_path(cfg)
    async with running(cfg, NOW) as h:
        committer = h.app[keys.COMMITTER]
        assert (await push_customer(h, "C-1"))[0] == 202
        first = [f"A-{n}" for n in range(100)]
        await push_sales(h, first)
        assert (await commit_now(h))["stores"]["S1"]["committed"] == len(first)
        copy = tmp_path / "nightly.db"
        backup(path, copy)

        delete_sink_files(path)

        # A customer push: refused, retry later, naming the sink and not the customer.
        status, body, headers = await push_customer(h, "C-2")
        assert status == 503, body
        assert body["field"] == "sink", body
        assert "deleted" in body["error"], body
        assert EMAIL not in body["error"]
        assert int(headers["Retry-After"]) > 0, headers
        # Reads do not serve the vanished file either.
        resp = await h.client.get("/v1/stores/S1/sales/A-0", headers=h.admin())
        assert resp.status == 503, await resp.json()
        assert "Retry-After" in resp.headers

        status, ready = await readyz(h)
        assert status == 503, ready
        assert ready["field"] == "sink", ready
        assert "deleted" in ready["checks"]["sink"], ready

        # Sales keep going into the spool.
        second = [f"B-{n}" for n in range(200)]
        await push_sales(h, second)
        assert h.spool.stats("S1").pending == len(second)

        # The window: the write is refused, nothing retired, the window retries.
        window = await start_window(h)
        assert await held_through_retries(h, cfg, caplog, window) == len(second)
        assert committer.sink_error is not None and "deleted" in committer.sink_error
        assert not path.exists(), "the sink made a new empty file instead of refusing"

        # The operator restores last night's copy: the next attempt re-opens and commits.
        restore(copy, path)
        h.clock.advance(cfg.windows.commit_retry_max_s)
        result = await asyncio.wait_for(window, 20)
        assert result.error is None, result.error
        assert result.committed == len(second)
        assert h.spool.stats("S1").pending == 0
        assert (await readyz(h))[0] == 200

        status, body, _ = await push_customer(h, "C-2")
        assert status == 202, body
        resp = await h.client.get("/v1/stores/S1/customers/C-2", headers=h.admin())
        assert resp.status == 200, await resp.json()
        resp = await h.client.get("/v1/stores/S1/sales/B-7", headers=h.admin())
        assert resp.status == 200, await resp.json()
        assert (await resp.json())["total"] == sale_dict("B-7")["total"]

    ids = sink_sales(path)
    assert len(ids) == len(set(ids)), "a sale committed twice"
    assert set(ids) == set(first) | set(second)
    reopened = [r for r in caplog.records if "re-opened" in r.getMessage()]
    assert len(reopened) == 1, [r.getMessage() for r in reopened]


async def test_deleted_sink_then_restart_starts_a_fresh_file_and_commits_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    cfg = config(tmp_path)
    path = sink_path(cfg)
    sales = [f"R-{n}" for n in range(50)]
    async with running(cfg, NOW) as h:
        await push_sales(h, sales)
        delete_sink_files(path)
        assert (await push_customer(h, "C-1"))[0] == 503
        # An admin commit retries until its own deadline, then answers with the error.
        call = asyncio.ensure_future(h.client.post("/v1/admin/commit?store=S1", headers=h.admin()))
        await until(lambda: retries(caplog) >= 1)
        h.clock.advance(cfg.windows.admin_commit_timeout_s)
        resp = await asyncio.wait_for(call, 20)
        got = await resp.json()
        assert resp.status == 503, got
        assert got["field"] == "sink" and "deleted" in got["error"], got
        assert "Retry-After" in resp.headers
        assert h.spool.stats("S1").pending == len(sales)
    # The shutdown did not fail on the vanished file; a restart opens a fresh one.
    async with running(cfg, NOW + timedelta(minutes=1)) as h:
        assert (await readyz(h))[0] == 200
        assert (await push_customer(h, "C-1"))[0] == 202
        assert (await commit_now(h))["stores"]["S1"]["committed"] == len(sales)
    assert sorted(sink_sales(path)) == sorted(sales)


async def test_wal_deleted_alone_is_folded_back_and_nothing_committed_is_lost(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    path = sink_path(cfg)
    sales = [f"W-{n}" for n in range(100)]
    async with running(cfg, NOW) as h:
        await push_sales(h, sales)
        await commit_now(h)
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 0  # the commit still lives in the WAL
        wal.unlink()
        # The next write notices, folds the deleted WAL into the database through the
        # descriptor SQLite still holds, closes and re-opens: it is accepted.
        status, body, _ = await push_customer(h, "C-1")
        assert status == 202, body
        assert (await readyz(h))[0] == 200
    # After a restart every sale committed before the WAL vanished is still there.
    assert sorted(sink_sales(path)) == sorted(sales)


@pytest.mark.parametrize("how", ["replaced in place", "main file deleted, then restored"])
async def test_the_old_wal_is_never_applied_to_the_file_that_takes_its_place(
    tmp_path: Path, how: str
) -> None:
    cfg = config(tmp_path)
    path = sink_path(cfg)
    before, after = [f"O-{n}" for n in range(50)], [f"N-{n}" for n in range(50)]
    async with running(cfg, NOW) as h:
        copy = tmp_path / "empty-copy.db"
        backup(path, copy)  # the schema, no sales
        await push_sales(h, before)
        await commit_now(h)
        # The old file's -wal (with those commits in it) and -shm stay beside the path.
        assert Path(f"{path}-wal").stat().st_size > 0
        if how == "replaced in place":
            restore(copy, path)
        else:
            path.unlink()
            assert (await push_customer(h, "C-1"))[0] == 503
            restore(copy, path)
        await push_sales(h, after)
        assert (await commit_now(h))["stores"]["S1"]["committed"] == len(after)
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    # Only what was committed into the file now at the path: none of the old WAL's sales.
    assert sorted(sink_sales(path)) == sorted(after)


async def test_a_file_back_at_the_path_that_does_not_open_keeps_refusing(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    path = sink_path(cfg)
    async with running(cfg, NOW) as h:
        delete_sink_files(path)
        path.write_bytes(b"not a database" * 100)
        status, body, headers = await push_customer(h, "C-1")
        assert status == 503, body
        assert body["field"] == "sink"
        assert "does not open" in body["error"], body
        assert "Retry-After" in headers
        status, ready = await readyz(h)
        assert status == 503 and ready["field"] == "sink", ready
        # Replaced by a real database: accepted on the next write.
        path.unlink()
        good = tmp_path / "good.db"
        sqlite3.connect(good).close()
        restore(good, path)
        assert (await push_customer(h, "C-1"))[0] == 202
        assert (await readyz(h))[0] == 200


async def test_file_deleted_during_a_write_is_not_counted_as_written(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = sink_path(cfg)
    async with open_sqlite_sink(cfg) as sink:
        keep = tmp_path / "kept.db"
        with pytest.raises(SinkUnavailable) as err:
            async with sink._write("probe") as db:
                await db.execute("PRAGMA user_version")
                # The file leaves the path mid-transaction (kept by a hard link, as an
                # operator's `mv` would): COMMIT succeeds into it, the sink must refuse.
                os.link(path, keep)
                delete_sink_files(path)
        assert err.value.status == 503
        assert "during the write" in err.value.message


def test_identity_names_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (a)")
    ident = FileIdentity(path)
    assert ident.problem() is None
    other = tmp_path / "y.db"
    sqlite3.connect(other).close()
    os.replace(other, path)
    assert ident.problem() == "database file replaced since it was opened"
    path.unlink()
    assert ident.problem() == "database file deleted since it was opened"
    con.close()


def test_space_problem_is_none_where_there_is_room(tmp_path: Path) -> None:
    assert space_problem(tmp_path) is None
    assert not list(tmp_path.iterdir()), "the probe file was left behind"
