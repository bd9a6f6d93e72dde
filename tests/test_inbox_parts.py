"""Split exports in the drop folder (The Edge's numbered Transaction parts), on the real app.

`tests/e2e/test_the_edge.py` proves the whole path to the Sales Log (a sale straddling two
parts, parts arriving one by one, a gap reported, a left-over part taken again). Here: which
names form an export and in what order the folder takes units, what a broken part or an
oversized export does (the whole export to failed/ with one report), that an export still
settling holds back the files after it, and that a part that is a hard link counts as
refused, not as present. Scans are clock-driven (`tick`); nothing sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_inbox import EDGE_STORE, FIXTURES, config, folder, started, stats, tick
from worker.adapters.the_edge import combine_counted, split_part
from worker.errors import RecordInvalid
from worker.sources.inbox import natural_key
from worker.sources.inbox_fs import Entry
from worker.sources.inbox_groups import plan

EDGE = FIXTURES / "the_edge"
PART1, PART2 = "1-2026-03-14-12-30-Transaction.json", "2-2026-03-14-12-30-Transaction.json"
EXPORT = "2026-03-14-12-30-Transaction.json"
CUSTOMERS = "2026-03-14-11-21-13-CustomerList.json"
LATER = "2026-03-14-13-00-00-CustomerList.json"  # a file that sorts after the export


def entry(name: str) -> Entry:
    return Entry(name, 1, 0, 0, 0, False)


def copy_in(where: Path, fixture: str, name: str | None = None) -> None:
    shutil.copy(EDGE / fixture, where / (name or fixture))
    (where / f"{name or fixture}.done").write_bytes(b"")


def doc(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(path.read_bytes())
    return out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (PART1, (EXPORT, 1)),
        ("12-2026-03-14-12-30-05-Transaction.JSON", ("2026-03-14-12-30-05-Transaction.JSON", 12)),
        (EXPORT, None),  # not numbered: a file of its own
        ("1-2026-03-14-11-21-13-CustomerList.json", None),  # only Transaction exports split
        ("01-2026-03-14-12-30-Transaction.json", None),  # EDT does not pad part numbers
        ("1-Transaction.json", None),
    ],
)
def test_which_names_are_parts(name: str, expected: tuple[str, int] | None) -> None:
    assert split_part(name) == expected


def test_units_in_order_parts_joined_by_export() -> None:
    names = [
        "2-2026-03-14-12-30-Transaction.json",
        "2026-03-14-13-00-00-CustomerList.json",
        "1-2026-03-14-09-00-Transaction.json",
        "10-2026-03-14-12-30-Transaction.json",
        "2026-03-14-11-21-13-CustomerList.json",
        "1-2026-03-14-12-30-Transaction.json",
        "2026-03-14-12-30-Transaction.json",
    ]
    units = plan("the_edge", [entry(n) for n in names], natural_key)
    # Exports sort by their own name (their time), a same-named single file first; parts
    # in part order (10 after 2).
    assert [(u.name, u.numbers) for u in units] == [
        ("2026-03-14-09-00-Transaction.json", [1]),
        ("2026-03-14-11-21-13-CustomerList.json", []),
        ("2026-03-14-12-30-Transaction.json", []),
        ("2026-03-14-12-30-Transaction.json", [1, 2, 10]),
        ("2026-03-14-13-00-00-CustomerList.json", []),
    ]
    assert [e.name for e in units[3].entries] == [
        "1-2026-03-14-12-30-Transaction.json",
        "2-2026-03-14-12-30-Transaction.json",
        "10-2026-03-14-12-30-Transaction.json",
    ]
    assert units[3].missing() == list(range(3, 10))
    # Other sources never group: the same names are files of their own, in name order.
    assert [u.name for u in plan("canonical", [entry(n) for n in names], natural_key)] == sorted(
        names, key=natural_key
    )


def test_combine_names_the_part_that_is_not_an_export() -> None:
    good = (EDGE / PART1).read_bytes()
    body, rows = combine_counted([good, (EDGE / PART2).read_bytes()], [PART1, PART2])
    assert rows == [3, 2] and len(json.loads(body)["SaleLines"]) == 5
    with pytest.raises(RecordInvalid) as bad_json:
        combine_counted([good, b"{not json"], [PART1, PART2])
    assert bad_json.value.field == PART2
    with pytest.raises(RecordInvalid) as not_sales:
        combine_counted([good, b'{"Customer": []}'], [PART1, PART2])
    assert not_sales.value.field == f"{PART2}$"
    assert PART2 in not_sales.value.message


async def test_a_broken_part_fails_the_whole_export_with_one_report(tmp_path: Path) -> None:
    async with started(config(tmp_path, stores=[EDGE_STORE])) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        (where / PART2).write_bytes(b'{"SaleLines": [{"SalelineSaleKey": ')
        (where / f"{PART2}.done").write_bytes(b"")
        await tick(h)
        assert (where / PART1).exists()  # not settled yet
        await tick(h)
        failed = where / "failed"
        assert sorted(p.name for p in failed.iterdir()) == sorted(
            [PART1, f"{PART1}.done", PART2, f"{PART2}.done", f"{EXPORT}.error.json"]
        )
        report = doc(failed / f"{EXPORT}.error.json")
        assert (report["status"], report["type"], report["field"]) == (
            400,
            "RecordInvalid",
            PART2,
        )
        assert [p["moved_to"] for p in report["parts"]] == [f"failed/{PART1}", f"failed/{PART2}"]
        assert (stats(h, "E1")["failed"], stats(h, "E1")["processed"]) == (2, 0)
        # Nothing of part 1 was spooled either: the export is one payload.
        resp = await h.client.get("/v1/stores/E1/spool", headers=h.admin())
        assert (await resp.json())["pending"] == 0


async def test_an_export_over_the_file_limit_fails_whole(tmp_path: Path) -> None:
    size = sum((EDGE / p).stat().st_size for p in (PART1, PART2))
    # Each part alone is under the limit; the export together is not.
    limit = max((EDGE / p).stat().st_size for p in (PART1, PART2))
    assert limit < size
    cfg = config(tmp_path, stores=[EDGE_STORE], http={"max_backfill_bytes": limit})
    async with started(cfg) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        copy_in(where, PART2)
        await tick(h)
        await tick(h)
        report = doc(where / "failed" / f"{EXPORT}.error.json")
        assert (report["status"], report["field"], report["bytes"]) == (413, "body", size)


async def test_an_export_settling_holds_back_the_files_after_it(tmp_path: Path) -> None:
    async with started(config(tmp_path, stores=[EDGE_STORE])) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, CUSTOMERS)
        copy_in(where, PART1)
        copy_in(where, CUSTOMERS, LATER)
        await tick(h)
        # The earlier customers' file went; the export waits, and the later file behind it.
        assert not (where / CUSTOMERS).exists()
        assert (where / PART1).exists() and (where / LATER).exists()
        await tick(h)
        assert not (where / PART1).exists() and not (where / LATER).exists()
        assert (where / "processed" / f"{EXPORT}.result.json").exists()


async def test_a_refused_part_keeps_the_export_back(tmp_path: Path) -> None:
    # Part 2 is a hard link (refused while it has two links): part 1 alone looks contiguous,
    # but the export is not complete, so nothing is taken until part 2 can be.
    async with started(config(tmp_path, stores=[EDGE_STORE])) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        shutil.copy(EDGE / PART2, tmp_path / "elsewhere.json")
        os.link(tmp_path / "elsewhere.json", where / PART2)
        (where / f"{PART2}.done").write_bytes(b"")
        for _ in range(3):
            await tick(h)
            assert (where / PART1).exists() and (where / PART2).exists()
        got = stats(h, "E1")
        assert got["refused"] == 1 and got["processed"] == 0
        assert f"part 2 ({PART2}) is refused (hard link)" in got["last_error"]
        (tmp_path / "elsewhere.json").unlink()  # one link again: takeable
        await tick(h)
        assert (where / PART1).exists()  # the export changed: it settles again
        await tick(h)
        result = doc(where / "processed" / f"{EXPORT}.result.json")
        assert (result["accepted"], [p["part"] for p in result["parts"]]) == (3, [1, 2])


async def test_a_refused_part_past_the_gap_wait_is_reported_and_left(tmp_path: Path) -> None:
    cfg = config(tmp_path, stores=[EDGE_STORE], inbox={"gap_wait_s": 3 * 5.0})
    async with started(cfg) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        os.symlink(EDGE / PART2, where / PART2)  # never followed, never moved
        for _ in range(3):
            await tick(h)
            assert (where / PART1).exists()
        await tick(h)
        report = doc(where / "failed" / f"{EXPORT}.error.json")
        assert (report["status"], report["field"], report["missing"]) == (422, PART2, [PART2])
        assert f"part 2 ({PART2}) is refused (symlink)" in report["error"]
        assert (where / PART2).is_symlink() and not (where / PART1).exists()


async def test_a_part_arriving_after_its_export_was_taken_is_reported_as_late(
    tmp_path: Path,
) -> None:
    # Part 2 written later than stable_s after part 1: part 1 was an export of its own. The
    # late part is not ingested alone (its first sale continues part 1's); its report says
    # where part 1 went and what to change.
    cfg = config(tmp_path, stores=[EDGE_STORE], inbox={"gap_wait_s": 2 * 5.0})
    async with started(cfg) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        await tick(h)
        await tick(h)
        assert doc(where / "processed" / f"{EXPORT}.result.json")["accepted"] == 2
        copy_in(where, PART2)
        await tick(h)
        await tick(h)
        assert (where / PART2).exists()
        await tick(h)
        report = doc(where / "failed" / f"{EXPORT}.error.json")
        assert (report["field"], report["missing"]) == (PART1, [PART1])
        assert f"{PART1} already in processed/" in report["error"]
        assert "raise inbox.stable_s" in report["error"]


async def test_a_part_arriving_after_its_export_failed_says_where_the_rest_went(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, stores=[EDGE_STORE], inbox={"gap_wait_s": 2 * 5.0})
    async with started(cfg) as h:
        where = folder(tmp_path, "E1", "the_edge")
        copy_in(where, PART1)
        copy_in(where, PART2, f"3-{EXPORT}")
        for _ in range(3):
            await tick(h)
        assert doc(where / "failed" / f"{EXPORT}.error.json")["missing"] == [PART2]
        copy_in(where, PART2)  # the missing part, late
        for _ in range(3):
            await tick(h)
        again = sorted((where / "failed").glob(f"{EXPORT.removesuffix('.json')}.*.json.error.json"))
        report = doc(again[0])
        assert report["missing"] == [PART1]
        assert f"{PART1} already in failed/: put the export's parts back" in report["error"]
