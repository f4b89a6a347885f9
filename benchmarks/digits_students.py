"""Which student for the digits demo: the CNN of ``make demo`` or a linear model (issue 21 §4).

    .venv/bin/python benchmarks/digits_students.py [--seeds 3] [--cache-dir .speed-cache]

The demo's setting (``speed demo`` defaults: sklearn digits, N = 20 holders, 60 queries, Skellam
noise calibrated to the default publishable ε): the demo's CNN teachers (trained or loaded from the
cache), their clear vote counts on the demo's 60 queries, and for each seed noisy labels drawn
from the exact law of the summed noise (argmax of counts + Skellam(σ²/2, σ²/2) per class, ties to
the lowest class, as the encrypted circuit; a clear-text simulation, nothing is encrypted here).
Students trained on the 60 labelled queries, accuracy on the demo's test split (never queried):

* ``cnn``: the demo's student (``speed.learning.fit_student``, supervised);
* ``logistic``: multinomial logistic regression on the 64 pixels (scikit-learn, C = 1);
* ``logistic + self-training``: the same, then refitted with the unqueried pool points it
  labels with confidence >= 0.9.

Each with the noisy labels and, as a reference, the true labels of the same queries.  Writes
``benchmarks/results/digits_students/digits-students-<stamp>.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "results" / "digits_students"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache-dir", default=None, help="teacher checkpoints (default: $SPEED_CACHE_DIR or .speed-cache)")
    p.add_argument("--output", default=str(OUT_DIR))
    args = p.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression

    from speed.fsutil import atomic_write_text, default_cache_dir
    from speed.learning import accuracy, fit_student, load_dataset, make_splits, select_queries, train_teachers, vote_counts
    from speed.machine import machine
    from speed.pipeline import RunConfig, noise_mechanism, teacher_checkpoint_dir

    torch.set_num_threads(1)
    cfg = RunConfig()
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    ds = load_dataset(cfg.dataset)
    splits = make_splits(ds, cfg.holders, seed=cfg.seed)
    noise = noise_mechanism(cfg)
    teachers = train_teachers(ds, splits, seed=cfg.seed, progress=False, workers=1,
                              checkpoint_dir=teacher_checkpoint_dir(cache, ds.name, cfg.holders, cfg.seed))
    queries = select_queries(splits, cfg.queries, seed=cfg.seed)
    counts = vote_counts(teachers.votes(queries.x), ds.num_classes)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    unqueried = np.setdiff1d(np.arange(splits.pool_size), queries.positions)
    x_u = flat(splits.pool_x[unqueried])

    def logistic(y: np.ndarray, self_train: bool) -> float:
        clf = LogisticRegression(C=1.0, max_iter=5000).fit(flat(queries.x), y)
        if self_train:
            proba = clf.predict_proba(x_u)
            keep = proba.max(axis=1) >= 0.9
            if keep.any():
                clf = LogisticRegression(C=1.0, max_iter=5000).fit(
                    np.concatenate([flat(queries.x), x_u[keep]]),
                    np.concatenate([y, clf.classes_[proba.argmax(axis=1)][keep]]))
        return float((clf.predict(flat(splits.test_x)) == splits.test_y).mean())

    acc: dict[str, dict[str, list[float]]] = {}
    label_acc = []
    half = float(noise.sigma) ** 2 / 2
    for seed in range(args.seeds):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD1]))
        noisy = np.argmax(counts + rng.poisson(half, counts.shape) - rng.poisson(half, counts.shape), axis=1)
        label_acc.append(float((noisy == queries.true_labels).mean()))
        for labels_name, y in (("noisy", noisy), ("true", queries.true_labels)):
            student = fit_student(queries.label(y), method="supervised", seed=seed)
            row = acc.setdefault(labels_name, {})
            row.setdefault("cnn", []).append(float(accuracy(student, splits.test_x, splits.test_y)))
            row.setdefault("logistic", []).append(logistic(y, False))
            row.setdefault("logistic + self-training", []).append(logistic(y, True))
        print(f"seed {seed}: label accuracy {label_acc[-1]:.3f}", flush=True)

    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    result = {"holders": cfg.holders, "queries": cfg.queries, "noise": noise.to_dict(),
              "target_epsilon": cfg.protocol.planned_target_epsilon, "seeds": args.seeds,
              "label_accuracy": label_acc, "test_points": int(len(splits.test_y)),
              "student_accuracy": acc, "machine": machine(),
              "command": " ".join(["benchmarks/digits_students.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.output)
    atomic_write_text(out / f"digits-students-{stamp}.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# Digits demo: which student (N = {cfg.holders}, {cfg.queries} queries, {noise}, "
             f"publishable ε {result['target_epsilon']:g})", "",
             f"Results: `digits-students-{stamp}.json`; {args.seeds} noise seeds (clear-text simulation of the summed "
             f"noise law); mean label accuracy {100 * np.mean(label_acc):.1f} %; accuracy on the "
             f"{len(splits.test_y)} test-split images, mean ± sd over seeds. Date {result['machine']['date_utc']}.", "",
             "| student | noisy labels | true labels |", "|---|---|---|"]
    for name in acc["noisy"]:
        cells = [f"{100 * np.mean(acc[k][name]):.1f} ± {100 * np.std(acc[k][name]):.1f} %" for k in ("noisy", "true")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
