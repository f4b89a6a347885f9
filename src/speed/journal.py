"""Tamper-evident, append-only JSON-lines journal (privacy ledger, label stores).

File ``<name>``: one JSON object per line, keys sorted, compact separators, ASCII only.
Besides its own fields each record carries three reserved keys:

* ``seq`` — 0, 1, 2, … (its position in the file);
* ``prev`` — the ``sha`` of the previous record (:data:`GENESIS`, 64 zeros, for seq 0);
* ``sha`` — SHA-256 (hex) of the record's canonical bytes *without* ``sha`` (so it covers
  ``seq`` and ``prev``): the per-line checksum and the link of the hash chain at once.

A line must be exactly the canonical serialisation of its object (an edit that only
reformats a line is refused too).  A record exists once its newline is on disk.

File ``<name>.head``: ``{"format": "speed-journal-head/1", "count": n, "last": sha of
record n-1, "size": bytes of the first n records}``, replaced atomically (unique temp file,
fsync, ``os.replace``, fsync of the directory) after every append (write + fsync).  An
append is acknowledged (its caller may act on it, e.g. release a label) only once the head
counts it.

Opening verifies every line (checksum, ``seq``, chain) and compares with the head:

* fewer records than the head counts, or record ``count - 1`` is not the one the head
  names → refused (records were lost, cut off or replaced);
* more records than the head counts (a crash between the append and the head update) →
  kept, head updated, warned;
* bytes after the last newline that form a complete, checksum-valid record continuing the
  chain → kept (the newline is added), warned;
* other bytes after the last newline: a torn write that was never acknowledged (the head
  does not count it) → truncated, warned;
* a non-empty journal without head → refused (``python -m speed.journal reseal FILE`` writes
  a head for a file you know to be complete).

Legacy (pre-journal) files: a client may pass ``legacy=`` to parse its old line format.  On a
writable open such a file is verified with the old rules and upgraded ONCE to this format
with a loud warning (losses before the upgrade cannot be detected); a read-only open accepts
it with a warning.  A file with a head file is never read as legacy.  Read-only opening never
repairs anything.  Every repair is reported by a :class:`JournalRepairWarning` starting
``repaired:``; every refusal is one :class:`speed.errors.SpeedError` line naming the file.

What this detects: loss, truncation, deletion, editing and reordering of records by a
careless user, a bad copy or a crash.  What it does not: someone who rewrites the whole file
and its head consistently (a hash chain without an external anchor is not a signature).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from speed.errors import SpeedError
from speed.fsutil import Closeable, atomic_write_bytes, atomic_write_json, fsync_dir, temp_files

__all__ = ["GENESIS", "HEAD_FORMAT", "Journal", "JournalMissingError", "JournalRepairWarning",
           "canonical", "head_path", "record_hash"]

GENESIS = "0" * 64
HEAD_FORMAT = "speed-journal-head/1"
RESERVED = ("seq", "prev", "sha")

LegacyParser = Callable[[bytes, int], "dict[str, Any] | None"]


class JournalRepairWarning(UserWarning):
    """Something in a journal was repaired (or would be, on a writable open)."""


class JournalMissingError(SpeedError, FileNotFoundError):
    """A journal opened read-only does not exist."""


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_hash(obj: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of ``obj`` (a record without its ``sha``)."""
    return hashlib.sha256(canonical(obj)).hexdigest()


def head_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".head")


def _warn(message: str) -> None:
    """Warn at the first caller outside this module (the client that opened the journal)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, JournalRepairWarning, stacklevel=level)


class Journal(Closeable):
    """An open journal: ``records`` (payloads, without the reserved keys), :meth:`append`.

    ``what`` names the file in messages ("privacy ledger"); ``consequence`` ends the message
    when records were lost ("refusing to under-state ε").  ``lock=True`` takes an exclusive
    ``flock`` on the file for the journal's lifetime (writable opens only).
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "journal", read_only: bool = False,
                 lock: bool = False, legacy: LegacyParser | None = None,
                 consequence: str = "refusing to use it", _reseal: bool = False) -> None:
        self.path = Path(path)
        self.head_file = head_path(self.path)
        self.what = what
        self.read_only = bool(read_only)
        self.consequence = consequence
        self.records: list[dict[str, Any]] = []
        self.repaired_bytes = 0  # bytes of a torn, unacknowledged write dropped (or ignored, read-only)
        self.repairs: list[str] = []
        self._hashes: list[str] = []
        self._size = 0
        self._fd: int | None = None
        self._broken = False
        self._legacy = legacy
        self._reseal = _reseal
        self._locking = bool(lock) and not self.read_only
        if self.path.is_dir():
            raise SpeedError(f"{what} {self.path} is a directory, not a file")
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _fail(self, detail: str) -> SpeedError:
        return SpeedError(f"{self.what} {self.path}: {detail}")

    def _open(self) -> None:
        # the head is read BEFORE the data: a writer appending meanwhile can only make the
        # file longer than the head says (caught up), never shorter (a false "records lost")
        if not self.path.exists():
            head = self._read_head()
            if head is not None and head["count"] > 0:
                raise self._fail(f"the file is missing but {self.head_file.name} records {head['count']} "
                                 f"entries: the journal was deleted; {self.consequence}")
        if self.read_only:
            if not self.path.exists():
                raise JournalMissingError(f"{self.what} {self.path} does not exist")
            for _ in range(20):  # a live journal: retry until head and data are from the same moment
                head = self._read_head()
                try:
                    data = self.path.read_bytes()
                except OSError as exc:
                    raise self._fail(f"cannot be read ({exc.strerror or exc})") from None
                if self._read_head() == head and head is not None and len(data) == head["size"]:
                    break
                if head is None:
                    break
                time.sleep(0.01)  # an append between its line and its head update: look again
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                created = not self.path.exists()
                self._fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise self._fail(f"cannot be opened ({exc.strerror or exc})") from None
            if self._locking:
                self._lock(self._fd)
                self._clean_temps()
            if created:
                fsync_dir(self.path.parent)
            head = self._read_head()
            size = os.fstat(self._fd).st_size
            data = os.pread(self._fd, size, 0) if size else b""
        self._load(data, head)

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SpeedError(f"{self.what} {self.path} is in use by another process") from None

    def _clean_temps(self) -> None:
        # temp files of a writer killed mid-update or mid-upgrade (we hold the lock: no writer now)
        for stale in temp_files(self.head_file) + temp_files(self.path):
            try:
                stale.unlink()
            except OSError:  # pragma: no cover
                pass

    def _read_head(self) -> dict[str, Any] | None:
        try:
            raw = self.head_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"head file {self.head_file.name} cannot be read ({exc.strerror or exc})") from None
        try:
            head = json.loads(raw)
            ok = (isinstance(head, dict) and head.get("format") == HEAD_FORMAT
                  and all(isinstance(head.get(k), int) and not isinstance(head.get(k), bool) and head[k] >= 0
                          for k in ("count", "size"))
                  and isinstance(head.get("last"), str) and len(head["last"]) == 64)
        except ValueError:
            ok = False
        if not ok:
            raise self._fail(f"head file {self.head_file.name} is damaged")
        return head

    def _parse(self, raw: bytes, lineno: int) -> tuple[dict[str, Any], str]:
        """One journal line → (object without sha, sha); refuses anything else."""
        try:
            obj = json.loads(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise self._fail(f"corrupted at line {lineno} (not a JSON record)") from None
        if not isinstance(obj, dict) or any(k not in obj for k in RESERVED):
            raise self._fail(f"corrupted at line {lineno} (not a journal record: no seq/prev/sha)")
        sha = obj.pop("sha")
        if record_hash(obj) != sha:
            raise self._fail(f"checksum mismatch at line {lineno} (the record was edited or damaged)")
        if canonical({**obj, "sha": sha}) != raw:
            raise self._fail(f"line {lineno} is not in canonical form (edited)")
        return obj, sha

    def _load(self, data: bytes, head: dict[str, Any] | None) -> None:
        end = data.rfind(b"\n") + 1
        lines, tail = data[:end].split(b"\n")[:-1], data[end:]
        first = lines[0] if lines else tail
        # legacy only without a head: a journal's damaged first line must not pass for legacy
        if self._legacy is not None and head is None and first and not (b'"sha":' in first and b'"seq":' in first):
            return self._load_legacy(lines, tail)
        hashes: list[str] = []
        ends: list[int] = []
        payloads: list[dict[str, Any]] = []
        last, offset = GENESIS, 0
        for i, raw in enumerate(lines):
            obj, sha = self._parse(raw, i + 1)
            if obj["seq"] != i:
                raise self._fail(f"line {i + 1} holds record seq {obj['seq']!r} where seq {i} was expected: "
                                 f"records were lost or reordered; {self.consequence}")
            if obj["prev"] != last:
                raise self._fail(f"line {i + 1} does not chain to the record before it: a record was "
                                 f"removed, replaced or reordered; {self.consequence}")
            offset += len(raw) + 1
            last = sha
            hashes.append(sha)
            ends.append(offset)
            payloads.append({k: v for k, v in obj.items() if k not in RESERVED})
        tail_record = None
        if tail:
            try:
                obj, sha = self._parse(tail, len(lines) + 1)
                if obj["seq"] == len(lines) and obj["prev"] == last:
                    tail_record = (obj, sha)
            except SpeedError:
                tail_record = None
        n_complete = len(lines)
        n_total = n_complete + (tail_record is not None)
        # --- compare with the head (refusals first: nothing is repaired before all checks pass)
        if head is None:
            if n_complete or tail:
                if self._reseal:
                    if tail:
                        raise self._fail("has bytes after its last newline: cannot reseal a torn file")
                else:
                    raise self._fail(
                        f"head file {self.head_file.name} is missing, so records cut from the end could not "
                        f"be detected; {self.consequence}. Restore the head file, or if you know the file is "
                        f"complete run: python -m speed.journal reseal {self.path}")
            count = n_total
        else:
            if self._reseal:
                raise self._fail(f"has a head file ({self.head_file.name}); nothing to reseal")
            count = head["count"]
            if count > n_total:
                raise self._fail(f"head records {count} entries, file holds {n_total}: records were lost; "
                                 f"{self.consequence}")
            all_hashes = hashes + ([tail_record[1]] if tail_record else [])
            all_ends = ends + ([len(data) + 1] if tail_record else [])  # its newline is added
            if head["last"] != (all_hashes[count - 1] if count else GENESIS):
                raise self._fail(f"record {count} is not the one the head file names: the journal was "
                                 f"rewritten or records were replaced; {self.consequence}")
            size = all_ends[count - 1] if count else 0
            if head["size"] != size:
                raise self._fail(f"head says its {count} records take {head['size']} bytes, the file has "
                                 f"{size}; {self.consequence}")
        # --- accepted: repair (writable) or report (read-only)
        self.records, self._hashes, self._size = payloads, hashes, end
        ro = "; not repaired (opened read-only)" if self.read_only else ""
        if tail_record is not None:
            obj, sha = tail_record
            if not self.read_only:
                assert self._fd is not None
                self._write_all(b"\n")
            self._size = len(data) + (0 if self.read_only else 1)
            self.records.append({k: v for k, v in obj.items() if k not in RESERVED})
            self._hashes.append(sha)
            self._report(f"{self.what} {self.path}: kept record seq {obj['seq']}, complete and checksum-valid "
                         f"but missing its final newline" + (ro or "; newline added"))
        elif tail:
            self.repaired_bytes = len(tail)
            if not self.read_only:
                assert self._fd is not None
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
            self._report(f"{self.what} {self.path}: " + ("ignoring" if self.read_only else "dropped")
                         + f" {len(tail)} bytes of a torn write after record {n_complete} (never acknowledged: "
                         f"the head counts {count} records){ro}")
        if head is not None and count < len(self.records):
            self._report(f"{self.what} {self.path}: head counted {count} records, file holds "
                         f"{len(self.records)} (a crash between an append and its head update)"
                         + (ro or "; head updated"))
        elif head is None and self.records:
            self._report(f"{self.what} {self.path}: resealed: head file written for {len(self.records)} records")
        if not self.read_only and (head is None or count != len(self.records) or tail):
            self._write_head()

    def _load_legacy(self, lines: list[bytes], tail: bytes) -> None:
        assert self._legacy is not None
        payloads = []
        for i, raw in enumerate(lines):
            rec = self._legacy(raw, i + 1)
            if rec is None:
                continue
            if any(k in rec for k in RESERVED):
                raise self._fail(f"line {i + 1} mixes journal records into a legacy file; {self.consequence}")
            payloads.append(rec)
        kept_tail = None
        if tail:
            try:
                kept_tail = self._legacy(tail, len(lines) + 1)
            except SpeedError:
                kept_tail = None
            if kept_tail is not None and any(k in kept_tail for k in RESERVED):
                kept_tail = None
        if kept_tail is not None:
            payloads.append(kept_tail)
        elif tail:
            self.repaired_bytes = len(tail)
        extra = ("" if not tail else "; kept its complete last record (valid in the legacy format) that lacked "
                 "its newline"
                 if kept_tail is not None else f"; dropped {len(tail)} bytes of a torn last line")
        if self.read_only:
            self.records = payloads
            self._report(f"{self.what} {self.path} is in the legacy format without a hash chain: lost or "
                         f"deleted records cannot be detected{extra}; not upgraded (opened read-only)")
            return
        # upgrade once: new file next to it, fsync, replace, then the head
        assert self._fd is not None
        self.records, self._hashes, self._size = [], [], 0
        body, hashes = self._encode(payloads)
        atomic_write_bytes(self.path, body, mode=0o600)
        new_fd = os.open(str(self.path), os.O_RDWR | os.O_APPEND)
        if self._locking:
            try:
                self._lock(new_fd)
            except BaseException:
                os.close(new_fd)
                raise
        old, self._fd = self._fd, new_fd
        os.close(old)
        self._commit(payloads, body, hashes)
        self._write_head()
        self._report(f"{self.what} {self.path}: upgraded from the legacy format (no hash chain) to a "
                     f"tamper-evident journal of {len(payloads)} records; records lost before this upgrade "
                     f"cannot be detected{extra}")

    def _report(self, message: str) -> None:
        self.repairs.append(message)
        _warn(f"repaired: {message}" if not self.read_only else message)

    # ------------------------------------------------------------------ appending
    def _encode(self, payloads: Iterable[dict[str, Any]]) -> tuple[bytes, list[str]]:
        hashes: list[str] = []
        out, last, seq = [], (self._hashes[-1] if self._hashes else GENESIS), len(self._hashes)
        for payload in payloads:
            if any(k in payload for k in RESERVED):
                raise ValueError(f"journal records may not use the reserved keys {RESERVED}")
            obj = {**payload, "seq": seq, "prev": last}
            last = record_hash(obj)
            out.append(canonical({**obj, "sha": last}) + b"\n")
            hashes.append(last)
            seq += 1
        return b"".join(out), hashes

    def _commit(self, payloads: list[dict[str, Any]], body: bytes, hashes: list[str]) -> None:
        self._hashes.extend(hashes)
        self.records.extend(dict(p) for p in payloads)
        self._size += len(body)

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)

    def append(self, payload: dict[str, Any]) -> None:
        """Append one record: durable (fsync) and acknowledged (head updated) when this returns."""
        self.append_many([payload])

    def append_many(self, payloads: list[dict[str, Any]]) -> None:
        if self.read_only or self._fd is None:
            raise SpeedError(f"{self.what} {self.path} is open read-only (or closed)")
        if self._broken:
            raise self._fail("an earlier append failed half-way; reopen it")
        payloads = [dict(p) for p in payloads]
        if not payloads:
            return
        body, hashes = self._encode(payloads)
        if os.fstat(self._fd).st_size != self._size:
            raise self._fail("changed on disk since it was opened (another writer?); reopen it")
        self._broken = True
        self._write_all(body)
        self._commit(payloads, body, hashes)
        self._write_head()
        self._broken = False

    def _write_head(self) -> None:
        head = {"format": HEAD_FORMAT, "count": len(self._hashes),
                "last": self._hashes[-1] if self._hashes else GENESIS, "size": self._size}
        atomic_write_json(self.head_file, head, mode=0o600, indent=None, sort_keys=True)

    # ------------------------------------------------------------------ lifetime
    def __len__(self) -> int:
        return len(self.records)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # also releases the flock


if __name__ == "__main__":  # pragma: no cover - ``python -m speed.journal verify|reseal FILE``
    import runpy

    runpy.run_module("speed.journal_cli", run_name="__main__")
