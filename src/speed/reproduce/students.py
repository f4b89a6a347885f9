"""Stages ``baseline`` and ``students`` of ``speed reproduce``.

Baseline: the students' own network trained on all training images with their true labels (a
linear head on the teachers' features for linear students, the CNN otherwise).

Students train on exactly the first q queried points for every q of the accuracy curve (query
selection is prefix-stable, so the first q labels of the Q-query run are the labels of a q-query
run).  Methods:

* ``supervised`` / ``semi-supervised`` — the CNN of ``--model`` (semi-supervised: FixMatch-lite on
  the unqueried pool, :mod:`speed.learning.student`);
* ``linear`` — a linear softmax head on the same scattering features as the teachers (free: the
  features cost no privacy), full-batch Adam on the q labelled points;
* ``linear-self-training`` — the ``linear`` student, then one round of self-training on the public
  pool: it pseudo-labels the unqueried pool points where its softmax confidence is ≥ the threshold
  and continues training (warm start) on its labelled plus pseudo-labelled points.  The pool is
  public, so this costs no privacy.

Every (method, q, seed) result is cached in the stage store, keyed by the labels' digest and the
student's recipe; ``--student-seeds`` students per (method, q) give the mean and the spread (std).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from speed.reproduce.config import FEATURE_STUDENT, FEATURE_STUDENTS

#: The non-private baseline of linear students: the students' head and recipe (full-batch Adam),
#: trained on every training image with its true label.
FEATURE_BASELINE = {k: FEATURE_STUDENT[k] for k in ("steps", "lr", "weight_decay", "init_std")}


def student_training(cfg, dataset_name: str):
    from speed.learning import student_config

    s_cfg = student_config(dataset_name)
    return s_cfg if cfg.student_steps is None else replace(s_cfg, steps=int(cfg.student_steps))


def stage_baseline(cfg, data, stages, say, teachers=None) -> dict[str, Any]:
    """Non-private baseline: the student's own network trained on the whole labelled training set.

    Linear students (scattering teachers): the same linear head on the same (projected) features,
    trained on every training image's features with the true labels; otherwise the student's CNN.
    """
    if teachers is not None and teachers.features is not None and all(m in FEATURE_STUDENTS for m in cfg.methods):
        return _feature_baseline(cfg, data, teachers, stages, say)
    from speed.learning import accuracy, train_student

    dataset, splits = data.dataset, data.splits
    model_name, s_cfg = cfg.model_name(), student_training(cfg, dataset.name)
    key = "baseline-" + hashlib.sha256(json.dumps(
        {"model": model_name, "config": asdict(s_cfg), "seed": cfg.seed, "eval": len(splits.test_y)},
        sort_keys=True).encode()).hexdigest()[:12]
    baseline = stages.get(key)
    if baseline is None:
        say(f"non-private baseline: {model_name} on all {len(dataset.y_train)} training images, {s_cfg.steps} steps")
        start = time.perf_counter()
        model = train_student(dataset.x_train, dataset.y_train, num_classes=dataset.num_classes,
                              model_name=model_name, config=s_cfg, seed=cfg.seed, device=cfg.device)
        baseline = {"accuracy": accuracy(model, splits.test_x, splits.test_y),
                    "train_seconds": time.perf_counter() - start, "training_images": int(len(dataset.y_train)),
                    "model": model_name, "config": asdict(s_cfg)}
        stages.put(key, baseline)
    return baseline


def _feature_baseline(cfg, data, teachers, stages, say) -> dict[str, Any]:
    """The linear student head (recipe :data:`FEATURE_BASELINE`) on all training images' features."""
    from speed.learning.batched import BatchedConfig, BatchedLinearTeachers

    dataset, splits, feats = data.dataset, data.splits, teachers.features
    f = FEATURE_BASELINE
    key = "baseline-linear-" + hashlib.sha256(json.dumps(
        {"features": feats.key, **f, "seed": cfg.seed, "eval": len(splits.test_y)},
        sort_keys=True).encode()).hexdigest()[:12]
    baseline = stages.get(key)
    if baseline is None:
        say(f"non-private baseline: the linear student head on the features of all {len(dataset.y_train)} "
            f"training images, {f['steps']} steps")
        start = time.perf_counter()
        head = BatchedLinearTeachers(1, feats.dim, dataset.num_classes, seed=cfg.seed, init_std=f["init_std"])
        head.fit(feats.train, np.asarray(dataset.y_train)[None, :], None,
                 BatchedConfig(steps=f["steps"], lr=f["lr"], weight_decay=f["weight_decay"], init_std=f["init_std"]))
        baseline = {"accuracy": float(head.accuracies(teachers.test_inputs, splits.test_y)[0]),
                    "train_seconds": time.perf_counter() - start, "training_images": int(len(dataset.y_train)),
                    "model": "linear head on the teachers' features (the linear students' network)", "config": f}
        stages.put(key, baseline)
    return baseline


def _feature_students(method: str, teachers, xq: np.ndarray, labels: np.ndarray, unqueried: np.ndarray,
                      seeds: list[int], num_classes: int, y_test: np.ndarray) -> list[float]:
    """Linear heads (one per seed, trained as one batched model) on the q labelled queries' features."""
    import torch

    from speed.learning.batched import BatchedConfig, BatchedLinearTeachers

    f = FEATURE_STUDENT
    cfg = BatchedConfig(steps=f["steps"], lr=f["lr"], weight_decay=f["weight_decay"], init_std=f["init_std"])
    heads = BatchedLinearTeachers(len(seeds), xq.shape[1], num_classes, seed=0, teacher_ids=seeds,
                                  init_std=cfg.init_std)
    y = np.repeat(labels[None, :], len(seeds), axis=0)
    heads.fit(xq, y, None, cfg)
    if method == "linear-self-training" and len(unqueried):
        xu = teachers.pool_inputs[unqueried]
        probs = heads.predict_proba(xu)  # (S, U, K)
        x_all = np.concatenate([xq, xu])
        y_all = np.concatenate([y, probs.argmax(axis=-1)], axis=1)
        mask = np.concatenate([np.ones(y.shape, dtype=bool), probs.max(axis=-1) >= f["self_train_threshold"]], axis=1)
        st = BatchedLinearTeachers(len(seeds), xq.shape[1], num_classes, seed=0, teacher_ids=seeds, init_std=0.0)
        with torch.no_grad():
            st.weight.copy_(heads.weight)
            st.bias.copy_(heads.bias)
        st.fit(x_all, y_all, mask, replace(cfg, steps=f["self_train_steps"]))
        heads = st
    return [float(a) for a in heads.accuracies(teachers.test_inputs, y_test)]


def stage_students(cfg, data, teachers, positions: np.ndarray, labels: np.ndarray, q_values: list[int],
                   stages, say) -> dict[tuple[str, int], dict[str, Any]]:
    """Accuracy (mean, std over ``--student-seeds``) of every method at every q: {(method, q): {...}}."""
    from speed.learning import Queries, accuracy, fit_student

    splits = data.splits
    model_name, s_cfg = cfg.model_name(), student_training(cfg, data.dataset.name)
    label_digest = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:12]
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for q in q_values:
        labelled = Queries(splits, positions[:q]).label(labels[:q])
        for method in cfg.methods:
            feature = method in FEATURE_STUDENTS
            recipe = ({"features": teachers.features.key, **FEATURE_STUDENT} if feature
                      else {"model": model_name, **asdict(s_cfg)})
            rdig = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
            seeds = [1000 * cfg.seed + s for s in range(cfg.student_seeds)]
            skeys = [f"student-{method}-q{q}-seed{s}-{label_digest}-{rdig}" for s in range(cfg.student_seeds)]
            results = [stages.get(k) for k in skeys]
            if any(r is None for r in results):
                say(f"student {method}, {q} labelled queries, {len(seeds)} seed(s)")
                start = time.perf_counter()
                if feature:
                    unq = np.setdiff1d(np.arange(splits.pool_size), positions[:q])
                    accs = _feature_students(method, teachers, teachers.pool_inputs[positions[:q]], labels[:q], unq,
                                             seeds, data.dataset.num_classes, splits.test_y)
                    secs = [(time.perf_counter() - start) / len(seeds)] * len(seeds)
                else:
                    accs, secs = [], []
                    for seed in seeds:
                        t0 = time.perf_counter()
                        student = fit_student(labelled, method=method, model_name=model_name, config=s_cfg,
                                              seed=seed, device=cfg.device)
                        accs.append(accuracy(student, splits.test_x, splits.test_y))
                        secs.append(time.perf_counter() - t0)
                results = [{"accuracy": float(a), "seconds": float(s)} for a, s in zip(accs, secs)]
                for k, r in zip(skeys, results):
                    stages.put(k, r)
            accs = [r["accuracy"] for r in results]
            out[(method, q)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                "values": [float(a) for a in accs],
                                "seconds_each": float(np.mean([r["seconds"] for r in results]))}
    return out
