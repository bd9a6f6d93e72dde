"""Sink registry: `[sink] kind` -> an async context manager factory yielding a `ClientBook`
(the write side `Sink` and the read side `SinkReader`, `worker.sinks.base`). This mapping is
the one place config names meet implementations; the SQL sinks share `worker.sinks.sql`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from worker.config import Config
from worker.sinks.base import ClientBook

SinkFactory = Callable[[Config], AbstractAsyncContextManager[ClientBook]]


def _sqlite(cfg: Config) -> AbstractAsyncContextManager[ClientBook]:
    from worker.sinks.sqlite import open_sqlite_sink

    return open_sqlite_sink(cfg)


def _postgres(cfg: Config) -> AbstractAsyncContextManager[ClientBook]:
    from worker.sinks.postgres import open_postgres_sink

    return open_postgres_sink(cfg)


SINKS: dict[str, SinkFactory] = {"sqlite": _sqlite, "postgres": _postgres}


def open_sink(cfg: Config) -> AbstractAsyncContextManager[ClientBook]:
    """Open the configured sink as one async context."""
    kind: Any = type(cfg.sink).__struct_config__.tag
    return SINKS[str(kind)](cfg)
