"""Shredded sales (`worker.sinks.sqlite_shred`) land exactly as the parameter path writes them.

The property: spool any sales (pushed bodies, lean backfilled bodies, tricky strings), shred
them with the real shredder, then commit the same batches (with window decisions: customer
links, warnings, voids, newer versions) into two SQLite sinks, one copying from the shreds
and one binding every column; every table of the two files holds the same rows, byte for
byte (only `committed_at`, the instant each commit ran, differs, and it is checked against
the batch's own record instead). A shred that does not match its row (another body under
the same id and version, another `SHAPE`) is not used. The shredder runs as an owned task.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.appserver import until
from worker.batch import CommitBatch, SaleRow
from worker.buffers.sqlite_file import SPOOL_INSERT, SPOOL_TABLE
from worker.clock import FakeClock
from worker.config import decode
from worker.errors import SinkError
from worker.health import Health
from worker.records import (
    SPOOLED_DECODER,
    Sale,
    SaleLine,
    Tender,
    Void,
    encode,
    localize,
    localized_body,
)
from worker.sinks.sql_rows import TABLES, sale_values, tender_values
from worker.sinks.sqlite import SqliteSink, open_sqlite_sink
from worker.sinks.sqlite_rows import _text, sale_params, tender_params
from worker.sinks.sqlite_shred import SHAPE, ShreddedDialect, Shredder, shred_path, shredding

STORE = "S1"
ZONE = ZoneInfo("America/New_York")
TRICKY = st.one_of(
    st.text(max_size=20),
    st.sampled_from(['"business_date":null', "\\", '"', "Zürich ☃", "", "1E+2"]),
)
MONEY = st.decimals(
    min_value=Decimal("-9999"), max_value=Decimal("9999"), places=2, allow_nan=False
) | st.sampled_from([Decimal("1E+2"), Decimal("0.10"), Decimal("-0"), Decimal("12.345")])
LEAN = msgspec.json.Encoder(decimal_format="string")


@st.composite
def sales(draw: st.DrawFn, sale_id: str) -> Sale:
    lines = [
        SaleLine(
            quantity=draw(st.sampled_from([Decimal(1), Decimal("-2"), Decimal("1.5")])),
            unit_price=draw(MONEY),
            discount=draw(MONEY),
            sku=draw(st.none() | st.text(min_size=1, max_size=8)),
            description=draw(st.none() | TRICKY),
            restock=draw(st.sampled_from([None, True, False])),
            line_id=draw(st.none() | st.just("L-1")),
            line_kind=draw(st.sampled_from(["item", "service"])),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    offset = timezone(timedelta(hours=draw(st.integers(-12, 14))))
    at = datetime(2026, 11, 25, draw(st.integers(0, 23)), 30, 0, draw(st.integers(0, 9)), offset)
    return Sale(
        id=sale_id,
        occurred_at=draw(st.sampled_from([at, at.astimezone(UTC)])),
        currency="USD",
        lines=lines,
        subtotal=draw(MONEY),
        tax=draw(MONEY),
        total=draw(MONEY),
        tip=draw(MONEY),
        tenders=[
            Tender(
                method=draw(TRICKY) or "Cash",
                amount=draw(MONEY),
                reference=draw(st.none() | TRICKY),
            )
            for _ in range(draw(st.integers(0, 2)))
        ],
        kind=draw(st.sampled_from(["sale", "return"])),
        customer_id=draw(st.none() | st.just("C-1")),
        attributes=draw(st.dictionaries(TRICKY, TRICKY, max_size=2)),
        display_number=draw(st.none() | TRICKY),
        business_date=draw(st.none() | st.just(date(2026, 11, 24))),
        version=draw(st.integers(1, 3)),
    )


class Spooled(msgspec.Struct, frozen=True):
    """One spooled sale and what its window decides about it."""

    sale: Sale
    lean: bool  # a backfilled body (lean encoding, business date set at intake)
    linked: bool
    warnings: tuple[str, ...]


@st.composite
def spooled(draw: st.DrawFn) -> list[Spooled]:
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        sale = draw(sales(f"A-{draw(st.integers(0, n))}-{i}"))
        lean = draw(st.booleans())
        if lean:
            sale = localize(sale, ZONE)
        warnings = tuple(draw(st.lists(TRICKY.map(lambda t: f"rule: {t}"), max_size=2)))
        out.append(Spooled(sale, lean, draw(st.booleans()), warnings))
    return out


def _body(s: Spooled) -> bytes:
    return LEAN.encode(s.sale) if s.lean else encode(s.sale)


def _spool(path: Path, items: Sequence[Spooled], start: int = 0) -> list[int]:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SPOOL_TABLE)
    seqs = []
    for s in items:
        body = _body(s)
        cur = db.execute(
            SPOOL_INSERT,
            (STORE, "sale", s.sale.id, s.sale.effective_version, "pos", 0.0, len(body), body),
        )
        seqs.append(int(cur.lastrowid or 0))
    db.close()
    return seqs


def _row(s: Spooled) -> SaleRow:
    """The window's row for a spooled sale (`validation`: decode, localize, reuse the body)."""
    body = _body(s)
    record = SPOOLED_DECODER.decode(body)
    assert isinstance(record, Sale)
    sale = localize(record, ZONE)
    return SaleRow(
        sale=sale,
        version=record.effective_version,
        customer_linked=s.linked,
        warnings=s.warnings,
        body=localized_body(body, record, sale),
    )


def _config(path: Path) -> Any:
    return decode({"data_dir": str(path.parent), "sink": {"kind": "sqlite", "path": str(path)}})


def _tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    out = {}
    for t in TABLES:
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] != "committed_at"]
        # typeof() too: text '1' and integer 1 must not compare equal.
        select = ", ".join(f"{c}, typeof({c})" for c in cols)
        out[t] = sorted(db.execute(f"SELECT {select} FROM {t}").fetchall(), key=repr)
    # committed_at is the commit's own instant: each sale carries its batch's.
    stray = db.execute(
        "SELECT count(*) FROM sales s JOIN commit_batches b ON b.batch_id = s.batch_id"
        " WHERE s.committed_at != b.committed_at"
    ).fetchone()
    assert stray == (0,)
    db.close()
    return out


async def _commit(path: Path, batches: Sequence[CommitBatch], *, shreds: bool) -> int:
    async with open_sqlite_sink(_config(path)) as sink:
        dialect = sink._dialect
        assert isinstance(dialect, ShreddedDialect)
        assert dialect.attached
        dialect.attached = shreds
        for b in batches:
            await sink.commit_sales(b)
        return dialect.copied


def _batches(pages: Sequence[Sequence[Spooled]], voids: Sequence[str]) -> list[CommitBatch]:
    at = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    out = []
    for i, page in enumerate(pages):
        void = [Void(id=v, occurred_at=at, reason="x") for v in voids] if i == 0 else []
        out.append(CommitBatch.build(f"b{i}", STORE, at, [_row(s) for s in page], void, []))
    return out


def _shred_all(spool: Path, sink: Path) -> Shredder:
    shredder = Shredder(spool, shred_path(sink), {STORE: ZONE}, FakeClock(datetime.now(UTC)))
    while shredder.step():
        pass
    return shredder


@settings(max_examples=40, deadline=None)
@given(first=spooled(), second=spooled(), voided=st.lists(st.sampled_from(["A-0-0", "A-1-1", "X"])))
def test_shredded_commit_equals_the_parameter_path(
    first: list[Spooled], second: list[Spooled], voided: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        spool, copied_db, bound_db = d / "spool.db", d / "copied.db", d / "bound.db"
        # Two windows: the second page carries newer versions of some ids of the first.
        _spool(spool, first)
        _shred_all(spool, copied_db)
        batches = _batches([first], voided)
        copied = asyncio.run(_commit(copied_db, batches, shreds=True))
        assert copied == len({s.sale.id for s in first})  # every row took the copy path
        asyncio.run(_commit(bound_db, batches, shreds=False))
        later = [
            msgspec.structs.replace(s, sale=msgspec.structs.replace(s.sale, version=9))
            for s in second
        ]
        _spool(spool, later)
        _shred_all(spool, copied_db)
        asyncio.run(_commit(copied_db, _batches([later], []), shreds=True))
        asyncio.run(_commit(bound_db, _batches([later], []), shreds=False))
        assert _tables(copied_db) == _tables(bound_db)


def test_a_shred_that_does_not_match_its_row_is_not_used(tmp_path: Path) -> None:
    sale = Sale(
        id="A-1",
        occurred_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
        currency="USD",
        lines=[SaleLine(quantity=Decimal(1), unit_price=Decimal("5.00"))],
        subtotal=Decimal("5.00"),
        tax=Decimal(0),
        total=Decimal("5.00"),
        tenders=[Tender(method="Cash", amount=Decimal("5.00"))],
        version=1,
    )
    spool, sink = tmp_path / "spool.db", tmp_path / "sink.db"
    _spool(spool, [Spooled(sale, False, True, ())])
    _shred_all(spool, sink)
    other = msgspec.structs.replace(sale, total=Decimal("6.00"))  # same id and version
    batch = _batches([[Spooled(other, False, True, ())]], [])
    assert asyncio.run(_commit(sink, batch, shreds=True)) == 0
    db = sqlite3.connect(sink)
    assert db.execute("SELECT total FROM sales").fetchall() == [("6.00",)]
    # Shreds of another SHAPE are ignored too.
    db.close()
    shreds = sqlite3.connect(shred_path(sink), isolation_level=None)
    shreds.execute("UPDATE shred_sales SET shape = ?", (SHAPE + 1,))
    shreds.close()
    again = _batches([[Spooled(msgspec.structs.replace(sale, version=2), False, True, ())]], [])
    _spool(spool, [Spooled(msgspec.structs.replace(sale, version=2), False, True, ())])
    assert asyncio.run(_commit(sink, again, shreds=True)) == 0


def test_the_sink_attaches_its_shreds_read_only(tmp_path: Path) -> None:
    async def check() -> None:
        # A name that must be percent-encoded in the URI that attaches the side file.
        async with open_sqlite_sink(_config(tmp_path / "odd ?#% dir" / "sink.db")) as sink:
            assert isinstance(sink, SqliteSink)
            assert sink._dialect.attached
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await sink._w.execute("DELETE FROM shred.shred_sales")

    asyncio.run(check())


def test_the_shredder_skips_what_the_window_would_not_take_and_prunes(tmp_path: Path) -> None:
    spool, sink = tmp_path / "spool.db", tmp_path / "sink.db"
    sale = Sale(
        id="A-1",
        occurred_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
        currency="USD",
        lines=[],
        subtotal=Decimal(0),
        tax=Decimal(0),
        total=Decimal(0),
    )
    seqs = _spool(spool, [Spooled(sale, False, True, ())])
    db = sqlite3.connect(spool, isolation_level=None)
    db.execute(SPOOL_INSERT, (STORE, "sale", "bad", 1, "pos", 0.0, 3, b"{x}"))
    db.execute(SPOOL_INSERT, ("unknown-store", "sale", "A-2", 1, "pos", 0.0, 3, encode(sale)))
    shredder = _shred_all(spool, sink)
    assert shredder.shredded == 1  # undecodable and unknown-store rows take the window's path
    assert shredder.prune() == 0  # still pending
    db.execute("UPDATE spool SET state = 2, body = NULL WHERE seq = ?", (seqs[0],))
    db.close()
    assert shredder.prune() == 1
    shreds = sqlite3.connect(shred_path(sink))
    assert shreds.execute("SELECT count(*) FROM shred_sales").fetchone() == (0,)
    shreds.close()


async def test_the_shredder_is_an_owned_task_visible_on_readyz(tmp_path: Path) -> None:
    cfg = decode(
        {
            "data_dir": str(tmp_path),
            "sink": {"kind": "sqlite"},
            "stores": [{"id": STORE, "timezone": "UTC"}],
        }
    )
    health = Health()
    clock = FakeClock(datetime(2026, 11, 25, tzinfo=UTC))
    # No spool file yet: an operational error, shown as a note and retried.
    async with shredding(cfg, clock, health) as shredder:
        assert shredder is not None
        await until(lambda: shredder.problem is not None)
        assert "unable to open" in health.current_notes()["sink_shredder"]
        assert (await health.run())["task:sink-shredder"] == "ok"
        _spool(cfg.spool_path, [])
        clock.advance(shredder.idle_s)
        await asyncio.wait_for(shredder.caught_up.wait(), 20)
        assert "sink_shredder" not in health.current_notes()
    assert "sink_shredder" not in health.note_sources
    # A spool that is not a database: the task dies, and /readyz names it.
    cfg.spool_path.unlink()
    cfg.spool_path.write_bytes(b"not a database" * 100)
    async with shredding(cfg, clock, health):
        task = health.tasks["sink-shredder"]
        with pytest.raises(sqlite3.DatabaseError):
            await task
        assert (await health.run())["task:sink-shredder"].startswith("dead: ")
    assert "sink-shredder" not in health.tasks


@settings(max_examples=150, deadline=None)
@given(
    batch=st.lists(sales("A-1"), min_size=1, max_size=3),
    voided_at=st.none() | st.just("2026-11-25T23:00:00.000000+00:00"),
    linked=st.booleans(),
)
def test_written_out_parameters_equal_the_generic_conversion(
    batch: list[Sale], voided_at: str | None, linked: bool
) -> None:
    rows = [SaleRow(sale=localize(s, ZONE), version=1, customer_linked=linked) for s in batch]
    for row in rows:
        generic = (
            STORE,
            *_text(sale_values(row)),
            int(voided_at is not None),
            voided_at,
            row.warning_text(),
            "at",
            "b1",
            row.body_text(),
        )
        assert sale_params(STORE, row, voided_at, "at", "b1") == generic
    assert list(tender_params(STORE, rows)) == [(STORE, *_text(v)) for v in tender_values(rows)]
    undated = SaleRow(sale=msgspec.structs.replace(batch[0], business_date=None), version=1)
    with pytest.raises(SinkError) as err:
        sale_params(STORE, undated, None, "at", "b1")
    assert err.value.field == "$.business_date"


def test_only_sales_spooled_min_age_ago_are_shredded(tmp_path: Path) -> None:
    spool, sink = tmp_path / "spool.db", tmp_path / "sink.db"
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    sale = Sale(
        id="A-1",
        occurred_at=now,
        currency="USD",
        lines=[],
        subtotal=Decimal(0),
        tax=Decimal(0),
        total=Decimal(0),
    )
    db = sqlite3.connect(spool, isolation_level=None)
    db.executescript(SPOOL_TABLE)
    body = encode(sale)
    db.execute(SPOOL_INSERT, (STORE, "sale", "A-1", 1, "pos", now.timestamp(), len(body), body))
    db.close()
    clock = FakeClock(now)
    shredder = Shredder(spool, shred_path(sink), {STORE: ZONE}, clock, min_age_s=60)
    assert shredder.step() == 0
    clock.advance(59)
    assert shredder.step() == 0
    clock.advance(1)
    assert shredder.step() == 1
    assert shredder.shredded == 1
    shredder.close()


async def test_a_running_app_shreds_between_windows_and_the_window_copies(
    tmp_path: Path,
) -> None:
    from tests.appserver import make_config, push_records, running
    from tests.factories import sale_dict

    cfg = make_config(tmp_path)
    async with running(cfg, datetime(2026, 11, 20, 16, 0, tzinfo=UTC)) as h:
        resp = await h.client.get("/readyz", headers=h.admin())
        assert (await resp.json())["checks"]["task:sink-shredder"] == "ok"
        await push_records(h, sale_dict("P-1"), sale_dict("P-2"))
        h.clock.advance(61)  # old enough: the shredder's idle wait ends on the fake clock
        shreds = shred_path(tmp_path / "clientbook.db")

        def shredded() -> bool:
            db = sqlite3.connect(shreds)
            try:
                return bool(db.execute("SELECT count(*) FROM shred_sales").fetchone() == (2,))
            finally:
                db.close()

        await until(shredded)
        resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["stores"]["S1"]["committed"] == 2
        assert h.sink._dialect.copied == 2
        sale = await h.sink.get_sale("S1", "P-1")
        assert sale is not None and sale["id"] == "P-1"
