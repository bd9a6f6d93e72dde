"""The window timer: fires each store's commit at its windows; delivers due trigger events.

Contract:

* Each store's two windows run in its own zone, staggered (`worker.windows`). At start-up a
  store whose last done window (restored by the committer from the spool) is older than its
  latest due one runs that window once, for all it missed.
* One commit per store at a time: a window that comes while the store's previous commit is
  still running is skipped and logged (the next window commits what it left).
* Waits are on the clock (`Clock.wait_until`) against the committer's stop event, so a fake
  clock drives it in tests and a stop ends it at once. Between windows it polls the trigger
  outbox every `trigger_poll_s`.
* Many instances (`[instance] owns`, `worker.locks`): a store this instance owns (empty
  `owns`: every store) has its windows run here on schedule; a configured store it does not
  own has its windows run only while this spool still holds rows of it (a store moved away,
  or MQTT messages a shared subscription brought here), so nothing spooled here is stranded.
  Either way the commit takes the store's window lock: exactly one instance commits a
  store at a time, the others wait up to `lock_wait_s`, then report `skipped = "locked"`.
* `run` is one task owned by the app (`Health.owned_task`: its death fails /readyz). On exit
  it cancels the running commits and awaits them: a cancelled commit has acked nothing, its
  rows stay in the spool for the next window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from worker.clock import Clock
from worker.committer import Committer, WindowResult
from worker.config import Config, StoreConfig
from worker.errors import SinkError, SpoolDamaged
from worker.windows import NextWindows

# The scheduler's lines have always been the committer's: the logger name is kept for them.
log = logging.getLogger("possync.committer")

__all__ = ["Scheduler", "owned_stores"]


def owned_stores(cfg: Config) -> frozenset[str]:
    """`[instance] owns`, or every configured store when it is empty."""
    return frozenset(cfg.instance.owns or [s.id for s in cfg.stores])


class Scheduler:
    """Fires each store's windows (store-local, staggered); catches missed ones up once."""

    def __init__(
        self,
        cfg: Config,
        committer: Committer,
        clock: Clock,
        windows: NextWindows,
        trigger_poll_s: float = 60.0,
    ) -> None:
        self.cfg = cfg
        self.committer = committer
        self.clock = clock
        self.windows = windows
        self.trigger_poll_s = trigger_poll_s
        self.running: dict[str, asyncio.Task[WindowResult]] = {}
        self.next_due: dict[str, datetime] = {}
        self.owned = owned_stores(cfg)

    def runs_window(self, store: StoreConfig) -> bool:
        """Whether this instance runs the store's window now (owned, or rows to drain)."""
        return store.id in self.owned or self.committer.spool.stats(store.id).pending > 0

    async def run(self) -> None:
        """The scheduling loop; owned by the app's cleanup context."""
        stop = self.committer.stop
        now = self.clock.now()
        for store in self.cfg.stores:
            due = self.windows.catch_up(store, self.committer.last_window.get(store.id), now)
            if due is not None and self.runs_window(store):
                log.info(
                    "store %s missed its window at %s: catching up once", store.id, due.isoformat()
                )
                self._start(store, due)
            self.next_due[store.id] = self.windows.after(store, now)
        try:
            while not stop.is_set():
                soonest = min(self.next_due.values(), default=None)
                poll = datetime.fromtimestamp(
                    self.clock.now().timestamp() + self.trigger_poll_s, UTC
                )
                deadline = poll if soonest is None else min(soonest, poll)
                await self.clock.wait_until(deadline, stop)
                if stop.is_set():
                    break
                now = self.clock.now()
                for store in self.cfg.stores:
                    due_at = self.next_due[store.id]
                    if due_at <= now:
                        if self.runs_window(store):
                            self._start(store, due_at)
                        self.next_due[store.id] = self.windows.after(store, now)
                try:
                    await self.committer.deliver_triggers()
                except SinkError as exc:
                    log.warning("trigger delivery failed: %s", exc.message)
        finally:
            tasks = list(self.running.values())
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, SinkError, SpoolDamaged):
                    await t

    def _start(self, store: StoreConfig, window_at: datetime) -> None:
        """Start the store's commit task unless its previous one still runs."""
        running = self.running.get(store.id)
        if running is not None and not running.done():
            log.warning(
                "store %s: previous commit still running; window %s skipped",
                store.id,
                window_at.isoformat(),
            )
            return
        task = asyncio.create_task(self._commit(store, window_at), name=f"commit-{store.id}")
        self.running[store.id] = task

    async def _commit(self, store: StoreConfig, window_at: datetime) -> WindowResult:
        try:
            return await self.committer.commit_store(store, window_at)
        except (SinkError, SpoolDamaged) as exc:  # logged by commit_store as window.failed
            return WindowResult(
                store=store.id, window_at=window_at, started_at=self.clock.now(), error=exc.message
            )
