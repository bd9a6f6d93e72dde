"""Per-store inbox counters, as `/status` shows them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REFUSED_LATEST = 10  # refused entries shown per store on /status
LIST_IDLE_UP_TO = 200  # past this many stores, /status lists only the active ones


@dataclass
class StoreStats:
    """Per-store counters for /status."""

    processed: int = 0
    failed: int = 0
    retries: int = 0  # transient failures, all time
    uploads: int = 0
    refused: int = 0  # entries refused (symlink, special file, ...), each counted once
    refused_latest: deque[dict[str, str]] = field(
        default_factory=lambda: deque(maxlen=REFUSED_LATEST)
    )
    last_file: str | None = None
    last_at: str | None = None
    last_error: str | None = None
    waiting: set[Path] = field(default_factory=set)  # files currently backing off

    @property
    def active(self) -> bool:
        """The inbox has done or refused something for this store (idle stores are summed)."""
        return bool(
            self.processed
            or self.failed
            or self.waiting
            or self.uploads
            or self.refused
            or self.last_error
        )
