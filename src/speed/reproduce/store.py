"""Durable state of a ``speed reproduce`` run, so that a killed run resumes without redoing work.

* :class:`LabelStore` — the encrypted-labelling results, one JSON line per circuit batch,
  appended and ``fsync``-ed as soon as the owner has decrypted the batch.  A resumed run
  labels only the query positions that are not in the store.  (The privacy ledger next to
  it records every answered query *before* its label is released; see
  :mod:`speed.reproduce.run` for how the two are reconciled after a crash.)
* :class:`StageCache` — small JSON results of finished stages (teacher evaluation, the
  non-private baseline, each student), rewritten atomically after every stage.

Both files carry a header with the run's key; opening a file written for another key fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from speed.errors import SpeedError
from speed.fsutil import fsync_dir

STORE_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class LabelStore:
    """Append-only JSON-lines file of labelled batches (labels, clear reference, timings).

    Line 1 is a header ``{"header": true, "key": ..., "settings": ...}``; every other line
    is one batch ``{"batch": b, "positions": [...], "labels": [...], "clear_noisy_argmax":
    [...], "clear_noisy_sums": [[...]], "seconds": {...}, "bytes": {...}, "utc": ...}``.
    A trailing line without its newline (a write torn by a kill) is dropped and the file
    truncated; any other unreadable line is an error.
    """

    def __init__(self, path: str | os.PathLike, key: str, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = key
        self.batches: list[dict[str, Any]] = []
        self.label_of: dict[int, int] = {}
        self.repaired_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            header = {"header": True, "version": STORE_VERSION, "key": key, "settings": settings}
            atomic_write_text(self.path, json.dumps(header, sort_keys=True) + "\n")
        self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.repaired_bytes = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        lines = data[:end].splitlines()
        for lineno, raw in enumerate(lines, start=1):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise SpeedError(f"labelling store {self.path} is corrupted at line {lineno}") from None
            if lineno == 1:
                if not rec.get("header") or rec.get("key") != self.key:
                    raise SpeedError(
                        f"labelling store {self.path} belongs to another run (key {rec.get('key')!r}, "
                        f"expected {self.key!r}); remove it or use another --cache-dir"
                    )
                continue
            self._apply(rec)

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
        line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
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
