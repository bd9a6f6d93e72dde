"""Test support rooms: what several test packages build on (nothing here is a test server).

- `config`: one config dict for every test server (`config_dict`, `merged`), decoded in
  process (`tests.appserver.make_config`) or written as TOML (`write_toml`, used by
  `tests.procserver.write_config`); tests change a config by changing the dict, never by
  editing TOML text.
- `loop`: `PrivateLoop`, an async context entered on its own event loop for sync tests.
"""
