"""The canonical source: our own record format, as one object, an array, or NDJSON."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.streaming import iter_ndjson
from worker.config import RulePolicy
from worker.errors import RecordInvalid, UnsupportedMediaType
from worker.records import DECODE_ERRORS, RECORD_DECODER, Record, invalid_from

_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


def _decode_one(index: int, raw: bytes | msgspec.Raw, out: Parsed) -> None:
    try:
        record: Record = RECORD_DECODER.decode(raw)
    except DECODE_ERRORS as exc:
        err = invalid_from(exc)
        out.reject(index, err.message, err.field)
        return
    out.records.append(record)


class CanonicalAdapter:
    """`POST /v1/push/canonical/{store}`: one record, a JSON array, or NDJSON lines."""

    name = "canonical"
    signed = False
    rule_defaults: Mapping[str, RulePolicy] = MappingProxyType({})

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Decode every item; a bad item is rejected by index, the rest go through."""
        out = Parsed()
        if ctx.content_type in NDJSON_TYPES:
            for index, line in iter_ndjson(body):
                _decode_one(index, line, out)
            if not out.records and not out.rejected_count:
                raise RecordInvalid("empty body: expected NDJSON records", field="$")
            return out
        if ctx.content_type not in JSON_TYPES:
            raise UnsupportedMediaType(
                f"content type {ctx.content_type or '(none)'!r} not supported: "
                "use application/json or application/x-ndjson",
                field="Content-Type",
            )
        stripped = body.lstrip()
        if not stripped:
            raise RecordInvalid("empty body: expected a JSON object or array", field="$")
        if stripped[:1] == b"[":
            try:
                items = _RAW_LIST.decode(body)
            except DECODE_ERRORS as exc:
                raise invalid_from(exc) from None
            if not items:
                raise RecordInvalid("empty array: expected at least one record", field="$")
            for index, raw in enumerate(items):
                _decode_one(index, raw, out)
            return out
        if stripped[:1] != b"{":
            raise RecordInvalid("expected a JSON object, a JSON array, or NDJSON", field="$")
        try:
            out.records.append(RECORD_DECODER.decode(body))
        except DECODE_ERRORS as exc:
            err = invalid_from(exc)
            if isinstance(exc, msgspec.ValidationError):
                out.reject(0, err.message, err.field)
            else:
                raise err from None
        return out
