"""Reading a leased page back: which rows were checked at intake, and their lean decode.

    lease entries (seq order) -> seq >= checked_from: records.decode_checked (no __post_init__)
                              -> older seqs, or refused: SPOOLED_DECODER (its error: `schema`)

A row's record was decoded and field-checked where it entered (push and MQTT parsers,
adapters, backfill's lean parser: `worker.records`), so the window need not run those checks
again on rows this code spooled; the window's own rules (`worker.validation`) run on every
row as before. Which rows those are is kept in the spool's state, under its `:spool` entry:

    intake_checks = {"version": INTAKE_CHECKS, "from_seq": S, "through_seq": T}

Invariants

* Rows of seq >= S were spooled by code whose intake ran the checks of `INTAKE_CHECKS`.
  A start keeps S only when the version is the same, the spool was not recovered, and the
  spool's last seq is still T, the one recorded at the last clean stop of such code: nothing
  was spooled since by anyone else (an older or newer version, an offline writer, a salvage).
  Otherwise S becomes one past the last seq, so every row already spooled gets the full
  decoder, exactly as before this mark existed.
* T is written only on a clean stop (after intake stopped, `Committer.__aexit__`). At start
  it is removed, so after a crash the next start moves S again: rows spooled before a crash
  are re-checked in full (slower, never less safe).
* Seqs are never reused (AUTOINCREMENT), so "seq >= S" cannot take in an older row.
* A caller of `Buffer.append_rows` hands in encoded bodies: it must have run the intake
  checks on them (backfill's parser does; tests/test_page_decode.py holds it).
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from worker.buffers.base import Buffer, Entry
from worker.records import (
    DECODE_ERRORS,
    INTAKE_CHECKS,
    SPOOLED_DECODER,
    decode_checked,
    invalid_from,
)
from worker.validation import BatchItem

log = logging.getLogger("possync.committer")

# The spool's own entry in its state table (a store id cannot hold ":").
SPOOL_KEY = ":spool"
CHECKS_KEY = "intake_checks"


async def load_mark(spool: Buffer) -> int:
    """At start: the first seq of the rows this code's intake checked (module docstring)."""
    mark = (await spool.state.get(SPOOL_KEY)).get(CHECKS_KEY)
    last = await spool.state.last_seq()
    if (
        isinstance(mark, dict)
        and mark.get("version") == INTAKE_CHECKS
        and mark.get("through_seq") == last
        and isinstance(mark.get("from_seq"), int)
        and spool.recovered_from is None
    ):
        from_seq: int = mark["from_seq"]
    else:
        from_seq = last + 1
        log.info(
            "spooled rows up to seq %d are checked in full at their window",
            last,
            extra={"event": "window.checks_mark", "from_seq": from_seq},
        )
    # No `through_seq` until a clean stop: a crash from here on moves the mark.
    await spool.state.put(SPOOL_KEY, {CHECKS_KEY: {"version": INTAKE_CHECKS, "from_seq": from_seq}})
    return from_seq


async def keep_mark(spool: Buffer, from_seq: int) -> None:
    """At a clean stop (intake already stopped): the next start may keep `from_seq`."""
    try:
        last = await spool.state.last_seq()
        mark = {"version": INTAKE_CHECKS, "from_seq": from_seq, "through_seq": last}
        await spool.state.put(SPOOL_KEY, {CHECKS_KEY: mark})
    except Exception:  # noqa: BLE001 - without the mark the next start only re-checks more rows
        log.warning("intake-checks mark not kept: the next start checks spooled rows in full")


def decode_page(
    entries: list[Entry], checked_from: int | None
) -> tuple[list[BatchItem], list[tuple[int, list[dict[str, Any]]]]]:
    """Decode spooled rows (in seq order); an undecodable one fails the `schema` rule.

    Rows from seq `checked_from` on (None: none) get `decode_checked`; the others, and any
    row it refuses, the full decoder, whose error is the quarantine reason."""
    first = len(entries)
    if checked_from is not None:
        first = bisect.bisect_left(entries, checked_from, key=lambda e: e.seq)
    checked = decode_checked([e.body for e in entries[first:]])
    items: list[BatchItem] = []
    broken: list[tuple[int, list[dict[str, Any]]]] = []
    for i, e in enumerate(entries):
        record = checked[i - first] if i >= first else None
        if record is None:
            try:
                record = SPOOLED_DECODER.decode(e.body)
            except DECODE_ERRORS as exc:
                err = invalid_from(exc)
                reason = {"rule": "schema", "field": err.field, "message": err.message}
                broken.append((e.seq, [reason]))
                continue
        items.append(BatchItem(seq=e.seq, record=record, held=e.held, body=e.body))
    return items, broken
