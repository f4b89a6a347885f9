"""Durable file I/O: every file this package writes goes through here.

Three operations, one policy each:

* :func:`atomic_write` / :func:`atomic_write_bytes` / :func:`atomic_write_json` — write a
  whole file so that a reader (or a crash) sees either the old contents or the new ones, never
  a mix: a unique temporary file in the same directory (``.<name>.<random>.tmp[suffix]``, created with
  the requested ``mode``), ``fsync``, ``os.replace``, ``fsync`` of the directory.  A failure
  removes the temporary file and leaves the old file untouched.
  :func:`atomic_create_bytes` is the same for a file that must never change once it exists
  (a key): the first writer wins.
* :func:`append_jsonl` — append JSON lines and ``fsync`` before returning: a record exists
  once this returns.
* :func:`read_jsonl` — read JSON lines with one corruption policy.  A line that does not parse
  in the middle of the file is refused (:class:`~speed.errors.SpeedError` naming the file and
  line): something edited or damaged the file and silently skipping records could lose data.
  A last line without its newline that does not parse is a torn append (the process died while
  writing it; :func:`append_jsonl` never acknowledged it): ``repair=True`` truncates it and says
  so with a :class:`FileRepairWarning`; ``repair=False`` (read-only callers) ignores it with the
  same warning and leaves the file as it is.

Files that need more than this (the hash-chained journal of :mod:`speed.journal`) build on
these functions, with :func:`temp_files` (what a killed writer left) and :class:`Closeable`
(``with``/garbage-collection closing of an object that holds an open file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Self

from speed.errors import SpeedError

__all__ = ["FALLBACK_CACHE_DIR", "Closeable", "FileRepairWarning", "append_jsonl", "atomic_create_bytes", "atomic_path",
           "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "default_cache_dir", "fsync_dir",
           "read_jsonl", "temp_files"]


class FileRepairWarning(UserWarning):
    """A file was repaired (a torn last line dropped); the message starts with ``repaired:``."""


#: The cache directory when ``$SPEED_CACHE_DIR`` is not set.
FALLBACK_CACHE_DIR = ".speed-cache"


def default_cache_dir() -> Path:
    """Compiled circuits, keys, teacher checkpoints, label stores: ``$SPEED_CACHE_DIR`` or ``.speed-cache``.

    The one place this default is decided (read when called, so a changed environment counts);
    :mod:`speed.params` and :mod:`speed.crypto.circuit` use it."""
    return Path(os.environ.get("SPEED_CACHE_DIR", FALLBACK_CACHE_DIR))


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that a file just created or renamed in it survives a crash.

    Best effort: platforms or filesystems without directory file descriptors (or that refuse
    to fsync one) are skipped."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystem refuses fsync on a directory
        pass
    finally:
        os.close(fd)


def _temp_in(path: Path, mode: int, suffix: str) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.fchmod(fd, mode)
    return fd, Path(name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[Any]:
    """Context manager yielding a binary file object; on a clean exit its contents replace
    ``path`` atomically and durably (see the module docstring).  ``mode`` is the new file's
    permission bits (``0o600`` for anything secret: it never exists with wider ones)."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "wb") as fh:
        yield fh


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o644, suffix: str = "") -> Iterator[Path]:
    """The one atomic replace (:func:`atomic_write` builds on it), for writers that want a file
    name (``np.savez``, ``torch.save``, a library's ``save(path)``): yields a temporary path in the
    same directory (ending in ``suffix``, for writers that add an extension otherwise), created
    with ``mode``; on a clean exit the file is fsync-ed, given ``mode`` again (a writer may have
    recreated it), and replaces ``path``; on an error it is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = _temp_in(path, mode, suffix)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_write(path, mode=mode) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mode: int = 0o644, indent: int | None = 2,
                      sort_keys: bool = False) -> None:
    """Replace ``path`` with ``obj`` as JSON (a trailing newline) atomically and durably."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n", mode=mode)


def atomic_create_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    For files that must not change once written (a private key): the complete file appears at
    once (unique temporary file, ``fsync``, ``os.link``) and, when two processes race, the
    first one wins and the other's data is discarded (read the file back to use the winner's)."""
    path = Path(path)
    fd, tmp = _temp_in(path, mode, "")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def temp_files(path: str | os.PathLike, *, suffix: str = "") -> list[Path]:
    """The temporary files of ``path`` (``.<name>.<random>.tmp<suffix>``) that a writer killed
    between creating and replacing left behind.  Remove them only when no writer of ``path``
    can be running (e.g. while holding its lock)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    except FileNotFoundError:
        return []


def append_jsonl(path: str | os.PathLike, records: list[dict[str, Any]], *, mode: int = 0o644) -> None:
    """Append one compact JSON line per record and fsync before returning (a new file's
    directory is fsync-ed too).  Nothing is written for an empty list."""
    if not records:
        return
    path = Path(path)
    data = "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records).encode()
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def read_jsonl(path: str | os.PathLike, *, what: str = "file", repair: bool = False,
               missing_ok: bool = True) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line (see the module docstring for the policy).

    ``what`` names the file in messages ("label store", "fillers"). A missing file gives ``[]``
    when ``missing_ok``, else a :class:`~speed.errors.SpeedError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise SpeedError(f"{what} {path} does not exist") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SpeedError(f"{what} {path} is damaged: line {lineno} is not JSON; "
                             "move the file aside or restore it from a backup") from None
        if not isinstance(obj, dict):
            raise SpeedError(f"{what} {path} is damaged: line {lineno} is not a JSON object")
        records.append(obj)
    if tail.strip():
        try:
            obj = json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):  # complete record, only its newline missing
            records.append(obj)
            if repair:
                with open(path, "ab") as fh:
                    fh.write(b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        else:
            good = len(data) - len(tail)
            if repair:
                with open(path, "rb+") as fh:
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
                warnings.warn(f"repaired: {what} {path}: dropped a torn last line ({len(tail)} bytes) "
                              "that was never acknowledged", FileRepairWarning, stacklevel=2)
            else:
                warnings.warn(f"{what} {path}: ignoring a torn last line ({len(tail)} bytes; "
                              "it will be dropped on the next write)", FileRepairWarning, stacklevel=2)
    return records


class Closeable:
    """Mixin for an object holding an open file: ``with obj:`` closes it, and so does garbage
    collection (best effort).  The class defines :meth:`close`, which must be idempotent."""

    def close(self) -> None:  # pragma: no cover - defined by the class
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
