"""Student recipes on the real teachers' labels: which student to train on Q labelled queries.

    .venv/bin/python benchmarks/student_recipes.py --dataset fashion-mnist --holders 250 --queries 500 \
        [--recipes NAME ...] [--workers 2]

Uses the teachers ``speed reproduce`` trained and checkpointed (refuses to train missing ones),
the same split and the same Q queries; labels every query with the plurality of the teachers'
votes (the noise-free clear argmax: at γ = 3.3 the encrypted noisy argmax agrees with it on almost
every query; the report of the run gives the exact count), trains each student recipe with one
torch thread, ``--workers`` at a time, and measures accuracy on the test split (never queried).
Writes ``benchmarks/results/students/student_recipes-<dataset>-<date>T<HHMM>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from speed.fsutil import atomic_write_text  # noqa: E402
from speed.machine import machine  # noqa: E402

#: name -> (method, config overrides, train_student keyword arguments)
RECIPES: dict[str, tuple[str, dict, dict]] = {
    "supervised": ("supervised", {}, {}),
    "supervised-flip": ("supervised", {}, {"flip": True}),
    "fixmatch": ("semi-supervised", {}, {}),
    "fixmatch-flip": ("semi-supervised", {}, {"flip": True}),
    "fixmatch-flip-cosine": ("semi-supervised", {"schedule": "cosine"}, {"flip": True}),
}


def _setup(dataset: str, holders: int, queries: int, cache: str):
    from speed.learning import load_dataset, make_splits, select_queries
    from speed.reproduce import ReproduceConfig

    ds = load_dataset(dataset)
    splits = make_splits(ds, holders, seed=0)
    cfg = ReproduceConfig(dataset=dataset, holders=holders, queries=(queries,), cache_dir=cache).resolved()
    return ds, splits, select_queries(splits, queries, seed=0), cfg


def _labels(dataset: str, holders: int, queries: int, cache: str) -> dict:
    from speed.learning import plurality, train_teachers, vote_counts
    from speed.learning.checkpoints import checkpoint_path
    from speed.pipeline import teacher_checkpoint_dir

    ds, splits, q, cfg = _setup(dataset, holders, queries, cache)
    ckpt = teacher_checkpoint_dir(Path(cache), ds.name, holders, 0, "")
    missing = [i for i in range(holders) if not checkpoint_path(ckpt, i).exists()]
    if missing:
        raise SystemExit(f"error: {len(missing)} teachers missing in {ckpt}: run speed reproduce first")
    teachers = train_teachers(ds, splits, cfg.model_name(), config=cfg.teacher_training(), seed=0,
                              checkpoint_dir=ckpt, workers=1, progress=False)
    if teachers.trained:
        raise SystemExit(f"error: teacher checkpoints in {ckpt} do not match the current recipe")
    labels = plurality(vote_counts(teachers.votes(q.x), ds.num_classes))
    return {"labels": labels.tolist(), "label_accuracy": float(np.mean(labels == q.true_labels))}


def _job(args: tuple) -> dict:
    recipe, dataset, holders, queries, cache, labels = args
    import torch

    from speed.learning import accuracy, fit_student, student_config

    torch.set_num_threads(1)
    ds, splits, q, cfg = _setup(dataset, holders, queries, cache)
    method, overrides, kwargs = RECIPES[recipe]
    s_cfg = replace(student_config(dataset), **overrides)
    start = time.perf_counter()
    student = fit_student(q.label(np.asarray(labels)), method=method, model_name=cfg.model_name(), config=s_cfg,
                          seed=0, **kwargs)
    return {"recipe": recipe, "method": method, "config": asdict(s_cfg), "options": kwargs,
            "seconds": time.perf_counter() - start, "test_points": int(len(splits.test_y)),
            "accuracy": accuracy(student, splits.test_x, splits.test_y)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--cache-dir", default=".speed-cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    a = ap.parse_args()
    info = machine()
    labelled = _labels(a.dataset, a.holders, a.queries, a.cache_dir)
    print(f"plurality label accuracy on the {a.queries} queries: {labelled['label_accuracy']:.3f}", file=sys.stderr)
    jobs = [(r, a.dataset, a.holders, a.queries, a.cache_dir, labelled["labels"]) for r in a.recipes]
    rows = []
    with cf.ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_job, jobs):
            rows.append(row)
            print(f"  {row['recipe']:24s} {row['accuracy']:.4f} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    out = {"dataset": a.dataset, "holders": a.holders, "queries": a.queries,
           "plurality_label_accuracy": labelled["label_accuracy"], "rows": rows, "machine": info}
    path = Path(__file__).parent / "results" / "students" / \
        f"student_recipes-{a.dataset}-{time.strftime('%Y-%m-%dT%H%M', time.gmtime())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=2))
    print(f"\n{'recipe':24s} {'test accuracy':>13s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['recipe']:24s} {r['accuracy']:13.4f} {r['seconds']:8.0f}")
    print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
