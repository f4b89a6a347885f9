"""Durable state of a ``speed reproduce`` run, so that a killed run resumes without redoing work.

* :class:`LabelStore` — the encrypted-labelling results, one JSON line per circuit batch,
  appended and ``fsync``-ed as soon as the owner has decrypted the batch.  A resumed run
  labels only the query positions that are not in the store.  (The privacy ledger next to
  it records every answered query *before* its label is released; see
  :mod:`speed.reproduce.run` for how the two are reconciled after a crash.)
* :class:`StageCache` — small JSON results of finished stages (teacher evaluation, the
  non-private baseline, each student), rewritten atomically after every stage.

Both files carry a header with the run's key; opening a file written for another key fails.
The label store is a :class:`speed.journal.Journal` (SHA-256 checksum and hash chain per
line, head file ``labels.jsonl.head``): an edited, deleted or reordered batch is refused,
not used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from speed.errors import SpeedError
from speed.fsutil import atomic_write_text  # also imported from here (speed.reproduce.report)
from speed.journal import Journal

__all__ = ["STORE_VERSION", "LabelStore", "StageCache", "atomic_write_text"]

STORE_VERSION = 2  # 1: plain JSON lines; 2: records of a speed.journal


class LabelStore:
    """Append-only JSON-lines file of labelled batches (labels, clear reference, timings).

    Record 0 is a header ``{"header": true, "key": ..., "settings": ...}``; every other record
    is one batch ``{"batch": b, "positions": [...], "labels": [...], "clear_noisy_argmax":
    [...], "clear_noisy_sums": [[...]], "seconds": {...}, "bytes": {...}, "utc": ...}``.
    Records are lines of a :class:`speed.journal.Journal`: checksum, ``seq`` and hash chain
    per line plus a head file, so an edited label, a deleted batch or a cut end is refused
    with one line.  A torn last write that the head never counted is truncated (with a
    warning); a legacy (version 1, unchecked) store is upgraded once with a warning.
    """

    def __init__(self, path: str | os.PathLike, key: str, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = key
        self.batches: list[dict[str, Any]] = []
        self.label_of: dict[int, int] = {}
        self._journal = Journal(self.path, what="labelling store", legacy=self._legacy_line,
                                consequence="refusing to use its labels")
        self.repaired_bytes = self._journal.repaired_bytes
        if not self._journal.records:
            self._journal.append({"header": True, "version": STORE_VERSION, "key": key, "settings": settings})
        try:
            self._load(self._journal.records)
        except BaseException:
            self.close()
            raise

    def _legacy_line(self, raw: bytes, lineno: int) -> dict[str, Any] | None:
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise SpeedError(f"labelling store {self.path} is corrupted at line {lineno}") from None
        if not isinstance(rec, dict):
            raise SpeedError(f"labelling store {self.path} is corrupted at line {lineno}")
        return rec

    def _load(self, records: list[dict[str, Any]]) -> None:
        header = records[0]
        if not header.get("header") or header.get("key") != self.key:
            raise SpeedError(
                f"labelling store {self.path} belongs to another run (key {header.get('key')!r}, "
                f"expected {self.key!r}); remove it (and its .head) or use another --cache-dir"
            )
        for lineno, rec in enumerate(records[1:], start=2):
            try:
                self._apply(rec)
            except (KeyError, TypeError, ValueError):
                raise SpeedError(f"labelling store {self.path}: record {lineno} is not a batch") from None

    def close(self) -> None:
        self._journal.close()

    def charged_check(self, charged_query_ids: set[Any], ledger_path: Any) -> None:
        """Refuse (one line) if a stored label has no charge in the ledger.

        A position ``p`` is charged by query id ``p`` or ``"p/retryK"`` (a run killed after the
        charge but before the store re-charges the query under a retry id)."""
        charged: set[int] = set()
        for q in charged_query_ids:
            base = str(q).split("/retry", 1)[0]
            try:
                charged.add(int(base))
            except ValueError:
                continue
        missing = sorted(p for p in self.label_of if p not in charged)
        if missing:
            shown = ", ".join(str(p) for p in missing[:5]) + (", …" if len(missing) > 5 else "")
            raise SpeedError(
                f"labelling store {self.path} holds {len(missing)} labels with no charge in privacy ledger "
                f"{ledger_path} (positions {shown}): a released label must be charged; refusing to resume"
            )

    def _apply(self, rec: dict[str, Any]) -> None:
        self.batches.append(rec)
        for pos, label in zip(rec["positions"], rec["labels"]):
            self.label_of[int(pos)] = int(label)

    @property
    def next_batch(self) -> int:
        """Index of the next batch (seeds its noise streams: never reused across a resume)."""
        return 1 + max((int(b["batch"]) for b in self.batches), default=-1)

    def __contains__(self, position: int) -> bool:
        return int(position) in self.label_of

    def append(self, batch: int, positions: np.ndarray, labels: np.ndarray, clear_noisy_argmax: np.ndarray,
               clear_noisy_sums: np.ndarray, seconds: dict[str, float], sizes: dict[str, float]) -> None:
        rec = {
            "batch": int(batch),
            "positions": [int(p) for p in positions],
            "labels": [int(v) for v in labels],
            "clear_noisy_argmax": [int(v) for v in clear_noisy_argmax],
            "clear_noisy_sums": np.asarray(clear_noisy_sums, dtype=np.int64).tolist(),
            "seconds": {k: float(v) for k, v in seconds.items()},
            "bytes": {k: float(v) for k, v in sizes.items()},
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._journal.append(rec)
        self._apply(rec)

    def lookup(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Labels, clear noisy argmax and clear noisy sums of ``positions`` (all must be stored)."""
        where: dict[int, tuple[int, int]] = {}
        for b, rec in enumerate(self.batches):
            for j, pos in enumerate(rec["positions"]):
                where[int(pos)] = (b, j)  # a later batch wins (there is none in normal operation)
        rows = [where[int(p)] for p in positions]
        return {
            "labels": np.array([self.batches[b]["labels"][j] for b, j in rows], dtype=np.int64),
            "clear_noisy_argmax": np.array([self.batches[b]["clear_noisy_argmax"][j] for b, j in rows],
                                           dtype=np.int64),
            "clear_noisy_sums": np.array([self.batches[b]["clear_noisy_sums"][j] for b, j in rows], dtype=np.int64),
        }

    def totals(self) -> dict[str, float]:
        """Seconds summed over every stored batch (this run and the runs it resumes)."""
        out: dict[str, float] = {"queries": 0.0, "batches": float(len(self.batches))}
        for rec in self.batches:
            out["queries"] += len(rec["positions"])
            for k, v in rec["seconds"].items():
                out[k] = out.get(k, 0.0) + float(v)
        return out

    def sizes(self) -> dict[str, float]:
        """Bytes: ``*_per_query`` averaged over every stored query (batch sizes weighted), others as last stored."""
        out: dict[str, float] = dict(self.batches[-1]["bytes"]) if self.batches else {}
        total = sum(len(rec["positions"]) for rec in self.batches)
        for k in out:
            if k.endswith("_per_query") and total:
                out[k] = sum(float(rec["bytes"].get(k, 0.0)) * len(rec["positions"]) for rec in self.batches) / total
        return out


class StageCache:
    """Small JSON results of finished stages, keyed by strings; atomic rewrite per update."""

    def __init__(self, path: str | os.PathLike, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                content = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                content = {}  # written atomically, so only a foreign file can be unreadable: start over
            if content.get("key") == key:
                self.data = content.get("stages", {})

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def put(self, name: str, value: Any) -> None:
        self.data[name] = value
        atomic_write_text(self.path, json.dumps({"key": self.key, "stages": self.data}, indent=1, sort_keys=True))
