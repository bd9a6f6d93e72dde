"""File-system notifications for the drop folders (watchfiles: Rust `notify`, inotify on Linux).

One thread per watcher runs `RustNotify.watch` (watchfiles' documented Rust backend) on the
store folders, non-recursively, and hands the changed paths to the event loop with
`call_soon_threadsafe`. The notifications are only a hint of *which* folder to scan: every
decision is still taken by a scan through `inbox_fs` (no symlink followed), so a lost,
spurious or misdirected notification costs a scan or a delay, never safety. The inbox
keeps a slow full poll as the safety net for lost notifications (inotify queue overflow,
a folder recreated after the watch was set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from watchfiles._rust_notify import RustNotify

log = logging.getLogger("possync.inbox")
_T = TypeVar("_T")

# Changes are grouped for up to DEBOUNCE_MS and handed over once STEP_MS pass without a new
# one; the thread takes the GIL once per STEP_MS to check its stop flag (the idle cost).
DEBOUNCE_MS = 400
STEP_MS = 100
TIMEOUT_MS = 60_000


class Notifier:
    """Watches `paths` in one thread; `on_change(paths)` runs on the loop for each batch."""

    def __init__(
        self,
        paths: Sequence[Path],
        on_change: Callable[[set[Path]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.paths = list(paths)
        self._on_change = on_change
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rust: RustNotify | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the watches (blocking: call in a thread) and start the watching thread."""
        # Raises OSError (for instance the inotify watch limit) when notifications cannot be
        # had: the caller then polls at the fast interval instead.
        self._rust = RustNotify([str(p) for p in self.paths], False, False, 300, False, True)
        self._thread = threading.Thread(
            target=self._pump, args=(loop, self._rust), name="possync-inbox-notify", daemon=True
        )
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop, rust: RustNotify) -> None:
        try:
            while not self._stop.is_set():
                got = rust.watch(DEBOUNCE_MS, STEP_MS, TIMEOUT_MS, self._stop)
                if isinstance(got, set):
                    _hand(loop, self._on_change, {Path(p) for _, p in got})
        except BaseException as exc:  # noqa: BLE001  handed to the loop, which logs it
            if not self._stop.is_set():
                _hand(loop, self._on_error, exc)
        finally:
            rust.close()

    def close(self) -> None:
        """Stop the thread and wait for it (blocking, at most about one STEP_MS)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        elif self._rust is not None:
            self._rust.close()


def _hand(loop: asyncio.AbstractEventLoop, fn: Callable[[_T], None], arg: _T) -> None:
    # The loop may be closing while the thread winds down: nobody is left to tell then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, arg)
