"""Window instants: when each store's spooled sales are validated and committed.

Pure functions of (instant, store zone, configured wall-clock times): no I/O, no clock, no
asyncio. Inputs must be timezone-aware; every returned instant is UTC. Window times are
`"HH:MM"` or `"HH:MM:SS"` strings (`config.parse_time`), read as wall-clock times in the
store's IANA zone.

`NextWindows` is the one stateful piece: the configured stores' windows bound to the clock.
One per app (`app.py`); its `visible_at(store)` (when a sale pushed now is committed) is what
the push answers, the committer's preview and the status code show, and `after` /
`catch_up` are what the scheduler fires on.

DST, the same rule for every zone (30-minute shifts such as Australia/Lord_Howe, southern
hemisphere zones, zones that change at midnight):

* A wall time that does not exist on a spring-forward day (02:30 in America/New_York on
  2026-03-08) is shifted forward by the length of the gap: that window runs at 03:30 local,
  the instant 02:30 would be under the offset in force before the change (PEP 495 `fold=0`).
* A wall time that occurs twice on a fall-back day (01:30 in America/New_York on 2026-11-01)
  runs once, at its FIRST occurrence (the earlier instant, `fold=0`); the repeat is not a
  window.
* Times that land on the same instant (02:30 and 03:30 on that spring-forward day) make one
  window, not two.

Stagger: a store's windows run `stagger(store_id, spread_s)` after its zone's window instants
(a sha256 of the store id, so it is the same in every process and on every restart).
`next_store_window` and `due_catch_up` speak in staggered instants, and the scheduler records
the staggered instant it ran as the store's "last done".
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from worker.config import parse_time

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.config import Config, StoreConfig

__all__ = [
    "NextWindows",
    "due_catch_up",
    "last_window",
    "local_instant",
    "next_store_window",
    "next_window",
    "stagger",
    "start_of_day",
    "window_instants_on",
]

_DAY = timedelta(days=1)
_MIDNIGHT = time(0, 0)
_SECOND = timedelta(seconds=1)
# Every real zone has a window within two local days of any instant; the bound only stops a
# loop that could never end on a broken zone file.
_MAX_SEARCH_DAYS = 366


@functools.lru_cache(maxsize=1024)
def _wall_times(times: tuple[str, ...]) -> tuple[time, ...]:
    if not times:
        raise ValueError("at least one window time is required")
    return tuple(sorted({time(*parse_time(t)) for t in times}))


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def local_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """UTC instant of a store-local wall time on `day` (a gap shifts forward, a repeat runs first)."""
    # fold=0 is what makes both DST choices: in a gap it applies the pre-transition offset
    # (= shifted forward by the gap); in a repeat it picks the earlier occurrence.
    return datetime.combine(day, wall.replace(fold=0, tzinfo=None), tzinfo=zone).astimezone(UTC)


def start_of_day(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) of a store-local date, also where its midnight is skipped or repeated."""
    first = local_instant(day, _MIDNIGHT, zone)
    if first.astimezone(zone).replace(tzinfo=None) == datetime.combine(day, _MIDNIGHT):
        return first  # midnight exists; fold=0 already picked its first occurrence
    # Midnight falls in a gap: the date starts at the transition, which lies between the
    # post-transition reading of midnight (still the previous date) and the pre-transition
    # one (already this date). Transitions are on whole seconds, so bisect to one second.
    lo = datetime.combine(day, _MIDNIGHT, tzinfo=zone).replace(fold=1).astimezone(UTC)
    hi = first
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) // 2
        mid -= timedelta(microseconds=mid.microsecond)
        if mid.astimezone(zone).date() >= day:
            hi = mid
        else:
            lo = mid
    return hi


def _instants(days: Iterable[date], zone: ZoneInfo, walls: tuple[time, ...]) -> Iterable[datetime]:
    for day in days:
        for wall in walls:
            yield local_instant(day, wall, zone)


def window_instants_on(day: date, zone: ZoneInfo, times: Sequence[str]) -> list[datetime]:
    """The window instants of one store-local calendar day, UTC, sorted, without duplicates."""
    return sorted(set(_instants([day], zone, _wall_times(tuple(times)))))


def next_window(after: datetime, zone: ZoneInfo, times: Sequence[str]) -> datetime:
    """The first window instant strictly after `after` (UTC)."""
    _require_aware("after", after)
    walls = _wall_times(tuple(times))
    start = after.astimezone(zone).date()
    days = [start + timedelta(days=k) for k in range(-1, 3)]
    later = [t for t in _instants(days, zone, walls) if t > after]
    day = days[-1]
    while not later:
        day += _DAY
        if (day - start).days > _MAX_SEARCH_DAYS:
            raise ValueError(f"no window after {after.isoformat()} in {zone.key}")
        later = [t for t in _instants([day], zone, walls) if t > after]
    return min(later)


def last_window(at_or_before: datetime, zone: ZoneInfo, times: Sequence[str]) -> datetime:
    """The latest window instant at or before `at_or_before` (UTC)."""
    _require_aware("at_or_before", at_or_before)
    walls = _wall_times(tuple(times))
    start = at_or_before.astimezone(zone).date()
    days = [start + timedelta(days=k) for k in range(-2, 2)]
    earlier = [t for t in _instants(days, zone, walls) if t <= at_or_before]
    day = days[0]
    while not earlier:
        day -= _DAY
        if (start - day).days > _MAX_SEARCH_DAYS:
            raise ValueError(f"no window before {at_or_before.isoformat()} in {zone.key}")
        earlier = [t for t in _instants([day], zone, walls) if t <= at_or_before]
    return max(earlier)


def stagger(store_id: str, spread_s: int) -> timedelta:
    """This store's fixed offset in [0, spread_s) whole seconds (sha256 of the id; 0 if spread_s is 0)."""
    if spread_s < 0:
        raise ValueError("spread_s must be >= 0")
    if spread_s == 0:
        return timedelta(0)
    # sha256, not hash(): str hashing is salted per process, the stagger must survive restarts.
    digest = hashlib.sha256(store_id.encode("utf-8")).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % spread_s)


def next_store_window(
    after: datetime, zone: ZoneInfo, times: Sequence[str], store_id: str, spread_s: int
) -> datetime:
    """The store's next staggered window instant strictly after `after` (UTC)."""
    _require_aware("after", after)
    offset = stagger(store_id, spread_s)
    return next_window(after - offset, zone, times) + offset


def due_catch_up(
    last_done: datetime | None,
    now: datetime,
    zone: ZoneInfo,
    times: Sequence[str],
    store_id: str,
    spread_s: int,
) -> datetime | None:
    """The latest staggered window in (last_done, now], run once for all misses; None if none or never run."""
    _require_aware("now", now)
    if last_done is None:
        return None
    _require_aware("last_done", last_done)
    offset = stagger(store_id, spread_s)
    latest = last_window(now - offset, zone, times) + offset
    return latest if latest > last_done else None


class NextWindows:
    """Each configured store's staggered windows, read against the clock.

    `visible_at` is cached per store: the next window is the same for every instant before
    it, so it is computed once per window, not once per push.
    """

    def __init__(self, cfg: Config, clock: Clock) -> None:
        self._clock = clock
        self._spread_s = cfg.windows.spread_s
        self._plans = {s.id: (cfg.store_zone(s), tuple(cfg.store_times(s))) for s in cfg.stores}
        self._visible: dict[str, datetime] = {}

    def after(self, store: StoreConfig, instant: datetime) -> datetime:
        """The store's next staggered window strictly after `instant` (UTC)."""
        zone, times = self._plans[store.id]
        return next_store_window(instant, zone, times, store.id, self._spread_s)

    def catch_up(
        self, store: StoreConfig, last_done: datetime | None, now: datetime
    ) -> datetime | None:
        """The one window to run at `now` for all those missed since `last_done` (or None)."""
        zone, times = self._plans[store.id]
        return due_catch_up(last_done, now, zone, times, store.id, self._spread_s)

    def visible_at(self, store: StoreConfig) -> datetime:
        """When sales pushed now become visible: this store's next (staggered) window."""
        now = self._clock.now()
        cached = self._visible.get(store.id)
        if cached is not None and now < cached:
            return cached
        nxt = self.after(store, now)
        self._visible[store.id] = nxt
        return nxt
