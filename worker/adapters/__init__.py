"""Adapter registry: `source` name -> adapter instance (see `base.Adapter`)."""

from __future__ import annotations

from worker.adapters.base import Adapter
from worker.adapters.canonical import CanonicalAdapter


def _registry() -> dict[str, Adapter]:
    adapters: list[Adapter] = [CanonicalAdapter()]
    return {a.name: a for a in adapters}


ADAPTERS: dict[str, Adapter] = _registry()


def get_adapter(source: str) -> Adapter | None:
    """The adapter for a source name, or None."""
    return ADAPTERS.get(source)
