"""The thin push parse against the general path: same verdicts, same rows, same records.

The reference is what a canonical push went through before the thin path (and still goes
through for whatever it declines): `CanonicalAdapter.parse` with the full decoder, then the
row `SqliteSpool.append` stages for each record. Whenever `lean_rows` answers, the general
path must have accepted every item as a spooled sale or void, and each row must carry the
same key, version and origin and a body the window decodes to the very same record. When
`lean_rows` declines (None), the general path decides, so its verdicts are today's by
construction; the corpus tests below show the common push is the thin path's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import sale_dict
from tests.test_backfill_parse import ODD_MONEY, sale_lines
from worker.adapters.base import AdapterContext
from worker.adapters.canonical import CanonicalAdapter
from worker.config import StoreConfig
from worker.errors import PossyncError
from worker.records import SPOOLED_DECODER, Sale, Void, type_of
from worker.sources.push_parse import MAX_THIN_ITEMS, lean_rows

AT = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
JSON = "application/json"


def _ctx(content_type: str) -> AdapterContext:
    return AdapterContext(
        store=StoreConfig(id="S1", token="t" * 24, timezone="America/New_York"),
        zone=ZoneInfo("America/New_York"),
        headers={},
        content_type=content_type,
        received_at=AT,
    )


def reference(body: bytes, content_type: str = JSON) -> tuple[str, Any]:
    """The general path: an error, rows (sales and voids spooled, nothing refused), or other."""
    try:
        parsed = CanonicalAdapter().parse(body, _ctx(content_type))
    except PossyncError as exc:
        return "error", (exc.status, exc.to_json())
    spooled = all(
        isinstance(r, Void) or (isinstance(r, Sale) and r.origin != "manual")
        for r in parsed.records
    )
    if parsed.rejected_count or not parsed.records or not spooled:
        return "other", None
    rows = [
        (type_of(r), r.id, r.effective_version, getattr(r, "origin", "pos"), r)
        for r in parsed.records
    ]
    return "rows", rows


def thin(body: bytes, content_type: str = JSON) -> tuple[str, Any] | None:
    """lean_rows, each row's body as the record the window reads back; None when declined."""
    got = lean_rows(body, content_type)
    if got is None:
        return None
    assert got.nbytes == sum(len(r[4]) for r in got.rows)
    assert got.voids == sum(r[0] == "void" for r in got.rows)
    return "rows", [(*r[:4], SPOOLED_DECODER.decode(r[4])) for r in got.rows]


def check(body: bytes, content_type: str = JSON) -> bool:
    """The thin answer, when there is one, is the general path's; True if it answered."""
    got = thin(body, content_type)
    if got is not None:
        assert got == reference(body, content_type)
    return got is not None


_voids = st.fixed_dictionaries(
    {
        "type": st.just("void"),
        "id": st.sampled_from(["S-1", ""]),
        "occurred_at": st.sampled_from(["2026-03-08T06:30:00Z", "2026-03-08T06:30:00"]),
    },
    optional={"version": st.sampled_from([0, 4, 2**63, None, "4"]), "extra": st.just(1)},
).map(orjson.dumps)
_items = st.one_of(sale_lines(), _voids)


@given(_items)
def test_one_record_equals_the_general_path(body: bytes) -> None:
    check(body)


@given(st.lists(_items, min_size=0, max_size=4), st.sampled_from([b"", b" ", b"\n"]))
def test_an_array_equals_the_general_path(items: list[bytes], pad: bytes) -> None:
    check(pad + b"[" + b",".join(items) + b"]" + pad)


@given(_items, st.sampled_from(["application/x-ndjson", "text/plain", "", "text/json"]))
def test_other_media_types_are_the_general_paths(body: bytes, content_type: str) -> None:
    answered = check(body, content_type)
    assert answered == (content_type == "text/json" and thin(body) is not None)


def test_the_common_push_takes_the_thin_path() -> None:
    """A canonical sale with decimal strings, alone or a few in an array, and a void."""
    sales = [orjson.dumps(sale_dict(f"S-{i}", lines=i % 4, at=AT)) for i in range(20)]
    for body in sales:
        assert check(body)
    assert check(b"[" + b",".join(sales) + b"]")
    void = orjson.dumps({"type": "void", "id": "S-1", "occurred_at": AT.isoformat()})
    assert check(void)
    got = lean_rows(b"[" + sales[0] + b"," + void + b"]", JSON)
    assert got is not None and got.voids == 1


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({**sale_dict("M-1", at=AT), "origin": "manual"}),  # to the committer
        orjson.dumps({**sale_dict("N-1", at=AT), "tax": 1.5}),  # JSON-number money
        orjson.dumps({"type": "customer", "id": "C1", "first_name": "Ada"}),
        orjson.dumps([sale_dict("A-1", at=AT), {"type": "customer", "id": "C1"}]),
        orjson.dumps([sale_dict("A-1", at=AT), {**sale_dict("B-1", at=AT), "total": "x"}]),
        orjson.dumps([sale_dict(f"A-{i}", at=AT) for i in range(MAX_THIN_ITEMS + 1)]),
        b"[]",
        b"",
        b"{",
        b"\xef\xbb\xbf" + orjson.dumps(sale_dict("B-2", at=AT)),
        orjson.dumps(sale_dict("T-1", at=AT)) + b" x",
    ],
)
def test_what_the_thin_path_declines(body: bytes) -> None:
    assert lean_rows(body, JSON) is None
    assert reference(body)[0] in ("rows", "other", "error")


def test_every_odd_money_value_is_declined_or_equal() -> None:
    """Deterministic, so the CI profile's examples cannot miss one of these."""
    for value in ODD_MONEY:
        for field in ("total", "discount"):
            check(orjson.dumps({**sale_dict("O-1", at=AT), field: value}))
        d = sale_dict("O-2", lines=1, at=AT)
        d["lines"][0]["unit_price"] = value
        check(orjson.dumps(d))
