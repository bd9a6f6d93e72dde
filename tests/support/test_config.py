"""The test config builder: the TOML it writes reads back as the dict, and merges as tests expect."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.appserver import make_config
from tests.procserver import config, write_config
from tests.support.config import dumps_toml, merged, write_toml
from worker.config import load

_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
)
_keys = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_docs = st.recursive(
    st.dictionaries(_keys, _scalars | st.lists(_scalars, max_size=3), max_size=4),
    lambda inner: st.dictionaries(
        _keys, inner | st.lists(inner.filter(bool), min_size=1, max_size=2), max_size=3
    ),
    max_leaves=12,
)


@given(doc=_docs)
def test_any_document_reads_back_as_written(doc: dict[str, Any]) -> None:
    assert tomllib.loads(dumps_toml(doc)) == doc


def test_unwritable_values_are_refused() -> None:
    with pytest.raises(TypeError):
        dumps_toml({"x": object()})
    with pytest.raises(ValueError, match="finite"):
        dumps_toml({"x": float("nan")})


def test_a_table_merges_key_by_key_and_anything_else_replaces() -> None:
    base = {"http": {"a": 1, "b": 2}, "stores": [{"id": "S1"}], "log_level": "INFO"}
    out = merged(base, {"http": {"b": 3}, "stores": [{"id": "S2"}], "log_level": "DEBUG"})
    assert out == {"http": {"a": 1, "b": 3}, "stores": [{"id": "S2"}], "log_level": "DEBUG"}
    assert base["http"] == {"a": 1, "b": 2}  # the base is not changed


def test_in_process_and_subprocess_configs_share_the_base(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, windows={"batch_size": 7})
    assert [s.id for s in cfg.stores] == ["S1", "S2"]
    assert (cfg.windows.batch_size, cfg.windows.times, cfg.windows.spread_s) == (
        7,
        ["02:00", "14:00"],
        0,
    )
    path = write_config(tmp_path, 8123, windows={"batch_size": 7}, log_level="DEBUG")
    assert tomllib.loads(path.read_text()) == config(
        tmp_path, 8123, windows={"batch_size": 7}, log_level="DEBUG"
    )
    served = load(path)
    assert (served.http.port, served.windows.batch_size, served.log_level) == (8123, 7, "DEBUG")
    assert served.windows.times == cfg.windows.times
    assert type(served.sink) is type(cfg.sink)


def test_write_toml_returns_the_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "x.toml", {"a": {"b": [1, 2]}, "c": [{"d": "e"}]})
    assert tomllib.loads(path.read_text()) == {"a": {"b": [1, 2]}, "c": [{"d": "e"}]}
