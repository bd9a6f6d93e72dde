"""Fixtures of the contract suites: `backend` (every sink kind) and the `sink` it opens."""

from __future__ import annotations

from tests.contracts.sinks import backend, sink

__all__ = ["backend", "sink"]
