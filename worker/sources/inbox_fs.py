"""Drop-folder file-system operations that never follow a symlink (blocking: use a thread).

Drop folders are SFTP homes in practice: whoever can write there can plant a symlink, a
FIFO, a hard link or a folder swap. Every operation below the inbox root therefore goes
through directory file descriptors:

    root      = open(<data_dir>/inbox, O_DIRECTORY)              the operator's path: followed
    source_fd = openat(root, source, O_DIRECTORY|O_NOFOLLOW)      a symlink here is refused
    store_fd  = openat(source_fd, store, O_DIRECTORY|O_NOFOLLOW)  a symlink here is refused
    file      = openat(store_fd, NAME, O_RDONLY|O_NOFOLLOW|O_NONBLOCK), then fstat == lstat
    sub_fd    = openat(store_fd, processed|failed, O_DIRECTORY|O_NOFOLLOW)
    move      = renameat(store_fd, NAME, sub_fd, FINAL)            inside the real folders only
    report    = openat(sub_fd, .tmp, O_CREAT|O_EXCL|O_NOFOLLOW) -> renameat(sub_fd, sub_fd)

Outcomes for what a folder may hold besides complete regular files:

* symlink (file or folder): refused, never opened, never moved; reported on /status.
* a directory other than processed/ and failed/: refused ("not a regular file").
* FIFO, socket, device node: refused ("special file"); opening one is never attempted
  (O_NONBLOCK covers a regular file swapped for a FIFO between listing and open).
* a hard-linked file (st_nlink > 1): refused while it has more than one link ("hard link"):
  the same bytes are reachable from somewhere else (possibly another store's folder or a
  file the uploader could not hand us otherwise), and moving one link would not take the
  file out of circulation. Taken once it has a single link again.
* a name that is not valid UTF-8 or holds control characters: refused ("bad name"); it
  would travel into adapters, reports and logs.
* a file that vanishes between listing and open: skipped quietly (`Vanished`).
* a file replaced between the stability check and the open (the opened fd's identity,
  size or mtime differ from the listing's lstat): not read (`Changed`); the next scan sees
  the new file and judges it afresh.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import PayloadTooLarge

MARKER = ".done"
PROCESSED = "processed"
FAILED = "failed"
SUBFOLDERS = (PROCESSED, FAILED)
# Never taken as files: partial uploads by convention, and our own markers.
SKIP_SUFFIXES = (".tmp", ".part", MARKER)

# Refusal kinds, as /status shows them (never a file's contents).
SYMLINK = "symlink"
NOT_REGULAR = "not a regular file"
SPECIAL = "special file"
HARD_LINK = "hard link"
BAD_NAME = "bad name"

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_O_REPORT = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """An entry (file or folder) possync will not open; `kind` says why."""

    def __init__(self, kind: str, where: str) -> None:
        super().__init__(f"{where}: {kind}")
        self.kind = kind
        self.where = where


class Vanished(Exception):
    """The entry disappeared between listing and use."""


class Changed(Exception):
    """The entry is no longer the one that was listed (replaced, grown, or swapped)."""


@dataclass(frozen=True)
class Entry:
    """A takeable regular file as listed (lstat figures)."""

    name: str
    size: int
    mtime_ns: int
    dev: int
    ino: int
    marked: bool


@dataclass(frozen=True)
class RefusedEntry:
    """An entry the listing refused, with the identity that makes it the same one."""

    name: str
    kind: str
    dev: int
    ino: int


@dataclass
class Listing:
    """One folder's listing: its files, what was refused, or why it could not be listed."""

    entries: list[Entry] = field(default_factory=list)
    refused: list[RefusedEntry] = field(default_factory=list)
    # Set when the folder itself could not be listed: then entries/refused are empty.
    missing: bool = False
    folder_refused: RefusedEntry | None = None
    error: OSError | None = None
    dev: int = 0
    ino: int = 0


def printable(name: str) -> str:
    """`name` safe to show: undecodable bytes and control characters as escapes."""
    raw = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in raw)[:300]


def bad_name(name: str) -> bool:
    """True for a name that is not valid UTF-8 or holds a control character."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True  # surrogate-escaped bytes: the name was not UTF-8 on disk
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)


def takeable(name: str) -> bool:
    """Not a dotfile, a partial upload or a marker."""
    return not name.startswith(".") and not name.lower().endswith(SKIP_SUFFIXES)


def _kind(mode: int, nlink: int) -> str | None:
    """The refusal kind for an lstat result, None for a takeable regular file."""
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISDIR(mode):
        return NOT_REGULAR
    if not stat.S_ISREG(mode):
        return SPECIAL
    if nlink > 1:
        return HARD_LINK
    return None


# ---------------------------------------------------------------------- directories


def open_dir(parent: int, name: str, where: str, *, create: bool = False) -> int:
    """`openat(parent, name, O_DIRECTORY|O_NOFOLLOW)`; `Refused` for a symlink or non-folder."""
    for attempt in (0, 1):
        try:
            return os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise Vanished(where) from None
            raise Refused(_kind(st.st_mode, 1) or NOT_REGULAR, where) from None
    raise AssertionError("unreachable")


def open_root(root: Path, *, create: bool = False) -> int:
    """The inbox root (the operator's own path, so a symlink there is followed)."""
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class Handle:
    """An open store folder: every read and move of one scan goes through `fd`."""

    fd: int
    where: str

    def close(self) -> None:
        """Close the folder's fd."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_folder(root: Path, source: str, store: str, *, create: bool = False) -> Handle:
    """The store folder `root/source/store`, reached without following a symlink."""
    with (
        _fd(open_root(root, create=create)) as rfd,
        _fd(open_dir(rfd, source, source, create=create)) as sfd,
    ):
        where = f"{source}/{store}"
        return Handle(open_dir(sfd, store, where, create=create), where)


def prepare(root: Path, source: str, store: str) -> None:
    """Create the folder with its processed/ and failed/; `Refused` when one is a symlink."""
    h = open_folder(root, source, store, create=True)
    try:
        for sub in SUBFOLDERS:
            os.close(open_dir(h.fd, sub, f"{h.where}/{sub}", create=True))
    finally:
        h.close()


def real_dirs(paths: Sequence[Path]) -> dict[Path, tuple[int, int]]:
    """The paths that are real folders in a real parent (worth a notification watch), with
    their (st_dev, st_ino): a folder found with another identity later is watched anew."""
    out = {}
    for p in paths:
        with contextlib.suppress(OSError):
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode) and not p.parent.is_symlink():
                out[p] = (st.st_dev, st.st_ino)
    return out


# ---------------------------------------------------------------------- listing


def _list_fd(fd: int, where: str) -> Listing:
    st_dir = os.fstat(fd)
    out = Listing(dev=st_dir.st_dev, ino=st_dir.st_ino)
    names: set[str] = set()
    stats: list[tuple[str, os.stat_result]] = []
    with os.scandir(fd) as it:
        for e in it:
            name = e.name
            names.add(name)
            if name.startswith("."):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone between listing and lstat
            if name in SUBFOLDERS:
                if not stat.S_ISDIR(st.st_mode):
                    out.folder_refused = RefusedEntry(
                        name, _kind(st.st_mode, 1) or SPECIAL, st.st_dev, st.st_ino
                    )
                continue
            if not takeable(name):
                continue  # markers and partial uploads: never opened
            if bad_name(name):
                out.refused.append(RefusedEntry(name, BAD_NAME, st.st_dev, st.st_ino))
                continue
            stats.append((name, st))
    if out.folder_refused is not None:
        return out  # nothing is taken from a folder whose processed/ or failed/ is unsafe
    for name, st in stats:
        kind = _kind(st.st_mode, st.st_nlink)
        if kind is not None:
            out.refused.append(RefusedEntry(name, kind, st.st_dev, st.st_ino))
            continue
        out.entries.append(
            Entry(name, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, name + MARKER in names)
        )
    return out


def list_folders(root: Path, folders: Sequence[tuple[str, str]]) -> list[Listing]:
    """List many (source, store) folders in one go (one thread hop for a whole pass)."""
    out: list[Listing] = []
    try:
        rfd = open_root(root)
    except FileNotFoundError:
        return [Listing(missing=True) for _ in folders]
    except OSError as exc:
        return [Listing(error=exc) for _ in folders]
    sources: dict[str, int | Listing] = {}
    try:
        for source, store in folders:
            sfd = sources.get(source)
            if sfd is None:
                sfd = sources[source] = _source_fd(rfd, source)
            if isinstance(sfd, Listing):
                out.append(sfd)
                continue
            out.append(_list_one(sfd, source, store))
    finally:
        for v in sources.values():
            if isinstance(v, int):
                os.close(v)
        os.close(rfd)
    return out


def _source_fd(rfd: int, source: str) -> int | Listing:
    try:
        return open_dir(rfd, source, source)
    except (FileNotFoundError, Vanished):
        return Listing(missing=True)
    except Refused as exc:
        st = os.stat(source, dir_fd=rfd, follow_symlinks=False)
        return Listing(folder_refused=RefusedEntry(f"{source}/", exc.kind, st.st_dev, st.st_ino))
    except OSError as exc:
        return Listing(error=exc)


def _list_one(sfd: int, source: str, store: str) -> Listing:
    where = f"{source}/{store}"
    try:
        fd = open_dir(sfd, store, where)
    except (FileNotFoundError, Vanished):
        return Listing(missing=True)
    except Refused as exc:
        try:
            st = os.stat(store, dir_fd=sfd, follow_symlinks=False)
        except FileNotFoundError:
            return Listing(missing=True)
        return Listing(folder_refused=RefusedEntry(f"{store}/", exc.kind, st.st_dev, st.st_ino))
    except OSError as exc:
        return Listing(error=exc)
    try:
        return _list_fd(fd, where)
    except OSError as exc:
        return Listing(error=exc)
    finally:
        os.close(fd)


def folder_identity(h: Handle) -> tuple[int, int]:
    """(st_dev, st_ino) of the open folder."""
    st = os.fstat(h.fd)
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------------- files


def read(h: Handle, entry: Entry, limit: int, limit_hint: str) -> bytes:
    """The file's bytes, opened without following a symlink and checked against `entry`."""
    try:
        fd = os.open(entry.name, _O_FILE, dir_fd=h.fd)
    except FileNotFoundError:
        raise Vanished(entry.name) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(SYMLINK, entry.name) from None
        raise
    with _fd(fd):
        st = os.fstat(fd)
        kind = _kind(st.st_mode, st.st_nlink)
        if kind is not None:
            raise Refused(kind, entry.name)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
            entry.dev,
            entry.ino,
            entry.size,
            entry.mtime_ns,
        ):
            raise Changed(entry.name)
        if st.st_size > limit:
            raise PayloadTooLarge(
                f"file is {st.st_size} bytes, over the {limit} byte limit ({limit_hint}); "
                "load it with `possync backfill` instead",
                field="body",
            )
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    if got > limit:
        raise PayloadTooLarge(f"file grew past the {limit} byte limit", field="body")
    return b"".join(chunks)


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _free_name(fd: int, name: str, stamp: str) -> str:
    """`name`, or `stem.<stamp>[-n]suffix` when `name` (or its report) is already there."""

    def taken(n: str) -> bool:
        return any(_exists(fd, n + extra) for extra in ("", MARKER, ".result.json", ".error.json"))

    if not taken(name):
        return name
    p = Path(name)
    for i in range(1, 10_000):
        candidate = f"{p.stem}.{stamp}{'' if i == 1 else f'-{i}'}{p.suffix}"
        if not taken(candidate):
            return candidate
    raise FileExistsError(f"no free name for {name}")


def finalize(h: Handle, entry: Entry, sub: str, stamp: str, suffix: str, report: bytes) -> str:
    """Move the marker, then the file, into `sub/` of the real folder; then the report."""
    final = move(h, entry, sub, stamp)
    write_report(h, sub, final + suffix, report)
    return final


def move(h: Handle, entry: Entry, sub: str, stamp: str) -> str:
    """Move the marker, then the file, into `sub/` (a free name there); the name it got."""
    with _fd(open_dir(h.fd, sub, f"{h.where}/{sub}", create=True)) as dfd:
        try:
            st = os.stat(entry.name, dir_fd=h.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise Vanished(entry.name) from None
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            raise Changed(entry.name)  # swapped after the read: the new one is judged afresh
        final = _free_name(dfd, entry.name, stamp)
        # Marker first: a crash after it leaves an unmarked file (retaken when stable), never
        # an orphan marker that would vouch for a later, half-written file of the same name.
        with contextlib.suppress(FileNotFoundError):
            os.rename(entry.name + MARKER, final + MARKER, src_dir_fd=h.fd, dst_dir_fd=dfd)
        os.rename(entry.name, final, src_dir_fd=h.fd, dst_dir_fd=dfd)
    return final


def free_name(h: Handle, sub: str, name: str, stamp: str) -> str:
    """`name`, or a stamped one when it (or its marker or a report) is already in `sub/`."""
    with _fd(open_dir(h.fd, sub, f"{h.where}/{sub}", create=True)) as dfd:
        return _free_name(dfd, name, stamp)


def present_in(h: Handle, sub: str, names: Sequence[str]) -> list[str]:
    """Which of `names` are entries of `sub/` (lstat only; a symlinked `sub/` is refused)."""
    with _fd(open_dir(h.fd, sub, f"{h.where}/{sub}", create=True)) as dfd:
        return [n for n in names if _exists(dfd, n)]


def write_report(h: Handle, sub: str, name: str, report: bytes) -> None:
    """Write `sub/name` atomically: an `O_EXCL|O_NOFOLLOW` temporary renamed into place."""
    with _fd(open_dir(h.fd, sub, f"{h.where}/{sub}", create=True)) as dfd:
        tmp = f".{name}.tmp"
        try:
            wfd = os.open(tmp, _O_REPORT, 0o640, dir_fd=dfd)
        except FileExistsError:
            os.unlink(tmp, dir_fd=dfd)  # removes the entry itself, never a symlink's target
            wfd = os.open(tmp, _O_REPORT, 0o640, dir_fd=dfd)
        with _fd(wfd):
            view = memoryview(report)
            while view:
                view = view[os.write(wfd, view) :]
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
