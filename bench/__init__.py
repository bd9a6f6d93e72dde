"""possync benchmarks: every figure measured against its baseline in the same run.

`python -m bench [--quick] [--only NAME] [--json PATH]`; see `docs/benchmarks.md`.

Modules: `data` (deterministic, realistic records), `procs` (subprocesses: the real
`possync serve`, baseline servers, RSS sampling), `servers` (the bare and naive baseline
HTTP servers), `load` / `loadgen` (wrk with a Lua script, else an aiohttp client process),
`push`, `pipeline` (backfill, RSS, window commit, p99 during commit, restart), `report`
(machine info, the table, JSON) and `profile` (py-spy of the server during one phase).
"""
