"""Injectable clocks. Production uses `SystemClock`; tests advance a `FakeClock`.

Every wait in the service goes through `Clock.wait_until(deadline, stop)`, which returns
early when `stop` is set, so shutdown never waits for a timer and tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time (aware UTC) plus a stop-aware wait."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for durations."""
        ...

    async def wait_until(self, deadline: datetime, stop: asyncio.Event) -> bool:
        """Wait until `deadline` or until `stop` is set; True if the deadline was reached."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Now, UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    async def wait_until(self, deadline: datetime, stop: asyncio.Event) -> bool:
        """Sleep on the stop event with a timeout; wake early on stop."""
        while not stop.is_set():
            remaining = (deadline - self.now()).total_seconds()
            if remaining <= 0:
                return True
            # Cap each wait so a wall-clock jump (NTP step, suspend) is noticed within a minute.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(remaining, 60.0))
        return False


class FakeClock:
    """A clock tests move by hand. Waiters wake when `advance`/`set` passes their deadline."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 0.0
        self._seq = itertools.count()
        self._waiters: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self.waiting = asyncio.Event()

    def now(self) -> datetime:
        """The fake now."""
        return self._now

    def monotonic(self) -> float:
        """Fake monotonic seconds, advanced with `advance`."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter whose deadline has passed."""
        from datetime import timedelta

        self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        """Jump to `when` (not backwards) and wake due waiters."""
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError("FakeClock cannot go backwards")
        self._mono += (when - self._now).total_seconds()
        self._now = when
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
        if not self._waiters:
            self.waiting.clear()

    async def wait_until(self, deadline: datetime, stop: asyncio.Event) -> bool:
        """Park until the fake time reaches `deadline` or `stop` is set."""
        if deadline <= self._now:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (deadline, next(self._seq), fut))
        self.waiting.set()
        stop_task: asyncio.Future[None] = asyncio.ensure_future(self._stopped(stop))
        try:
            done, _ = await asyncio.wait({fut, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_task
            if not fut.done():
                fut.cancel()
        return fut in done and not fut.cancelled()

    @staticmethod
    async def _stopped(stop: asyncio.Event) -> None:
        await stop.wait()
