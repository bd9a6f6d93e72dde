"""MQTT message -> intake `Envelope`: topic levels, content type, user properties.

A PUBLISH on `{prefix}/{source}/{store}/{kind}` becomes one `Envelope` for `Intake`:
`parse_topic` reads the levels (RecordInvalid(field="topic") for anything else),
`content_type_for` picks the media type the adapter gets (docs/mqtt.md, "Content type"),
`headers_of` turns MQTT 5 user properties into headers. Pure functions of the message; when
to ack and what to do with the outcome is `worker.sources.mqtt`'s business.
"""

from __future__ import annotations

import functools
import re
from typing import Final
from urllib.parse import unquote

import msgspec
from paho.mqtt.properties import Properties

from worker.errors import RecordInvalid
from worker.intake import Envelope
from worker.sources.mqtt_client import Message

CANONICAL_KINDS: Final = frozenset({"customer", "product", "sale", "void", "batch", "ndjson"})
JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
_FORM_LINE = re.compile(rb"^[A-Za-z0-9_.~%+\[\]-]+=[^,\t]*$")


class Route(msgspec.Struct, frozen=True):
    """Where a message goes: the topic's source, store and kind levels."""

    source: str
    store: str
    kind: str  # the raw topic level, as published
    topic: str  # `kind` percent-decoded: passed to ingest as `topic=`


def subscription_filter(prefix: str, shared_group: str = "") -> str:
    """`{prefix}/+/+/+`, or `$share/{group}/{prefix}/+/+/+`: the broker then hands each
    message to one member of the group (MQTT 5 shared subscription; messages keep their
    own topic, so `parse_topic` is unchanged)."""
    plain = f"{prefix}/+/+/+"
    return f"$share/{shared_group}/{plain}" if shared_group else plain


@functools.lru_cache(maxsize=4096)  # a few topics per store, read on every message
def parse_topic(prefix: str, topic: str) -> Route:
    """`{prefix}/{source}/{store}/{kind}` -> route; RecordInvalid(field="topic") otherwise."""
    head = prefix + "/"
    levels = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(levels) != 3 or not all(levels):
        raise RecordInvalid(
            f"topic {topic!r} is not {prefix}/{{source}}/{{store}}/{{kind}}", field="topic"
        )
    source, store, kind = levels
    if source == "canonical" and kind not in CANONICAL_KINDS:
        raise RecordInvalid(
            f"unknown kind {kind!r} for canonical: one of {', '.join(sorted(CANONICAL_KINDS))}",
            field="topic",
        )
    # A topic level cannot hold "/", so native topics such as Shopify's "orders/create" are
    # published percent-encoded ("orders%2Fcreate").
    return Route(source, store, kind, unquote(kind))


def content_type_for(kind: str, payload: bytes, declared: str | None = None) -> str:
    """The media type to hand the adapter (see docs/mqtt.md, "Content type")."""
    if declared:
        return declared.split(";", 1)[0].strip().lower()
    if kind == "ndjson":
        return NDJSON
    body = payload.strip()
    first = body[:1]
    if first == b"[":
        return JSON
    if first == b"{":
        # Several top-level objects, one per line, is NDJSON. Pretty-printed JSON never puts
        # a "{" in column 0 after the first line (nested objects are indented).
        # (A one-byte search first: it is memchr, five times cheaper than the two-byte one.)
        return NDJSON if b"\n" in body and b"\n{" in body else JSON
    if first == b"<":
        return "application/xml"
    line = body.split(b"\n", 1)[0]
    if b"\n" not in body and _FORM_LINE.match(line):
        return "application/x-www-form-urlencoded"
    return "text/csv"


def headers_of(props: Properties | None) -> tuple[dict[str, str], str | None]:
    """MQTT 5 user properties as lower-cased headers, plus the Content Type property."""
    if props is None:
        return {}, None
    headers: dict[str, str] = {}
    for name, value in getattr(props, "UserProperty", None) or []:
        headers[str(name).lower()] = str(value)
    declared = getattr(props, "ContentType", None)
    return headers, (str(declared) if declared else None)


def envelope_of(prefix: str, msg: Message) -> Envelope:
    """The message as an intake envelope; RecordInvalid(field="topic") for a bad topic."""
    route = parse_topic(prefix, msg.topic)
    headers, declared = headers_of(msg.properties)
    payload = bytes(msg.payload)
    return Envelope(
        source=route.source,
        store=route.store,
        body=payload,
        content_type=content_type_for(route.kind, payload, declared),
        headers=headers,
        topic=route.topic,
        authorized=True,  # over MQTT, authentication is the broker's job
    )
