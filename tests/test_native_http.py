"""Native formats over real HTTP: Shopify webhooks (HMAC, replay, webhook id) and Lightspeed X."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import ClientResponse

from tests.adapter_helpers import fixture, sign
from tests.appserver import Harness, make_config, running

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
SECRET = "shpss_test_secret"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    cfg = make_config(
        tmp_path,
        stores=[
            {
                "id": "SH",
                "source": "shopify",
                "timezone": "America/Chicago",
                "secret": SECRET,
                "token": "sh-token",
            },
            {
                "id": "LX",
                "source": "lightspeed",
                "timezone": "Pacific/Auckland",
                "token": "lx-token",
            },
        ],
    )
    async with running(cfg, NOW) as harness:
        yield harness


def _shopify_headers(
    body: bytes, topic: str, webhook_id: str, secret: str = SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Shop-Domain": "lumen.myshopify.com",
    }


async def test_shopify_order_webhook_is_verified_spooled_and_deduplicated(h: Harness) -> None:
    body = fixture("shopify", "orders_create.json")
    url = "/v1/push/shopify/SH"
    resp = await h.client.post(
        url, data=body, headers=_shopify_headers(body, "orders/create", "wh-1")
    )
    first = await resp.json()
    assert resp.status == 202, first
    assert first["accepted"] >= 1
    pending = h.spool.stats("SH").pending
    assert pending >= 1
    # Shopify retries the same delivery: the webhook id is remembered durably.
    resp = await h.client.post(
        url, data=body, headers=_shopify_headers(body, "orders/create", "wh-1")
    )
    again = await resp.json()
    assert resp.status == 202 and again["accepted"] == 0
    # A replayed body with a valid signature under a new delivery id is a duplicate by key.
    resp = await h.client.post(
        url, data=body, headers=_shopify_headers(body, "orders/create", "wh-2")
    )
    replay = await resp.json()
    assert resp.status == 202 and replay["accepted"] == 0 and replay["duplicates"] >= 1
    assert h.spool.stats("SH").pending == pending


async def test_shopify_bad_signature_is_401_before_parsing(h: Harness) -> None:
    body = fixture("shopify", "orders_create.json")
    headers = _shopify_headers(body, "orders/create", "wh-3", secret="not-the-secret")
    resp = await h.client.post("/v1/push/shopify/SH", data=body, headers=headers)
    err = await resp.json()
    assert resp.status == 401 and "hmac" in err["field"].lower()
    # A garbage body with a valid signature is a 400 naming the field, not a 500.
    junk = b'{"id": "not-an-order"'
    resp = await h.client.post(
        "/v1/push/shopify/SH", data=junk, headers=_shopify_headers(junk, "orders/create", "wh-4")
    )
    assert resp.status == 400 and (await resp.json())["field"]
    assert h.spool.stats("SH").pending == 0


async def test_shopify_customer_webhook_is_real_time(h: Harness) -> None:
    body = fixture("shopify", "customers_update.json")
    resp = await h.client.post(
        "/v1/push/shopify/SH", data=body, headers=_shopify_headers(body, "customers/update", "wh-5")
    )
    assert resp.status == 202, await resp.json()
    counts = await h.sink.counts()
    assert counts["customers"] == 1
    assert h.spool.stats("SH").pending == 0


async def test_shopify_topic_swap_of_a_captured_signed_body_is_400(h: Harness) -> None:
    """Issue 12.5: the HMAC covers the body only; the topic must fit the body."""
    body = fixture("shopify", "orders_create.json")
    url = "/v1/push/shopify/SH"
    resp = await h.client.post(
        url, data=body, headers=_shopify_headers(body, "orders/create", "wh-10")
    )
    assert resp.status == 202, await resp.json()
    pending = h.spool.stats("SH").pending
    customers = (await h.sink.counts())["customers"]
    for n, topic in enumerate(("orders/delete", "customers/update", "products/update")):
        # exactly the captured bytes and their valid signature, under another topic
        resp = await h.client.post(
            url, data=body, headers=_shopify_headers(body, topic, f"wh-swap-{n}")
        )
        err = await resp.json()
        assert resp.status == 400, (topic, err)
        assert err["field"] == "X-Shopify-Topic" and topic in err["error"]
    assert h.spool.stats("SH").pending == pending  # no void spooled
    assert (await h.sink.counts())["customers"] == customers  # no customer made of the order
    # a real delete notice under its own topic is still a void
    notice = b'{"id": 6120458733912}'
    resp = await h.client.post(
        url, data=notice, headers=_shopify_headers(notice, "orders/delete", "wh-11")
    )
    assert resp.status == 202, await resp.json()
    assert h.spool.stats("SH").pending == pending + 1


async def _push_lightspeed_json(h: Harness, name: str) -> ClientResponse:
    """POST the Lightspeed fixture `name` as JSON to store LX with its token."""
    return await h.client.post(
        "/v1/push/lightspeed/LX",
        data=fixture("lightspeed", name),
        headers={"Authorization": "Bearer lx-token", "Content-Type": "application/json"},
    )


async def test_lightspeed_x_webhook_form_body(h: Harness) -> None:
    body = fixture("lightspeed", "x_sale_webhook.form")
    resp = await h.client.post(
        "/v1/push/lightspeed/LX",
        data=body,
        headers={
            "Authorization": "Bearer lx-token",
            # what X sends: the media type with its charset parameter
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
        },
    )
    got = await resp.json()
    assert resp.status == 202, got
    assert (got["accepted"], got["rejected"]) == (2, [])  # the embedded customer and the sale
    assert h.spool.stats("LX").pending == 1
    # The store is configured for lightspeed: it may not push another (bearer) native source.
    resp = await h.client.post(
        "/v1/push/the_edge/LX",
        data=b"{}",
        headers={"Authorization": "Bearer lx-token", "Content-Type": "application/json"},
    )
    assert resp.status == 404 and (await resp.json())["field"] == "source"


async def test_lightspeed_r_sale_without_relations_is_400_and_nothing_spooled(h: Harness) -> None:
    resp = await _push_lightspeed_json(h, "r_sale_no_relations.json")
    err = await resp.json()
    assert resp.status == 400 and err["field"] == "$.Sale.SaleLines", err
    assert "load_relations" in err["error"]
    assert h.spool.stats("LX").pending == 0


async def test_lightspeed_vend_09_list_is_accepted(h: Harness) -> None:
    resp = await _push_lightspeed_json(h, "vend_register_sales.json")
    got = await resp.json()
    assert resp.status == 202 and (got["accepted"], got["rejected"]) == (2, []), got
    assert h.spool.stats("LX").pending == 2
