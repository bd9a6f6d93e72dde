"""Every integration is a registered source (its error contract: tests/contracts)."""

from __future__ import annotations

from worker.adapters import ADAPTERS, get_adapter

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


def test_the_ten_sources_are_registered() -> None:
    assert sorted(ADAPTERS) == sorted(SOURCES)
    for name in SOURCES:
        adapter = get_adapter(name)
        assert adapter is not None and adapter.name == name
    assert get_adapter("square") is None


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
