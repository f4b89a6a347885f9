"""What is labelled, and how each holder's teacher answers, in a deployed job.

* ``digits`` — a *simulated* federation on sklearn's digits: every party derives the
  same splits from the public seed (:func:`speed.learning.make_splits`), the owner
  picks its queries from the public pool (:func:`speed.learning.select_queries`, the
  same rule as ``speed demo``), and holder i trains a teacher on shard i only, on its
  own node, cached under its ``cache-dir``.  In a real federation shard i is
  organisation i's private data; nothing else changes.
* ``table`` — fixed teacher predictions (tests, benchmarks, or an organisation that runs
  its own model offline): holder i answers query q with ``table[q, i]`` from its node's
  ``teacher-table`` file (shape (pool, N)), or ``table[q]`` if that file is 1-D (its own
  predictions only); queries are ``0..Q-1``.

A holder computes its teacher's answers for the job's (public) queries once, at setup,
so that the per-batch ClientApp process (Flower starts one per message) needs neither
torch nor the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speed.deploy.config import DeployConfig, NodeConfig
from speed.errors import InputError

__all__ = ["num_classes", "owner_query_ids", "teacher_predictions"]


def _digits_splits(config: DeployConfig):
    from speed.learning import load_dataset, make_splits

    dataset = load_dataset("digits")
    return dataset, make_splits(dataset, config.holders, seed=config.seed)


def num_classes(config: DeployConfig) -> int:
    if config.classes:
        return config.classes
    if config.task == "digits":
        return 10
    raise InputError(f"task {config.task!r} needs classes in the run config")


def owner_query_ids(config: DeployConfig) -> np.ndarray:
    """The public query ids the owner wants labelled (positions in the public pool)."""
    if config.task == "table":
        return np.arange(config.queries, dtype=np.int64)
    from speed.learning import select_queries

    _, splits = _digits_splits(config)
    if config.queries > splits.pool_size:
        raise InputError(f"{config.queries} queries exceed the public pool of {splits.pool_size} points")
    return select_queries(splits, config.queries, seed=config.seed).positions.astype(np.int64)


def teacher_predictions(config: DeployConfig, node: NodeConfig, query_ids: np.ndarray) -> np.ndarray:
    """Holder ``node.partition_id``'s teacher's labels for ``query_ids`` (int64, one per query)."""
    ids = np.asarray(query_ids, dtype=np.int64)
    i = node.partition_id
    if not 0 <= i < config.holders:
        raise InputError(f"partition-id {i} is outside 0..{config.holders - 1} for this job")
    if config.task == "table":
        if not node.teacher_table:
            raise InputError("task 'table' needs teacher-table=<path.npy> in the holder's node-config")
        table = np.load(Path(node.teacher_table).expanduser(), mmap_mode="r", allow_pickle=False)
        if table.ndim == 1:  # this holder's own predictions, one per public point
            table = table[:, None]
            i = 0
        if table.ndim != 2 or table.shape[1] <= i or (len(ids) and ids.max() >= table.shape[0]):
            raise InputError(f"teacher table {node.teacher_table} has shape {table.shape}: no column {i} / rows")
        return np.asarray(table[ids, i], dtype=np.int64)
    return _digits_teacher_predictions(config, node, ids)


def _digits_teacher_predictions(config: DeployConfig, node: NodeConfig, ids: np.ndarray) -> np.ndarray:
    """Train (or load) this holder's teacher on its own shard only, then predict the queries."""
    from speed.learning import Splits, predict, train_teachers
    from speed.learning.loop import derive_seed

    dataset, splits = _digits_splits(config)
    i = node.partition_id
    if len(ids) and ids.max() >= splits.pool_size:
        raise InputError(f"query id {int(ids.max())} is outside the public pool of {splits.pool_size}")
    # A one-shard view: this node never touches another holder's data.  Seed (seed, i) as in
    # train_teachers, so teachers are independent across holders.
    own = Splits(dataset, (splits.holder_indices[i],), splits.pool_indices, splits.test_indices, splits.seed)
    checkpoints = node.cache_dir / "teachers" / f"deploy-digits-N{config.holders}-s{config.seed}-h{i}"
    teachers = train_teachers(dataset, own, seed=derive_seed(config.seed, i), checkpoint_dir=checkpoints,
                              progress=False, workers=1, num_threads=1)
    return predict(teachers[0], splits.pool_x[ids])
