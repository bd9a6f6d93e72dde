"""Split exports in a drop folder: the numbered parts of one export, taken together.

The Edge writes a large Transaction export as `1-<stamp>-Transaction.json`,
`2-<stamp>-Transaction.json`, ...; a sale may start in one part and end in the next (EDT
does not say it never does), so a part read alone can store a sale short of lines. The
drop folder therefore takes the parts of one `<stamp>` as one unit:

    parts 1..n of one export in the folder
        -> complete? every part taken-ready (marker, or stable size/mtime/identity), no part
           added or removed for `inbox.stable_s`, numbers contiguous from 1
        -> read every part (one thread hop) -> the source's combine (the_edge.combine_counted)
           -> Intake.ingest(filename=<stamp>-Transaction.json)  one payload, whole sales
        -> ok:        every part to processed/, then processed/<export>.result.json
        -> permanent: every part to failed/,    then failed/<export>.error.json
        -> transient: every part left in place, the export retried with backoff
    a gap (part 3 without part 2): waits; after `inbox.gap_wait_s` (900 s) without a change
        the present parts go to failed/ with one report naming the missing part(s)

Invariants

* Nothing from an incomplete export is ingested: no part is read until the export is
  complete by the rules above; a gap never lets the parts before it through.
* One unit in the folder's order. An export sorts by its own name (`<stamp>-Transaction.json`,
  i.e. by time among the timestamped files); while it is not complete it holds back the files
  after it, as a file that is not ready does (a gap for at most `gap_wait_s`).
* Moves: the parts move last part first, the report last. A crash (or a refused rename)
  midway leaves parts 1..k in the folder, a complete-looking export again: it is re-ingested
  (every record a duplicate: same ids, same version, the export's stamp) and moved. Never a
  gap made by our own moves.
* Uploads (`POST /v1/files`) are one file each and are not grouped: a split export is
  uploaded whole (the parts merged, `the_edge.combine_parts`) or dropped in the folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from worker.adapters.the_edge import combine_counted, split_part
from worker.errors import PayloadTooLarge, PossyncError
from worker.intake import Envelope, IngestOutcome
from worker.sources import inbox_fs
from worker.sources.http import outcome_json
from worker.sources.inbox_fs import FAILED, PROCESSED, Entry, RefusedEntry
from worker.sources.inbox_upload import LIMIT_HINT, content_type_for

if TYPE_CHECKING:
    from worker.sources.inbox import Folder, Inbox

log = logging.getLogger("possync.inbox")

_ENCODE = msgspec.json.Encoder(decimal_format="string")

Verdict = Literal["wait", "take", "gap"]


@dataclass(frozen=True)
class Splitter:
    """How a source names and joins the parts of a split export."""

    # A file name -> (export name, part number), or None for a file of its own.
    part: Callable[[str], tuple[str, int] | None]
    # The parts' bytes (in part order) and names -> one payload, and the rows of each part.
    combine: Callable[[Sequence[bytes], Sequence[str]], tuple[bytes, list[int]]]


SPLITTERS: Mapping[str, Splitter] = {"the_edge": Splitter(split_part, combine_counted)}


@dataclass
class Unit:
    """What the folder takes at once: one file, or every present part of one export."""

    name: str  # the file's name, or the export's (its parts' name without the number)
    entries: list[Entry]  # one file; or the parts, in part order
    numbers: list[int] = field(default_factory=list)  # part numbers (split exports only)
    # Parts of this export the listing refused (a hard link, a symlink, ...): by number,
    # the refusal kind. They keep the export incomplete as a missing part does.
    held: dict[int, str] = field(default_factory=dict)

    @property
    def split(self) -> bool:
        """A split export (taken by `Groups`), not a single file."""
        return bool(self.numbers)

    def missing(self) -> list[int]:
        """Part numbers absent (or refused) between 1 and the highest seen."""
        have = set(self.numbers)
        top = max([*self.numbers, *self.held])
        return [n for n in range(1, top + 1) if n not in have]

    def part_name(self, n: int) -> str:
        """The file name part `n` of this export has."""
        return f"{n}-{self.name}"


def plan(
    source: str,
    entries: Sequence[Entry],
    key: Callable[[str], Any],
    refused: Sequence[RefusedEntry] = (),
) -> list[Unit]:
    """The folder's units in order (by `key` of their name): parts of an export joined."""
    splitter = SPLITTERS.get(source)
    units: list[Unit] = []
    exports: dict[str, Unit] = {}
    for e in entries:
        part = splitter.part(e.name) if splitter is not None else None
        if part is None:
            units.append(Unit(e.name, [e]))
            continue
        export, n = part
        unit = exports.get(export)
        if unit is None:
            unit = exports[export] = Unit(export, [])
            units.append(unit)
        unit.entries.append(e)
        unit.numbers.append(n)
    for r in refused:
        part = splitter.part(r.name) if splitter is not None else None
        if part is not None and part[0] in exports:
            exports[part[0]].held[part[1]] = r.kind
    for unit in exports.values():
        pairs = sorted(zip(unit.numbers, unit.entries, strict=True), key=lambda p: p[0])
        unit.numbers = [n for n, _ in pairs]
        unit.entries = [e for _, e in pairs]
    # A file of its own before an export of the same name (split exports sort as their name).
    units.sort(key=lambda u: (key(u.name), u.split))
    return units


class IncompleteExport(PossyncError):
    """A split export whose parts are not contiguous from 1 (a part never arrived)."""

    status = 422


@dataclass
class _Export:
    members: frozenset[str]  # the part names present
    since: datetime  # clock time the present parts were first this set
    noted: bool = False  # the gap was logged and shown on /status


class Groups:
    """Judges and takes a folder's split exports; state and moves go through the `Inbox`."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._exports: dict[Path, _Export] = {}

    def keys(self, folder: Folder, units: Sequence[Unit]) -> set[Path]:
        """Forget exports no longer in the folder; the paths of those present."""
        present = {folder.path / u.name for u in units if u.split}
        for path in [p for p in self._exports if p.parent == folder.path and p not in present]:
            del self._exports[path]
        return present

    def judge(self, folder: Folder, unit: Unit, now: datetime) -> Verdict:
        """`take` when complete, `gap` when a part is missing past `gap_wait_s`, else `wait`."""
        inbox, cfg = self.inbox, self.inbox.cfg.inbox
        # Every part's own stability is tracked each scan (no short cut: all are judged).
        ready = [
            inbox._stable(folder, folder.path / e.name, e, now) or e.marked for e in unit.entries
        ]
        path = folder.path / unit.name
        members = frozenset(e.name for e in unit.entries)
        seen = self._exports.get(path)
        if seen is None or seen.members != members:
            seen = self._exports[path] = _Export(members, now)
        retry = inbox._retry.get(path)
        if retry is not None and now < retry.next_at:
            inbox._due_at(folder, retry.next_at)
            return "wait"
        settled = seen.since + timedelta(seconds=cfg.stable_s)
        if not all(ready):
            return "wait"
        if now < settled:
            inbox._due_at(folder, settled)
            return "wait"
        missing = unit.missing()
        if not missing:
            return "take"
        give_up = seen.since + timedelta(seconds=cfg.gap_wait_s)
        if now >= give_up:
            return "gap"
        if not seen.noted:
            seen.noted = True
            stats = inbox.stats[folder.store]
            stats.last_error = (
                f"{unit.name}: {_missing_text(unit, missing)}; waiting up to "
                f"{cfg.gap_wait_s:g} s after the last part arrived"
            )
            log.warning("inbox: %s/%s/%s", folder.source, folder.store, stats.last_error)
        inbox._due_at(folder, give_up)
        return "wait"

    async def take(
        self,
        folder: Folder,
        handle: inbox_fs.Handle,
        unit: Unit,
        verdict: Verdict,
    ) -> bool:
        """Ingest a complete export and move its parts, or fail a gap; False: retry later."""
        inbox = self.inbox
        path = folder.path / unit.name
        stamp = inbox.clock.now().strftime("%Y%m%dT%H%M%SZ")
        if verdict == "gap":
            missing = unit.missing()
            late = await asyncio.to_thread(_where_missing, handle, unit, missing)
            exc = IncompleteExport(
                f"split export {unit.name}: {_missing_text(unit, missing)} "
                f"(waited {inbox.cfg.inbox.gap_wait_s:g} s after the last part arrived); "
                f"nothing of it was ingested{late}",
                field=unit.part_name(missing[0]),
            )
            return await self._finish(folder, handle, unit, FAILED, stamp, None, exc)
        names = [e.name for e in unit.entries]
        try:
            body, rows = await asyncio.to_thread(self._read, folder.source, handle, unit, names)
            outcome = await inbox.intake.ingest(
                Envelope(
                    source=folder.source,
                    store=folder.store,
                    body=body,
                    content_type=content_type_for(unit.name),
                    filename=unit.name,
                    priority="bulk",
                    authorized=True,
                )
            )
        except (inbox_fs.Vanished, inbox_fs.Changed) as exc:
            # A part went or was replaced since the listing: the export is judged afresh.
            log.info("inbox: %s: a part changed before it was read (%s)", path, exc)
            for e in unit.entries:
                inbox._seen.pop(folder.path / e.name, None)
            inbox._dirty.add(folder)
            return False
        except inbox_fs.Refused as exc:
            entry = next((e for e in unit.entries if e.name == exc.where), unit.entries[0])
            key = RefusedEntry(entry.name, exc.kind, entry.dev, entry.ino)
            inbox._note_refused(
                folder, inbox._refused.get(folder.path, set()) | {key}, inbox.clock.now()
            )
            return False
        except PossyncError as exc:
            if exc.retriable:
                return inbox._retry_later(folder, path, exc)
            return await self._finish(folder, handle, unit, FAILED, stamp, None, exc)
        except OSError as exc:
            return inbox._retry_later(folder, path, exc)
        except Exception as exc:
            log.exception("inbox: unexpected error on %s", path)
            return await self._finish(folder, handle, unit, FAILED, stamp, None, exc)
        del body
        # Durable now: only from here may the parts leave the folder.
        return await self._finish(folder, handle, unit, PROCESSED, stamp, (outcome, rows), None)

    def _read(
        self, source: str, handle: inbox_fs.Handle, unit: Unit, names: list[str]
    ) -> tuple[bytes, list[int]]:
        """Every part's bytes (checked against its listing) joined by the source (blocking)."""
        limit = self.inbox.limit
        total = sum(e.size for e in unit.entries)
        if total > limit:
            raise PayloadTooLarge(
                f"split export is {total} bytes in {len(names)} parts, over the {limit} byte "
                f"limit ({LIMIT_HINT}); load it with `possync backfill` instead",
                field="body",
            )
        bodies = [inbox_fs.read(handle, e, limit, LIMIT_HINT) for e in unit.entries]
        return SPLITTERS[source].combine(bodies, names)

    async def _finish(
        self,
        folder: Folder,
        handle: inbox_fs.Handle,
        unit: Unit,
        sub: str,
        stamp: str,
        done: tuple[IngestOutcome, list[int]] | None,
        exc: BaseException | None,
    ) -> bool:
        """Move every part into `sub/` (last first), then write the export's one report."""
        inbox = self.inbox
        stats = inbox.stats[folder.store]
        path = folder.path / unit.name
        try:
            report_name = await asyncio.to_thread(inbox_fs.free_name, handle, sub, unit.name, stamp)
            moved = await asyncio.to_thread(_move_all, handle, unit.entries, sub, stamp)
            suffix = ".result.json" if done is not None else ".error.json"
            report = self._report(folder, unit, sub, moved, done, exc)
            await asyncio.to_thread(
                inbox_fs.write_report, handle, sub, report_name + suffix, report
            )
        except inbox_fs.Refused as err:
            key = RefusedEntry(f"{sub}/", err.kind, 0, 0)
            inbox._note_refused(
                folder, inbox._refused.get(folder.path, set()) | {key}, inbox.clock.now()
            )
            return inbox._retry_later(folder, path, OSError(f"{sub}/ is a {err.kind}"))
        except (inbox_fs.Vanished, inbox_fs.Changed):
            inbox._dirty.add(folder)
            return False
        except OSError as err:
            # Parts 1..k left in place: taken again (all duplicates) and moved on a retry.
            return inbox._retry_later(folder, path, err)
        for e in unit.entries:
            inbox._forget(stats, folder.path / e.name)
        inbox._forget(stats, path)
        self._exports.pop(path, None)
        stats.last_file = f"{sub}/{report_name}{suffix}"
        stats.last_at = inbox.clock.now().isoformat()
        if done is not None:
            stats.processed += len(unit.entries)
            out = done[0]
            log.info(
                "inbox: %s/%s/%s (%d parts) -> %s: %d accepted, %d duplicates, %d rejected",
                folder.source,
                folder.store,
                unit.name,
                len(unit.entries),
                sub,
                out.accepted,
                out.duplicates,
                len(out.rejected),
            )
        else:
            from worker.sources.inbox import describe  # inbox imports this module

            assert exc is not None
            stats.failed += len(unit.entries)
            stats.last_error = f"{unit.name}: {describe(exc)}"
            log.warning(
                "inbox: %s/%s/%s (%d parts) -> %s: %s",
                folder.source,
                folder.store,
                unit.name,
                len(unit.entries),
                sub,
                describe(exc),
            )
        return True

    def _report(
        self,
        folder: Folder,
        unit: Unit,
        sub: str,
        moved: list[str],
        done: tuple[IngestOutcome, list[int]] | None,
        exc: BaseException | None,
    ) -> bytes:
        """The export's one report: the push response or the error, and every part."""
        from worker.sources.inbox import error_report  # inbox imports this module

        now = self.inbox.clock.now()
        parts: list[dict[str, Any]] = [
            {"part": n, "file": e.name, "moved_to": f"{sub}/{final}", "bytes": e.size}
            for n, e, final in zip(unit.numbers, unit.entries, moved, strict=True)
        ]
        head: dict[str, Any] = {
            "file": unit.name,
            "source": folder.source,
            "store": folder.store,
            "bytes": sum(e.size for e in unit.entries),
        }
        if done is not None:
            outcome, rows = done
            for p, count in zip(parts, rows, strict=True):
                p["rows"] = count  # `rejected` indexes count across the parts in this order
            body = {**head, "parts": parts, **outcome_json(outcome), "at": now.isoformat()}
            return msgspec.json.format(_ENCODE.encode(body)) + b"\n"
        assert exc is not None
        error: dict[str, Any] = msgspec.json.decode(error_report(exc, now))
        if isinstance(exc, IncompleteExport):
            error["missing"] = [unit.part_name(n) for n in unit.missing()]
        return msgspec.json.format(_ENCODE.encode({**head, "parts": parts, **error})) + b"\n"


def _move_all(handle: inbox_fs.Handle, entries: list[Entry], sub: str, stamp: str) -> list[str]:
    """Move the parts into `sub/`, the last part first (a crash leaves parts 1..k); the
    names they got, in part order (blocking)."""
    return [inbox_fs.move(handle, e, sub, stamp) for e in reversed(entries)][::-1]


def _where_missing(handle: inbox_fs.Handle, unit: Unit, missing: list[int]) -> str:
    """Where the missing parts went, if to processed/ or failed/ earlier (blocking)."""
    names = [unit.part_name(n) for n in missing]
    said = ""
    for sub, why in (
        (
            PROCESSED,
            "the parts present arrived after their export was taken (raise inbox.stable_s)",
        ),
        (FAILED, "put the export's parts back in the folder together to retry it"),
    ):
        try:
            found = inbox_fs.present_in(handle, sub, names)
        except (OSError, inbox_fs.Refused, inbox_fs.Vanished):
            continue
        if found:
            said += f"; {', '.join(found)} already in {sub}/: {why}"
    return said


def _missing_text(unit: Unit, missing: list[int]) -> str:
    said = []
    for n in missing:
        kind = unit.held.get(n)
        state = f"refused ({kind})" if kind else "missing"
        said.append(f"part {n} ({unit.part_name(n)}) is {state}")
    present = ", ".join(str(n) for n in unit.numbers)
    return f"{'; '.join(said)}; parts present: {present}"
