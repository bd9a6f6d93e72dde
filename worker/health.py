"""Readiness bookkeeping: every background task registers here; a dead one fails /readyz.

`owned_task` is the one way a long-lived task is started: it runs for the life of its
context and is cancelled AND awaited on exit. A task that ends while its context is open
is reported: `dead: <exception>` when it raised, `stopped` when it returned (a loop that
should run until shutdown), except for a `once` task (a one-shot job such as the spool's
integrity check), which is `ok` once it returned and `dead` only if it raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("possync.health")

Check = Callable[[], Awaitable[None]]


class Health:
    """Named readiness checks plus the owned background tasks."""

    def __init__(self) -> None:
        self.checks: dict[str, Check] = {}
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self._once: set[str] = set()  # one-shot tasks: returning is success
        self.notes: dict[str, str] = {}  # non-fatal conditions shown on /readyz and /status
        self.note_sources: dict[str, Callable[[], str | None]] = {}

    def current_notes(self) -> dict[str, str]:
        """Static notes plus the ones computed now (e.g. a background integrity verdict)."""
        out = dict(self.notes)
        for name, fn in self.note_sources.items():
            note = fn()
            if note:
                out[name] = note
        return out

    def add_check(self, name: str, check: Check) -> None:
        """Register a readiness check (raises when not ready)."""
        self.checks[name] = check

    @contextlib.asynccontextmanager
    async def owned_task(
        self, name: str, coro: Coroutine[Any, Any, None], *, once: bool = False
    ) -> AsyncIterator[asyncio.Task[None]]:
        """Run a background task for the life of the context; cancel AND await it on exit.

        `once`: the task is a job that ends by itself; having returned, it reports `ok`.
        """
        task = asyncio.create_task(coro, name=name)
        self.tasks[name] = task
        if once:
            self._once.add(name)

        def _done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died: %r", name, t.exception())

        task.add_done_callback(_done)
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:  # noqa: BLE001 - its failure was logged by _done already
                    log.debug("task %s ended with an error during shutdown", name)
            self.tasks.pop(name, None)
            self._once.discard(name)

    async def run(self) -> dict[str, str]:
        """Every check and task: name -> "ok" or the failure."""
        out: dict[str, str] = {}
        for name, task in self.tasks.items():
            if task.done():
                exc = None if task.cancelled() else task.exception()
                if exc:
                    out[f"task:{name}"] = f"dead: {exc!r}"
                else:
                    out[f"task:{name}"] = "ok" if name in self._once else "stopped"
            else:
                out[f"task:{name}"] = "ok"
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), timeout=5)
                out[name] = "ok"
            except TimeoutError:
                out[name] = "timed out after 5 s"
            except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
                out[name] = str(exc) or type(exc).__name__
        return out
