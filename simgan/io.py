"""Atomic writes and content hashes shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from simgan.errors import SimganError

_HOST = socket.gethostname().replace(".", "_") or "host"


def _umask() -> int:
    try:  # Linux: read it without setting it (os.umask is process-wide)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sweep_stale_temps(final: Path) -> None:
    """Remove the temp files that killed writers of `final` on this host left behind (their
    process is gone); those of live writers and of other hosts stay."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{re.escape(_HOST)}\.(\d+)\.")
    for path in final.parent.glob(f".{final.name}.{_HOST}.*"):
        m = pattern.match(path.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename onto `path` only if the block succeeds.

    A crash or exception leaves no partial file under the final name.
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimganError(f"{final}: cannot create output folder {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise SimganError(f"{final}: output folder {parent} is not writable")
    _sweep_stale_temps(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{_HOST}.{os.getpid()}.", suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():  # mkstemp makes 0600; the output gets the user's umask like any file
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        reason = storage_failure(exc)
        if reason:
            quiet_failed_hdf5()
            raise OutputWriteFailed(f"{final}: writing failed, {reason} in {parent.resolve()} "
                                    f"({_free_bytes(parent)} free); nothing was written") from exc
        raise


class OutputWriteFailed(SimganError):
    """The storage refused a write (full disk, quota, read-only, I/O error). HDF5 may be left in a
    state that crashes at interpreter exit, so the command-line entry point exits at once."""

    hard_exit = True


_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "file too large", errno.EROFS: "read-only file system", errno.EIO: "I/O error"}


def quiet_failed_hdf5() -> None:
    """After a failed write, h5py objects of the dead file raise again as they are freed (printed
    through sys.excepthook or sys.unraisablehook); those echoes would bury the one clear message.
    Silence only them: errors from h5py's deallocation that quote a storage errno."""
    if getattr(sys.excepthook, "_simgan_quiet", False):
        return

    def echo(exc, tb) -> bool:
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and "_dealloc" in tb.tb_frame.f_code.co_name and bool(storage_failure(exc))

    previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(etype, exc, tb):
        if not echo(exc, tb):
            previous_except(etype, exc, tb)

    def unraisablehook(unraisable):
        if not echo(unraisable.exc_value, unraisable.exc_traceback):
            previous_unraisable(unraisable)

    excepthook._simgan_quiet = True
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def storage_failure(exc: BaseException) -> str | None:
    """The storage reason behind `exc` (an OSError, or HDF5's error text quoting the errno), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[exc.errno]
        m = re.search(r"errno = (\d+)", str(exc))
        if m and int(m.group(1)) in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[int(m.group(1))]
        exc = exc.__cause__ or exc.__context__
    return None


def _free_bytes(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024


def _replaces(out: Path, path: Path) -> str | None:
    """How writing `out` would destroy `path`: the same file (one path, a symlink or a hard
    link), or a file inside the folder `path` that is read; None when it would not."""
    if out.exists() and path.exists() and os.path.samefile(out, path):
        return "is"
    if out.resolve() == path.resolve():
        return "is"
    if path.is_dir() and out.exists() and out.resolve().is_relative_to(path.resolve()):
        return "is inside"
    return None


def check_output_file(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                      flag: str = "--out") -> Path:
    """`out` as a Path, checked before any work: not a directory, and none of `inputs`
    (label -> path) nor an existing file inside an input folder, which writing it would replace."""
    out = Path(out)
    if out.is_dir():
        raise SimganError(f"{out}: is a directory; {flag} needs a file name")
    for label, path in inputs.items():
        if path is None:
            continue
        path = Path(path)
        how = _replaces(out, path)
        if how == "is":
            raise SimganError(f"{flag} {out} is the {label} file {path}: writing it would replace that file; "
                              "choose another output name")
        if how:
            raise SimganError(f"{flag} {out} is a file inside the {label} folder {path}: writing it would replace "
                              "a file that is read; choose an output outside that folder")
    return out


def check_outputs_apart(outputs: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike],
                        stage: str) -> None:
    """A stage never writes onto its own input (e.g. prepare.input naming the prepare stage's
    own train.h5, directly or through a symlink): refused before any work."""
    for name, out in outputs.items():
        for label, path in inputs.items():
            if _replaces(Path(out), Path(path)):
                raise SimganError(f"stage {stage}: its {label} input {path} is its own output {out} ({name}); "
                                  "writing the output would destroy the input. Point the input at a file "
                                  "outside the run folder's stage output, or copy it elsewhere first")


def check_output_dir(out: str | os.PathLike, flag: str = "--out", create: bool = True) -> Path:
    """`out` as a folder, checked before any work: not a file, and writable (created now, or with
    `create=False` only checked to be creatable, so a failure later leaves no empty folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SimganError(f"{flag} {out}: is a file; {flag} names a folder (the outputs go inside it)")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SimganError(f"{flag} {out}: cannot create the folder: {exc.strerror}") from None
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SimganError(f"{flag} {out}: cannot create the folder: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise SimganError(f"{flag} {out}: {existing} is not writable")
    return out


def open_hdf5(path: str | os.PathLike):
    """An HDF5 file opened for reading, or a SimganError naming it (missing, truncated, corrupt)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SimganError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ordered_shards(parts: list, paths: list) -> list:
    """Shard files of one simulation (read, each with .attrs) in shard order, after checking they
    are one complete set: each index 0..K-1 once, all of the same seed and size."""
    if any("shard_index" not in p.attrs for p in parts):
        bad = next(q for p, q in zip(parts, paths) if "shard_index" not in p.attrs)
        raise SimganError(f"{bad}: not a shard file (no shard_index attribute); merge takes the files of "
                          "`simgan simulate --shard-index I --shard-count K`")
    pairs = sorted(zip(parts, paths), key=lambda pq: int(pq[0].attrs["shard_index"]))
    first = pairs[0][0].attrs
    count = int(first["shard_count"])
    have = [int(p.attrs["shard_index"]) for p, _ in pairs]
    if have != list(range(count)):
        raise SimganError(f"shards {have} given, expected each of 0..{count - 1} once")
    for p, q in pairs:
        if (p.attrs.get("seed"), p.attrs.get("events_total")) != (first.get("seed"), first.get("events_total")):
            raise SimganError(f"{q}: a shard of another simulation (seed {p.attrs.get('seed')}, "
                              f"{p.attrs.get('events_total')} events)")
    return [p for p, _ in pairs]


def same_file(a, b) -> bool:
    """The same file: one path, or the same bytes under two names."""
    a, b = Path(a), Path(b)
    return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b))
