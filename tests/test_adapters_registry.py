"""Every integration is a registered source; no adapter raises outside its error contract."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from tests.adapter_helpers import make_ctx, sign
from worker.adapters import ADAPTERS, get_adapter
from worker.errors import AuthError, RecordInvalid, UnsupportedMediaType

SOURCES = [
    "canonical",
    "shopify",
    "lightspeed",
    "the_edge",
    "rain",
    "like_sew",
    "jewel360",
    "music_shop_360",
    "kwi",
    "logicmate",
]
NATIVE = [s for s in SOURCES if s != "canonical"]


def test_the_ten_sources_are_registered() -> None:
    assert sorted(ADAPTERS) == sorted(SOURCES)
    for name in SOURCES:
        adapter = get_adapter(name)
        assert adapter is not None and adapter.name == name
    assert get_adapter("square") is None


@given(
    source=st.sampled_from(NATIVE),
    body=st.binary(max_size=400),
    content_type=st.sampled_from(
        ["application/json", "text/csv", "application/x-www-form-urlencoded", "", "text/xml"]
    ),
    filename=st.sampled_from(
        [None, "transactions.csv", "1-2026-03-14-12-00-Transaction.json", "x"]
    ),
)
def test_any_bytes_raise_only_the_contract_errors(
    source: str, body: bytes, content_type: str, filename: str | None
) -> None:
    adapter = get_adapter(source)
    assert adapter is not None
    ctx = make_ctx(
        source,
        content_type=content_type,
        filename=filename,
        secret="s3cret",
        headers={"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": sign(body, "s3cret")},
    )
    with contextlib.suppress(RecordInvalid, AuthError, UnsupportedMediaType):
        parsed = adapter.parse(body, ctx)
        for rejection in parsed.rejected:
            assert rejection.error


def test_mapping_context_per_store() -> None:
    from worker.adapters import mapping_context
    from worker.config import decode
    from worker.errors import ConfigError

    cfg = decode(
        {
            "stores": [
                {"id": "A", "source": "kwi"},
                {"id": "B", "source": "the_edge", "mapping": "edge_b"},
                {"id": "C", "source": "shopify", "secret": "shpss"},
                {"id": "D", "source": "the_edge", "mapping": "edge_bad"},
            ],
            "mappings": {
                "edge_b": {"fields": {"sale_date": "SalelineTranDate"}},
                "edge_bad": {"fields": {"colour": "X"}},
            },
        }
    )
    a, b, c, d = cfg.stores
    kwi = mapping_context(cfg, a)
    assert kwi is not None and kwi["name"] == "kwi"
    assert mapping_context(cfg, b) == {"fields": {"sale_date": "SalelineTranDate"}}
    assert mapping_context(cfg, c) is None
    try:
        mapping_context(cfg, d)
    except ConfigError as err:
        assert err.field == "$.mappings.edge_bad.fields.colour"
    else:
        raise AssertionError("expected ConfigError")


def test_docs_examples_are_valid_config() -> None:
    import re
    import tomllib
    from pathlib import Path

    from worker.adapters import mapping_context
    from worker.config import decode

    text = (Path(__file__).parent.parent / "docs" / "adapters.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        raw = tomllib.loads(block)
        cfg = decode(raw)
        for store in cfg.stores:
            assert mapping_context(cfg, store) is not None
