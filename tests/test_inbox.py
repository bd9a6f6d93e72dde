"""Drop folders and `POST /v1/files` against the real app with a fake clock: real files in tmp.

The watcher is driven by the fake clock: `tick` waits until it is parked between scans,
advances the clock by one scan interval and waits for that scan to finish. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.appserver import ADMIN, S1_TOKEN, S2_TOKEN, Harness, make_config, running
from tests.factories import sale_dict
from worker import keys
from worker.config import Config
from worker.errors import Unavailable
from worker.intake import IngestOutcome
from worker.sources import inbox_fs
from worker.sources.inbox import INBOX, Inbox, content_type_for, natural_key

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
INTERVAL = 5.0
FIXTURES = Path(__file__).parent / "fixtures"
EDGE_STORE = {"id": "E1", "source": "the_edge", "timezone": "America/New_York", "token": "e1-tok"}
KWI_STORE = {"id": "K1", "source": "kwi", "timezone": "America/New_York", "token": "k1-tok"}


def config(tmp: Path, *, stores: list[dict[str, Any]] | None = None, **overrides: Any) -> Config:
    base = make_config(tmp)
    raw_stores: list[dict[str, Any]] = [
        {"id": s.id, "source": s.source, "timezone": s.timezone, "token": s.token}
        for s in base.stores
    ]
    # Clock-driven scans only (notifications have their own tests): every scan is a tick.
    inbox = {
        "scan_interval_s": INTERVAL,
        "stable_s": INTERVAL,
        "notify": False,
        **overrides.pop("inbox", {}),
    }
    return make_config(tmp, inbox=inbox, stores=raw_stores + (stores or []), **overrides)


@asynccontextmanager
async def started(cfg: Config) -> AsyncIterator[Harness]:
    """The app with its watcher parked after the start-up scan."""
    async with running(cfg, NOW) as h:
        await watcher(h).idle.wait()
        yield h


def watcher(h: Harness) -> Inbox:
    return h.app[INBOX]


async def tick(h: Harness) -> None:
    """One scan interval on the fake clock, and the scan it triggers."""
    inbox = watcher(h)
    await inbox.idle.wait()
    n = inbox.scans
    h.clock.advance(INTERVAL)
    await inbox.wait_scans(n + 1)


def folder(tmp: Path, store: str = "S1", source: str = "canonical") -> Path:
    return tmp / "inbox" / source / store


def ndjson(*docs: dict[str, Any]) -> bytes:
    return b"\n".join(orjson.dumps(d) for d in docs) + b"\n"


def drop(where: Path, name: str, body: bytes, *, marker: bool = True) -> Path:
    path = where / name
    path.write_bytes(body)
    if marker:
        (where / f"{name}.done").write_bytes(b"")
    return path


def result(where: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((where / f"{name}.result.json").read_bytes())
    return doc


def report(where: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((where / f"{name}.error.json").read_bytes())
    return doc


def stats(h: Harness, store: str = "S1") -> dict[str, Any]:
    got: dict[str, Any] = watcher(h).snapshot()["stores"][store]
    return got


CUSTOMER = {"type": "customer", "id": "C1", "first_name": "Ada", "version": 5}


# ---------------------------------------------------------------------- pure helpers


def test_content_type_by_extension() -> None:
    assert content_type_for("a.json") == "application/json"
    assert content_type_for("a.NDJSON") == "application/x-ndjson"
    assert content_type_for("a.jsonl") == "application/x-ndjson"
    assert content_type_for("orders.csv") == "text/csv"
    assert content_type_for("export.bin") == ""


def test_natural_order() -> None:
    names = [
        "2026-03-14-11-21-13-CustomerList.json",
        "10-2026-03-14-12-00-Transaction.json",
        "2-2026-03-14-12-00-Transaction.json",
        "1-2026-03-14-12-00-Transaction.json",
        "2026-03-14-09-05-00-CustomerList.json",
    ]
    assert sorted(names, key=natural_key) == [
        "1-2026-03-14-12-00-Transaction.json",
        "2-2026-03-14-12-00-Transaction.json",
        "10-2026-03-14-12-00-Transaction.json",
        "2026-03-14-09-05-00-CustomerList.json",
        "2026-03-14-11-21-13-CustomerList.json",
    ]


# ---------------------------------------------------------------------- the watcher


async def test_marked_file_is_ingested_and_moved_with_a_result(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        assert (where / "processed").is_dir() and (where / "failed").is_dir()
        body = ndjson(sale_dict("F-1", at=NOW), sale_dict("F-2", at=NOW), CUSTOMER)
        drop(where, "sales-001.ndjson", body)
        await tick(h)
        assert sorted(p.name for p in where.iterdir()) == ["failed", "processed"]
        done = where / "processed"
        assert (done / "sales-001.ndjson").read_bytes() == body
        assert (done / "sales-001.ndjson.done").exists()
        res = result(done, "sales-001.ndjson")
        assert (res["accepted"], res["duplicates"], res["rejected"]) == (3, 0, [])
        assert res["file"] == "sales-001.ndjson" and res["store"] == "S1"
        assert res["visible_at"] == "2026-11-20T19:00:00+00:00"
        assert h.spool.stats("S1").pending == 2
        assert await h.sink.get_customer("S1", "C1") is not None
        st = stats(h)
        assert (st["processed"], st["failed"], st["retrying"]) == (1, 0, 0)
        assert st["last_file"] == "processed/sales-001.ndjson"
        # The /status section and the readiness of the watcher task.
        resp = await h.client.get("/status", headers=h.admin())
        assert (await resp.json())["inbox"]["stores"]["S1"]["processed"] == 1
        resp = await h.client.get("/readyz", headers=h.admin())
        assert (await resp.json())["checks"]["task:inbox"] == "ok"


async def test_unmarked_file_is_taken_only_once_stable(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        path = drop(where, "late.ndjson", ndjson(sale_dict("L-1", at=NOW)), marker=False)
        await tick(h)  # first seen: size and mtime noted
        assert path.exists() and h.spool.stats("S1").pending == 0
        await tick(h)  # unchanged for stable_s across two scans
        assert not path.exists() and (where / "processed" / "late.ndjson").exists()
        assert h.spool.stats("S1").pending == 1


async def test_growing_file_is_not_taken_and_holds_back_later_files(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        path = drop(where, "a-growing.ndjson", ndjson(sale_dict("G-1", at=NOW)), marker=False)
        later = drop(where, "b-later.ndjson", ndjson(sale_dict("G-9", at=NOW)))
        await tick(h)
        for i in range(2, 5):
            with path.open("ab") as f:
                f.write(ndjson(sale_dict(f"G-{i}", at=NOW)))
            await tick(h)
            # Still being written: neither it nor the file after it is taken.
            assert path.exists() and later.exists()
            assert h.spool.stats("S1").pending == 0
        await tick(h)
        assert not path.exists() and not later.exists()
        assert result(where / "processed", "a-growing.ndjson")["accepted"] == 4
        assert h.spool.stats("S1").pending == 5


async def test_files_are_taken_in_natural_name_order(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        # The same sale, newer in the later part: in order, both versions are accepted;
        # reversed, the second would be a stale duplicate.
        drop(where, "10-part.ndjson", ndjson(sale_dict("P-1", at=NOW, version=2)))
        drop(where, "2-part.ndjson", ndjson(sale_dict("P-1", at=NOW, version=1)))
        await tick(h)
        done = where / "processed"
        assert result(done, "2-part.ndjson")["accepted"] == 1
        assert result(done, "10-part.ndjson")["accepted"] == 1
        assert h.spool.stats("S1").pending == 1


async def test_ignored_names_stay_untouched(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        body = ndjson(sale_dict("I-1", at=NOW))
        names = [".hidden.ndjson", "upload.ndjson.tmp", "upload.ndjson.part", "orphan.json.done"]
        for name in names:
            drop(where, name, body, marker=False)
        for _ in range(3):
            await tick(h)
        assert sorted(p.name for p in where.iterdir() if p.is_file()) == sorted(names)
        assert h.spool.stats("S1").pending == 0
        assert stats(h)["processed"] == 0 and stats(h)["failed"] == 0


async def test_bad_file_goes_to_failed_with_a_report_naming_the_field(tmp_path: Path) -> None:
    cfg = config(tmp_path, http={"max_backfill_bytes": 64 * 1024})
    async with started(cfg) as h:
        where = folder(tmp_path)
        bad = sale_dict("B-1", at=NOW)
        bad["lines"][0]["unit_price"] = "12,50"
        drop(where, "1-bad.json", orjson.dumps(bad))
        drop(where, "2-unknown.bin", orjson.dumps(sale_dict("B-2", at=NOW)))
        drop(where, "3-huge.ndjson", b" " * (64 * 1024 + 1))
        drop(where, "4-good.ndjson", ndjson(sale_dict("B-4", at=NOW)))
        await tick(h)
        failed = where / "failed"
        rep = report(failed, "1-bad.json")
        assert rep["field"] == "$.lines[0].unit_price" and rep["status"] == 400
        assert rep["rejected"][0]["field"] == "$.lines[0].unit_price"
        assert rep["at"] == "2026-11-20T16:00:05+00:00" and rep["error"]
        assert (failed / "1-bad.json").exists() and (failed / "1-bad.json.done").exists()
        rep = report(failed, "2-unknown.bin")
        assert (rep["status"], rep["field"]) == (415, "Content-Type")
        rep = report(failed, "3-huge.ndjson")
        assert (rep["status"], rep["field"]) == (413, "body")
        # A failing file does not hold back the good one after it.
        assert result(where / "processed", "4-good.ndjson")["accepted"] == 1
        st = stats(h)
        assert (st["processed"], st["failed"]) == (1, 3)
        assert st["last_file"] == "processed/4-good.ndjson"
        assert "3-huge.ndjson" in st["last_error"]
        assert not [p for p in where.iterdir() if p.is_file()]
        assert h.spool.stats("S1").pending == 1


async def test_redelivered_file_is_all_duplicates(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        body = ndjson(sale_dict("R-1", at=NOW), sale_dict("R-2", at=NOW))
        drop(where, "daily.ndjson", body)
        await tick(h)
        drop(where, "daily.ndjson", body)  # the POS sends the same export again
        await tick(h)
        done = where / "processed"
        again = "daily.20261120T160010Z.ndjson"
        assert (done / "daily.ndjson").exists() and (done / again).exists()
        assert (done / f"{again}.done").exists()
        res = result(done, again)
        assert (res["accepted"], res["duplicates"]) == (0, 2)
        assert h.spool.stats("S1").pending == 2
        assert stats(h)["processed"] == 2


async def test_crash_between_ingest_and_move_reingests_harmlessly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path)
    body = ndjson(sale_dict("X-1", at=NOW), sale_dict("X-2", at=NOW))

    def crash(*args: object) -> str:
        raise OSError("simulated crash before the move")

    with monkeypatch.context() as m:
        m.setattr(inbox_fs, "finalize", crash)
        async with started(cfg) as h:
            path = drop(folder(tmp_path), "x.ndjson", body)
            await tick(h)
            # Ingested (durable) but not moved: still in the inbox.
            assert path.exists() and h.spool.stats("S1").pending == 2
            st = stats(h)
            assert (st["processed"], st["retrying"], st["retries"]) == (0, 1, 1)
            assert "simulated crash" in st["last_error"]
    # Restart on the same data: the start-up scan takes the file again.
    async with started(cfg) as h:
        done = folder(tmp_path) / "processed"
        assert not path.exists() and (done / "x.ndjson").exists()
        res = result(done, "x.ndjson")
        assert (res["accepted"], res["duplicates"]) == (0, 2)
        assert h.spool.stats("S1").pending == 2


async def test_transient_error_leaves_the_file_and_backs_off(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        intake = h.app[keys.INTAKE]
        real = intake.ingest
        failures = [Unavailable("sink down", retry_after_s=1), Unavailable("sink down")]

        async def flaky(*args: Any, **kw: Any) -> IngestOutcome:
            if failures:
                raise failures.pop(0)
            return await real(*args, **kw)

        intake.ingest = flaky  # type: ignore[method-assign]
        path = drop(folder(tmp_path), "t.ndjson", ndjson(sale_dict("T-1", at=NOW)))
        await tick(h)  # attempt 1 fails: retry in one interval
        assert path.exists() and stats(h)["retrying"] == 1
        await tick(h)  # attempt 2 fails: retry in two intervals
        assert path.exists() and stats(h)["retries"] == 2
        await tick(h)  # backing off
        assert path.exists() and stats(h)["retries"] == 2
        await tick(h)
        assert not path.exists()
        st = stats(h)
        assert (st["processed"], st["retrying"], st["failed"]) == (1, 0, 0)
        assert h.spool.stats("S1").pending == 1


async def test_the_edge_files_go_through_the_native_adapter(tmp_path: Path) -> None:
    async with started(config(tmp_path, stores=[EDGE_STORE])) as h:
        where = folder(tmp_path, "E1", "the_edge")
        for name in ("2026-11-02-06-00-Transaction.json", "2026-03-14-11-21-13-CustomerList.json"):
            shutil.copy(FIXTURES / "the_edge" / name, where / name)
            (where / f"{name}.done").touch()
        await tick(h)
        done = where / "processed"
        assert result(done, "2026-03-14-11-21-13-CustomerList.json")["accepted"] == 2
        assert result(done, "2026-11-02-06-00-Transaction.json")["accepted"] == 5
        assert await h.sink.get_customer("E1", "001-00001") is not None
        assert h.spool.stats("E1").pending == 5
        # Canonical files are accepted for a native store too, from their own folder.
        assert folder(tmp_path, "E1").is_dir()


async def test_kwi_csv_goes_through_the_mapping(tmp_path: Path) -> None:
    async with started(config(tmp_path, stores=[KWI_STORE])) as h:
        where = folder(tmp_path, "K1", "kwi")
        for name in ("orders.csv", "customers.csv"):
            shutil.copy(FIXTURES / "kwi" / name, where / name)
        await tick(h)
        await tick(h)  # no markers: stable across two scans
        done = where / "processed"
        res = result(done, "orders.csv")
        assert (res["accepted"], res["dropped"]) == (1, {"open": 1})
        assert result(done, "customers.csv")["accepted"] == 2
        assert await h.sink.get_customer("K1", "100234") is not None


# ---------------------------------------------------------------------- POST /v1/files


async def post(
    h: Harness,
    url: str,
    body: bytes,
    *,
    token: str | None = S1_TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    resp = await h.client.post(url, data=body, headers=hdrs)
    return resp.status, await resp.json()


async def test_upload_is_ingested_like_a_push(tmp_path: Path) -> None:
    async with started(config(tmp_path, stores=[EDGE_STORE])) as h:
        body = ndjson(sale_dict("U-1", at=NOW), CUSTOMER)
        status, out = await post(h, "/v1/files/canonical/S1?filename=up.ndjson", body)
        assert status == 202, out
        assert set(out) == {
            "accepted",
            "duplicates",
            "rejected",
            "rejected_count",
            "dropped",
            "visible_at",
        }
        assert (out["accepted"], out["duplicates"]) == (2, 0)
        # The admin token is not a push credential (issue 12): only the store's own token.
        status, out = await post(h, "/v1/files/canonical/S1?filename=up.ndjson", body, token=ADMIN)
        assert status == 401 and out["field"] == "Authorization", out
        # Again with the store token: duplicates.
        status, out = await post(h, "/v1/files/canonical/S1?filename=up.ndjson", body)
        assert status == 202 and (out["accepted"], out["duplicates"]) == (0, 2)
        # A native export named by Content-Disposition, typed by its extension.
        name = "2026-11-02-06-00-Transaction.json"
        status, out = await post(
            h,
            "/v1/files/the_edge/E1",
            (FIXTURES / "the_edge" / name).read_bytes(),
            token="e1-tok",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Type": "application/octet-stream",
            },
        )
        assert status == 202 and out["accepted"] == 5, out
        assert h.spool.stats("E1").pending == 5 and h.spool.stats("S1").pending == 1
        assert stats(h)["uploads"] == 2 and stats(h, "E1")["uploads"] == 1


async def test_upload_errors(tmp_path: Path) -> None:
    cfg = config(tmp_path, http={"max_backfill_bytes": 64 * 1024})
    async with started(cfg) as h:
        body = ndjson(sale_dict("E-1", at=NOW))
        url = "/v1/files/canonical/S1?filename=e.ndjson"
        for token in (None, "wrong", S2_TOKEN):
            status, out = await post(h, url, body, token=token)
            assert status == 401 and out["field"] == "Authorization", out
        # An unknown store is the same 401 as a wrong token: store ids cannot be enumerated.
        status, out = await post(h, "/v1/files/canonical/NOPE?filename=e.ndjson", body)
        assert status == 401 and out["field"] == "Authorization", out
        for source in ("teletype", "the_edge"):
            status, out = await post(h, f"/v1/files/{source}/S1?filename=e.ndjson", body)
            assert status == 404 and out["field"] == "source", out
        status, out = await post(
            h, "/v1/files/canonical/S1?filename=e.png", body, headers={"Content-Type": "image/png"}
        )
        assert status == 415 and out["field"] == "Content-Type"
        status, out = await post(h, "/v1/files/canonical/S1?filename=e.bin", body)
        assert status == 415 and out["field"] == "Content-Type"
        status, out = await post(h, url, b" " * (64 * 1024 + 1))
        assert status == 413 and out["field"] == "body"
        bad = sale_dict("E-2", at=NOW)
        bad["lines"][0]["unit_price"] = "12,50"
        status, out = await post(h, "/v1/files/canonical/S1?filename=e.json", orjson.dumps(bad))
        assert status == 400 and out["field"] == "$.lines[0].unit_price"
        assert h.spool.stats("S1").pending == 0


async def test_disabled_inbox_keeps_uploads(tmp_path: Path) -> None:
    cfg = config(tmp_path, inbox={"enabled": False})
    async with running(cfg, NOW) as h:
        assert "inbox" not in h.app[keys.HEALTH].tasks
        assert not (tmp_path / "inbox").exists()
        status, out = await post(
            h, "/v1/files/canonical/S1?filename=d.ndjson", ndjson(sale_dict("D-1", at=NOW))
        )
        assert status == 202 and out["accepted"] == 1
        assert watcher(h).snapshot()["enabled"] is False


async def test_a_dead_watcher_fails_readyz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(root: Path, folders: object) -> list[Any]:
        raise RuntimeError("bug in the scanner")

    async with started(config(tmp_path)) as h:
        task = h.app[keys.HEALTH].tasks["inbox"]
        monkeypatch.setattr(inbox_fs, "list_folders", broken)
        h.clock.advance(INTERVAL)
        await asyncio.wait({task})
        resp = await h.client.get("/readyz", headers=h.admin())
        body = await resp.json()
        assert resp.status == 503 and body["field"] == "task:inbox"
        assert "bug in the scanner" in body["checks"]["task:inbox"]


async def test_a_removed_folder_is_recreated(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        shutil.rmtree(where)
        await tick(h)
        assert (where / "processed").is_dir()
        assert "cannot list" in stats(h)["last_error"]
        drop(where, "back.ndjson", ndjson(sale_dict("Z-1", at=NOW)))
        await tick(h)
        assert result(where / "processed", "back.ndjson")["accepted"] == 1
