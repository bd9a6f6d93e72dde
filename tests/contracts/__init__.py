"""Contract suites: one per extension point, run over every registered kind.

- `test_adapter_contract`: every source in `worker.adapters.ADAPTERS`. Whatever bytes
  arrive, an adapter raises only RecordInvalid / AuthError / UnsupportedMediaType (never
  a 500-class error), names a field and echoes no value; every record it returns survives
  the canonical encoder and decoder with its money exact. A new adapter gets these tests
  by being registered and given its deliveries there.
- `test_sink_*` (commit, reads, faults, migrations): every sink kind through
  `worker.sinks.open_sink`, via the `backend` / `sink` fixtures of `sinks.py` (SQLite
  file, throw-away PostgreSQL). A new sink gets them by adding a `Backend` there.
"""
