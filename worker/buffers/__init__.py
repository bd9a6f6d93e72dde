"""Buffers: the durable arrow between intake and the window (push -> spool -> window).

Contracts (the types consumers hold) are in `base.py`: `Buffer`, with its `Quarantine`
(`Buffer.quarantined`) and `BufferState` (`Buffer.state`). The SQLite implementation:

    sqlite.py        the spool proper: append + group commit, lease / ack / hold /
                     quarantine move, occupancy; `open_spool`. Schema, invariants, recovery
                     rules in its module head.
    sqlite_file.py   the spool file: DDL, one sqlite3 connection on its own one-thread
                     executor (the one writer), open / recover / close
    quarantine.py    quarantine admin (list, release, discard) and the audit log
    state.py         delivery dedup ids and per-store scheduler state
    sqlite_lists.py  the paged admin list queries (quarantine, audit)
    salvage.py, wal.py   recovery of a damaged file or WAL
"""
