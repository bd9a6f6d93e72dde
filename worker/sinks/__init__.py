"""Sink registry: `[sink] kind` -> an async context manager factory yielding a `Sink`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from worker.config import Config
from worker.sinks.base import Sink

SinkFactory = Callable[[Config], AbstractAsyncContextManager[Sink]]


def _sqlite(cfg: Config) -> AbstractAsyncContextManager[Sink]:
    from worker.sinks.sqlite import open_sqlite_sink

    return open_sqlite_sink(cfg)


def _postgres(cfg: Config) -> AbstractAsyncContextManager[Sink]:
    from worker.sinks.postgres import open_postgres_sink

    return open_postgres_sink(cfg)


SINKS: dict[str, SinkFactory] = {"sqlite": _sqlite, "postgres": _postgres}


def open_sink(cfg: Config) -> AbstractAsyncContextManager[Sink]:
    """Open the configured sink as one async context."""
    kind: Any = type(cfg.sink).__struct_config__.tag
    return SINKS[str(kind)](cfg)
