"""`[[outputs]]` validation: each refusal names its field; a good table decodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.config import config_dict, store
from worker.config import Config, HttpOutputConfig, decode
from worker.errors import ConfigError


def cfg(tmp: Path, *outputs: dict[str, Any]) -> Config:
    """One store and the given outputs."""
    return decode(
        config_dict(tmp, admin_token="admin-tok", stores=[store("S1", "s1")], outputs=list(outputs))
    )


def http(name: str = "app", **over: Any) -> dict[str, Any]:
    """A valid HTTP output table."""
    return {
        "kind": "http",
        "name": name,
        "records": ["customer"],
        "url": "https://app.example/v1/events",
        **over,
    }


def test_a_good_http_output_decodes(tmp_path: Path) -> None:
    """Defaults and the fields given."""
    out = cfg(tmp_path, http(records=["sale", "trigger"], token="t")).outputs[0]
    assert isinstance(out, HttpOutputConfig)
    assert out.records == ["sale", "trigger"] and out.page_size == 500 and out.concurrency == 4


@pytest.mark.parametrize(
    ("outputs", "field"),
    [
        ([http("a"), http("a")], "$.outputs[1].name"),
        ([http(records=[])], "$.outputs[0].records"),
        ([http(records=["sale", "sale"])], "$.outputs[0].records"),
        ([http(records=["sales"])], "$.outputs[0].records[0]"),
        ([http(url="ftp://app.example/x")], "$.outputs[0].url"),
        ([http(url="app.example/x")], "$.outputs[0].url"),
        ([http(url="http://")], "$.outputs[0].url"),
        ([http(url="http://[::1/x")], "$.outputs[0].url"),
        ([http(name="bad name")], "$.outputs[0].name"),
        ([http(page_size=0)], "$.outputs[0].page_size"),
        ([http(colour="red")], "$.outputs[0].colour"),
        ([{"kind": "kafka", "name": "k", "records": ["sale"]}], "$.outputs[0]"),
    ],
)
def test_refusals_name_the_field(tmp_path: Path, outputs: list[dict[str, Any]], field: str) -> None:
    """Unique names, known and non-empty records, an http(s) URL with a host."""
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, *outputs)
    assert err.value.field is not None
    assert err.value.field.startswith(field), (err.value.field, err.value.message)


def test_the_url_is_not_echoed(tmp_path: Path) -> None:
    """A bad URL may carry a credential: the message names the field, not the value."""
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, http(url="ftp://user:s3cret@app.example/x"))
    assert "s3cret" not in err.value.message
