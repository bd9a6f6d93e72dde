"""The backfill's lean decoder against today's: same verdicts, same rejections, same bytes.

The reference below is the path backfill took before the lean decoder (and still takes for
whatever the lean one refuses): `RECORD_DECODER`, `invalid_from`, origin and business date
set on the sale, `encode`, the spool row of `SqliteSpool.append`. Every generated line must
come out of `parse_lines` exactly as out of the reference: the same rejection text and
field, the same key, version and origin, and a body the window decodes to the same record.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, get_args, get_origin
from zoneinfo import ZoneInfo

import msgspec
import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import sale_dict
from worker.records import (
    DECODE_ERRORS,
    RECORD_DECODER,
    SPOOLED_DECODER,
    Adjustment,
    Sale,
    SaleLine,
    Spooled,
    Tender,
    Void,
    business_date,
    encode,
    invalid_from,
    type_of,
)
from worker.sources import backfill_parse as bp

ZONE = ZoneInfo("America/New_York")
AT = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # the night New York springs forward

Outcome = tuple[str, Any]


def reference(line: bytes) -> Outcome:
    """What backfill made of one line before the lean decoder."""
    try:
        r = RECORD_DECODER.decode(line)
    except DECODE_ERRORS as exc:
        err = invalid_from(exc)
        return "rejected", (err.message, err.field)
    if isinstance(r, Sale):
        if r.origin != "backfill":
            r = msgspec.structs.replace(r, origin="backfill")
        if r.business_date is None:
            r = msgspec.structs.replace(r, business_date=business_date(r.occurred_at, ZONE))
    if isinstance(r, Sale | Void):
        return "row", (
            type_of(r),
            r.id,
            r.effective_version,
            getattr(r, "origin", "pos"),
            decoded(encode(r)),
        )
    return "entity", r


def decoded(body: bytes) -> Spooled:
    """A spooled body as the window reads it."""
    return SPOOLED_DECODER.decode(body)


def lean(line: bytes) -> Outcome:
    """parse_lines on one line; a row's body is compared as the record it decodes to."""
    chunk = bp.parse_lines([(7, 100, line)], ZONE, 1 << 20, 40)
    assert chunk.records == 1
    if chunk.rejected:
        ((index, line_no, pos, message, field),) = chunk.rejected
        assert (index, line_no, pos) == (40, 7, 100)
        return "rejected", (message, field)
    if chunk.rows:
        ((row,),) = (chunk.rows,)
        assert chunk.nbytes == len(row[4])
        return "row", (*row[:4], decoded(row[4]))
    ((entity,),) = (chunk.entities,)
    return "entity", entity


_good_money = st.decimals(
    min_value=Decimal("-999999999999.99999999"),
    max_value=Decimal("999999999999.99999999"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
).map(str)
# Strings Decimal reads but prints otherwise, or refuses, or _check_decimal refuses.
ODD_MONEY = (
        "007.50", "+1", " 1.5", "1.5 ", "1.5\n", "1e3", "1E-9", "0.00000001", "0.0000001",
        "-0", "-0.00", "0.000000", "1_000", "NaN", "-Infinity", "", "-", ".5", "5.",
        "1000000000000", "999999999999.999999999", "0.123456789", "١٢", "0x10", "1.0e0",
        "0.0000010", "-0.0000001", "00", "1.", 12, 1.25, -0.0, "1\x002", "1\x00", "\x00",
)  # fmt: skip
_odd_money = st.sampled_from(ODD_MONEY)
_money = st.one_of(
    _good_money,
    _odd_money,
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**13), max_value=10**13),  # JSON numbers: the full path
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.none(),
)
_times = st.sampled_from(
    [
        "2026-03-08T06:30:00Z", "2026-03-08T01:30:00-05:00", "2026-03-08T06:30:00",
        "2026-03-08T06:30:00.123456+00:00", "2026-03-08", "not a time", "2026-03-08T06:30:00+14:00",
    ]
)  # fmt: skip


@st.composite
def sale_lines(draw: st.DrawFn) -> bytes:
    """A canonical sale, then a few of its fields bent (money, times, keys, types)."""
    d = sale_dict(draw(st.sampled_from(["A-1", "B-2", ""])), lines=draw(st.integers(0, 3)), at=AT)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(["sale", "line", "tender", "adjustment", "other"]))
        if where == "sale":
            d[draw(st.sampled_from([*bp.SALE_MONEY, "discount"]))] = draw(_money)
        elif where == "line" and d["lines"]:
            line = draw(st.sampled_from(d["lines"]))
            line[draw(st.sampled_from(bp.LINE_MONEY))] = draw(_money)
        elif where == "tender":
            d["tenders"].append({"method": "cash", "amount": draw(_money)})
        elif where == "adjustment":
            d.setdefault("adjustments", []).append({"kind": "discount", "amount": draw(_money)})
        else:
            key, value = draw(
                st.sampled_from(
                    [
                        ("occurred_at", draw(_times)),
                        ("updated_at", draw(_times)),
                        ("version", draw(st.sampled_from([3, -1, 2**63, "3", 1.5]))),
                        ("origin", draw(st.sampled_from(["pos", "manual", "backfill", "x"]))),
                        ("business_date", draw(st.sampled_from(["2026-03-01", "03/01/2026"]))),
                        ("currency", draw(st.sampled_from(["EUR", "eur", "EURO"]))),
                        ("surprise", 1),
                        ("type", draw(st.sampled_from(["void", "customer", "product", "nope"]))),
                    ]
                )
            )
            d[key] = value
    return orjson.dumps(d)


@given(sale_lines())
def test_lean_parse_equals_the_full_decoder(line: bytes) -> None:
    assert lean(line) == reference(line)


@given(
    st.fixed_dictionaries(
        {"type": st.just("void"), "id": st.sampled_from(["S-1", ""]), "occurred_at": _times},
        optional={
            "version": st.sampled_from([0, 4, 2**63, None, "4"]),
            "reason": st.sampled_from(["typo", None, 5]),
            "extra": st.just(1),
        },
    ).map(orjson.dumps)
)
def test_lean_voids_equal_the_full_decoder(line: bytes) -> None:
    assert lean(line) == reference(line)


def test_every_odd_money_value_in_every_money_field() -> None:
    """Deterministic, so the CI profile's 100 examples cannot miss one of these."""
    base = sale_dict("M-1", lines=1, at=AT)
    base["adjustments"] = [{"kind": "discount", "amount": "0"}]
    places: list[tuple[str, ...]] = [(name,) for name in (*bp.SALE_MONEY, "discount")]
    places += [("lines", name) for name in bp.LINE_MONEY]
    places += [("tenders", "amount"), ("adjustments", "amount")]
    seen = set()
    for value in (*ODD_MONEY, "12.50", "0.000001"):
        for place in places:
            d = orjson.loads(orjson.dumps(base))
            (d if len(place) == 1 else d[place[0]][0])[place[-1]] = value
            line = orjson.dumps(d)
            got = lean(line)
            assert got == reference(line), (value, place)
            seen.add(got[0])
    assert seen == {"row", "rejected"}


def test_fixed_corpus_takes_the_lean_path_and_matches() -> None:
    """The common line (decimal strings) is the lean path's, not the fallback's."""
    lines = [orjson.dumps(sale_dict(f"S-{i}", lines=i % 4, at=AT)) for i in range(50)]
    for line in lines:
        assert bp.LEAN_DECODER.decode(line) is not None
        assert lean(line) == reference(line)
    with_numbers = orjson.dumps({**sale_dict("N-1", at=AT), "tax": 1.5})
    assert lean(with_numbers) == reference(with_numbers)  # full path: JSON-number money


def test_lean_body_is_the_canonical_json_without_defaults() -> None:
    """Every value as the full encoder writes it; only fields at their default are left out."""
    line = orjson.dumps(sale_dict("S-1", lines=2, at=AT, customer_id="C-1"))
    (row,) = bp.parse_lines([(1, 0, line)], ZONE, 1 << 20, 0).rows
    kind, (_, _, _, _, record) = reference(line)
    assert kind == "row"
    full = orjson.loads(encode(record))
    lean_body = orjson.loads(row[4])
    nested = ("lines", "tenders", "adjustments")
    top = {k: v for k, v in lean_body.items() if k not in nested}
    assert top == {k: v for k, v in full.items() if k in top}
    for name in nested:
        for mine, theirs in zip(lean_body.get(name, []), full[name], strict=True):
            assert mine == {k: v for k, v in theirs.items() if k in mine}
    assert lean_body["origin"] == "backfill" and lean_body["business_date"] == "2026-03-08"
    assert len(row[4]) < 0.8 * len(encode(record))


def test_money_pattern_takes_only_strings_decimal_prints_unchanged() -> None:
    for text in ["0", "-0", "12.50", "999999999999.99999999", "0.000001", "-0.00001"]:
        assert bp.MONEY.fullmatch(text) and str(Decimal(text)) == text
    for text in ["007.5", "+1", "1e3", "0.0000001", "0.00000001", "1000000000000", "1.123456789"]:
        assert not bp.MONEY.fullmatch(text)


def _money_fields(cls: type) -> tuple[set[str], set[str]]:
    required: set[str] = set()
    optional: set[str] = set()
    for name, tp in typing.get_type_hints(cls).items():
        if tp is Decimal:
            required.add(name)
        elif get_origin(tp) in (
            typing.Union,
            __import__("types").UnionType,
        ) and Decimal in get_args(tp):
            optional.add(name)
    return required, optional


def test_money_fields_checked_are_every_decimal_field_of_the_records() -> None:
    assert _money_fields(Sale) == (set(bp.SALE_MONEY), set(bp.SALE_OPTIONAL_MONEY))
    assert _money_fields(SaleLine) == (set(bp.LINE_MONEY), set())
    assert _money_fields(Tender) == (set(bp.TENDER_MONEY), set())
    assert _money_fields(Adjustment) == (set(bp.ADJUSTMENT_MONEY), set())
    # Sale's nested structs are exactly these three (a new one would need its checks).
    nested = {
        get_args(tp)[0]
        for tp in typing.get_type_hints(Sale).values()
        if get_origin(tp) is list
        and isinstance(get_args(tp)[0], type)
        and issubclass(get_args(tp)[0], msgspec.Struct)
    }
    assert nested == {SaleLine, Tender, Adjustment}


def test_lean_structs_mirror_the_records_field_by_field() -> None:
    for cls in (Sale, Void, SaleLine, Tender, Adjustment):
        twin = bp.lean_struct(cls)
        assert [f.name for f in msgspec.structs.fields(twin)] == [
            f.name for f in msgspec.structs.fields(cls)
        ]
        for mine, theirs in zip(
            msgspec.structs.fields(twin), msgspec.structs.fields(cls), strict=True
        ):
            default = str(theirs.default) if isinstance(theirs.default, Decimal) else theirs.default
            assert mine.default == default and mine.required == theirs.required
        a, b = twin.__struct_config__, cls.__struct_config__
        assert (a.tag, a.tag_field, a.forbid_unknown_fields, a.frozen) == (
            b.tag, b.tag_field, b.forbid_unknown_fields, b.frozen
        )  # fmt: skip
