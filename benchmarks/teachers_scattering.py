"""Scattering-feature teachers for Fashion-MNIST (issue 21 §1) and their vote matrices (issue 19 §6).

    .venv/bin/python benchmarks/teachers_scattering.py [--holders 250] [--steps 300] [--lr 0.01] \
        [--weight-decay 0] [--cache-dir .speed-cache] [--threads 2]

Same partition as ``speed reproduce`` (``make_splits(dataset, holders, seed=0)``: holder shards of the
training set, public pool = 5,000 test images, test split = the other 5,000, never queried).
Features: scattering J = 2, L = 8 (81 × 7 × 7), standardised with the public pool's statistics
(:mod:`speed.learning.features`, cached in ``CACHE/features/``).  Teachers: one linear head per
holder, all heads trained as one batched model (:mod:`speed.learning.batched`, full-batch Adam,
checkpointed in ``CACHE/batched-teachers/``, resumed if killed).

Writes ``benchmarks/results/frontier/teachers-<stamp>.json`` (teacher mean/min/max accuracy,
plurality accuracy on the test split, times, machine) and the vote matrices
``benchmarks/results/frontier/votes-<dataset>-N<holders>.npz``: ``pool_votes`` int16 (N, pool),
``test_votes`` int16 (N, test), ``pool_indices``, ``test_indices``, ``pool_y``, ``test_y`` (if the
compressed file exceeds 10 MB it goes to ``CACHE/frontier/`` instead and the JSON says so).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "results" / "frontier"
SIZE_LIMIT = 10 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--holders", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-std", type=float, default=0.01)
    p.add_argument("--J", type=int, default=2)
    p.add_argument("--L", type=int, default=8)
    p.add_argument("--cache-dir", default=str(ROOT / ".speed-cache"))
    p.add_argument("--features", default=None, help="an existing feature cache file (error if missing or corrupt)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(OUT_DIR))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    from speed.errors import SpeedError
    from speed.fsutil import atomic_write_bytes, atomic_write_json
    from speed.learning import load_dataset, make_splits, plurality, vote_counts
    from speed.learning.batched import BatchedConfig, BatchedLinearTeachers, pad_shards, teacher_checkpoint
    from speed.learning.features import ScatteringSpec, scattering_features
    from speed.machine import machine

    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    try:
        t_start = time.perf_counter()
        ds = load_dataset(args.dataset)
        splits = make_splits(ds, args.holders, seed=args.seed)
        spec = ScatteringSpec(J=args.J, L=args.L)
        t0 = time.perf_counter()
        feats = scattering_features(ds, splits, spec, cache_dir=args.cache_dir, cache_file=args.features,
                                    progress=progress)
        features_s = time.perf_counter() - t0
        print(f"features: {feats.dim} per image, {'from cache ' if feats.from_cache else 'computed'} "
              f"({feats.transform_seconds:.0f} s transform), {feats.cache_path}", flush=True)

        cfg = BatchedConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, init_std=args.init_std)
        x, y, mask = pad_shards(feats.train, ds.y_train, splits.holder_indices)
        fp, ckpt = teacher_checkpoint(args.cache_dir, feats.key, splits, cfg, args.seed)
        heads = BatchedLinearTeachers(splits.num_holders, feats.dim, ds.num_classes, seed=args.seed,
                                      init_std=cfg.init_std)
        t0 = time.perf_counter()
        heads.fit(x, y, mask, cfg, progress=progress, checkpoint=ckpt, fingerprint=fp)
        train_wall = time.perf_counter() - t0
        del x
        t0 = time.perf_counter()
        test_votes = heads.predict(feats.test_split(splits))
        pool_votes = heads.predict(feats.pool(splits))
        eval_s = time.perf_counter() - t0
        total_s = time.perf_counter() - t_start
    except SpeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    test_y, pool_y = splits.test_y, splits.pool_y
    per_teacher = (test_votes == test_y[None, :]).mean(axis=1)
    plur_test = plurality(vote_counts(test_votes, ds.num_classes))
    plur_pool = plurality(vote_counts(pool_votes, ds.num_classes))
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    votes_name = f"votes-{args.dataset}-N{args.holders}.npz"
    buf = io.BytesIO()
    np.savez_compressed(
        buf, pool_votes=pool_votes.astype(np.int16), test_votes=test_votes.astype(np.int16),
        pool_indices=splits.pool_indices, test_indices=splits.test_indices, pool_y=pool_y, test_y=test_y,
        meta=np.frombuffer(json.dumps({"features_key": feats.key, "fingerprint": fp, "weights": heads.weights_digest(),
                                       "config": vars(args)}, default=str).encode(), dtype=np.uint8),
    )
    votes_bytes = buf.getvalue()
    votes_path = (Path(args.cache_dir) / "frontier" if len(votes_bytes) > SIZE_LIMIT else out) / votes_name
    atomic_write_bytes(votes_path, votes_bytes)
    if votes_path != out / votes_name:  # as before: a large file is not left in the results folder
        (out / votes_name).unlink(missing_ok=True)
    result = {
        "benchmark": "teachers_scattering",
        "machine": machine(),
        "torch_threads": args.threads,
        "dataset": args.dataset, "holders": args.holders, "seed": args.seed,
        "shard_size_mean": float(np.mean([len(i) for i in splits.holder_indices])),
        "pool_size": splits.pool_size, "test_size": len(splits.test_indices),
        "features": {"kind": "scattering", "J": spec.J, "L": spec.L, "max_order": spec.max_order, "dim": feats.dim,
                     "standardised_with": "public pool mean/std", "from_cache": feats.from_cache,
                     "transform_seconds": round(feats.transform_seconds, 1), "load_or_compute_seconds": round(features_s, 1),
                     "cache": str(feats.cache_path)},
        "teachers": {"model": "linear head per holder, batched (T, D, K) weights, torch.baddbmm",
                     "optimizer": "full-batch Adam", "config": vars(cfg) if hasattr(cfg, "__dict__") else str(cfg),
                     "steps_done": heads.steps_done, "train_seconds": round(heads.train_seconds, 1),
                     "train_wall_this_run_seconds": round(train_wall, 1),
                     "seconds_per_step": round(heads.train_seconds / max(1, heads.steps_done), 3),
                     "checkpoint": str(ckpt), "weights_digest": heads.weights_digest()},
        "evaluation_seconds": round(eval_s, 1),
        "total_seconds_this_run": round(total_s, 1),
        "teacher_accuracy_test": {"mean": float(per_teacher.mean()), "min": float(per_teacher.min()),
                                  "max": float(per_teacher.max()), "std": float(per_teacher.std())},
        "plurality_accuracy_test": float(np.mean(plur_test == test_y)),
        "plurality_accuracy_pool": float(np.mean(plur_pool == pool_y)),
        "teacher_accuracy_pool_mean": float((pool_votes == pool_y[None, :]).mean()),
        "votes_file": str(votes_path.relative_to(ROOT) if votes_path.is_relative_to(ROOT) else votes_path),
        "votes_file_bytes": votes_path.stat().st_size,
    }
    atomic_write_json(out / f"teachers-{stamp}.json", result, indent=2)
    print(json.dumps({k: result[k] for k in ("teacher_accuracy_test", "plurality_accuracy_test",
                                              "plurality_accuracy_pool", "votes_file", "votes_file_bytes")}, indent=1))
    print(f"teachers: {heads.train_seconds:.0f} s for {heads.steps_done} steps "
          f"({result['teachers']['seconds_per_step']} s/step); wrote {out / f'teachers-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
