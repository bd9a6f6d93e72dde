"""possync's tests, one room per kind of test.

- `support/`: what test servers are built from (`support.config`: one config dict, decoded
  in process or written as TOML); `appserver` (the app in process on an ephemeral port, a
  fake clock) and `procserver` (`possync serve` as a subprocess, kill -9 / SIGTERM) use it.
- `contracts/`: one suite per extension point, parametrized over every registered adapter
  and every sink kind.
- `e2e/`: a native POS payload through the real server, a window and the read API.
- `chaos/`: crashes, real faults, bad input, log hygiene.
- `plugins/`: throw-away PostgreSQL and Mosquitto servers as pytest fixtures.
- `test_*.py`: each module's own behaviour; `factories`, `adapter_helpers`,
  `shopify_helpers`: record builders and adapter contexts.
"""
