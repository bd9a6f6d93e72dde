"""Window instants: fixed cases across DST, an arithmetic oracle, and properties over all zones."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.clock import FakeClock
from worker.config import Config, StoreConfig, WindowsConfig
from worker.windows import (
    NextWindows,
    due_catch_up,
    last_window,
    local_instant,
    next_store_window,
    next_window,
    stagger,
    start_of_day,
    window_instants_on,
)

NY = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
SANTIAGO = ZoneInfo("America/Santiago")
HAVANA = ZoneInfo("America/Havana")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
DEFAULT = ["02:00", "14:00"]
US = timedelta(microseconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def wall(instant: datetime, zone: ZoneInfo) -> tuple[date, time, timedelta | None]:
    local = instant.astimezone(zone)
    return local.date(), local.time(), local.utcoffset()


# --- window_instants_on: ordinary days ------------------------------------------------------


def test_utc_zone_is_plain_clock_times() -> None:
    assert window_instants_on(date(2026, 5, 1), ZoneInfo("UTC"), DEFAULT) == [
        utc(2026, 5, 1, 2),
        utc(2026, 5, 1, 14),
    ]


def test_new_york_winter_and_summer_offsets() -> None:
    assert window_instants_on(date(2026, 1, 15), NY, DEFAULT) == [
        utc(2026, 1, 15, 7),
        utc(2026, 1, 15, 19),
    ]
    assert window_instants_on(date(2026, 7, 15), NY, DEFAULT) == [
        utc(2026, 7, 15, 6),
        utc(2026, 7, 15, 18),
    ]


def test_instants_are_utc_sorted_and_deduplicated() -> None:
    got = window_instants_on(date(2026, 1, 15), NY, ["14:00", "02:00", "14:00", "02:00:00"])
    assert got == [utc(2026, 1, 15, 7), utc(2026, 1, 15, 19)]
    assert all(t.tzinfo is UTC for t in got)


def test_seconds_and_45_minute_offset() -> None:
    # Asia/Kathmandu is UTC+05:45 all year.
    assert window_instants_on(date(2026, 6, 1), KATHMANDU, ["00:10:30"]) == [
        utc(2026, 5, 31, 18, 25, 30)
    ]


def test_bad_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        window_instants_on(date(2026, 1, 1), NY, [])
    with pytest.raises(ValueError, match="bad time"):
        window_instants_on(date(2026, 1, 1), NY, ["24:00"])
    with pytest.raises(ValueError, match="bad time"):
        next_window(utc(2026, 1, 1), NY, ["2pm"])


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2026, 1, 1)  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        next_window(naive, NY, DEFAULT)
    with pytest.raises(ValueError, match="aware"):
        last_window(naive, NY, DEFAULT)
    with pytest.raises(ValueError, match="aware"):
        due_catch_up(naive, utc(2026, 1, 1), NY, DEFAULT, "S1", 0)


# --- DST: spring forward (nonexistent) ------------------------------------------------------


def test_spring_forward_nonexistent_time_is_shifted_by_the_gap() -> None:
    # 2026-03-08 America/New_York: 02:00 EST -> 03:00 EDT; 02:30 does not exist.
    got = window_instants_on(date(2026, 3, 8), NY, ["02:30"])
    assert got == [utc(2026, 3, 8, 7, 30)]
    assert wall(got[0], NY) == (date(2026, 3, 8), time(3, 30), timedelta(hours=-4))


def test_spring_forward_gap_start_runs_at_gap_end() -> None:
    (at,) = window_instants_on(date(2026, 3, 8), NY, ["02:00"])
    assert wall(at, NY) == (date(2026, 3, 8), time(3, 0), timedelta(hours=-4))


def test_spring_forward_collision_makes_one_window() -> None:
    # 02:30 shifts to 03:30, which is also configured: one window, not two.
    assert window_instants_on(date(2026, 3, 8), NY, ["02:30", "03:30"]) == [utc(2026, 3, 8, 7, 30)]


def test_spring_forward_shifted_window_sorts_after_a_later_wall_time() -> None:
    # 02:45 shifts to 03:45 local, after the real 03:15.
    got = window_instants_on(date(2026, 3, 8), NY, ["02:45", "03:15"])
    assert [wall(t, NY)[1] for t in got] == [time(3, 15), time(3, 45)]


def test_next_window_across_spring_forward() -> None:
    before = utc(2026, 3, 8, 6, 0)  # 01:00 EST
    assert next_window(before, NY, ["02:30", "14:00"]) == utc(2026, 3, 8, 7, 30)
    assert next_window(utc(2026, 3, 8, 7, 30), NY, ["02:30", "14:00"]) == utc(2026, 3, 8, 18)


# --- DST: fall back (ambiguous) -------------------------------------------------------------


def test_fall_back_ambiguous_time_runs_first_occurrence_only() -> None:
    # 2026-11-01 America/New_York: 02:00 EDT -> 01:00 EST; 01:30 happens twice.
    got = window_instants_on(date(2026, 11, 1), NY, ["01:30"])
    assert got == [utc(2026, 11, 1, 5, 30)]
    assert wall(got[0], NY) == (date(2026, 11, 1), time(1, 30), timedelta(hours=-4))


def test_fall_back_repeat_is_not_a_window() -> None:
    first = utc(2026, 11, 1, 5, 30)
    second = utc(2026, 11, 1, 6, 30)  # 01:30 EST, the repeat
    assert next_window(first, NY, ["01:30"]) == utc(2026, 11, 2, 6, 30)
    assert last_window(second, NY, ["01:30"]) == first
    assert last_window(second - US, NY, ["01:30"]) == first


def test_fall_back_day_has_one_window_per_time() -> None:
    got = window_instants_on(date(2026, 11, 1), NY, ["01:00", "01:30", "02:00"])
    # 01:00 and 01:30 first occurrence (EDT); 02:00 exists once (EST).
    assert got == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7)]


# --- Southern hemisphere and 30-minute DST --------------------------------------------------


def test_sydney_spring_forward_in_october() -> None:
    # 2026-10-04 02:00 AEST -> 03:00 AEDT.
    (at,) = window_instants_on(date(2026, 10, 4), SYDNEY, ["02:30"])
    assert at == utc(2026, 10, 3, 16, 30)
    assert wall(at, SYDNEY) == (date(2026, 10, 4), time(3, 30), timedelta(hours=11))


def test_sydney_fall_back_in_april_first_occurrence() -> None:
    # 2026-04-05 03:00 AEDT -> 02:00 AEST; 02:30 happens twice.
    (at,) = window_instants_on(date(2026, 4, 5), SYDNEY, ["02:30"])
    assert at == utc(2026, 4, 4, 15, 30)
    assert wall(at, SYDNEY)[2] == timedelta(hours=11)
    assert next_window(at, SYDNEY, ["02:30"]) == utc(2026, 4, 5, 16, 30)


def test_lord_howe_half_hour_gap() -> None:
    # 2026-10-04 02:00 (+10:30) -> 02:30 (+11): only 30 minutes vanish.
    got = window_instants_on(date(2026, 10, 4), LORD_HOWE, ["02:15", "02:30", "02:45"])
    assert [wall(t, LORD_HOWE)[1] for t in got] == [time(2, 30), time(2, 45)]
    assert got == [utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 15, 45)]


def test_lord_howe_half_hour_repeat_first_occurrence() -> None:
    # 2026-04-05 02:00 (+11) -> 01:30 (+10:30): 01:30-02:00 happens twice.
    (at,) = window_instants_on(date(2026, 4, 5), LORD_HOWE, ["01:45"])
    assert at == utc(2026, 4, 4, 14, 45)
    assert wall(at, LORD_HOWE) == (date(2026, 4, 5), time(1, 45), timedelta(hours=11))
    repeat = utc(2026, 4, 4, 15, 15)
    assert wall(repeat, LORD_HOWE)[1] == time(1, 45)
    assert next_window(at, LORD_HOWE, ["01:45"]) == utc(2026, 4, 5, 15, 15)  # next day, +10:30
    assert last_window(repeat, LORD_HOWE, ["01:45"]) == at


def test_midnight_transition_zone() -> None:
    # America/Santiago 2026-09-06: 00:00 -04 -> 01:00 -03.
    (at,) = window_instants_on(date(2026, 9, 6), SANTIAGO, ["00:30"])
    assert wall(at, SANTIAGO) == (date(2026, 9, 6), time(1, 30), timedelta(hours=-3))


# --- next_window / last_window --------------------------------------------------------------


def test_next_window_is_strictly_after() -> None:
    at = utc(2026, 1, 15, 7)  # 02:00 EST exactly
    assert next_window(at, NY, DEFAULT) == utc(2026, 1, 15, 19)
    assert next_window(at - US, NY, DEFAULT) == at
    assert last_window(at, NY, DEFAULT) == at
    assert last_window(at - US, NY, DEFAULT) == utc(2026, 1, 14, 19)


def test_next_window_crosses_the_local_day() -> None:
    # 23:00 EST on Jan 15 is 04:00Z on Jan 16; the next window is 02:00 EST Jan 16.
    assert next_window(utc(2026, 1, 16, 4), NY, DEFAULT) == utc(2026, 1, 16, 7)
    assert last_window(utc(2026, 1, 16, 4), NY, DEFAULT) == utc(2026, 1, 15, 19)


def test_accepts_non_utc_aware_input() -> None:
    after = datetime(2026, 1, 15, 1, 0, tzinfo=NY)
    assert next_window(after, NY, DEFAULT) == utc(2026, 1, 15, 7)


def test_single_time_per_day() -> None:
    assert next_window(utc(2026, 1, 15, 8), NY, ["02:00"]) == utc(2026, 1, 16, 7)


# --- stagger --------------------------------------------------------------------------------


def test_stagger_zero_spread_is_zero() -> None:
    assert stagger("S1", 0) == timedelta(0)
    assert next_store_window(utc(2026, 1, 15), NY, DEFAULT, "S1", 0) == next_window(
        utc(2026, 1, 15), NY, DEFAULT
    )


def test_stagger_rejects_negative_spread() -> None:
    with pytest.raises(ValueError, match="spread_s"):
        stagger("S1", -1)


def test_stagger_is_pinned_sha256() -> None:
    # Pinned values: a switch to hash() (salted per process) or another digest breaks these.
    assert [stagger(s, 900).total_seconds() for s in ("S1", "S2", "store-0001")] == [393, 438, 742]


def _sha_mod(store: str, spread: int) -> int:
    return int.from_bytes(hashlib.sha256(store.encode()).digest()[:8], "big") % spread


def test_stagger_spreads_many_stores() -> None:
    seconds = {stagger(f"store-{i:05d}", 900).total_seconds() for i in range(3000)}
    assert len(seconds) > 800  # ~896 expected for 3000 draws over 900 buckets
    assert min(seconds) >= 0
    assert max(seconds) < 900


def test_next_store_window_applies_the_stagger() -> None:
    offset = stagger("S1", 900)
    assert offset > timedelta(0)
    base = utc(2026, 1, 15, 7)
    assert next_store_window(base - US, NY, DEFAULT, "S1", 900) == base + offset
    # Past the zone's window but before this store's staggered one: still that window.
    assert next_store_window(base + offset - US, NY, DEFAULT, "S1", 900) == base + offset
    assert next_store_window(base + offset, NY, DEFAULT, "S1", 900) == utc(2026, 1, 15, 19) + offset


# --- due_catch_up ---------------------------------------------------------------------------


def test_catch_up_fresh_store_has_nothing_missed() -> None:
    assert due_catch_up(None, utc(2026, 1, 20), NY, DEFAULT, "S1", 900) is None


def test_catch_up_nothing_missed() -> None:
    offset = stagger("S1", 900)
    done = utc(2026, 1, 15, 7) + offset
    assert due_catch_up(done, done, NY, DEFAULT, "S1", 900) is None
    assert due_catch_up(done, utc(2026, 1, 15, 19) + offset - US, NY, DEFAULT, "S1", 900) is None


def test_catch_up_many_misses_once_at_the_latest() -> None:
    offset = stagger("S1", 900)
    done = utc(2026, 1, 10, 7) + offset
    now = utc(2026, 1, 15, 12)  # 07:00 EST: five days of windows missed
    got = due_catch_up(done, now, NY, DEFAULT, "S1", 900)
    assert got == utc(2026, 1, 15, 7) + offset
    # Having run it, nothing more is due until the next window.
    assert got is not None
    assert due_catch_up(got, now, NY, DEFAULT, "S1", 900) is None
    assert next_store_window(now, NY, DEFAULT, "S1", 900) == utc(2026, 1, 15, 19) + offset


def test_catch_up_boundary_is_inclusive_of_now() -> None:
    offset = stagger("S1", 900)
    window = utc(2026, 1, 15, 19) + offset
    done = utc(2026, 1, 15, 7) + offset
    assert due_catch_up(done, window, NY, DEFAULT, "S1", 900) == window
    assert due_catch_up(done, window - US, NY, DEFAULT, "S1", 900) is None


def test_catch_up_respects_the_stagger() -> None:
    # The zone's window passed but this store's staggered one has not: nothing due.
    offset = stagger("S1", 900)
    done = utc(2026, 1, 14, 19) + offset
    now = utc(2026, 1, 15, 7) + offset - US
    assert due_catch_up(done, now, NY, DEFAULT, "S1", 900) is None


# --- start_of_day ---------------------------------------------------------------------------


def test_start_of_day_ordinary() -> None:
    assert start_of_day(date(2026, 1, 15), NY) == utc(2026, 1, 15, 5)


def test_start_of_day_skipped_midnight() -> None:
    # America/Santiago 2026-09-06 starts at 01:00 -03 (04:00Z): 00:00-01:00 never happens.
    start = start_of_day(date(2026, 9, 6), SANTIAGO)
    assert start == utc(2026, 9, 6, 4)
    assert (start - US).astimezone(SANTIAGO).date() == date(2026, 9, 5)


def test_start_of_day_repeated_midnight_is_the_first() -> None:
    # America/Havana 2026-11-01: 01:00 CDT -> 00:00 CST, midnight happens twice.
    start = start_of_day(date(2026, 11, 1), HAVANA)
    assert start == utc(2026, 11, 1, 4)
    assert (start - US).astimezone(HAVANA).date() == date(2026, 10, 31)


def test_start_of_day_midnight_strictly_inside_a_gap() -> None:
    # America/Toronto 1919-03-30 23:30 EST jumped to 03-31 00:30 EDT: the date starts at
    # 00:30 local (04:30Z), not at the fold=0 reading of midnight (05:00Z, 01:00 EDT).
    toronto = ZoneInfo("America/Toronto")
    start = start_of_day(date(1919, 3, 31), toronto)
    assert start == utc(1919, 3, 31, 4, 30)
    assert wall(start, toronto) == (date(1919, 3, 31), time(0, 30), timedelta(hours=-4))
    assert local_instant(date(1919, 3, 31), time(0, 0), toronto) == utc(1919, 3, 31, 5)


def test_start_of_day_whole_day_skipped() -> None:
    # Pacific/Apia skipped 2011-12-30 entirely: that date "starts" when 12-31 does.
    apia = ZoneInfo("Pacific/Apia")
    start = start_of_day(date(2011, 12, 30), apia)
    assert start == start_of_day(date(2011, 12, 31), apia) == utc(2011, 12, 30, 10)


def test_local_instant_matches_window_instants() -> None:
    assert local_instant(date(2026, 3, 8), time(2, 30), NY) == utc(2026, 3, 8, 7, 30)


# --- properties -----------------------------------------------------------------------------

INTERESTING = [
    "UTC",
    "America/New_York",
    "America/Santiago",
    "America/Havana",
    "America/St_Johns",
    "Europe/London",
    "Europe/Dublin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Asia/Beirut",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Africa/Casablanca",
]

zones = st.one_of(st.sampled_from([ZoneInfo(z) for z in INTERESTING]), st.timezones())
instants = st.datetimes(
    min_value=datetime(1990, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive)
    max_value=datetime(2080, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
wall_times = st.builds(
    lambda h, m, s, with_s: f"{h:02d}:{m:02d}:{s:02d}" if with_s else f"{h:02d}:{m:02d}",
    st.integers(0, 23),
    st.sampled_from([0, 0, 15, 30, 45, 59]) | st.integers(0, 59),
    st.integers(0, 59),
    st.booleans(),
)
time_lists = st.lists(wall_times, min_size=1, max_size=4)


def _all_windows_near(t: datetime, zone: ZoneInfo, times: list[str]) -> list[datetime]:
    d = t.astimezone(zone).date()
    return sorted(
        {w for k in range(-4, 5) for w in window_instants_on(d + timedelta(days=k), zone, times)}
    )


@given(instants, zones, time_lists)
def test_next_and_last_bracket_every_instant(t: datetime, zone: ZoneInfo, times: list[str]) -> None:
    nxt = next_window(t, zone, times)
    last = last_window(t, zone, times)
    assert last <= t < nxt
    assert nxt.tzinfo is UTC
    assert last.tzinfo is UTC
    # No window strictly between them (checked against the per-day listing).
    near = _all_windows_near(t, zone, times)
    assert nxt in near
    assert last in near
    assert [w for w in near if last < w < nxt] == []


@given(instants, zones, time_lists)
def test_next_and_last_are_consistent(t: datetime, zone: ZoneInfo, times: list[str]) -> None:
    nxt = next_window(t, zone, times)
    last = last_window(t, zone, times)
    assert next_window(last, zone, times) > t
    assert next_window(last, zone, times) == nxt
    assert last_window(nxt, zone, times) == nxt
    assert last_window(nxt - US, zone, times) == last


@given(instants, zones, time_lists)
def test_at_most_one_window_per_wall_time_per_day(
    t: datetime, zone: ZoneInfo, times: list[str]
) -> None:
    day = t.astimezone(zone).date()
    assert len(window_instants_on(day, zone, times)) <= len(set(times))


@given(
    instants,
    st.integers(-12, 14).filter(lambda h: h != 0),
    time_lists,
)
def test_fixed_offset_zone_matches_arithmetic(t: datetime, hours: int, times: list[str]) -> None:
    # Etc/GMT+5 is UTC-5 (POSIX sign). No DST, so windows are plain arithmetic.
    zone = ZoneInfo(f"Etc/GMT{'-' if hours > 0 else '+'}{abs(hours)}")
    offset = timedelta(hours=hours)
    local = (t + offset).replace(tzinfo=None)
    candidates = []
    for k in (-1, 0, 1):
        d = local.date() + timedelta(days=k)
        for text in times:
            h, m, *sec = (int(p) for p in text.split(":"))
            wall_dt = datetime.combine(d, time(h, m, sec[0] if sec else 0))
            candidates.append((wall_dt - offset).replace(tzinfo=UTC))
    assert next_window(t, zone, times) == min(c for c in candidates if c > t)
    assert last_window(t, zone, times) == max(c for c in candidates if c <= t)


@given(st.text(min_size=1, max_size=64), st.integers(0, 86_400))
def test_stagger_in_range_and_stable(store: str, spread: int) -> None:
    first = stagger(store, spread)
    assert first == stagger(store, spread)
    if spread == 0:
        assert first == timedelta(0)
    else:
        assert timedelta(0) <= first < timedelta(seconds=spread)
        assert first.total_seconds() == _sha_mod(store, spread)


@given(instants, zones, time_lists, st.text(min_size=1, max_size=16), st.integers(0, 3600))
def test_next_store_window_is_the_first_staggered_window(
    t: datetime, zone: ZoneInfo, times: list[str], store: str, spread: int
) -> None:
    offset = stagger(store, spread)
    got = next_store_window(t, zone, times, store, spread)
    assert got > t
    base = got - offset
    assert base in _all_windows_near(base, zone, times)
    # No earlier staggered window is after t.
    assert last_window(base - US, zone, times) + offset <= t


@given(
    instants,
    st.integers(0, 10 * 86_400),
    zones,
    time_lists,
    st.text(min_size=1, max_size=16),
    st.integers(0, 3600),
)
def test_catch_up_returns_the_latest_missed_window(
    done: datetime,
    gap_s: int,
    zone: ZoneInfo,
    times: list[str],
    store: str,
    spread: int,
) -> None:
    now = done + timedelta(seconds=gap_s)
    got = due_catch_up(done, now, zone, times, store, spread)
    first_after = next_store_window(done, zone, times, store, spread)
    if first_after > now:
        assert got is None
    else:
        assert got is not None
        assert done < got <= now
        assert next_store_window(got, zone, times, store, spread) > now
        assert due_catch_up(got, now, zone, times, store, spread) is None


@given(st.dates(min_value=date(1990, 1, 1), max_value=date(2080, 12, 31)), zones)
def test_start_of_day_is_the_first_instant_of_the_date(day: date, zone: ZoneInfo) -> None:
    start = start_of_day(day, zone)
    local_day = start.astimezone(zone).date()
    # A skipped date (Apia 2011-12-30) starts with the next one.
    assume(local_day == day)
    assert (start - US).astimezone(zone).date() < day


# --- NextWindows: the configured stores' windows against the clock ---------------------------


def two_stores() -> tuple[Config, StoreConfig, StoreConfig]:
    ny = StoreConfig(id="NY1", timezone="America/New_York")
    syd = StoreConfig(id="SYD1", timezone="Australia/Sydney", windows=["03:00"])
    cfg = Config(windows=WindowsConfig(times=DEFAULT, spread_s=900), stores=[ny, syd])
    return cfg, ny, syd


def test_next_windows_answers_each_store_in_its_own_zone_and_stagger() -> None:
    cfg, ny, syd = two_stores()
    clock = FakeClock(utc(2026, 3, 7, 12))
    windows = NextWindows(cfg, clock)
    assert windows.visible_at(ny) == next_store_window(clock.now(), NY, DEFAULT, "NY1", 900)
    assert windows.visible_at(syd) == next_store_window(clock.now(), SYDNEY, ["03:00"], "SYD1", 900)
    assert windows.visible_at(ny) != windows.visible_at(syd)
    at = utc(2026, 3, 8, 6)  # New York springs forward that morning
    assert windows.after(ny, at) == next_store_window(at, NY, DEFAULT, "NY1", 900)


def test_visible_at_is_the_same_until_its_window_then_the_next_one() -> None:
    cfg, ny, _ = two_stores()
    clock = FakeClock(utc(2026, 5, 1, 12))
    windows = NextWindows(cfg, clock)
    first = windows.visible_at(ny)
    assert first > clock.now()
    clock.set(first - US)
    assert windows.visible_at(ny) == first
    clock.set(first)  # the window itself: a sale pushed now waits for the next one
    second = windows.visible_at(ny)
    assert second > first
    assert second == next_store_window(first, NY, DEFAULT, "NY1", 900)
    clock.set(second + timedelta(days=3))  # a clock that jumps is answered from the new now
    assert windows.visible_at(ny) == next_store_window(clock.now(), NY, DEFAULT, "NY1", 900)


def test_catch_up_is_the_pure_rule_over_the_store_plan() -> None:
    cfg, ny, syd = two_stores()
    now = utc(2026, 5, 3, 12)
    windows = NextWindows(cfg, FakeClock(now))
    last = utc(2026, 5, 1, 12)
    assert windows.catch_up(ny, last, now) == due_catch_up(last, now, NY, DEFAULT, "NY1", 900)
    assert windows.catch_up(syd, last, now) == due_catch_up(
        last, now, SYDNEY, ["03:00"], "SYD1", 900
    )
    assert windows.catch_up(ny, None, now) is None  # never ran: nothing to catch up
    assert windows.catch_up(ny, windows.after(ny, now), now) is None  # done beyond now
