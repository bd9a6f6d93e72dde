"""Adapter registry: `source` name -> adapter instance (see `base.Adapter`).

Every integration's name is a source: `canonical`, `shopify`, `lightspeed` (X- and R-Series),
`the_edge`, and the mapping-driven `rain`, `like_sew`, `jewel360`, `music_shop_360` (one
platform, a brand each), `kwi` and `logicmate`.

Contract: an adapter is pure (`base.Adapter.parse(body, ctx)`); what it knows of the store
comes from a `base.StoreContext` built once per store at start-up (`store_context`: the
store's config, zone and compiled mapping); `worker.adapters.streaming` holds the
incremental readers streaming sources put in front of an adapter's parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.adapters.base import Adapter, StoreContext
from worker.adapters.canonical import CanonicalAdapter
from worker.adapters.lightspeed import LightspeedAdapter
from worker.adapters.mapping import MappingAdapter, load_mapping
from worker.adapters.shopify import ShopifyAdapter
from worker.adapters.the_edge import ROLES, TheEdgeAdapter
from worker.config import Config, StoreConfig
from worker.errors import ConfigError, NotFound

# Sources whose payloads are read through a declarative mapping (load_mapping at start-up).
MAPPING_SOURCES = ("rain", "like_sew", "jewel360", "music_shop_360", "kwi", "logicmate")


def _registry() -> dict[str, Adapter]:
    adapters: list[Adapter] = [
        CanonicalAdapter(),
        ShopifyAdapter(),
        LightspeedAdapter(),
        TheEdgeAdapter(),
        *(MappingAdapter(name, brand=name) for name in MAPPING_SOURCES),
    ]
    return {a.name: a for a in adapters}


ADAPTERS: dict[str, Adapter] = _registry()


def get_adapter(source: str) -> Adapter | None:
    """The adapter for a source name, or None."""
    return ADAPTERS.get(source)


def adapter_for(source: str, store: StoreConfig) -> Adapter:
    """The adapter of a push's `source` for this store, else 404 naming `source`.

    A source is taken when it is a known adapter and the store's own (or `canonical`,
    which every store takes).
    """
    adapter = ADAPTERS.get(source)
    if adapter is None:
        raise NotFound(f"unknown source {source!r}", field="source")
    if source not in ("canonical", store.source):
        raise NotFound(
            f"store {store.id!r} is configured for source {store.source!r}, not {source!r}",
            field="source",
        )
    return adapter


def store_context(cfg: Config, store: StoreConfig) -> StoreContext:
    """The store's adapter context, mapping validated and compiled (ConfigError naming the key).

    Call once per store at start-up.
    """
    zone = cfg.store_zone(store)
    if store.source in MAPPING_SOURCES:
        spec = load_mapping(cfg, store)
        return StoreContext(store=store, zone=zone, mapping=spec.as_context(), spec=spec)
    return StoreContext(store=store, zone=zone, mapping=mapping_context(cfg, store))


def mapping_context(cfg: Config, store: StoreConfig) -> Mapping[str, Any] | None:
    """What goes into `AdapterContext.mapping` for this store; validated (ConfigError naming the key).

    Call once per store at start-up. Mapping sources get their merged, validated mapping;
    a `the_edge` store with `mapping` gets its `[mappings.NAME]` table (`fields` overrides);
    every other store gets None.
    """
    index = next((i for i, s in enumerate(cfg.stores) if s.id == store.id), 0)
    if store.source in MAPPING_SOURCES:
        return load_mapping(cfg, store).as_context()
    if store.source != "the_edge" or not store.mapping:
        return None
    table = cfg.mappings.get(store.mapping)
    if table is None:
        raise ConfigError(
            f"no [mappings.{store.mapping}] table", field=f"$.stores[{index}].mapping"
        )
    origin = f"$.mappings.{store.mapping}"
    for key in table:
        if key != "fields":
            raise ConfigError(f"{origin}: the_edge only reads `fields`", field=f"{origin}.{key}")
    fields = table.get("fields", {})
    if not isinstance(fields, Mapping):
        raise ConfigError(
            f"{origin}: `fields` is a table of role = field name", field=f"{origin}.fields"
        )
    for role, name in fields.items():
        if role not in ROLES or not isinstance(name, str) or not name:
            raise ConfigError(
                f"{origin}: unknown role {role!r} or empty field name (roles: {', '.join(ROLES)})",
                field=f"{origin}.fields.{role}",
            )
    return table
