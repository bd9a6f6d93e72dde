"""Cursor pages for every list endpoint: limit parsing, cursor encoding, the `next` URL.

Every list answer (Sales Log, quarantine, trigger events, audit log) is one page of a
keyset walk over the list's own order, never a silent cap:

* `limit` is 1..MAX_LIMIT (DEFAULT_LIMIT when absent); anything else is a 400 naming it.
* The handler reads `limit + 1` rows: the extra row only says that another page exists.
* `next` is a ready relative URL (same path, same filters, same limit, the new cursor),
  present only when another page exists.
* A cursor carries the keyset position (the last row's sort key), which list it belongs
  to and a digest of that list's filters, and is signed (HMAC-SHA256 keyed from the admin
  token), so a garbled, foreign (another list or other filters) or edited cursor is a 400
  naming `cursor`. The position is a key, not an offset: rows committed while a client
  pages land either after the cursor (and are read once) or before it (and are not read),
  never twice. Cursors outlive restarts; rotating the admin token retires them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import msgspec

from worker.errors import RecordInvalid

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_MAX_CURSOR_CHARS = 2048  # a real cursor is a few hundred characters

T = TypeVar("T")
Key = list[str | int]
Filters = Mapping[str, str | None]


class _Payload(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    version: int
    name: str
    filters: str  # digest of the list's filters
    key: list[str | int]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Payload)


def parse_limit(query: Mapping[str, str]) -> int:
    """The `limit` query parameter: 1..MAX_LIMIT, DEFAULT_LIMIT when absent."""
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        raise RecordInvalid(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    limit = int(raw)
    if not 1 <= limit <= MAX_LIMIT:
        raise RecordInvalid(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    return limit


def _secret(secret: str) -> bytes:
    return hashlib.sha256(b"possync cursor\0" + secret.encode()).digest()


def _digest(filters: Filters) -> str:
    canonical = _ENCODER.encode(sorted((k, v) for k, v in filters.items()))
    return hashlib.sha256(canonical).hexdigest()[:24]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(secret: str, name: str, filters: Filters, key: Sequence[str | int]) -> str:
    """An opaque, signed cursor for the position `key` in list `name` under `filters`."""
    body = _ENCODER.encode(_Payload(1, name, _digest(filters), list(key)))
    mac = hmac.new(_secret(secret), body, hashlib.sha256).digest()[:16]
    return f"{_b64(body)}.{_b64(mac)}"


def _bad(why: str) -> RecordInvalid:
    return RecordInvalid(f"cursor {why}: use the `next` URL of the same list", field="cursor")


def decode_cursor(
    secret: str, name: str, filters: Filters, raw: str | None, shape: Sequence[type]
) -> Key | None:
    """The position a cursor carries (None without one); 400 naming `cursor` otherwise.

    `shape` is the key's types, e.g. (str, str) for (occurred_at, id): a signed cursor of
    this list always matches it, so a mismatch means it was not made here.
    """
    if raw is None:
        return None
    if not raw or len(raw) > _MAX_CURSOR_CHARS or raw.count(".") != 1:
        raise _bad("is not a cursor")
    body_text, mac_text = raw.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise _bad("is not a cursor") from None
    expected = hmac.new(_secret(secret), body, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(mac, expected):
        raise _bad("was not issued by this server or was altered")
    try:
        payload = _DECODER.decode(body)
    except msgspec.DecodeError:
        raise _bad("is not a cursor") from None
    if payload.version != 1 or payload.name != name:
        raise _bad("belongs to another list")
    if payload.filters != _digest(filters):
        raise _bad("belongs to other filters")
    key = payload.key
    if len(key) != len(shape) or any(
        type(value) is not kind for value, kind in zip(key, shape, strict=True)
    ):
        raise _bad("is not a cursor of this list")
    return key


def next_url(path: str, filters: Filters, limit: int, cursor: str) -> str:
    """The relative URL of the next page: the same filters and limit, the new cursor."""
    query = [(k, v) for k, v in filters.items() if v is not None]
    query += [("limit", str(limit)), ("cursor", cursor)]
    return f"{path}?{urlencode(query)}"


class Pager:
    """One list request's paging state: which list, its filters, the limit, the position.

    `filters` are the list's query filters in canonical text (None when not given); they
    and the path (which names the store where it does) bind the cursor, and they are the
    query of the `next` URL.
    """

    def __init__(
        self,
        *,
        secret: str,
        name: str,
        path: str,
        query: Mapping[str, str],
        filters: Filters,
        shape: Sequence[type],
    ) -> None:
        self.name = name
        self.path = path
        self.filters = dict(filters)
        self._secret = secret
        self._bound = {**self.filters, "\0path": path}
        self.limit = parse_limit(query)
        self.after = decode_cursor(secret, name, self._bound, query.get("cursor"), shape)

    def text_key(self) -> tuple[str, str] | None:
        """The position as a (text, text) key (the cursor's shape was checked)."""
        return None if self.after is None else (str(self.after[0]), str(self.after[1]))

    def int_key(self) -> int | None:
        """The position as one integer id (the cursor's shape was checked)."""
        return None if self.after is None else int(self.after[0])

    @property
    def fetch(self) -> int:
        """How many rows to read: one more than the page, to know whether another exists."""
        return self.limit + 1

    def answer(
        self,
        body: dict[str, Any],
        key: str,
        rows: Sequence[T],
        item: Callable[[T], Any],
        position: Callable[[T], Sequence[str | int]],
    ) -> dict[str, Any]:
        """`body` with this page's items under `key`, and `next` when another page exists.

        `rows` are as read (up to `fetch`); `item(row)` shapes one for the answer and
        `position(row)` is its sort key, which the next page starts after.
        """
        shown = rows[: self.limit]
        body[key] = [item(r) for r in shown]
        if len(rows) > self.limit and shown:
            cursor = encode_cursor(self._secret, self.name, self._bound, position(shown[-1]))
            body["next"] = next_url(self.path, self.filters, self.limit, cursor)
        return body
