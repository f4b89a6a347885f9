"""Teacher checkpoints: one ``teacher-NNNN.pt`` per holder, valid only for the training it records.

A checkpoint holds the trained weights and a fingerprint of everything that made them (dataset,
the holder's shard, model, training config, seed).  :func:`load_checkpoint` returns nothing for a
missing, unreadable or stale file, so the caller retrains; :func:`save_checkpoint` writes
atomically (:func:`speed.fsutil.atomic_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from speed.fsutil import atomic_path
from speed.learning.loop import TrainConfig
from speed.learning.splits import Splits

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_path", "load_checkpoint", "save_checkpoint", "teacher_fingerprint"]

CHECKPOINT_FORMAT = 1


def checkpoint_path(checkpoint_dir: str | os.PathLike, holder: int) -> Path:
    return Path(checkpoint_dir) / f"teacher-{holder:04d}.pt"


def teacher_fingerprint(splits: Splits, holder: int, model_name: str, cfg: TrainConfig, seed: int) -> str:
    """What teacher ``holder``'s checkpoint must match: dataset, shard, model, config and seed."""
    d = splits.dataset
    blob = json.dumps({
        "format": CHECKPOINT_FORMAT, "dataset": d.name, "in_shape": list(d.in_shape), "classes": d.num_classes,
        "model": model_name, "config": asdict(cfg), "seed": seed, "holder": holder,
        "shard": splits.holder_fingerprint(holder),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint's contents if it exists, is readable and matches ``fingerprint``."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: retrain
        return None
    if not isinstance(ck, dict) or ck.get("fingerprint") != fingerprint:
        return None
    return ck


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically: a killed run never leaves a half-written one."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        torch.save(payload, tmp)
