"""Teacher recipes for a dataset: accuracy of single teachers per CPU second.

    .venv/bin/python benchmarks/teacher_recipes.py --dataset fashion-mnist --holders 250 \
        --shards 3 --eval-points 2000 [--recipes NAME ...]

Trains each recipe on the first ``--shards`` holder shards of the same split ``speed
reproduce`` uses (``make_splits(dataset, holders, seed=0)``), one torch thread per teacher,
two teachers at a time (as ``speed reproduce`` trains them), and measures each teacher's
accuracy on ``--eval-points`` points of the test split (never queried) and its training time.
Writes ``benchmarks/results/teachers/teacher_recipes-<dataset>-<date>T<HHMM>.json`` and prints
a table.  Used to choose ``TEACHER_CONFIG`` (docs/reproduce.md quotes the results).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from speed.fsutil import atomic_write_text
from speed.machine import machine

#: name -> (model, TrainConfig fields)
RECIPES: dict[str, tuple[str, dict]] = {
    "pate-sgd-150": ("pate-mnist", dict(steps=150, batch_size=64, lr=0.08, optimizer="sgd")),
    "pate-adam-aug-150": ("pate-mnist", dict(steps=150, batch_size=64, lr=1e-3, optimizer="adam", augment=True,
                                             schedule="cosine")),
    "compact-adam-aug-300": ("compact-cnn", dict(steps=300, batch_size=64, lr=1e-3, optimizer="adam", augment=True,
                                                 schedule="cosine")),
    "compact-adam-aug-600": ("compact-cnn", dict(steps=600, batch_size=64, lr=1e-3, optimizer="adam", augment=True,
                                                 schedule="cosine")),
    "compact-adam-aug-flip-600": ("compact-cnn", dict(steps=600, batch_size=64, lr=1e-3, optimizer="adam",
                                                      augment=True, schedule="cosine", flip=True)),
    "compact-adam-aug-1200": ("compact-cnn", dict(steps=1200, batch_size=64, lr=1e-3, optimizer="adam",
                                                  augment=True, schedule="cosine")),
}


def _job(args: tuple) -> dict:
    recipe, holder, dataset_name, holders, eval_points = args
    import torch

    from speed.learning import accuracy, build_model, load_dataset, make_splits, train_model
    from speed.learning.loop import derive_seed

    torch.set_num_threads(1)
    model_name, fields = RECIPES[recipe]
    ds = load_dataset(dataset_name)
    splits = make_splits(ds, holders, seed=0)
    x, y = splits.holder_data(holder)
    model = build_model(model_name, ds.in_shape, ds.num_classes, seed=derive_seed(0, holder, 0))
    start = time.perf_counter()
    train_model(model, x, y, seed=derive_seed(0, holder, 1), **fields)
    seconds = time.perf_counter() - start
    return {"recipe": recipe, "holder": holder, "seconds": seconds,
            "accuracy": accuracy(model, splits.test_x[:eval_points], splits.test_y[:eval_points])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--eval-points", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    a = ap.parse_args()
    jobs = [(r, h, a.dataset, a.holders, a.eval_points) for r in a.recipes for h in range(a.shards)]
    rows: list[dict] = []
    load = os.getloadavg()
    with cf.ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in pool.map(_job, jobs):
            rows.append(row)
            print(f"  {row['recipe']:24s} holder {row['holder']}: {row['accuracy']:.3f} in {row['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    summary = []
    for r in a.recipes:
        acc = [x["accuracy"] for x in rows if x["recipe"] == r]
        sec = [x["seconds"] for x in rows if x["recipe"] == r]
        summary.append({"recipe": r, "model": RECIPES[r][0], "config": RECIPES[r][1],
                        "accuracy_mean": float(np.mean(acc)), "seconds_mean": float(np.mean(sec)),
                        "hours_for_all_holders_2_workers": float(np.mean(sec)) * a.holders / 2 / 3600})
    print(f"\n{'recipe':24s} {'accuracy':>9s} {'s/teacher':>10s} {'h for N (2 workers)':>20s}")
    for s in summary:
        print(f"{s['recipe']:24s} {s['accuracy_mean']:9.3f} {s['seconds_mean']:10.1f} "
              f"{s['hours_for_all_holders_2_workers']:20.2f}")
    out = {"dataset": a.dataset, "holders": a.holders, "shards": a.shards, "eval_points": a.eval_points,
           "summary": summary, "rows": rows,
           "machine": {**machine(), "load_average_at_start": load}}
    path = Path(__file__).parent / "results" / "teachers" / \
        f"teacher_recipes-{a.dataset}-{time.strftime('%Y-%m-%dT%H%M', time.gmtime())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
