"""Structured logs through the standard logging module: one event per line.

Every line has `ts`, `level`, `logger`, `event` and `msg`; events add their figures as
`extra` keys (`store`, `source`, `request_id`, counts, durations):

    log.info("window committed", extra={"event": "window.end", "store": "S1", "committed": 12})

JSON lines (orjson) when stderr is not a terminal or `log_format = "json"`; a human line for a
terminal (`log_format = "human"`, or "auto" on a tty). `request_id` comes from the context
of the HTTP request being served (`REQUEST_ID`), so every line logged while handling one
carries it.

No personal data at any level: messages and extras name fields and rules, never values
(tests/chaos/test_logs_pii.py greps a full run).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["REQUEST_ID", "HumanFormatter", "JsonFormatter", "setup_logging"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "possync_request_id", default=None
)

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
LogFormat = Literal["auto", "json", "human"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
    }
    if "request_id" not in out:
        rid = REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        fields = _fields(record)
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": fields.pop("event", "log"),
            "msg": record.getMessage(),
            **fields,
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


class HumanFormatter(logging.Formatter):
    """`ts LEVEL logger: msg  key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one readable line (plus a traceback, if any)."""
        fields = _fields(record)
        event = fields.pop("event", None)
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(f"{k}={v}" for k, v in fields.items())
        head = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if event:
            head += f"  [{event}]"
        if extras:
            head += f"  {extras}"
        if record.exc_info:
            head += "\n" + self.formatException(record.exc_info)
        return head


def setup_logging(level: str, fmt: LogFormat = "auto") -> None:
    """Route the root logger to stderr in the chosen format (replacing earlier handlers)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Driver loggers print statements with their parameters (customer emails, phones) at
    # DEBUG: keep them at INFO or above whatever our own level is.
    for name in ("aiosqlite", "asyncpg", "aiohttp.access"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
