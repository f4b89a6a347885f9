"""Stages ``data``, ``teachers`` and ``votes`` of ``speed reproduce``.

Two teacher recipes (``--teachers``):

* ``cnn`` — one network per holder on its image shard (:func:`speed.learning.train_teachers`,
  one checkpoint per teacher, fingerprinted by shard, model, recipe and seed);
* ``scattering`` — fixed scattering features (no parameter, no data dependence: they cost no
  privacy; :mod:`speed.learning.features`, checksummed cache), projected on the top principal
  components of the public pool (:func:`speed.learning.features.project_on_pool`; public data
  only, so no privacy cost either), and one linear head per holder, all
  heads trained as one batched model (:class:`speed.learning.BatchedLinearTeachers`, one resumable
  checkpoint fingerprinted by the features' key, the shards, the recipe and the seed).  A holder
  then answers a query with its head on the query's (public) features.

The vote matrices of every teacher on the public pool and on the test split are saved in the run's
state (``votes-<weights digest>.npz``), so accounting and noise grids can be recomputed without
retraining; they are keyed by the teachers' weights and never reused for other teachers.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from speed.errors import InputError, SpeedError
from speed.fsutil import atomic_path


@dataclass
class Data:
    """Output of the ``data`` stage: the dataset and its holder / pool / test partition."""

    dataset: Any
    splits: Any


@dataclass
class Teachers:
    """Output of the ``teachers`` stage.

    ``pool_inputs`` / ``test_inputs``: what a teacher reads for a pool or test point (images, or
    standardised scattering features); ``predictors[i](x)`` is holder i's vote on such inputs;
    ``votes(x)`` all teachers' votes (N, n).
    """

    kind: str
    info: dict[str, Any]
    digest: str
    pool_inputs: np.ndarray = field(repr=False)
    test_inputs: np.ndarray = field(repr=False)
    predictors: list[Callable[[np.ndarray], np.ndarray]] = field(repr=False)
    votes: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    features: Any = field(default=None, repr=False)

    def holders(self, noise) -> list:
        """One :class:`speed.holder.DataHolder` per teacher, sampling shares from ``noise``."""
        from speed.holder import DataHolder

        return [DataHolder(i, p, rng=None, noise=noise) for i, p in enumerate(self.predictors)]


@dataclass
class Votes:
    """Output of the ``votes`` stage: int16 vote matrices (N, pool) and (N, eval points)."""

    pool: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    eval_indices: np.ndarray = field(repr=False)
    path: Path
    from_cache: bool
    seconds: float


def stage_data(cfg) -> Data:
    from speed.learning import load_dataset, make_splits

    dataset = (load_dataset(cfg.dataset, cfg.data_dir, include_extra=bool(cfg.include_extra))
               if cfg.dataset == "svhn" else load_dataset(cfg.dataset, cfg.data_dir))
    if int(cfg.holders) > len(dataset.y_train):
        raise InputError(f"--holders {cfg.holders} exceeds the {len(dataset.y_train)} training points of "
                         f"{dataset.name}")
    splits = make_splits(dataset, int(cfg.holders), seed=cfg.seed, non_iid=cfg.non_iid)
    if cfg.max_queries > splits.pool_size:
        raise InputError(f"--queries: {cfg.max_queries} queries exceed the public pool of {splits.pool_size} points")
    return Data(dataset, splits)


def _weights_digest(models) -> str:
    h = hashlib.sha256()
    for m in models:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stage_features(cfg, data: Data, progress: bool, say):
    """Scattering features of every image (:class:`speed.learning.FeatureSet`), or None for CNN teachers."""
    if cfg.teachers != "scattering":
        return None
    from speed.learning.features import POOL_COMPONENTS, ScatteringSpec, project_on_pool, scattering_features

    feats = scattering_features(data.dataset, data.splits, ScatteringSpec(), cache_dir=Path(cfg.cache_dir),
                                cache_file=cfg.features, progress=progress)
    say(f"scattering features: {feats.dim} per image, {'from cache' if feats.from_cache else 'computed'} "
        f"({feats.cache_path})")
    components = min(POOL_COMPONENTS, data.splits.pool_size, feats.dim)
    feats = project_on_pool(feats, data.splits, components, seed=cfg.seed)
    say(f"projected on the top {components} principal components of the public pool "
        f"({feats.projection_seconds:.1f} s)")
    return feats


def stage_teachers(cfg, data: Data, features, progress: bool, say) -> Teachers:
    if cfg.teachers == "scattering":
        return _scattering_teachers(cfg, data, features, progress, say)
    return _cnn_teachers(cfg, data, progress, say)


def _cnn_teachers(cfg, data: Data, progress: bool, say) -> Teachers:
    from speed.learning import predict, train_teachers
    from speed.pipeline import teacher_checkpoint_dir

    dataset, splits = data.dataset, data.splits
    model_name, t_cfg = cfg.model_name(), cfg.teacher_training()
    suffix = "" if cfg.model is None else f"-{cfg.model}"
    suffix += "" if cfg.teacher_steps is None else f"-steps{cfg.teacher_steps}"
    if cfg.non_iid is not None:
        suffix += f"-noniid{cfg.non_iid:g}"
    if cfg.dataset == "svhn" and cfg.include_extra:
        suffix += "-extra"
    ckpt = teacher_checkpoint_dir(Path(cfg.cache_dir), dataset.name, int(cfg.holders), cfg.seed, suffix)
    say(f"teachers: {cfg.holders} × {model_name}, {t_cfg.steps} steps each, checkpoints in {ckpt}")
    teachers = train_teachers(dataset, splits, model_name, config=t_cfg, seed=cfg.seed, checkpoint_dir=ckpt,
                              progress=progress, workers=cfg.workers, device=cfg.device)
    info = {
        "kind": "cnn", "model": teachers.model_name, "config": asdict(teachers.config), "checkpoint_dir": str(ckpt),
        "trained_now": len(teachers.trained), "loaded_from_checkpoints": len(teachers.loaded),
        "train_seconds_total": float(np.sum(teachers.train_seconds)),
        "train_seconds_mean": float(np.mean(teachers.train_seconds)),
        "seconds_per_step": float(np.mean(teachers.train_seconds)) / max(1, teachers.config.steps),
        "shard_size_mean": float(np.mean([len(i) for i in splits.holder_indices])),
    }
    predictors = [(lambda x, m=m: predict(m, x)) for m in teachers.models]
    return Teachers("cnn", info, _weights_digest(teachers.models), splits.pool_x, splits.test_x, predictors,
                    teachers.votes)


def _scattering_teachers(cfg, data: Data, feats, progress: bool, say) -> Teachers:
    from speed.learning.batched import BatchedLinearTeachers, pad_shards, teacher_checkpoint

    dataset, splits = data.dataset, data.splits
    spec = feats.spec
    b_cfg = cfg.scattering_training()
    x, y, mask = pad_shards(feats.train, dataset.y_train, splits.holder_indices)
    fp, ckpt = teacher_checkpoint(cfg.cache_dir, feats.key, splits, b_cfg, cfg.seed)
    heads = BatchedLinearTeachers(splits.num_holders, feats.dim, dataset.num_classes, seed=cfg.seed,
                                  init_std=b_cfg.init_std)
    say(f"teachers: {cfg.holders} linear heads on scattering features, {b_cfg.steps} full-batch Adam steps "
        f"(lr {b_cfg.lr:g}, weight decay {b_cfg.weight_decay:g}), checkpoint {ckpt}")
    resumed = ckpt.is_file()
    heads.fit(x, y, mask, b_cfg, progress=progress, checkpoint=ckpt, fingerprint=fp)
    del x, y, mask
    if heads.steps_done != b_cfg.steps:  # pragma: no cover - fit trains to config.steps
        raise SpeedError(f"batched teachers stopped at step {heads.steps_done} of {b_cfg.steps}")
    w = heads.weight.detach().cpu().numpy()
    b = heads.bias.detach().cpu().numpy()[:, 0, :]

    def head(i: int) -> Callable[[np.ndarray], np.ndarray]:
        wi, bi = w[i], b[i]
        return lambda xq: np.argmax(np.asarray(xq, dtype=np.float32) @ wi + bi, axis=1)

    info = {
        "kind": "scattering", "model": f"linear head on scattering features (J={spec.J}, L={spec.L}, "
                                       f"order {spec.max_order}, D={spec.dim(dataset.in_shape)}) projected on "
                                       f"{feats.components} principal components of the public pool",
        "components": feats.components, "projection_seconds": feats.projection_seconds,
        "config": asdict(b_cfg), "checkpoint": str(ckpt), "features_cache": str(feats.cache_path),
        "features_from_cache": feats.from_cache, "features_transform_seconds": feats.transform_seconds,
        "trained_now": 0 if resumed else int(splits.num_holders),
        "loaded_from_checkpoints": int(splits.num_holders if resumed else 0),
        "train_seconds_total": float(heads.train_seconds),
        "train_seconds_mean": float(heads.train_seconds) / splits.num_holders,  # amortised
        "seconds_per_step": float(heads.train_seconds) / max(1, heads.steps_done),
        "shard_size_mean": float(np.mean([len(i) for i in splits.holder_indices])),
    }
    return Teachers("scattering", info, heads.weights_digest(), feats.pool(splits), feats.test_split(splits),
                    [head(i) for i in range(splits.num_holders)], heads.predict, features=feats)


def stage_votes(cfg, data: Data, teachers: Teachers, state_dir: Path, say) -> Votes:
    """Every teacher's vote on the whole public pool and on the evaluation points of the test split."""
    splits = data.splits
    n_test = len(splits.test_y)
    eval_idx = np.arange(n_test)
    if cfg.eval_points is not None and cfg.eval_points < n_test:
        eval_idx = np.sort(np.random.default_rng(cfg.seed).choice(n_test, cfg.eval_points, replace=False))
    path = state_dir / f"votes-{teachers.digest}-{len(eval_idx)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                pool, test, idx = z["pool_votes"], z["test_votes"], z["eval_indices"]
            if pool.shape == (int(cfg.holders), splits.pool_size) and np.array_equal(idx, eval_idx):
                return Votes(pool.astype(np.int64), test.astype(np.int64), idx, path, True, 0.0)
        except (OSError, ValueError, KeyError):
            pass  # written atomically: only a foreign file can be unreadable; recompute
    say(f"votes of {cfg.holders} teachers on {splits.pool_size} pool and {len(eval_idx)} test points")
    t0 = time.perf_counter()
    pool = np.asarray(teachers.votes(teachers.pool_inputs), dtype=np.int64)
    test = np.asarray(teachers.votes(teachers.test_inputs[eval_idx]), dtype=np.int64)
    seconds = time.perf_counter() - t0
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, pool_votes=pool.astype(np.int16), test_votes=test.astype(np.int16),
                            eval_indices=eval_idx, pool_indices=splits.pool_indices, pool_y=splits.pool_y,
                            test_y=splits.test_y[eval_idx])
    return Votes(pool, test, eval_idx, path, False, seconds)


def stage_evaluation(data: Data, teachers: Teachers, votes: Votes, stages) -> dict[str, Any]:
    """Mean / min / max teacher accuracy and plurality-ensemble accuracy on the evaluation points."""
    from speed.learning import plurality, vote_counts

    key = f"teacher_eval-{teachers.digest}-{len(votes.eval_indices)}"
    cached = stages.get(key)
    if cached is not None:
        return cached
    y = data.splits.test_y[votes.eval_indices]
    per_teacher = (votes.test == y[None, :]).mean(axis=1)
    ensemble = plurality(vote_counts(votes.test, data.dataset.num_classes))
    pool_plural = plurality(vote_counts(votes.pool, data.dataset.num_classes))
    result = {
        "test_points": int(len(y)),
        "teacher_accuracy": [float(a) for a in per_teacher],
        "teacher_mean": float(per_teacher.mean()), "teacher_min": float(per_teacher.min()),
        "teacher_max": float(per_teacher.max()),
        "ensemble_plurality": float(np.mean(ensemble == y)),
        "ensemble_plurality_pool": float(np.mean(pool_plural == data.splits.pool_y)),
        "seconds": votes.seconds,
        "votes_file": str(votes.path),
    }
    stages.put(key, result)
    return result
