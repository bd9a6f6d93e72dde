"""A canonical push body -> spool rows, validated once by the lean decoder (the thin path).

    body (one JSON object, or a JSON array of them; application/json)
        -> LEAN_DECODER (sale | void; money kept as the decimal strings received)
             + one money check per sale (`worker.sources.backfill_parse`)
             -> (kind, id, version, origin, body re-encoded without default fields)
        -> anything else: None, and the push takes the general path (the canonical adapter
           and the full decoder), which decides and names every refusal exactly as before

Invariants

* Same verdicts. Only a body whose every record the lean decoder takes AND the full
  decoder would take is answered here (the lean structs are only stricter than
  `worker.records`, see `backfill_parse`); any doubt (a customer, a manual sale, JSON-number
  money, a bad item, an empty array, NDJSON, another media type) returns None before a
  thing is written, and the general path answers as it always has.
* Same rows. A row is what `SqliteSpool.append` would stage for the record the full decoder
  builds: kind, id, effective version, origin, and a body that `SPOOLED_DECODER` reads back
  to that very record. The body omits fields at their defaults, as backfill's rows do: the
  window fills the business date and encodes the full form for the sink, as it does for
  backfilled sales (`records.localized_body`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.adapters.canonical import JSON_TYPES
from worker.buffers.base import SpoolRow
from worker.records import DECODE_ERRORS, ENCODER, Spooled, type_of, version_of
from worker.sources.backfill_parse import (
    LEAN_DECODER,
    LeanSale,
    LeanVoid,
    _money_ok,  # one money check for both lean paths (held to the record types by its tests)
)

_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
# Arrays up to this many items take the thin path (a POS pushes one sale, or a few).
MAX_THIN_ITEMS = 64


class LeanRows:
    """What a thin push became: its spool rows, their bytes, and how many were voids."""

    __slots__ = ("nbytes", "rows", "voids")

    def __init__(self, rows: list[SpoolRow], nbytes: int, voids: int) -> None:
        self.rows = rows
        self.nbytes = nbytes
        self.voids = voids


def _row(raw: bytes | msgspec.Raw) -> SpoolRow | None:
    """The spool row of one record, or None unless it is a sale or void the lean path takes."""
    try:
        r: Any = LEAN_DECODER.decode(raw)
    except DECODE_ERRORS:
        return None
    if type(r) is LeanSale:
        # A manual sale goes to the committer at once (`Intake.route`), not to the spool.
        if r.origin == "manual" or not _money_ok(r):
            return None
        return ("sale", r.id, version_of(r.version, r.updated_at), r.origin, ENCODER.encode(r))
    if type(r) is LeanVoid:
        return ("void", r.id, r.version or 0, "pos", ENCODER.encode(r))
    return None  # pragma: no cover - the decoder's union has no third member


def spool_row(record: Spooled) -> SpoolRow:
    """The row `SqliteSpool.append` stages for a record the full decoder built."""
    return (
        type_of(record),
        record.id,
        record.effective_version,
        getattr(record, "origin", "pos"),
        ENCODER.encode(record),
    )


def lean_rows(body: bytes, content_type: str) -> LeanRows | None:
    """The spool rows of a canonical push of sales and voids only, else None (module doc)."""
    if content_type not in JSON_TYPES:
        return None
    stripped = body.lstrip()
    first = stripped[:1]
    if first == b"{":
        row = _row(body)
        if row is None:
            return None
        return LeanRows([row], len(row[4]), row[0] == "void")
    if first != b"[":
        return None
    try:
        items = _RAW_LIST.decode(body)
    except DECODE_ERRORS:
        return None
    if not items or len(items) > MAX_THIN_ITEMS:
        return None
    rows: list[SpoolRow] = []
    nbytes = voids = 0
    for raw in items:
        row = _row(raw)
        if row is None:
            return None
        rows.append(row)
        nbytes += len(row[4])
        voids += row[0] == "void"
    return LeanRows(rows, nbytes, voids)
