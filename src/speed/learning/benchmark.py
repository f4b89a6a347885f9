"""Plaintext learning benchmark: teachers, ensemble, supervised vs semi-supervised student.

    python -m speed.learning.benchmark --dataset digits --holders 20 --queries 60 --seeds 3

No encryption and no noise unless ``--noise-scale`` is given (Laplace noise on the vote
counts, as in the SPEED/PATE aggregation): this measures the learning side alone.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from speed.learning.datasets import load_dataset, make_splits, select_queries
from speed.learning.train import accuracy, fit_student, plurality, train_teachers, vote_counts


def run(dataset: str = "digits", holders: int = 20, queries: int = 60, pool: int | None = None,
        seeds: int = 3, noise_scale: float = 0.0, data_dir: str | None = None, threads: int = 1,
        checkpoint_dir: str | None = None, seed: int = 0, workers: int | None = None) -> dict:
    torch.set_num_threads(threads)
    ds = load_dataset(dataset, data_dir)
    splits = make_splits(ds, holders, pool if pool is not None else len(ds.y_test) // 2, seed=seed)
    t0 = time.perf_counter()
    teachers = train_teachers(ds, splits, seed=seed, checkpoint_dir=checkpoint_dir, progress=False,
                              num_threads=threads, workers=workers)
    teacher_seconds = time.perf_counter() - t0
    test_votes = teachers.votes(splits.test_x)
    q = select_queries(splits, queries, seed=seed)
    counts = vote_counts(teachers.votes(q.x), ds.num_classes).astype(float)
    if noise_scale > 0:
        counts += np.random.default_rng(seed).laplace(0.0, noise_scale, counts.shape)
    labelled = q.label(counts.argmax(axis=1))
    result: dict = {
        "dataset": dataset, "holders": holders, "queries": queries, "pool": splits.pool_size,
        "test": len(splits.test_indices), "noise_scale": noise_scale, "threads": threads, "workers": workers,
        "seed": seed,
        "teacher_model": teachers.model_name, "teacher_seconds_total": round(teacher_seconds, 2),
        "teacher_seconds_each": round(float(np.mean(teachers.train_seconds)), 3),
        "teacher_accuracy_mean": round(float((test_votes == splits.test_y).mean()), 4),
        "ensemble_accuracy": round(
            float((plurality(vote_counts(test_votes, ds.num_classes)) == splits.test_y).mean()), 4),
        "label_accuracy": round(labelled.label_accuracy, 4),
    }
    for method in ("supervised", "semi-supervised"):
        accs, secs = [], []
        for s in range(seeds):
            t0 = time.perf_counter()
            student = fit_student(labelled, method=method, seed=1000 * seed + s, num_threads=threads)
            secs.append(time.perf_counter() - t0)
            accs.append(accuracy(student, splits.test_x, splits.test_y))
        result[f"student_{method}"] = {
            "accuracy": [round(a, 4) for a in accs], "mean": round(float(np.mean(accs)), 4),
            "std": round(float(np.std(accs)), 4), "seconds_each": round(float(np.mean(secs)), 2),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--holders", type=int, default=20)
    p.add_argument("--queries", type=int, default=60)
    p.add_argument("--pool", type=int, default=None, help="public pool size (default: half the test set)")
    p.add_argument("--seeds", type=int, default=3, help="student seeds per method")
    p.add_argument("--noise-scale", type=float, default=0.0, help="Laplace scale on vote counts (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (per teacher worker)")
    p.add_argument("--workers", type=int, default=None, help="teacher worker processes (default: one per CPU)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--seed", type=int, default=0, help="split, teacher and query seed")
    a = p.parse_args(argv)
    out = run(a.dataset, a.holders, a.queries, a.pool, a.seeds, a.noise_scale, a.data_dir, a.threads,
              a.checkpoint_dir, a.seed, a.workers)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
