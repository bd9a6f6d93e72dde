"""The lean MQTT 5 property decoder: pinned to the paho it was read against, equal to paho's.

`worker.sources.mqtt_properties` swaps the `Properties` paho's packet decoder builds. These
tests fail loudly when paho changes (version pin), check that the swap decodes exactly what
paho's own class decodes (hypothesis over property blocks built with paho's public API), and
that an untested version or a failed self-test leaves paho's own decoder in place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import version

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from worker.sources import mqtt_properties as mp


@pytest.fixture
def paho_own() -> Iterator[None]:
    """Run with paho's own decoder, and leave the swap installed afterwards."""
    setattr(_packet, "Properties", Properties)  # noqa: B010 - back to paho's own class
    try:
        yield
    finally:
        setattr(_packet, "Properties", Properties)  # noqa: B010 - back to paho's own class
        assert mp.install()


def test_paho_is_the_tested_version() -> None:
    # Upgrading paho-mqtt fails this on purpose: read paho.mqtt._packet.decode_publish and
    # paho.mqtt.properties.Properties again, run this file, then extend TESTED_PAHO.
    assert version("paho-mqtt") in mp.TESTED_PAHO
    assert mp.install()
    assert mp.installed()
    assert mp.self_test() is None


# MQTT strings hold no NUL or surrogate (paho refuses them); control characters are left out.
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=40)
_blocks = st.fixed_dictionaries(
    {},
    optional={
        "ContentType": _text,
        "UserProperty": st.lists(st.tuples(_text, _text), min_size=1, max_size=4),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "PayloadFormatIndicator": st.integers(0, 1),
        "ResponseTopic": _text.filter(bool),
        "CorrelationData": st.binary(max_size=16),
        "TopicAlias": st.integers(1, 2**16 - 1),
    },
)


def _props(block: dict[str, object]) -> Properties | None:
    if not block:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in block.items():
        if name == "UserProperty":
            assert isinstance(value, list)
            for pair in value:
                props.UserProperty = pair
        else:
            setattr(props, name, value)
    return props


@given(_blocks)
def test_the_swap_decodes_what_paho_decodes(block: dict[str, object]) -> None:
    assert mp.install()
    props = _props(block)
    lean = mp.decoded(props)
    setattr(_packet, "Properties", Properties)  # noqa: B010 - back to paho's own class
    try:
        own = mp.decoded(props)
    finally:
        assert mp.install()
    assert lean == own
    want = props.json() if props is not None else {}  # type: ignore[no-untyped-call]
    assert lean["properties"] == want


@pytest.mark.usefixtures("paho_own")
def test_an_untested_paho_keeps_its_own_decoder(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "possync.mqtt"):
        assert not mp.install(version="9.0.0")
    assert _packet.Properties is Properties  # type: ignore[attr-defined]
    assert "paho-mqtt 9.0.0 is not a version" in caplog.text
    # Installed first, then an untested version: the swap is undone.
    assert mp.install()
    assert not mp.install(version="9.0.0")
    assert _packet.Properties is Properties  # type: ignore[attr-defined]


@pytest.mark.usefixtures("paho_own")
def test_a_failed_self_test_undoes_the_swap(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A paho whose decoder no longer fills what the lean class reads: here, an `unpack` that
    # loses every property (as a changed Properties layout would).
    monkeypatch.setattr(mp._LeanProperties, "unpack", lambda self, buf: (self, len(buf)))
    with caplog.at_level(logging.ERROR, "possync.mqtt"):
        assert not mp.install()
    assert _packet.Properties is Properties  # type: ignore[attr-defined]
    assert "failed its self-test" in caplog.text
