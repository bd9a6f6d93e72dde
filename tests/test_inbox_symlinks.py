"""Drop folders that cannot be turned: symlinks, special files, swaps and races (issue 12).

Each test does what the probe did: plants the hostile entry in a real folder of the real
app (fake clock, ephemeral port), lets the watcher scan, and checks what was read, what was
written and where, and what `/status` says. The races (a file vanishing or replaced between
listing and open) are driven against `inbox_fs` directly, and through the watcher by
swapping the file at the exact moment the watcher reaches for it. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.appserver import Harness
from tests.factories import sale_dict
from tests.test_inbox import (
    CUSTOMER,
    INTERVAL,
    NOW,
    config,
    drop,
    folder,
    ndjson,
    result,
    started,
    tick,
    watcher,
)
from worker import keys
from worker.intake import IngestOutcome
from worker.sources import inbox_fs
from worker.sources.inbox_fs import Entry


async def status(h: Harness, store: str = "S1") -> dict[str, Any]:
    """The store's inbox section of /status, over HTTP."""
    resp = await h.client.get("/status", headers=h.admin())
    assert resp.status == 200
    got: dict[str, Any] = (await resp.json())["inbox"]["stores"][store]
    return got


def kinds(st: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["name"], r["kind"]) for r in st["refused_latest"]]


def tree(where: Path) -> dict[str, str]:
    """Every entry under `where` (not following symlinks) -> its type letter."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(where):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = p.lstat().st_mode
            out[str(p.relative_to(where))] = (
                "l" if stat.S_ISLNK(mode) else "d" if stat.S_ISDIR(mode) else "f"
            )
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the data dir, as an attacker's target."""
    out = tmp_path.parent / f"{tmp_path.name}-outside"
    out.mkdir()
    return out


# ---------------------------------------------------------------------- symlinks


async def test_a_symlinked_file_is_never_read_and_is_reported(
    tmp_path: Path, outside: Path
) -> None:
    secret = outside / "secret.ndjson"
    secret.write_bytes(ndjson(sale_dict("SECRET-1", at=NOW), CUSTOMER))
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        (where / "a-link.ndjson").symlink_to(secret)
        (where / "a-link.ndjson.done").touch()
        drop(where, "b-good.ndjson", ndjson(sale_dict("G-1", at=NOW)))
        await tick(h)
        await tick(h)
        # Not ingested, not moved, the target untouched; the file after it went through.
        assert h.spool.stats("S1").pending == 1
        assert await h.sink.get_customer("S1", "C1") is None
        assert (where / "a-link.ndjson").is_symlink()
        assert result(where / "processed", "b-good.ndjson")["accepted"] == 1
        assert sorted(os.listdir(outside)) == ["secret.ndjson"]
        st = await status(h)
        # Counted once, though two scans saw it.
        assert st["refused"] == 1
        assert kinds(st) == [("a-link.ndjson", "symlink")]
        assert "SECRET" not in str(st)


async def test_symlinked_processed_folder_writes_nothing_outside(
    tmp_path: Path, outside: Path
) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        (where / "processed").rmdir()
        (where / "processed").symlink_to(outside, target_is_directory=True)
        path = drop(where, "x.ndjson", ndjson(sale_dict("P-1", at=NOW)))
        await tick(h)
        await tick(h)
        # Nothing is taken from a folder whose processed/ is a symlink: not ingested (so it
        # can never be ingested and then left behind), nothing written through the link.
        assert path.exists() and h.spool.stats("S1").pending == 0
        assert os.listdir(outside) == []
        st = await status(h)
        assert (st["refused"], kinds(st)) == (1, [("processed", "symlink")])
        # The operator replaces the link with a real folder: the file goes through.
        (where / "processed").unlink()
        (where / "processed").mkdir()
        await tick(h)
        assert result(where / "processed", "x.ndjson")["accepted"] == 1


async def test_failed_folder_linked_into_another_store_is_no_injection(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where, other = folder(tmp_path), folder(tmp_path, "S2")
        (where / "failed").rmdir()
        (where / "failed").symlink_to(other, target_is_directory=True)
        (where / "processed").rmdir()
        (where / "processed").symlink_to(other, target_is_directory=True)
        drop(where, "1-bad.json", b"{not json")
        drop(where, "2-good.ndjson", ndjson(sale_dict("CROSS-1", at=NOW)))
        for _ in range(3):
            await tick(h)
        # Nothing of S1's landed in S2's folder, so S2 never ingested it as its own.
        assert tree(other) == {"processed": "d", "failed": "d"}
        assert h.spool.stats("S2").pending == 0 and h.spool.stats("S1").pending == 0
        assert (await status(h, "S2"))["processed"] == 0
        assert {k for _, k in kinds(await status(h))} == {"symlink"}


async def test_a_symlinked_store_folder_is_refused(tmp_path: Path, outside: Path) -> None:
    (outside / "processed").mkdir()
    (outside / "failed").mkdir()
    drop(outside, "planted.ndjson", ndjson(sale_dict("OUT-1", at=NOW)))
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        for sub in ("processed", "failed"):
            (where / sub).rmdir()
        where.rmdir()
        where.symlink_to(outside, target_is_directory=True)
        await tick(h)
        await tick(h)
        assert h.spool.stats("S1").pending == 0
        assert (outside / "planted.ndjson").exists()
        assert os.listdir(outside / "processed") == []
        st = await status(h)
        assert (st["refused"], kinds(st)) == (1, [("S1/", "symlink")])
        # Still a symlink: possync did not "repair" it by writing through it.
        assert where.is_symlink()


async def test_a_symlinked_source_folder_is_refused_for_every_store(
    tmp_path: Path, outside: Path
) -> None:
    async with started(config(tmp_path)) as h:
        src = tmp_path / "inbox" / "canonical"
        planted = outside / "S1"
        planted.mkdir()
        drop(planted, "planted.ndjson", ndjson(sale_dict("OUT-2", at=NOW)))
        src.rename(tmp_path / "old-canonical")
        src.symlink_to(outside, target_is_directory=True)
        await tick(h)
        assert h.spool.stats("S1").pending == 0
        assert (planted / "planted.ndjson").exists()
        for store in ("S1", "S2"):
            st = await status(h, store)
            assert kinds(st) == [("canonical/", "symlink")], st


async def test_preplanted_symlinks_in_processed_are_not_written_through(
    tmp_path: Path, outside: Path
) -> None:
    victim = outside / "victim"
    victim.write_bytes(b"keep me")
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        done = where / "processed"
        # The temporary report name possync will use for y.ndjson, planted as a symlink.
        (done / ".y.ndjson.result.json.tmp").symlink_to(victim)
        # And the final name of x.ndjson, planted as a (dangling) symlink.
        (done / "x.ndjson").symlink_to(outside / "would-be-created")
        drop(where, "x.ndjson", ndjson(sale_dict("R-1", at=NOW)))
        drop(where, "y.ndjson", ndjson(sale_dict("R-2", at=NOW)))
        await tick(h)
        assert victim.read_bytes() == b"keep me"
        assert not (outside / "would-be-created").exists()
        assert sorted(os.listdir(outside)) == ["victim"]
        # The planted final name counts as taken: x got a stamped name, as a real file.
        moved = done / "x.20261120T160005Z.ndjson"
        assert moved.is_file() and not moved.is_symlink()
        assert result(done, "x.20261120T160005Z.ndjson")["accepted"] == 1
        # y's report is a real file; the planted temporary link is gone.
        report = done / "y.ndjson.result.json"
        assert report.is_file() and not report.is_symlink()
        assert result(done, "y.ndjson")["accepted"] == 1
        assert not (done / ".y.ndjson.result.json.tmp").is_symlink()
        assert (done / "x.ndjson").is_symlink()  # left as it was


async def test_processed_swapped_for_a_symlink_after_the_ingest(
    tmp_path: Path, outside: Path
) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        intake = h.app[keys.INTAKE]
        real = intake.ingest

        async def swap_then_ingest(*args: Any, **kw: Any) -> IngestOutcome:
            out = await real(*args, **kw)
            # Between the ingest and the move, processed/ becomes a link out.
            (where / "processed").rename(where / "real-processed")
            (where / "processed").symlink_to(outside, target_is_directory=True)
            intake.ingest = real  # type: ignore[method-assign]
            return out

        intake.ingest = swap_then_ingest  # type: ignore[method-assign]
        path = drop(where, "s.ndjson", ndjson(sale_dict("S-1", at=NOW)))
        await tick(h)
        # Ingested (durable), but not moved through the link: left in place, retried.
        assert path.exists() and h.spool.stats("S1").pending == 1
        assert os.listdir(outside) == []
        st = await status(h)
        assert st["retrying"] == 1
        assert ("processed/", "symlink") in kinds(st)


# ---------------------------------------------------------------------- not regular files


async def test_fifo_device_directory_are_refused_and_do_not_block(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        os.mkfifo(where / "1-pipe.ndjson")
        (where / "1-pipe.ndjson.done").touch()
        os.mknod(where / "2-dev.ndjson", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        (where / "3-dir.ndjson").mkdir()
        drop(where, "4-good.ndjson", ndjson(sale_dict("F-1", at=NOW)))
        await tick(h)
        # A FIFO is never opened (that would hang the scan): the good file went through.
        assert result(where / "processed", "4-good.ndjson")["accepted"] == 1
        st = await status(h)
        assert st["refused"] == 3
        assert sorted(kinds(st)) == [
            ("1-pipe.ndjson", "special file"),
            ("2-dev.ndjson", "special file"),
            ("3-dir.ndjson", "not a regular file"),
        ]
        assert stat.S_ISFIFO((where / "1-pipe.ndjson").lstat().st_mode)
        assert (where / "3-dir.ndjson").is_dir()


async def test_a_hard_linked_file_waits_until_it_has_one_link(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        elsewhere = tmp_path / "elsewhere.ndjson"
        elsewhere.write_bytes(ndjson(sale_dict("H-1", at=NOW)))
        os.link(elsewhere, where / "h.ndjson")
        (where / "h.ndjson.done").touch()
        await tick(h)
        await tick(h)
        assert (where / "h.ndjson").exists() and h.spool.stats("S1").pending == 0
        st = await status(h)
        assert (st["refused"], kinds(st)) == (1, [("h.ndjson", "hard link")])
        elsewhere.unlink()  # the exporter drops its other name: one link left
        await tick(h)
        assert result(where / "processed", "h.ndjson")["accepted"] == 1


async def test_bad_names_are_refused_and_shown_escaped(tmp_path: Path) -> None:
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        body = ndjson(sale_dict("N-1", at=NOW))
        raw = os.fsencode(where) + b"/bad-\xff\xfe.ndjson"
        with open(raw, "wb") as f:
            f.write(body)
        with open(raw + b".done", "wb"):
            pass
        drop(where, "ctl-\x1b[31m.ndjson", body)
        drop(where, "nl-\n.ndjson", body)
        await tick(h)
        await tick(h)
        assert h.spool.stats("S1").pending == 0
        st = await status(h)
        assert st["refused"] == 3
        names = sorted(n for n, k in kinds(st) if k == "bad name")
        assert names == ["bad-\\xff\\xfe.ndjson", "ctl-\\x1b[31m.ndjson", "nl-\\x0a.ndjson"]
        assert os.path.exists(raw)


# ---------------------------------------------------------------------- races


def _listed(tmp_path: Path, name: str) -> Entry:
    (listing,) = inbox_fs.list_folders(tmp_path / "inbox", [("canonical", "S1")])
    (entry,) = [e for e in listing.entries if e.name == name]
    return entry


def _prepared(tmp_path: Path) -> Path:
    inbox_fs.prepare(tmp_path / "inbox", "canonical", "S1")
    return folder(tmp_path)


def test_vanished_between_listing_and_open(tmp_path: Path) -> None:
    where = _prepared(tmp_path)
    drop(where, "v.ndjson", b"{}\n")
    entry = _listed(tmp_path, "v.ndjson")
    (where / "v.ndjson").unlink()
    h = inbox_fs.open_folder(tmp_path / "inbox", "canonical", "S1")
    try:
        with pytest.raises(inbox_fs.Vanished):
            inbox_fs.read(h, entry, 1 << 20, "")
    finally:
        h.close()


@pytest.mark.parametrize("swap", ["file", "symlink", "fifo", "same-size"])
def test_replaced_between_stable_check_and_open(tmp_path: Path, outside: Path, swap: str) -> None:
    where = _prepared(tmp_path)
    drop(where, "r.ndjson", b'{"a": 1}\n')
    entry = _listed(tmp_path, "r.ndjson")
    (outside / "secret").write_bytes(b'{"b": 2}\n')
    path = where / "r.ndjson"
    tmp = where / ".r.tmp"
    if swap == "symlink":
        tmp.symlink_to(outside / "secret")
    elif swap == "fifo":
        os.mkfifo(tmp)
    else:
        tmp.write_bytes(b'{"c": 3}\n' if swap == "same-size" else b"{}\n")
    os.replace(tmp, path)
    expected: type[Exception] = (
        inbox_fs.Refused if swap in ("symlink", "fifo") else inbox_fs.Changed
    )
    h = inbox_fs.open_folder(tmp_path / "inbox", "canonical", "S1")
    try:
        # A FIFO must not hang the open: O_NONBLOCK, then fstat refuses it.
        with pytest.raises(expected):
            inbox_fs.read(h, entry, 1 << 20, "")
    finally:
        h.close()


def before_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, act: Callable[[Path], None]
) -> None:
    """Run `act` on `w.ndjson` at the moment the watcher is about to open it."""
    real = inbox_fs.read

    def read(h: inbox_fs.Handle, entry: Entry, limit: int, hint: str) -> bytes:
        if entry.name == "w.ndjson":
            act(folder(tmp_path) / entry.name)
        return real(h, entry, limit, hint)

    monkeypatch.setattr(inbox_fs, "read", read)


async def test_watcher_skips_a_file_that_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_open(tmp_path, monkeypatch, lambda p: p.unlink())
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        drop(where, "w.ndjson", ndjson(sale_dict("W-1", at=NOW)))
        drop(where, "x-after.ndjson", ndjson(sale_dict("W-2", at=NOW)))
        await tick(h)
        assert h.spool.stats("S1").pending == 1
        assert result(where / "processed", "x-after.ndjson")["accepted"] == 1
        st = await status(h)
        assert (st["refused"], st["failed"], st["retrying"]) == (0, 0, 0)


async def test_watcher_does_not_read_a_file_swapped_for_a_symlink(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = outside / "secret.ndjson"
    secret.write_bytes(ndjson(sale_dict("SECRET-2", at=NOW)))

    def swap(p: Path) -> None:
        p.unlink()
        p.symlink_to(secret)

    before_open(tmp_path, monkeypatch, swap)
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        drop(where, "w.ndjson", ndjson(sale_dict("W-3", at=NOW)))
        await tick(h)
        assert h.spool.stats("S1").pending == 0
        assert (where / "w.ndjson").is_symlink()
        assert ("w.ndjson", "symlink") in kinds(await status(h))


async def test_watcher_judges_a_replaced_file_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace(p: Path) -> None:
        tmp = p.with_name(".w.tmp")
        tmp.write_bytes(ndjson(sale_dict("W-5", at=NOW), sale_dict("W-6", at=NOW)))
        os.replace(tmp, p)

    calls: list[Path] = []

    def once(p: Path) -> None:
        if not calls:
            calls.append(p)
            replace(p)

    before_open(tmp_path, monkeypatch, once)
    async with started(config(tmp_path)) as h:
        where = folder(tmp_path)
        drop(where, "w.ndjson", ndjson(sale_dict("W-4", at=NOW)), marker=False)
        await tick(h)  # first seen
        await tick(h)  # stable: the watcher reaches for it, finds another file: not read
        assert (where / "w.ndjson").exists() and h.spool.stats("S1").pending == 0
        await tick(h)  # the new file is seen afresh
        await tick(h)  # and taken once stable
        assert result(where / "processed", "w.ndjson")["accepted"] == 2
        assert h.spool.stats("S1").pending == 2


# ---------------------------------------------------------------------- notifications


def notify_config(tmp: Path, **inbox: Any) -> Any:
    return config(tmp, inbox={"notify": True, "rescan_s": 3600.0, **inbox})


async def wait_until(h: Harness, done: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    """Wait (bounded) for scans until `done()`: each wait is on the watcher's scan event."""
    inbox = watcher(h)
    async with asyncio.timeout(timeout_s):
        while not done():
            await inbox.wait_scans(inbox.scans + 1)


async def test_a_dropped_file_is_picked_up_by_notification(tmp_path: Path) -> None:
    async with started(notify_config(tmp_path)) as h:
        inbox = watcher(h)
        assert inbox.mode == "notify"
        where = folder(tmp_path, "S2")
        drop(where, "n.ndjson", ndjson(sale_dict("N-1", at=NOW)))
        await wait_until(h, lambda: (where / "processed" / "n.ndjson.result.json").exists())
        # The fake clock never moved: the notification alone woke the scan.
        assert h.clock.now() == NOW
        assert result(where / "processed", "n.ndjson")["accepted"] == 1
        assert inbox.notified >= 1
        # Its own moves into processed/ are notified too, but never re-set the watches.
        assert inbox.watches == 1
        resp = await h.client.get("/status", headers=h.admin())
        assert (await resp.json())["inbox"]["mode"] == "notify"


async def test_an_unmarked_file_is_rescanned_when_it_has_settled(tmp_path: Path) -> None:
    async with started(notify_config(tmp_path)) as h:
        where = folder(tmp_path)
        path = drop(where, "u.ndjson", ndjson(sale_dict("U-1", at=NOW)), marker=False)
        inbox = watcher(h)
        await wait_until(h, lambda: bool(inbox._due))
        assert path.exists()
        # No notification comes once the writer stops: the folder is due after stable_s,
        # long before the hour-long safety poll.
        await inbox.idle.wait()
        h.clock.advance(INTERVAL)
        await wait_until(h, lambda: not path.exists())
        assert result(where / "processed", "u.ndjson")["accepted"] == 1


async def test_a_lost_notification_is_caught_by_the_safety_poll(tmp_path: Path) -> None:
    async with started(notify_config(tmp_path, rescan_s=60.0)) as h:
        inbox = watcher(h)
        where = folder(tmp_path)
        # Lose the notifications: the thread is stopped (as on a queue overflow).
        assert inbox._notifier is not None
        await asyncio.to_thread(inbox._notifier.close)
        drop(where, "lost.ndjson", ndjson(sale_dict("L-1", at=NOW)))
        await inbox.idle.wait()
        # Nothing scans before the safety poll, a minute of fake time after start-up.
        assert inbox._next_full == NOW + timedelta(seconds=60)
        assert not inbox._due and (where / "lost.ndjson").exists()
        h.clock.advance(60.0)
        await wait_until(h, lambda: not (where / "lost.ndjson").exists())
        assert result(where / "processed", "lost.ndjson")["accepted"] == 1


async def test_without_notifications_it_polls_at_scan_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.sources import inbox_notify

    def no_watches(self: object, loop: object) -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(inbox_notify.Notifier, "start", no_watches)
    async with started(notify_config(tmp_path)) as h:
        inbox = watcher(h)
        assert inbox.mode == "poll" and "watch limit" in str(inbox.notify_error)
        drop(folder(tmp_path), "p.ndjson", ndjson(sale_dict("P-1", at=NOW)))
        await tick(h)
        assert result(folder(tmp_path) / "processed", "p.ndjson")["accepted"] == 1
        resp = await h.client.get("/status", headers=h.admin())
        body = (await resp.json())["inbox"]
        assert body["mode"] == "poll" and "watch limit" in body["notify_error"]


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_a_removed_or_replaced_folder_is_watched_again(tmp_path: Path, how: str) -> None:
    async with started(notify_config(tmp_path)) as h:
        inbox = watcher(h)
        where = folder(tmp_path)
        first = inbox._notifier
        if how == "removed":
            shutil.rmtree(where)
        else:
            # Renamed away and a new folder put in its place: the old watch follows the
            # old folder, so the new one must be watched anew.
            where.rename(tmp_path / "moved-away")
            for sub in ("processed", "failed"):
                (where / sub).mkdir(parents=True)
        # The change is itself notified: the folder is (re)found and the watch set anew.
        await wait_until(h, lambda: inbox._notifier is not first and (where / "failed").is_dir())
        drop(where, "back.ndjson", ndjson(sale_dict("B-1", at=NOW)))
        await wait_until(h, lambda: not (where / "back.ndjson").exists())
        assert h.clock.now() == NOW
        assert result(where / "processed", "back.ndjson")["accepted"] == 1
        assert inbox.mode == "notify" and inbox.watches == 2
