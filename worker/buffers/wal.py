"""Check a SQLite write-ahead log frame by frame before SQLite opens it.

Why: SQLite's WAL recovery stops at the first frame whose cumulative checksum does not match
and silently ignores every frame after it. A few damaged bytes in the middle of `spool.db-wal`
therefore drop every transaction committed after them, and the database still passes
`PRAGMA quick_check` (it is a consistent, older state). We read the frames ourselves first.

Format (https://www.sqlite.org/fileformat2.html#walformat; every field big-endian)::

    header, 32 bytes: magic (0x377f0682: checksum words little-endian, 0x377f0683: big-endian),
                      format version (3007000), page size, checkpoint seq, salt-1, salt-2,
                      checksum-1, checksum-2 (over the first 24 header bytes)
    frame, 24 + page size bytes: page number, commit size (the database size in pages
                      for the last frame of a transaction, else 0), salt-1, salt-2,
                      checksum-1, checksum-2 (cumulative: seeded with the previous
                      frame's, over the first 8 header bytes and the page), then the page

The checksum is SQLite's `walChecksumBytes` (wal.c): over pairs of 32-bit words x, y,
`s1 += x + s2; s2 += y + s1`, mod 2**32.

Because each frame stores the cumulative checksum it ends with, a frame can be verified on
its own, seeded with its predecessor's *stored* checksum. That tells a damaged frame (fails
on its own) from the intact frames after it (pass on their own but are past the break that
ends SQLite's valid prefix). Frames of an older generation (salts that differ from the
header's, left behind after a WAL restart) are not damage: SQLite ignores them by design.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC_LE = 0x377F0682
MAGIC_BE = 0x377F0683
WAL_HEADER = 32
FRAME_HEADER = 24
_VERSION = 3007000


def wal_checksum(
    data: bytes | memoryview, s1: int, s2: int, *, big_endian: bool
) -> tuple[int, int]:
    """SQLite's walChecksumBytes over `data` (a multiple of 8 bytes), seeded with (s1, s2)."""
    n = len(data) // 4
    words = struct.unpack(f"{'>' if big_endian else '<'}{n}I", data)
    mask = 0xFFFFFFFF
    it = iter(words)
    for x, y in zip(it, it, strict=True):
        s1 = (s1 + x + s2) & mask
        s2 = (s2 + y + s1) & mask
    return s1, s2


@dataclass(frozen=True, slots=True)
class Frame:
    """One WAL frame as read (not yet trusted)."""

    index: int  # 0-based position in the file
    offset: int  # byte offset of the frame header
    page: int  # database page number the frame carries
    commit_size: int  # != 0: the last frame of a transaction
    current: bool  # salts match the header's: this generation of the WAL
    intact: bool  # verifies on its own (seeded with its predecessor's stored checksum)


@dataclass(slots=True)
class WalReport:
    """What a WAL holds, and what SQLite's recovery would drop of it."""

    path: Path
    size: int = 0
    page_size: int = 0
    header_ok: bool = True
    problem: str | None = None  # why the header cannot be used at all
    frames: list[Frame] = field(default_factory=list)
    valid_frames: int = 0  # SQLite's valid prefix, up to its last commit frame
    break_at: int | None = None  # first current-generation frame that fails its checksum

    @property
    def lost(self) -> list[Frame]:
        """Current-generation frames past SQLite's valid prefix, when there is a break.

        That includes the intact frames between the prefix's last commit and the bad frame:
        they belong to the transaction the bad frame is part of, which SQLite drops whole.
        """
        if self.break_at is None:
            return []
        return [f for f in self.frames[self.valid_frames :] if f.current]

    @property
    def damaged(self) -> list[Frame]:
        """Lost frames whose own checksum fails (their page image is not trustworthy)."""
        return [f for f in self.lost if not f.intact]

    @property
    def lost_commits(self) -> int:
        """Committed transactions past the break: acknowledged data SQLite would drop."""
        return sum(1 for f in self.lost if f.commit_size)

    @property
    def drops_data(self) -> bool:
        """True when opening this WAL would silently lose committed transactions."""
        return self.lost_commits > 0 or (self.problem is not None and self.size > WAL_HEADER)

    def summary(self) -> str:
        """One line for logs, /readyz and /status (no record content)."""
        if self.problem is not None:
            return f"WAL of {self.size} bytes is unreadable ({self.problem}): SQLite ignores it"
        if not self.header_ok:
            return (
                f"WAL header checksum is wrong: SQLite ignores all {len(self.frames)} frames "
                f"({sum(1 for f in self.frames if f.commit_size)} commits)"
            )
        assert self.break_at is not None
        return (
            f"WAL frame {self.break_at} of {len(self.frames)} fails its checksum: SQLite "
            f"keeps the first {self.valid_frames} frames and drops {len(self.lost)} frames "
            f"of this generation ({self.lost_commits} committed transactions, "
            f"{len(self.damaged)} frames damaged, {len(self.lost) - len(self.damaged)} intact)"
        )


def check_wal(path: Path) -> WalReport:
    """Read `path` (a -wal file) and classify every frame; never raises on bad content."""
    report = WalReport(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return report
    report.size = len(data)
    if len(data) < WAL_HEADER:
        return report  # empty or partial header: SQLite treats it as an empty WAL
    magic, version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack_from(">8I", data, 0)
    if magic not in (MAGIC_LE, MAGIC_BE) or version != _VERSION:
        report.header_ok = False
        report.problem = "not a WAL header (bad magic or version)"
        return report
    if page_size == 1:
        page_size = 65536
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        report.header_ok = False
        report.problem = f"WAL header names an impossible page size {page_size}"
        return report
    report.page_size = page_size
    big = magic == MAGIC_BE
    report.header_ok = wal_checksum(memoryview(data)[:24], 0, 0, big_endian=big) == (c1, c2)
    salts = (salt1, salt2)
    if not report.header_ok and len(data) >= WAL_HEADER + FRAME_HEADER:
        # The header's own salts may be what was damaged: take the first frame's.
        salts = struct.unpack_from(">2I", data, WAL_HEADER + 8)
    report.frames = _frames(data, page_size, salts, (c1, c2), big)
    if not report.header_ok:
        report.break_at = 0  # SQLite ignores the whole WAL
        return report
    prefix_end = 0
    for f in report.frames:
        if not (f.current and f.intact):
            break
        prefix_end = f.index + 1
        if f.commit_size:
            report.valid_frames = prefix_end
    # Frames of the valid prefix past its last commit are an unfinished transaction: normal.
    if any(f.current and f.intact for f in report.frames[prefix_end:]) or any(
        f.current and f.commit_size for f in report.frames[prefix_end:]
    ):
        report.break_at = prefix_end
    return report


def _frames(
    data: bytes, page_size: int, salts: tuple[int, int], seed: tuple[int, int], big: bool
) -> list[Frame]:
    out: list[Frame] = []
    step = FRAME_HEADER + page_size
    view = memoryview(data)
    prev = seed
    offset = WAL_HEADER
    while offset + step <= len(data):
        pgno, commit, s1, s2, c1, c2 = struct.unpack_from(">6I", data, offset)
        current = (s1, s2) == salts
        intact = False
        if current and pgno > 0:
            got = wal_checksum(view[offset : offset + 8], prev[0], prev[1], big_endian=big)
            got = wal_checksum(
                view[offset + FRAME_HEADER : offset + step], got[0], got[1], big_endian=big
            )
            intact = got == (c1, c2)
        out.append(Frame(len(out), offset, pgno, commit, current, intact))
        prev = (c1, c2)
        offset += step
    return out


def frame_page(data: bytes, report: WalReport, frame: Frame) -> bytes:
    """The page image a frame carries."""
    start = frame.offset + FRAME_HEADER
    return data[start : start + report.page_size]


def lost_pages(data: bytes, report: WalReport) -> dict[int, bytes]:
    """Newest intact image of each page among the lost frames, up to the last lost commit.

    Frames after the last commit frame are an unfinished transaction (never acknowledged):
    they are left out. A damaged frame's image is left out; an older intact image of the
    same page in the lost frames stands in for it (it may be stale: salvage dedups by key
    and version, and re-offered rows are idempotent at the sink).
    """
    lost = report.lost
    last_commit = max((i for i, f in enumerate(lost) if f.commit_size), default=-1)
    pages: dict[int, bytes] = {}
    for f in lost[: last_commit + 1]:
        if f.intact:
            pages[f.page] = frame_page(data, report, f)
    return pages


def damaged_pages(data: bytes, report: WalReport) -> dict[int, bytes]:
    """Images of damaged lost frames that no later intact lost frame supersedes.

    Untrusted: most of such a page is usually intact (64 bad bytes in 4 KiB), so its cells
    are worth decoding one by one, each checked against its own content by the caller.
    """
    lost = report.lost
    last_commit = max((i for i, f in enumerate(lost) if f.commit_size), default=-1)
    pages: dict[int, bytes] = {}
    for f in lost[: last_commit + 1]:
        if f.intact:
            pages.pop(f.page, None)
        else:
            pages[f.page] = frame_page(data, report, f)
    return pages


def prefix_pages(data: bytes, report: WalReport) -> dict[int, bytes]:
    """Newest image of each page in SQLite's valid prefix (what it reads over the db file)."""
    pages: dict[int, bytes] = {}
    for f in report.frames[: report.valid_frames]:
        pages[f.page] = frame_page(data, report, f)
    return pages
