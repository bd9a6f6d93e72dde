"""One config builder for every test server: a dict, decoded in process or written as TOML.

`config_dict` is the base both kinds of server start from (one sqlite sink, windows at
02:00 and 14:00 without spread, the stores given); `merged` lays overrides on it the way
every test expects (a table given for a table updates it key by key, anything else
replaces); `write_toml` writes the dict as a TOML file for `possync serve --config`.
Tests change a config by changing the dict, never by editing TOML text.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson


def store(
    id: str,
    token: str,
    *,
    source: str = "canonical",
    timezone: str = "America/New_York",
    **keys: Any,
) -> dict[str, Any]:
    """One `[[stores]]` table."""
    return {"id": id, "source": source, "timezone": timezone, "token": token, **keys}


def merged(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` with `overrides`: a table given for a table updates it key by key; else replaces."""
    out = dict(raw)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = {**current, **value}
        else:
            out[key] = value
    return out


def config_dict(
    data_dir: Path, *, admin_token: str, stores: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    """The base config of every test server, with `overrides` merged on top."""
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "http": {"admin_token": admin_token},
        "windows": {"times": ["02:00", "14:00"], "spread_s": 0},
        "sink": {"kind": "sqlite"},
        "stores": stores,
    }
    return merged(raw, overrides)


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a TOML float here must be finite")
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid TOML basic string for the BMP and escapes alike.
        # (TOML also wants DEL escaped, which JSON leaves bare).
        return orjson.dumps(str(value)).decode().replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(lines: list[str], prefix: str, table: Mapping[str, Any]) -> None:
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping) or _is_table_list(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if isinstance(value, Mapping):
            lines.append(f"[{name}]")
            _table(lines, name, value)
        else:
            for item in value:
                lines.append(f"[[{name}]]")
                _table(lines, name, item)


def dumps_toml(raw: Mapping[str, Any]) -> str:
    """`raw` as TOML text; what `tomllib` reads back is `raw` again (checked)."""
    lines: list[str] = []
    _table(lines, "", raw)
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != _plain(raw):
        raise ValueError("TOML writer lost something: the text does not read back as the dict")
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_toml(path: Path, raw: Mapping[str, Any]) -> Path:
    """Write `raw` to `path` as TOML; return `path`."""
    path.write_text(dumps_toml(raw), encoding="utf-8")
    return path
