"""`listen` tunes the collector while it serves (start-up objects frozen, a larger young
generation) and puts it back as it was when it stops."""

from __future__ import annotations

import gc
from pathlib import Path

import aiohttp
import orjson

from tests.appserver import S1_TOKEN
from tests.factories import sale_dict
from tests.test_http_hardening import NOW, served
from worker.app import YOUNG_GC_THRESHOLD


async def test_startup_objects_are_frozen_while_serving_and_released_after(
    tmp_path: Path,
) -> None:
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    assert before[0] != YOUNG_GC_THRESHOLD
    async with served(tmp_path) as srv:
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
        # The app, its routes, the open spool and sink, every imported module.
        assert gc.get_freeze_count() > 10_000
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{srv.url}/v1/push/canonical/S1",
                data=orjson.dumps(sale_dict("T-GC", at=NOW)),
                headers={"Authorization": f"Bearer {S1_TOKEN}", "Content-Type": "application/json"},
            )
            assert resp.status == 202
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
