"""Disk full under the spool: pushes get 507 with a JSON error, nothing is corrupted, and
intake resumes without a restart once space returns.

`data_dir` is a 4 MiB tmpfs mounted for the test (root only; skipped where `mount` is not
permitted); the sink lives outside it, so only the spool fills. A filler file leaves a little
room; sales are pushed until the spool answers 507 (or 503). The filler is deleted and pushes
succeed again on the same process. After SIGTERM, `PRAGMA integrity_check` is ok and every
sale that got a 202 is in the spool.

The sink's disk full (issue 12, item 8): the sink's directory is a tmpfs of its own (the
spool stays on the test's disk), filled to the last block. A customer push answers 507 with
`field: "sink"` (it was a 503 without Retry-After), `/readyz` is 503 naming the sink (it
stayed green), an admin commit answers 507 at its `admin_commit_timeout_s` (it sat about
11 minutes in backoff) with every row still pending, and once the filler is deleted the
same process commits every sale exactly once and takes the refused customer. Mid-window:
the disk fills after the first page of a large window is retired; nothing more is retired
until space returns (quick 3,000 sales; long, `POSSYNC_LONG=1`, 20,000). PostgreSQL: a
database whose tablespace is a 32 MiB tmpfs, filled: its SQLSTATE 53100 is a 507 naming the
sink, and pushes are accepted again once space returns.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pwd
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from tests.appserver import Harness, make_config, running, until
from tests.procserver import ServerProcess, free_port, headers, sale_body, write_config
from tests.test_sink_identity import (
    EMAIL,
    held_through_retries,
    more_retries,
    push_customer,
    push_sales,
    readyz,
    retries,
    start_window,
)
from worker.config import Config

if TYPE_CHECKING:
    from tests.plugins.postgres import PostgresServer

pytest_plugins = ["tests.plugins.postgres"]

NDJSON = {"Content-Type": "application/x-ndjson"}


@contextmanager
def _tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mnt`, unmounted on exit."""
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at teardown."""
    with _tmpfs(tmp_path / "tiny", "4m") as mnt:
        yield mnt


@pytest.fixture
def sink_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB tmpfs for the sink alone (filled to the last block by the tests)."""
    with _tmpfs(tmp_path / "sinkfs", "256m") as mnt:
        yield mnt


def _body(prefix: str, start: int, n: int) -> bytes:
    return b"\n".join(sale_body(f"{prefix}-{k}") for k in range(start, start + n))


async def test_disk_full_then_recovers(tmp_path: Path, tiny_fs: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, data_dir=str(tiny_fs), sink={"path": str(tmp_path / "sink.db")}
    )
    server = ServerProcess(config, port, tmp_path / "server.log")
    url = f"{server.url}/v1/push/canonical/S1"
    hdrs = {**headers(), **NDJSON}
    acked: list[str] = []
    try:
        await server.start()
        # Leave about 600 KiB free.
        filler = tiny_fs / "filler.bin"
        free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 600 * 1024))

        full: tuple[int, dict[str, object]] | None = None
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(500):  # bounded: 500 x 50 sales is far past 600 KiB
                async with session.post(url, data=_body("F", n, 50), headers=hdrs) as resp:
                    got = await resp.json(content_type=None)
                    if resp.status == 202:
                        assert got["accepted"] == 50, got
                        acked.extend(f"F-{k}" for k in range(n, n + 50))
                        n += 50
                        continue
                    full = (resp.status, got)
                    break
            assert full is not None, "the disk never filled"
            status, err = full
            assert status in (507, 503), full
            assert isinstance(err.get("error"), str) and err["error"], full
            assert "field" in err, full

            # Space returns; the same process accepts again.
            filler.unlink()
            async with session.post(url, data=_body("R", 0, 50), headers=hdrs) as resp:
                got = await resp.json(content_type=None)
                assert resp.status == 202, got
                acked.extend(f"R-{k}" for k in range(50))
        server.term()
        assert await server.wait(30) == 0
        con = sqlite3.connect(tiny_fs / "spool.db")
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            have = {r[0] for r in con.execute("SELECT rid FROM spool")}
        finally:
            con.close()
        lost = set(acked) - have
        print(
            f"disk-full: acked={len(acked)} first_refusal={status} error={err['error']!r}"
            f" lost={len(lost)} integrity=ok"
        )
        assert not lost, sorted(lost)[:10]
    finally:
        await server.stop()


NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 11:00 New York: the next window is 14:00


def _sink_config(tmp_path: Path, sink_fs: Path) -> Config:
    return make_config(
        tmp_path,
        sink={"kind": "sqlite", "path": str(sink_fs / "clientbook.db")},
        windows={"commit_retry_max_s": 5},
    )


def _fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has not one block left."""
    filler = directory / "filler.bin"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return filler


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _sales(path: Path) -> list[str]:
    con = _db(path)
    try:
        return [r[0] for r in con.execute("SELECT id FROM sales WHERE store = 'S1'")]
    finally:
        con.close()


def _check_sink(path: Path) -> tuple[str, int, set[str]]:
    """integrity_check, the sum of `inserted` over commit batches, the customers of S1."""
    con = _db(path)
    try:
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute("SELECT outcome FROM commit_batches WHERE store = 'S1'").fetchall()
        customers = {r[0] for r in con.execute("SELECT id FROM customers WHERE store = 'S1'")}
    finally:
        con.close()
    return ok, sum(int(orjson.loads(r[0])["inserted"]) for r in rows), customers


async def test_sink_disk_full_507_admin_deadline_readyz_then_recovers(
    tmp_path: Path, sink_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    cfg = _sink_config(tmp_path, sink_fs)
    path = sink_fs / "clientbook.db"
    sales = [f"F-{n}" for n in range(300)]
    async with running(cfg, NOW) as h:
        accepted = ["C-0"]
        assert (await push_customer(h, "C-0"))[0] == 202
        await push_sales(h, sales)
        filler = _fill(sink_fs)

        # Customers go to the sink in real time: pushed until the disk refuses one.
        refused = None
        for n in range(1, 200):  # bounded: each upsert needs new WAL blocks
            status, body, _ = await push_customer(h, f"C-{n}")
            if status == 202:
                accepted.append(f"C-{n}")
                continue
            refused = (f"C-{n}", status, body)
            break
        assert refused is not None, "the sink's disk never refused a write"
        refused_id, refusal, body = refused
        assert refusal == 507, body
        assert body["field"] == "sink", body
        assert "disk full" in body["error"], body
        assert EMAIL not in body["error"]

        status, ready = await readyz(h)
        assert status == 503, ready
        assert ready["field"] == "sink", ready
        assert "disk full" in ready["checks"]["sink"], ready

        # An admin commit: retried until its own deadline, then the error; rows stay.
        call = asyncio.ensure_future(h.client.post("/v1/admin/commit?store=S1", headers=h.admin()))
        await until(lambda: retries(caplog) >= 1)
        seen = retries(caplog)
        h.clock.advance(cfg.windows.admin_commit_timeout_s - 1)
        await until(more_retries(caplog, seen))
        assert not call.done(), "the admin commit answered before its deadline"
        h.clock.advance(1)
        resp = await asyncio.wait_for(call, 20)
        got = await resp.json()
        assert resp.status == 507, got
        assert got["field"] == "sink" and "disk full" in got["error"], got
        assert h.spool.stats("S1").pending == len(sales)

        # Space returns: the same process is ready, commits and takes the customer.
        filler.unlink()
        assert (await readyz(h))[0] == 200
        resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
        got = await resp.json()
        assert resp.status == 200, got
        assert got["stores"]["S1"]["committed"] == len(sales)
        assert (await push_customer(h, refused_id))[0] == 202
        assert h.spool.stats("S1").pending == 0
    ok, inserted, customers = _check_sink(path)
    assert ok == "ok"
    ids = _sales(path)
    assert sorted(ids) == sorted(sales), "a sale lost or committed twice"
    assert inserted == len(sales)
    assert customers == {*accepted, refused_id}
    print(
        f"sink-disk-full: customers_accepted={len(accepted)} refusal={refusal}"
        f" admin_commit={resp.status} sales={len(sales)} lost=0 duplicated=0 integrity={ok}"
    )


async def _disk_full_mid_window(
    tmp_path: Path, sink_fs: Path, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    caplog.set_level(logging.WARNING, logger="possync")
    cfg = _sink_config(tmp_path, sink_fs)
    path = sink_fs / "clientbook.db"
    sales = [f"W-{k}" for k in range(n)]
    async with running(cfg, NOW) as h:
        for i in range(0, n, 1000):
            await push_sales(h, sales[i : i + 1000])
        window = await start_window(h)
        await until(lambda: h.spool.stats("S1").pending <= n - 1000, 300)
        filler = _fill(sink_fs)
        pending = await held_through_retries(h, cfg, caplog, window, 300)
        status, ready = await readyz(h)
        assert status == 503 and ready["field"] == "sink", ready
        retired = set(sales) - await h.spool.pending_ids("S1", "sale", sales)
        assert retired <= set(_sales(path))

        filler.unlink()
        h.clock.advance(cfg.windows.commit_retry_max_s)
        result = await asyncio.wait_for(window, 600)
        assert result.error is None, result.error
        assert h.spool.stats("S1").pending == 0
        assert (await readyz(h))[0] == 200
    ok, inserted, _ = _check_sink(path)
    assert ok == "ok"
    assert sorted(_sales(path)) == sorted(sales), "a sale lost or committed twice"
    assert inserted == n
    print(
        f"sink-disk-full-mid-window: sales={n} retired_before={n - pending}"
        f" held_back={pending} lost=0 duplicated=0 retries={retries(caplog)} integrity={ok}"
    )


async def test_sink_disk_full_mid_window(
    tmp_path: Path, sink_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _disk_full_mid_window(tmp_path, sink_fs, caplog, 3_000)


@pytest.mark.long
async def test_sink_disk_full_mid_window_long(
    tmp_path: Path, sink_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _disk_full_mid_window(tmp_path, sink_fs, caplog, 20_000)


@pytest.fixture
def pg_on_tmpfs(postgres_server: PostgresServer) -> Iterator[tuple[str, Path]]:
    """A fresh database whose tablespace is a 32 MiB tmpfs: (its DSN, the mount)."""
    postgres_server.start()
    # Not under tmp_path (0700 root): the postgres user must reach the tablespace.
    base = Path(tempfile.mkdtemp(prefix="possync-pgfull-"))
    base.chmod(0o755)
    tag = uuid.uuid4().hex[:12]
    with _tmpfs(base / "mnt", "32m") as mnt:
        ts = mnt / "ts"
        ts.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(ts, user.pw_uid, user.pw_gid)
        postgres_server.psql(f"CREATE TABLESPACE tiny_{tag} LOCATION '{ts}'")
        postgres_server.psql(f"CREATE DATABASE full_{tag} TABLESPACE tiny_{tag}")
        try:
            yield postgres_server.dsn_for(f"full_{tag}"), mnt
        finally:
            for junk in mnt.glob("filler*"):
                junk.unlink()
            postgres_server.psql(f"DROP DATABASE IF EXISTS full_{tag} WITH (FORCE)")
            postgres_server.psql(f"DROP TABLESPACE IF EXISTS tiny_{tag}")


async def _push_customers(h: Harness, first: int, n: int) -> tuple[int, dict[str, Any]]:
    body = b"\n".join(
        orjson.dumps({"type": "customer", "id": f"P-{k}", "first_name": "Ada", "email": EMAIL})
        for k in range(first, first + n)
    )
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=body,
        headers={**h.store(), "Content-Type": "application/x-ndjson"},
    )
    return resp.status, await resp.json()


async def test_postgres_sink_disk_full_is_507_then_recovers(
    tmp_path: Path, pg_on_tmpfs: tuple[str, Path]
) -> None:
    dsn, mnt = pg_on_tmpfs
    cfg = make_config(tmp_path, sink={"kind": "postgres", "dsn": dsn, "pool_max": 2})
    async with running(cfg, NOW) as h:
        assert (await _push_customers(h, 0, 50))[0] == 202
        filler = _fill(mnt)
        refused: tuple[int, dict[str, Any]] | None = None
        accepted = 50
        for _ in range(400):  # bounded: 20,000 customers are far past a full tablespace
            status, body = await _push_customers(h, accepted, 50)
            if status != 202:
                refused = (status, body)
                break
            accepted += 50
        assert refused is not None, "PostgreSQL never reported the disk full"
        status, body = refused
        assert status == 507, body
        assert body["field"] == "sink" and "53100" in body["error"], body
        assert EMAIL not in body["error"]

        filler.unlink()
        status, body = await _push_customers(h, accepted, 50)
        assert status == 202, body
        accepted += 50
        sink = h.sink
        stored = [await sink.get_customer("S1", f"P-{k}") for k in (0, accepted - 1)]
        assert all(c is not None for c in stored)
    print(f"postgres-disk-full: customers_accepted={accepted} refusal={refused[0]} lost=0")
