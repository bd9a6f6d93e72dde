"""Contract suites: one test module per extension point, run over every registered kind.

`test_adapter_contract` runs over every source in `worker.adapters.ADAPTERS`: whatever
bytes arrive, an adapter raises only RecordInvalid / AuthError / UnsupportedMediaType
(never a 500-class error), names a field and echoes no value, and every record it
returns survives the canonical encoder and decoder with its money exact. A new adapter
gets these tests by being registered and given its deliveries here.
"""
