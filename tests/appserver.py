"""The real app on an ephemeral port, with a fake clock, for HTTP tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.config import config_dict, merged, store
from worker import keys
from worker.app import build_app
from worker.clock import FakeClock
from worker.config import Config, decode

ADMIN = "admin-secret-token"
S1_TOKEN = "s1-token-abcdef"
S2_TOKEN = "s2-token-ghijkl"


def make_config(tmp: Path, **overrides: Any) -> Config:
    """A config with two canonical stores and a trigger, data in `tmp`."""
    raw = config_dict(
        tmp,
        admin_token=ADMIN,
        stores=[
            store("S1", S1_TOKEN, timezone="America/New_York"),
            store("S2", S2_TOKEN, timezone="Europe/Paris"),
        ],
        http={"max_body_bytes": 1024 * 1024},
        windows={"timezone": "UTC"},
        triggers=[
            {"name": "thank-you", "days_after": 0},
            {"name": "follow-up", "days_after": 30},
        ],
    )
    return decode(merged(raw, overrides))


class Harness:
    """A started app plus its client and clock."""

    def __init__(
        self,
        app: web.Application,
        client: TestClient[web.Request, web.Application],
        clock: FakeClock,
    ) -> None:
        self.app = app
        self.client = client
        self.clock = clock

    def admin(self) -> dict[str, str]:
        """Admin auth header."""
        return {"Authorization": f"Bearer {ADMIN}"}

    def store(self, token: str = S1_TOKEN) -> dict[str, str]:
        """Store auth header."""
        return {"Authorization": f"Bearer {token}"}

    @property
    def sink(self) -> Any:
        """The running sink."""
        return self.app[keys.SINK]

    @property
    def spool(self) -> Any:
        """The running spool."""
        return self.app[keys.SPOOL]


@asynccontextmanager
async def running(cfg: Config, now: datetime) -> AsyncIterator[Harness]:
    """Start the app on an ephemeral port; stop it on exit."""
    clock = FakeClock(now)
    app = build_app(cfg, clock=clock)
    server = TestServer(app, host="127.0.0.1", port=0)
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    try:
        yield Harness(app, client, clock)
    finally:
        await client.close()


async def push_records(h: Harness, *records: dict[str, Any]) -> None:
    """POST canonical records to S1 as one JSON array with S1's token; it must be a 202."""
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=json.dumps(list(records)),
        headers={**h.store(), "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def until(cond: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Wait for a state change, bounded; yields to the loop between looks."""

    async def poll() -> None:
        # The state lives in plain attributes with no event to wait on: look once per turn.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), limit_s)
