"""An async context entered on its own event loop, for synchronous (hypothesis) tests.

Hypothesis drives sync test functions; the servers are async context managers. A
`PrivateLoop` enters one on a fresh loop, runs coroutines on it one at a time, and on
`close` leaves the context, drains async generators and the default executor, and closes
the loop, in that order, even when leaving the context fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PrivateLoop(Generic[T]):
    """`cm` entered on a new event loop; `entered` is what it yielded."""

    def __init__(self, cm: AbstractAsyncContextManager[T]) -> None:
        self.loop = asyncio.new_event_loop()
        self._cm = cm
        try:
            self.entered: T = self.loop.run_until_complete(cm.__aenter__())
        except BaseException:
            self.loop.close()
            raise

    def run(self, aw: Awaitable[R]) -> R:
        """Run `aw` to completion on the private loop."""
        return self.loop.run_until_complete(aw)

    def close(self) -> None:
        """Leave the context, then shut the loop down."""
        try:
            self.run(self._cm.__aexit__(None, None, None))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
