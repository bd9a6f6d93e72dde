"""Sales triggers: matching, exclusions, due dates across time zones, idempotent ids."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.batch import SaleRow, TriggerEvent
from worker.config import TriggerConfig
from worker.records import Sale, SaleLine, Tender, localize
from worker.triggers import match_triggers, trigger_matches

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 10, 7, 5, tzinfo=UTC)  # 03:05 EDT, the 02:00 window + stagger
D = Decimal
THANKS = TriggerConfig(name="thanks", days_after=0)


def sale(**over: Any) -> Sale:
    fields: dict[str, Any] = {
        "id": "T1",
        "occurred_at": datetime(2026, 3, 9, 22, 0, tzinfo=UTC),  # 18:00 EDT on 03-09
        "currency": "USD",
        "lines": [
            SaleLine(sku="R1", quantity=D(1), unit_price=D("150.00"), category="Rings"),
            SaleLine(sku="W1", quantity=D(1), unit_price=D("50.00"), category=None),
        ],
        "subtotal": D("200.00"),
        "tax": D(0),
        "total": D("200.00"),
        "tenders": [Tender(method="card", amount=D("200.00"))],
        "customer_id": "C1",
    }
    fields.update(over)
    return Sale(**fields)


def row(zone: ZoneInfo = NY, **over: Any) -> SaleRow:
    s = localize(sale(**over), zone)
    return SaleRow(sale=s, version=s.effective_version)


def match(r: SaleRow, triggers: list[TriggerConfig], **kw: Any) -> list[TriggerEvent]:
    args: dict[str, Any] = {"store": "S1", "zone": NY, "now": NOW, "max_age_days": 30}
    args.update(kw)
    return match_triggers(
        r,
        args.pop("store"),
        args.pop("zone"),
        triggers,
        args.pop("now"),
        args.pop("max_age_days"),
        **args,
    )


def test_zero_days_event_fields() -> None:
    (ev,) = match(row(), [THANKS])
    assert ev == TriggerEvent(
        event_id="S1:T1:thanks",
        store="S1",
        sale_id="T1",
        trigger="thanks",
        action="message",
        customer_id="C1",
        total=D("200.00"),
        business_date=date(2026, 3, 9),
        due_date=date(2026, 3, 9),
        due_at=datetime(2026, 3, 9, 4, 0, tzinfo=UTC),  # 00:00 EDT (DST began 03-08)
        created_at=NOW,
    )


def test_days_after_and_local_midnight() -> None:
    (ev,) = match(row(), [TriggerConfig(name="follow-up", days_after=30, action="reminder")])
    assert ev.due_date == date(2026, 4, 8)
    assert ev.due_at == datetime(2026, 4, 8, 4, 0, tzinfo=UTC)  # 00:00 EDT
    assert ev.action == "reminder"
    assert ev.event_id == "S1:T1:follow-up"


def test_every_matching_rule_in_config_order() -> None:
    triggers = [
        TriggerConfig(name="big", min_total="500"),
        TriggerConfig(name="thanks"),
        TriggerConfig(name="rings", categories=["rings"]),
        TriggerConfig(name="watches", categories=["Watches"]),
    ]
    assert [e.trigger for e in match(row(), triggers)] == ["thanks", "rings"]


def test_no_triggers_configured() -> None:
    assert match(row(), []) == []


@pytest.mark.parametrize(
    ("min_total", "max_total", "fires"),
    [
        ("200.00", None, True),
        ("200", None, True),
        ("200.01", None, False),
        (None, "200", True),
        (None, "199.99", False),
        ("100", "300", True),
        ("300", "400", False),
    ],
)
def test_total_bounds_are_inclusive(
    min_total: str | None, max_total: str | None, fires: bool
) -> None:
    t = TriggerConfig(name="t", min_total=min_total, max_total=max_total)
    assert trigger_matches(t, sale()) is fires
    assert len(match(row(), [t])) == int(fires)


@pytest.mark.parametrize(
    ("categories", "fires"),
    [
        (["Rings"], True),
        (["RINGS"], True),
        ([" rings "], True),
        (["Watches", "rings"], True),
        (["Watches"], False),
        (["Ring"], False),
        ([], True),
    ],
)
def test_categories_any_line_case_insensitive(categories: list[str], fires: bool) -> None:
    assert trigger_matches(TriggerConfig(name="t", categories=categories), sale()) is fires


def test_lines_without_category_never_match_a_category_rule() -> None:
    s = sale(lines=[SaleLine(sku="X", quantity=D(1), unit_price=D("200.00"))])
    assert not trigger_matches(TriggerConfig(name="t", categories=["Rings"]), s)


def test_backfill_sales_fire_nothing() -> None:
    assert match(row(origin="backfill"), [THANKS]) == []


def test_manual_and_pos_sales_fire() -> None:
    assert len(match(row(origin="manual"), [THANKS])) == 1
    assert len(match(row(origin="pos"), [THANKS])) == 1


def test_returns_fire_nothing_exchanges_do() -> None:
    assert match(row(kind="return"), [THANKS]) == []
    assert len(match(row(kind="exchange"), [THANKS])) == 1


def test_voided_sales_fire_nothing() -> None:
    assert match(row(), [THANKS], voided=True) == []


def test_max_age_boundary_is_inclusive() -> None:
    # now is 2026-03-10 locally; 30 days earlier is 2026-02-08.
    fires = row(business_date=date(2026, 2, 8))
    too_old = row(business_date=date(2026, 2, 7))
    assert len(match(fires, [THANKS])) == 1
    assert match(too_old, [THANKS]) == []
    assert match(fires, [THANKS], max_age_days=0) == []
    assert len(match(row(business_date=date(2026, 3, 10)), [THANKS], max_age_days=0)) == 1


def test_age_uses_the_store_local_date_of_now() -> None:
    # 2026-03-10T03:00Z is still 03-09 in New York: a 03-08 sale is 1 day old there, 2 in UTC.
    now = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)
    r = row(business_date=date(2026, 3, 8))
    assert len(match(r, [THANKS], now=now, max_age_days=1)) == 1
    assert match(r, [THANKS], now=now, max_age_days=1, zone=ZoneInfo("UTC")) == []


def test_future_business_date_fires() -> None:
    (ev,) = match(row(business_date=date(2026, 3, 11)), [THANKS])
    assert ev.due_date == date(2026, 3, 11)


def test_unlinked_customer_fires_nothing_and_is_counted() -> None:
    # The customer never reached the sink: nobody could receive the message (issue 9.10).
    r = row(customer_id="C-LATE")
    r = SaleRow(
        sale=r.sale, version=r.version, customer_linked=False, warnings=("customer.hold: ...",)
    )
    skipped: Counter[str] = Counter()
    assert match(r, [THANKS, TriggerConfig(name="later", days_after=7)], skipped=skipped) == []
    assert skipped == {"no_customer": 2}


def test_walk_in_sale_fires_nothing_and_is_counted() -> None:
    skipped: Counter[str] = Counter()
    assert match(row(customer_id=None), [THANKS], skipped=skipped) == []
    assert skipped == {"no_customer": 1}


def test_no_customer_is_not_counted_when_no_rule_matches() -> None:
    skipped: Counter[str] = Counter()
    big = TriggerConfig(name="big", min_total="1000")
    assert match(row(customer_id=None), [big], skipped=skipped) == []
    assert skipped == {}


def test_rerun_yields_identical_ids() -> None:
    triggers = [THANKS, TriggerConfig(name="later", days_after=7)]
    first = match(row(), triggers)
    again = match(row(), triggers, now=NOW + timedelta(hours=5))
    assert (
        [e.event_id for e in first]
        == [e.event_id for e in again]
        == ["S1:T1:thanks", "S1:T1:later"]
    )
    assert [e.due_at for e in first] == [e.due_at for e in again]


def test_missing_business_date_falls_back_to_occurred_at() -> None:
    s = sale()
    assert s.business_date is None
    (ev,) = match(SaleRow(sale=s, version=0), [THANKS])
    assert ev.business_date == date(2026, 3, 9)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        match(row(), [THANKS], now=datetime(2026, 3, 10))  # noqa: DTZ001


# --- due_at across zones --------------------------------------------------------------------


def test_due_at_on_a_skipped_midnight() -> None:
    # America/Santiago 2026-09-06: 00:00 -04 jumps to 01:00 -03; the day starts at 04:00Z.
    santiago = ZoneInfo("America/Santiago")
    r = row(santiago, business_date=date(2026, 9, 5))
    (ev,) = match(
        r,
        [TriggerConfig(name="t", days_after=1)],
        zone=santiago,
        now=datetime(2026, 9, 6, 12, tzinfo=UTC),
    )
    assert ev.due_date == date(2026, 9, 6)
    assert ev.due_at == datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
    assert ev.due_at.astimezone(santiago).hour == 1


def test_due_at_on_a_repeated_midnight() -> None:
    # America/Havana 2026-11-01: 01:00 CDT falls back to 00:00 CST; the first midnight counts.
    havana = ZoneInfo("America/Havana")
    r = row(havana, business_date=date(2026, 11, 1))
    (ev,) = match(r, [THANKS], zone=havana, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert ev.due_at == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)


def test_due_at_southern_and_half_hour_zones() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    r = row(lord_howe, business_date=date(2026, 10, 4))
    (ev,) = match(r, [THANKS], zone=lord_howe, now=datetime(2026, 10, 4, tzinfo=UTC))
    # 2026-10-04 starts at +10:30 (DST begins at 02:00 that day).
    assert ev.due_at == datetime(2026, 10, 3, 13, 30, tzinfo=UTC)
    (ev,) = match(
        r,
        [TriggerConfig(name="t", days_after=1)],
        zone=lord_howe,
        now=datetime(2026, 10, 4, tzinfo=UTC),
    )
    assert ev.due_at == datetime(2026, 10, 4, 13, 0, tzinfo=UTC)  # +11 from then on


@given(
    st.sampled_from(
        [
            "America/New_York",
            "America/Santiago",
            "America/Havana",
            "Asia/Beirut",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "UTC",
        ]
    ),
    st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    st.integers(0, 400),
)
def test_due_at_is_the_first_instant_of_the_due_date(
    zone_name: str, sold: date, days_after: int
) -> None:
    zone = ZoneInfo(zone_name)
    r = row(zone, business_date=sold)
    now = datetime.combine(sold, datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    (ev,) = match(r, [TriggerConfig(name="t", days_after=days_after)], zone=zone, now=now)
    assert ev.due_date == sold + timedelta(days=days_after)
    assert ev.due_at.tzinfo is UTC
    assert ev.due_at.astimezone(zone).date() == ev.due_date
    assert (ev.due_at - timedelta(microseconds=1)).astimezone(zone).date() < ev.due_date


@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_total_bounds_property(total_c: int, lo_c: int, hi_c: int) -> None:
    total, lo, hi = (D(c).scaleb(-2) for c in (total_c, lo_c, hi_c))
    s = sale(total=total)
    t = TriggerConfig(name="t", min_total=str(lo), max_total=str(hi))
    assert trigger_matches(t, s) is (lo <= total <= hi)


def test_today_given_once_per_page_is_the_store_local_date_of_now() -> None:
    """The window passes `today` (one per page); the age rule then reads it, not `now`."""
    r = row(business_date=date(2026, 3, 10))
    today = localize(sale(occurred_at=NOW), NY).business_date
    assert today == date(2026, 3, 10)
    fired = match(r, [THANKS], max_age_days=0, today=today)
    assert len(fired) == 1 and fired == match(r, [THANKS], max_age_days=0)
    assert match(r, [THANKS], max_age_days=0, today=date(2026, 3, 11)) == []
