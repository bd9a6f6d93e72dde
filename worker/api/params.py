"""A request's parameters under the API's rules: the path's store, query dates, ids, limits.

Each helper answers a bad value with `RecordInvalid` (400) or `NotFound` (404) naming the
parameter and the rule, never echoing the value beyond a short prefix of a malformed date.
"""

from __future__ import annotations

from datetime import date

from aiohttp import web

from worker import keys
from worker.api import pages
from worker.config import StoreConfig
from worker.errors import RecordInvalid


def store_of(request: web.Request) -> StoreConfig:
    """The configured store named by the path's `{store}`, or 404 naming `store`."""
    return request.app[keys.INTAKE].store(request.match_info["store"])


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    """An optional integer query parameter from 1 to `maximum` (`default` when absent)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise RecordInvalid(f"{name} must be an integer from 1 to {maximum}", field=name)
    return int(raw)


def date_param(request: web.Request, name: str) -> date:
    """A required YYYY-MM-DD query parameter."""
    raw = request.query.get(name)
    if raw is None:
        raise RecordInvalid(f"query parameter {name!r} is required (YYYY-MM-DD)", field=name)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise RecordInvalid(
            f"{name} must be a date YYYY-MM-DD, got {raw[:40]!r}", field=name
        ) from None


def text_param(request: web.Request, name: str) -> str | None:
    """An optional id-like filter: 1 to 256 characters (never echoed back in an error)."""
    raw = request.query.get(name)
    if raw is not None and not 0 < len(raw) <= 256:
        raise RecordInvalid(f"{name} must be 1 to 256 characters", field=name)
    return raw


def pager(
    request: web.Request, name: str, filters: pages.Filters, shape: tuple[type, ...]
) -> pages.Pager:
    """The list request's paging: `limit`, `cursor` (bound to this list and its filters)."""
    return pages.Pager(
        secret=request.app[keys.CONFIG].http.admin_token,
        name=name,
        path=request.rel_url.raw_path,
        query=request.query,
        filters=filters,
        shape=shape,
    )
