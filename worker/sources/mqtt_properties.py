"""paho's MQTT 5 property decoding with its lookup tables built once: the one paho internal
we touch, and how it fails safe and loud.

Why. paho decodes every received packet's MQTT 5 properties into a fresh `Properties`, whose
constructor rebuilds its two lookup tables (27 names, 27 identifiers) each time and whose
`unpack` first clears all 27 names: ~18 us per PUBLISH, the largest single cost of our
intake. Paired `python -m bench --quick --only mqtt` runs (2026-12-03, same-run baselines):
with it 17,553-18,591 msg/s, 0.70-0.74x auto-ack; without it 13,445-13,953 msg/s,
0.55-0.56x. paho offers no public way around it: its packet decoder
(`paho.mqtt._packet.decode_publish`) builds `Properties` by name, and MQTT 3.1.1 (no
properties) would lose what we need MQTT 5 for (Receive Maximum, session expiry, user
properties, content type, shared subscriptions).

What. `_LeanProperties` is a `Properties` whose tables are the class's, built once (paho
never writes to them after construction), and whose `unpack` skips clearing a fresh
instance and returns at once for an empty property block. `install` makes the name
`Properties` in `paho.mqtt._packet` (the decoder module, nothing else) refer to it.
Decoding is otherwise paho's own code.

Fail safe and loud. `install` swaps only when
1. paho's version is one this was checked against (`TESTED_PAHO`); any other: paho is left
   as it is and a WARNING says MQTT intake runs slower until it is checked again;
2. `paho.mqtt._packet.Properties` is paho's own class and `decode_publish` exists (else the
   same WARNING);
3. a self-test passes right after the swap: PUBLISH packets with and without properties,
   built with paho's public `Properties.pack`, decoded by paho's decoder, must give back
   every property paho's own class gives; else the swap is undone and an ERROR logged.
And tests/test_mqtt_properties.py pins the version: upgrading paho fails it until the
decoder has been read again and `TESTED_PAHO` extended.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Final

import paho.mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("possync.mqtt")

# paho-mqtt versions whose `_packet.decode_publish` and `Properties` this was read against.
TESTED_PAHO: Final = frozenset({"2.2.0"})


class _LeanProperties(Properties):
    """paho's `Properties` with its lookup tables built once (see the module docstring)."""

    _TEMPLATE: Final = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    types = _TEMPLATE.types
    names = _TEMPLATE.names
    properties = _TEMPLATE.properties

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "_fresh", True)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        """paho's unpack; a fresh instance has nothing to clear, and most packets no property."""
        if self.__dict__.pop("_fresh", False) and buffer[:1] == b"\x00":
            return self, 1  # property length 0: one byte, nothing set
        return super().unpack(buffer)  # type: ignore[no-any-return, no-untyped-call]


def installed() -> bool:
    """Whether paho's decoder builds `_LeanProperties` now."""
    from paho.mqtt import _packet

    return getattr(_packet, "Properties", None) is _LeanProperties


def install(version: str | None = None) -> bool:
    """Make paho's packet decoder build `_LeanProperties` when it is safe; True if it does.

    Idempotent. `version` stands for paho's own (`paho.mqtt.__version__`) in tests. On an
    untested version it also undoes an earlier swap, so the answer is always the check's.
    """
    from paho.mqtt import _packet

    version = version if version is not None else getattr(paho.mqtt, "__version__", "?")
    current = getattr(_packet, "Properties", None)
    if version not in TESTED_PAHO:
        if current is _LeanProperties:
            _packet.Properties = Properties  # type: ignore[attr-defined]
        log.warning(
            "paho-mqtt %s is not a version the lean property decoder was checked against "
            "(%s): paho's own decoder is used, MQTT intake runs slower",
            version,
            ", ".join(sorted(TESTED_PAHO)),
        )
        return False
    if current is _LeanProperties:
        return True
    if current is not Properties or not callable(getattr(_packet, "decode_publish", None)):
        log.warning(
            "paho-mqtt %s: paho.mqtt._packet no longer decodes with paho's Properties as "
            "expected: paho's own decoder is used, MQTT intake runs slower",
            version,
        )
        return False
    _packet.Properties = _LeanProperties  # type: ignore[attr-defined]
    problem = self_test()
    if problem is not None:
        _packet.Properties = Properties  # type: ignore[attr-defined]
        log.error(
            "the lean MQTT property decoder failed its self-test on paho-mqtt %s (%s): "
            "undone, paho's own decoder is used",
            version,
            problem,
        )
        return False
    return True


def _publish_packet(topic: str, mid: int, props: Properties | None, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH after its fixed header, as paho's decoder takes it."""
    name = topic.encode()
    packed = props.pack() if props is not None else b"\x00"  # type: ignore[no-untyped-call]
    return struct.pack("!H", len(name)) + name + struct.pack("!H", mid) + packed + payload


def sample_properties() -> list[Properties | None]:
    """Property blocks the self-test decodes: none, and one with every kind we read."""
    full = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    full.ContentType = "application/json; charset=utf-8"
    full.UserProperty = ("X-Source", "till-7")
    full.UserProperty = ("x-source", "second")
    full.MessageExpiryInterval = 3600
    full.PayloadFormatIndicator = 1
    full.CorrelationData = b"\x00\x01"
    full.ResponseTopic = "pos/replies"
    return [None, full]


def decoded(props: Properties | None) -> dict[str, Any]:
    """`props` decoded by paho's packet decoder (whatever `Properties` it builds now)."""
    from paho.mqtt import _packet

    packet = _publish_packet("pos/canonical/S1/sale", 7, props, b'{"id":"a"}')
    out = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
    got: dict[str, Any] = {"topic": out.topic, "mid": out.mid, "payload": bytes(out.payload)}
    props_out = out.properties
    got["properties"] = props_out.json() if props_out is not None else None  # type: ignore[no-untyped-call]
    return got


def self_test() -> str | None:
    """None when paho's decoder gives back every sample property exactly; else what differs."""
    for props in sample_properties():
        want = {
            "topic": b"pos/canonical/S1/sale",
            "mid": 7,
            "payload": b'{"id":"a"}',
            "properties": props.json() if props is not None else {},  # type: ignore[no-untyped-call]
        }
        try:
            got = decoded(props)
        except Exception as exc:  # noqa: BLE001 - any failure of paho's decoder undoes the swap
            return f"decoding raised {type(exc).__name__}"
        if got != want:
            return (
                f"decoded {sorted(got['properties'] or {})}, expected {sorted(want['properties'])}"
            )
    return None
