"""A small fake of the clienteling app's event API, a real aiohttp server on an ephemeral port.

It takes what the HTTP output sends (`POST /events`, `{"events": [...]}`) and behaves like a
receiver should: a page whose `Idempotency-Key` it already applied is answered 200 and not
applied again, and an event id it already holds is not stored twice. Tests script its next
answers (`script`): "ok", "500", "429:<s>" / "503:<s>" (with Retry-After), "400", "hang"
(answer only once `release` is set, after the client gave up), "apply_then_500" (apply the
page, then answer 500: the sender must retry the same key and the receiver dedups).
Every state change pulses `changed`, so tests wait on it instead of polling.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


class FakeClienteling:
    """The receiver's state and its scripted answers."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []  # every request: key, event ids, auth, answer
        self.keys: Counter[str] = Counter()
        self.applied_keys: set[str] = set()
        self.events: dict[str, dict[str, Any]] = {}  # event id -> event, first copy kept
        self.order: list[str] = []  # event ids in the order first applied
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()
        self.url = ""

    async def wait_for(self, cond: Callable[[], bool], limit_s: float = 20.0) -> None:
        """Until `cond()` holds (woken by each request), bounded."""

        async def go() -> None:
            async with self.changed:
                await self.changed.wait_for(cond)

        await asyncio.wait_for(go(), limit_s)

    async def _pulse(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def handle(self, request: web.Request) -> web.Response:
        """POST /events."""
        key = request.headers.get("Idempotency-Key", "")
        payload = await request.json()
        ids = [e["event_id"] for e in payload["events"]]
        mode = self.script.pop(0) if self.script else "ok"
        entry: dict[str, Any] = {
            "key": key,
            "ids": ids,
            "auth": request.headers.get("Authorization"),
            "mode": mode,
        }
        self.requests.append(entry)
        self.keys[key] += 1
        try:
            if self.token and entry["auth"] != f"Bearer {self.token}":
                return web.json_response({"error": "unauthorized"}, status=401)
            if mode == "hang":
                await self.release.wait()
                return web.json_response({"error": "too late"}, status=504)
            if mode in ("500", "400"):
                return web.json_response({"error": mode}, status=int(mode))
            if mode.startswith(("429:", "503:")):
                status, seconds = mode.split(":")
                return web.json_response(
                    {"error": "slow down"}, status=int(status), headers={"Retry-After": seconds}
                )
            if key not in self.applied_keys:
                self.applied_keys.add(key)
                for ev in payload["events"]:
                    if ev["event_id"] not in self.events:
                        self.events[ev["event_id"]] = ev
                        self.order.append(ev["event_id"])
            if mode == "apply_then_500":
                return web.json_response({"error": "lost answer"}, status=500)
            return web.json_response({"accepted": len(ids)})
        finally:
            await self._pulse()


@asynccontextmanager
async def fake_clienteling(token: str = "") -> AsyncIterator[FakeClienteling]:
    """The fake API on 127.0.0.1, an ephemeral port; `url` is its events endpoint."""
    api = FakeClienteling(token)
    app = web.Application()
    app.router.add_post("/events", api.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    api.url = str(server.make_url("/events"))
    try:
        yield api
    finally:
        api.release.set()
        await server.close()
