"""Chaos harness: crash, fault, bad-input and log-hygiene tests (quick in `make test`, long with POSSYNC_LONG=1)."""
