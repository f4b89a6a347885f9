"""Scattering teachers with and without the projection on the public pool's principal components.

    .venv/bin/python benchmarks/teacher_projection.py --cache-dir CACHE [--components 0 128 256 512] \
        [--dataset fashion-mnist] [--holders 250] [--threads 2]

For each component count c (0 = all 3,969 scattering features, no projection), on the scattering
features cached by ``speed reproduce`` in ``CACHE/features/`` (standardised with the public pool's
statistics, then projected with :func:`speed.learning.features.project_on_pool`):

1. the N teachers, one linear head per holder trained as one batched model with the recipe of
   ``speed reproduce`` (``SCATTERING_TEACHER``: 300 full-batch Adam steps, lr 0.01, weight decay
   0.01), timed;
2. their mean accuracy and the accuracy of their plurality vote on the test split (never queried);
3. the non-private baseline of the linear students: the same head on every training image
   (``FEATURE_BASELINE``), accuracy on the test split.

Writes ``benchmarks/results/teacher_projection/teacher-projection-<stamp>.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "results" / "teacher_projection"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", required=True, help="a speed reproduce cache with the dataset's scattering features")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--holders", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--components", type=int, nargs="+", default=[0, 256])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(OUT_DIR))
    args = p.parse_args(argv)

    import torch

    from speed.errors import SpeedError
    from speed.fsutil import atomic_write_text
    from speed.learning import load_dataset, make_splits
    from speed.learning.batched import BatchedConfig, BatchedLinearTeachers, pad_shards
    from speed.learning.features import project_on_pool, scattering_features
    from speed.machine import machine
    from speed.reproduce.config import SCATTERING_TEACHER
    from speed.reproduce.students import FEATURE_BASELINE

    torch.set_num_threads(args.threads)
    try:
        ds = load_dataset(args.dataset)
        splits = make_splits(ds, args.holders, seed=args.seed)
        base = scattering_features(ds, splits, cache_dir=args.cache_dir, require_cache=True, progress=False)
    except SpeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t_cfg = BatchedConfig(**SCATTERING_TEACHER)
    b_cfg = BatchedConfig(**FEATURE_BASELINE)
    rows = []
    for c in args.components:
        feats = base if c == 0 else project_on_pool(base, splits, c, seed=args.seed)
        x, y, mask = pad_shards(feats.train, ds.y_train, splits.holder_indices)
        heads = BatchedLinearTeachers(splits.num_holders, feats.dim, ds.num_classes, seed=args.seed,
                                      init_std=t_cfg.init_std)
        t0 = time.perf_counter()
        heads.fit(x, y, mask, t_cfg)
        teach_s = time.perf_counter() - t0
        del x, y, mask
        x_test = feats.test_split(splits)
        votes = heads.predict(x_test)  # (N, n)
        counts = np.stack([(votes == k).sum(axis=0) for k in range(ds.num_classes)], axis=1)
        t0 = time.perf_counter()
        baseline = BatchedLinearTeachers(1, feats.dim, ds.num_classes, seed=args.seed, init_std=b_cfg.init_std)
        baseline.fit(feats.train, np.asarray(ds.y_train)[None, :], None, b_cfg)
        base_s = time.perf_counter() - t0
        row = {"components": c or feats.dim, "projected": c != 0, "projection_seconds": feats.projection_seconds,
               "teacher_train_seconds": teach_s,
               "teacher_mean_accuracy": float((votes == splits.test_y[None, :]).mean()),
               "plurality_accuracy": float((counts.argmax(axis=1) == splits.test_y).mean()),
               "baseline_accuracy": float(baseline.accuracies(x_test, splits.test_y)[0]),
               "baseline_train_seconds": base_s}
        rows.append(row)
        print(json.dumps(row), flush=True)

    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    result = {"dataset": args.dataset, "holders": args.holders, "seed": args.seed, "test_points": len(splits.test_y),
              "teacher_recipe": SCATTERING_TEACHER, "baseline_recipe": FEATURE_BASELINE, "rows": rows,
              "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(["benchmarks/teacher_projection.py", *(argv if argv is not None else sys.argv[1:])])}
    out, m = Path(args.output), result["machine"]
    atomic_write_text(out / f"teacher-projection-{stamp}.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# Scattering teachers: all features vs the public pool's principal components ({args.dataset}, "
             f"N = {args.holders})", "",
             f"Results: `teacher-projection-{stamp}.json`. Machine: {m['cpu_model']}, {m['cpus']} CPUs, torch threads "
             f"{args.threads}, load average {m.get('load_average_1_5_15')}; date {result['date']}. "
             f"Command: `{result['command']}`.", "",
             f"Teachers: one linear head per holder, {SCATTERING_TEACHER['steps']} full-batch Adam steps, trained as "
             f"one batched model; accuracy on the {len(splits.test_y)} test-split images (never queried). Baseline: "
             "the linear students' head trained on every training image.", "",
             "| features | teacher training | teacher mean acc. | plurality acc. | linear baseline (60k images) |",
             "|---|---|---|---|---|"]
    for r in rows:
        what = f"{r['components']} principal components of the pool" if r["projected"] else f"all {r['components']}"
        lines.append(f"| {what} | {r['teacher_train_seconds']:.0f} s | {100 * r['teacher_mean_accuracy']:.1f} % | "
                     f"{100 * r['plurality_accuracy']:.1f} % | {100 * r['baseline_accuracy']:.1f} % |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
