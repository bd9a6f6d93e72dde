"""Checked once: a window page decoded the lean way sorts exactly as today's full path does.

The reference is the window before `worker.page_decode`: every spooled row through
`SPOOLED_DECODER` (every `__post_init__` check again), then today's `validate_batch`, frozen
in tests/support/validation_before.py. The page under test has rows spooled by this code's
intake (push: `RECORD_DECODER` then `encode`; backfill: `parse_lines`), seqs from
`checked_from` on, and rows of older seqs holding any bytes at all (a body an older intake
let through: NaN money, nine places, no offset, garbage). Accepted, held, superseded and
voided sets, every quarantine reason and every committed `SaleRow` must be equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.appserver import make_config, push_records, running
from tests.factories import sale_dict
from tests.support import validation_before as before
from worker.buffers.base import Entry
from worker.buffers.sqlite import open_spool
from worker.clock import FakeClock
from worker.config import SpoolConfig
from worker.page_decode import CHECKS_KEY, SPOOL_KEY, decode_page, keep_mark, load_mark
from worker.records import (
    DECODE_ERRORS,
    INTAKE_CHECKS,
    RECORD_DECODER,
    SPOOLED_DECODER,
    Sale,
    Void,
    decode_checked,
    encode,
    invalid_from,
    type_of,
)
from worker.sources.backfill_parse import parse_lines
from worker.validation import BatchItem, ValidationContext, validate_batch

ZONE = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
Broken = list[tuple[int, list[dict[str, Any]]]]


def before_decode(entries: Sequence[Entry]) -> tuple[list[BatchItem], Broken]:
    """The window's decode before the mark: the full decoder on every row."""
    items: list[BatchItem] = []
    broken: Broken = []
    for e in entries:
        try:
            record = SPOOLED_DECODER.decode(e.body)
        except DECODE_ERRORS as exc:
            err = invalid_from(exc)
            broken.append((e.seq, [{"rule": "schema", "field": err.field, "message": err.message}]))
            continue
        items.append(BatchItem(seq=e.seq, record=record, held=e.held, body=e.body))
    return items, broken


def spooled_by_push(line: bytes) -> bytes | None:
    """The body the push path spools for one record (None: refused, or not spooled)."""
    try:
        record = RECORD_DECODER.decode(line)
    except DECODE_ERRORS:
        return None
    return encode(record) if isinstance(record, Sale | Void) else None


def spooled_by_backfill(line: bytes) -> bytes | None:
    """The body backfill spools for one line (None: refused, or not spooled)."""
    chunk = parse_lines([(1, 0, line)], ZONE, 1 << 20, 0)
    return chunk.rows[0][4] if chunk.rows else None


# ---------------------------------------------------------------- generated records

_ids = st.sampled_from(["S-1", "S-2", "S-3", "R-1"])
_customers = st.sampled_from([None, "C-known", "C-new"])
_money = st.one_of(
    st.decimals(min_value=Decimal(-5000), max_value=Decimal(5000), places=2).map(str),
    st.sampled_from(
        ["NaN", "Infinity", "1e3", "0.123456789", "1000000000000", "-0", "007.50", "1E-9"]
    ),
    st.integers(-(10**13), 10**13),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
_times = st.sampled_from(
    [
        "2026-11-20T15:00:00Z",
        "2026-11-20T10:00:00-05:00",
        "2026-11-20T15:00:00",  # no offset: refused at intake
        "1999-12-31T23:00:00Z",  # occurred_at.too_old
        "2026-11-23T15:00:00Z",  # occurred_at.future
        "2026-11-20T15:00:00.5+00:00",
    ]
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One canonical record as a POS sends it: a sale with some figures bent, or a void."""
    if draw(st.integers(0, 5)) == 0:
        void: dict[str, Any] = {"type": "void", "id": draw(_ids), "occurred_at": draw(_times)}
        if draw(st.booleans()):
            void["version"] = draw(st.integers(0, 3))
        return orjson.dumps(void)
    d = sale_dict(draw(_ids), lines=draw(st.integers(0, 3)), at=NOW - timedelta(hours=1))
    if draw(st.booleans()):
        d["version"] = draw(st.integers(0, 3))
    if (customer := draw(_customers)) is not None:
        d["customer_id"] = customer
    if draw(st.integers(0, 3)) == 0:
        d["kind"] = "return"
        d["original_id"] = draw(st.sampled_from(["S-1", "S-9", "P-old"]))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["sale", "line", "tender", "adjustment", "other"]))
        if where == "sale":
            d[
                draw(st.sampled_from(["subtotal", "tax", "total", "shipping", "tip", "discount"]))
            ] = draw(_money)
        elif where == "line" and d["lines"]:
            line = draw(st.sampled_from(d["lines"]))
            line[draw(st.sampled_from(["quantity", "unit_price", "discount", "tax"]))] = draw(
                _money
            )
        elif where == "tender":
            d["tenders"].append({"method": "cash", "amount": draw(_money)})
        elif where == "adjustment":
            d["adjustments"] = [{"kind": "discount", "amount": draw(_money)}]
        else:
            key, value = draw(
                st.sampled_from(
                    [
                        ("occurred_at", draw(_times)),
                        ("updated_at", draw(_times)),
                        ("currency", draw(st.sampled_from(["EUR", "XTS", "JPY", "eur"]))),
                        ("presentment_currency", draw(st.sampled_from(["CAD", "XXX"]))),
                        ("business_date", "2026-11-19"),
                        ("tenders_known", False),
                        ("tax_included", True),
                        ("origin", draw(st.sampled_from(["manual", "backfill"]))),
                    ]
                )
            )
            d[key] = value
    return orjson.dumps(d)


@st.composite
def pages(draw: st.DrawFn) -> tuple[list[Entry], int]:
    """A leased page: rows of older seqs (any bytes), then rows this code's intake spooled."""
    old = draw(st.lists(st.one_of(lines(), st.just(b"{not json")), max_size=4))
    new: list[bytes] = []
    for line in draw(st.lists(lines(), min_size=1, max_size=10)):
        spool = draw(st.sampled_from([spooled_by_push, spooled_by_backfill]))
        body = spool(line)
        if body is not None:
            new.append(body)
    bodies = old + new
    entries = [
        Entry(
            seq=10 + i,
            store="S1",
            kind="sale",
            rid=f"r{i}",
            version=0,
            origin="pos",
            received_at=0.0,
            held=draw(st.integers(0, 3)),
            body=body,
        )
        for i, body in enumerate(bodies)
    ]
    return entries, 10 + len(old)


_contexts = st.builds(
    lambda customers, sales, pending, hold, policy, rounding: ValidationContext(
        store="S1",
        zone=ZONE,
        now=NOW,
        existing_customers=frozenset(customers),
        existing_sales=frozenset(sales),
        pending_sale_ids=frozenset(pending),
        hold_windows=hold,
        policy=policy,
        cash_rounding=rounding,
    ),
    st.sets(st.sampled_from(["C-known", "C-new"])),
    st.sets(st.sampled_from(["S-2", "P-old"])),
    st.sets(st.sampled_from(["S-9"])),
    st.integers(0, 3),
    st.fixed_dictionaries(
        {},
        optional={
            "return.original": st.sampled_from(["warn", "quarantine", "off"]),
            "void.target": st.sampled_from(["warn", "quarantine"]),
            "tenders.sum": st.sampled_from(["warn", "off"]),
            "total.sum": st.sampled_from(["warn", "off"]),
        },
    ),
    st.sampled_from([None, Decimal("0.05")]),
)


@given(pages(), _contexts)
def test_lean_page_sorts_exactly_as_the_full_path(
    page: tuple[list[Entry], int], ctx: ValidationContext
) -> None:
    entries, checked_from = page
    items, broken = decode_page(entries, checked_from)
    ref_items, ref_broken = before_decode(entries)
    assert broken == ref_broken
    assert items == ref_items
    assert validate_batch(items, ctx) == before.validate_batch(ref_items, ctx)


@given(st.lists(lines(), max_size=8))
def test_checked_decode_equals_the_full_decoder_on_what_intake_spooled(raw: list[bytes]) -> None:
    bodies = [b for line in raw for b in (spooled_by_push(line), spooled_by_backfill(line)) if b]
    assert decode_checked(bodies) == [SPOOLED_DECODER.decode(b) for b in bodies]


def test_rows_of_older_seqs_keep_every_check() -> None:
    """The same bytes: quarantined (`schema`, naming the field) as an older row, and only a
    row this code spooled (it could not have let them through) skips the check."""
    bad = orjson.dumps({**sale_dict("S-1"), "total": "NaN"})
    entry = Entry(1, "S1", "sale", "S-1", 0, "pos", 0.0, 0, bad)
    items, broken = decode_page([entry], 2)
    assert items == []
    assert broken == [
        (1, [{"rule": "schema", "field": "$.total", "message": "`total` must be a finite number"}])
    ]
    assert decode_page([entry], None) == (items, broken)
    assert spooled_by_push(bad) is None and spooled_by_backfill(bad) is None


def test_checked_decode_leaves_the_checks_on_everywhere_else() -> None:
    bad = orjson.dumps({**sale_dict("S-1"), "total": "NaN"})
    assert decode_checked([bad]) != [None]
    try:
        SPOOLED_DECODER.decode(bad)
    except DECODE_ERRORS as exc:
        assert invalid_from(exc).field == "$.total"
    else:
        raise AssertionError("the full decoder let NaN through after decode_checked")
    assert decode_checked([b"{not json", b'{"type":"customer","id":"C"}']) == [None, None]


# ---------------------------------------------------------------- the mark in the spool


async def _append(spool: Any, *bodies: bytes) -> None:
    rows = []
    for body in bodies:
        r = SPOOLED_DECODER.decode(body)
        rows.append((type_of(r), r.id, r.effective_version, "pos", body))
    await spool.append_rows("S1", rows)


async def test_mark_moves_past_rows_spooled_before_a_start_and_holds_across_clean_stops(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    cfg = SpoolConfig()
    path = tmp_path / "spool.db"
    body = encode(SPOOLED_DECODER.decode(orjson.dumps(sale_dict("S-1"))))
    async with open_spool(cfg, path, clock) as spool:
        await _append(spool, body)  # spooled before any mark: an older intake's row
        first = await load_mark(spool)
        assert first == 2
        await _append(spool, encode(SPOOLED_DECODER.decode(orjson.dumps(sale_dict("S-2")))))
        await keep_mark(spool, first)
        mark = (await spool.state.get(SPOOL_KEY))[CHECKS_KEY]
        assert mark == {"version": INTAKE_CHECKS, "from_seq": 2, "through_seq": 2}
    async with open_spool(cfg, path, clock) as spool:
        assert await load_mark(spool) == 2  # a clean stop, nothing spooled since: kept
        # No clean stop now (a crash): the next start moves the mark past every row.
        await _append(spool, encode(SPOOLED_DECODER.decode(orjson.dumps(sale_dict("S-3")))))
    async with open_spool(cfg, path, clock) as spool:
        assert await load_mark(spool) == 4
        await keep_mark(spool, 4)
    async with open_spool(cfg, path, clock) as spool:
        # Another writer (other code, an offline tool) spooled after the clean stop.
        await _append(spool, encode(SPOOLED_DECODER.decode(orjson.dumps(sale_dict("S-4")))))
        assert await load_mark(spool) == 5
        # A clean stop of code with other intake checks (its mark would hold from seq 1).
        foreign = {"version": INTAKE_CHECKS + 1, "from_seq": 1, "through_seq": 4}
        await spool.state.put(SPOOL_KEY, {CHECKS_KEY: foreign})
    async with open_spool(cfg, path, clock) as spool:
        assert await load_mark(spool) == 5  # another version's mark: moved past every row


async def test_window_quarantines_what_an_older_intake_spooled_and_commits_the_rest(
    tmp_path: Path,
) -> None:
    """End to end: rows in the spool before the service starts (here: a body today's intake
    refuses) get today's full checks and quarantine reason; rows pushed since commit."""
    cfg = make_config(tmp_path)
    bad = orjson.dumps({**sale_dict("OLD-1", at=NOW), "total": "0.123456789"})
    good = encode(SPOOLED_DECODER.decode(orjson.dumps(sale_dict("OLD-2", at=NOW))))
    async with open_spool(cfg.spool, cfg.spool_path, FakeClock(NOW)) as spool:
        await spool.append_rows(
            "S1", [("sale", "OLD-1", 0, "pos", bad), ("sale", "OLD-2", 0, "pos", good)]
        )
    async with running(cfg, NOW) as h:
        await push_records(h, sale_dict("NEW-1", at=NOW))
        out = await (await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())).json()
        s1 = out["stores"]["S1"]
        assert (s1["committed"], s1["quarantined"]) == (2, 1)
        (item,) = await h.spool.quarantined.latest("S1")
        assert item.rid == "OLD-1"
        message = "`total` at most 8 decimal places"
        assert item.reasons == [{"rule": "schema", "field": "$.total", "message": message}]
    # The app's clean stop kept the mark: the next start reads rows of this run the lean way.
    async with open_spool(cfg.spool, cfg.spool_path, FakeClock(NOW)) as spool:
        mark = (await spool.state.get(SPOOL_KEY))[CHECKS_KEY]
        last = await spool.state.last_seq()
        assert mark == {"version": INTAKE_CHECKS, "from_seq": 3, "through_seq": last}
        assert await load_mark(spool) == 3
