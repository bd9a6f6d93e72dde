"""Sink registry: `[sink] kind` -> an async context manager factory yielding a `ClientBook`
(the write side `Sink` and the read side `SinkReader`, `worker.sinks.base`). This mapping is
the one place config names meet implementations; the SQL sinks share `worker.sinks.sql`.

With `[[outputs]]` configured, `open_sink` yields a `worker.sinks.fanout.FanoutBook` around
the primary: contexts entered in order primary sink, outbox (`<data_dir>/outbox.db`), each
output (`OUTPUTS` in `worker.sinks.outputs`), then the delivery tasks; torn down in reverse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from worker.clock import Clock, SystemClock
from worker.config import Config
from worker.health import Health
from worker.metrics import Metrics
from worker.sinks.base import ClientBook

SinkFactory = Callable[[Config], AbstractAsyncContextManager[ClientBook]]


def _sqlite(cfg: Config) -> AbstractAsyncContextManager[ClientBook]:
    from worker.sinks.sqlite import open_sqlite_sink

    return open_sqlite_sink(cfg)


def _postgres(cfg: Config) -> AbstractAsyncContextManager[ClientBook]:
    from worker.sinks.postgres import open_postgres_sink

    return open_postgres_sink(cfg)


SINKS: dict[str, SinkFactory] = {"sqlite": _sqlite, "postgres": _postgres}


def open_sink(
    cfg: Config,
    *,
    clock: Clock | None = None,
    health: Health | None = None,
    metrics: Metrics | None = None,
) -> AbstractAsyncContextManager[ClientBook]:
    """Open the configured sink as one async context (with its outputs, when configured).

    `clock`, `health` and `metrics` are the app's (delivery waits, owned tasks, counters);
    a caller without outputs may leave them out."""
    kind: Any = type(cfg.sink).__struct_config__.tag
    primary = SINKS[str(kind)](cfg)
    if not cfg.outputs:
        return primary
    return _fanout(cfg, primary, clock or SystemClock(), health or Health(), metrics or Metrics())


@asynccontextmanager
async def _fanout(
    cfg: Config,
    primary: AbstractAsyncContextManager[ClientBook],
    clock: Clock,
    health: Health,
    metrics: Metrics,
) -> AsyncIterator[ClientBook]:
    from worker.sinks.fanout import FanoutBook
    from worker.sinks.outbox import delivering, open_outbox
    from worker.sinks.outputs import open_output

    async with AsyncExitStack() as stack:
        book = await stack.enter_async_context(primary)
        outbox = await stack.enter_async_context(open_outbox(cfg, clock, metrics))
        outputs = {}
        for out in cfg.outputs:
            outputs[out.name] = await stack.enter_async_context(open_output(cfg, out))
        await stack.enter_async_context(delivering(outbox, outputs, health))
        yield FanoutBook(book, outbox, clock)
