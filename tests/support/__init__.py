"""Test support rooms: what several test packages build on (config, nothing that runs).

Contract: `config` turns a plain dict into a possync config, in process (`decode`) or as a
TOML file for a `possync serve` subprocess; both start from the same `config_dict`.
"""
