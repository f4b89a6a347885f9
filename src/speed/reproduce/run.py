"""``speed reproduce``: the paper's experiments (SPEC §6) through the real encrypted pipeline.

Stages (each timed; each resumable):

1. **teachers** — one per holder, on disjoint shards, checkpointed per teacher
   (:func:`speed.learning.train_teachers`): a killed run retrains only missing teachers.
2. **teacher evaluation** — every teacher's votes on the test split (mean teacher accuracy,
   plain plurality-vote ensemble accuracy); cached, keyed by a digest of the teachers' weights.
3. **encrypted labelling** — the largest Q of ``--queries`` is labelled once through the
   real TFHE pipeline (:mod:`speed.protocol`: pads, holder encryption, homomorphic argmax,
   owner decryption).  Every batch is appended to a label store as soon as it is decrypted,
   and every query is charged in the privacy ledger *before* its label is released.  A
   resumed run labels only what is missing.  Labels do not depend on τ; τ only changes the
   accounting.
4. **privacy** — ε for every (Q, τ) from the same vote counts, data-independent
   (publishable) and data-dependent (not publishable), for the lattice mechanism the
   circuit runs (:func:`speed.pipeline.lattice_privacy`).
5. **non-private baseline** — one model trained on the whole training set.
6. **students** — supervised and semi-supervised, on exactly the first q queried points
   for every q of the accuracy curve (query selection is prefix-stable, so the first q
   labels of the Q-query run are the labels of a q-query run).
7. **report** — ``<output>/<dataset>/report.md``, ``results.json`` and two PNG plots.

Noise streams.  With seeded (experiment) noise, each circuit batch draws its holders'
shares from streams seeded by (seed, batch index); the batch index is persisted, so a
resumed run never reuses the noise of an earlier batch.  ``production_noise`` draws from
the OS CSPRNG instead.

Crash between charge and store.  The ledger is written before decryption and the label
store after it; a run killed in between has charged queries whose labels are lost.  On
resume they are asked again and charged again under a new ledger id (``"<pos>/retry<k>"``):
the earlier answer may have been decrypted, so it is never assumed free.  The report counts
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from speed.errors import BudgetExhaustedError, InputError, SpeedError

#: SPEC §6 settings per dataset (digits: the small bundled-data defaults of ``speed demo``).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"holders": 20, "queries": (60,), "curve_points": 4},
    "fashion-mnist": {"holders": 250, "queries": (100,), "curve_points": 3},
    "mnist": {"holders": 250, "queries": (100,), "curve_points": 3},
    "svhn": {"holders": 250, "queries": (500,), "curve_points": 3, "include_extra": True},
}
REPRODUCE_DATASETS = tuple(DATASET_DEFAULTS)

#: The baseline to beat (SPEC §6): PATE 2017 with a central trusted aggregator.
PATE_2017 = {
    "mnist": {"queries": 100, "epsilon": 2.04, "student_accuracy": 0.980},
    "svhn": {"queries": 500, "epsilon": 5.04, "student_accuracy": 0.827},
}

STUDENT_METHODS = ("supervised", "semi-supervised")


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of one reproduction; ``None`` fields take the dataset's default (:meth:`resolved`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    holders: int | None = None
    queries: tuple[int, ...] = ()
    taus: tuple[float, ...] = (1.0, 0.9, 0.7)
    gamma: float = 3.3  # γ = 1/λ (SPEC §6: λ = 0.31, analysed with γ = 3.3; we add noise with λ = 1/γ)
    delta: float = 1e-5
    resolution: int = 1
    batch_size: int = 10
    seed: int = 0
    model: str | None = None  # teachers, students and baseline; None: the dataset's default_model
    teacher_steps: int | None = None  # None: the dataset's TEACHER_CONFIG (SPEC §6 for MNIST)
    student_steps: int | None = None  # None: the dataset's STUDENT_CONFIG (also for the baseline)
    student_seeds: int = 1
    curve_points: int | None = None  # extra prefixes Qmax/2, Qmax/4, ... for the accuracy curve
    methods: tuple[str, ...] = STUDENT_METHODS
    plaintext_check: bool = False
    production_noise: bool = False
    non_iid: float | None = None
    include_extra: bool | None = None  # SVHN: add the 531k "extra" images to the holders' data
    eval_points: int | None = None  # teacher/ensemble accuracy on this many test points (None: all)
    workers: int | None = None  # teacher worker processes (None: one per CPU)
    threads: int = 1  # torch threads for everything in this process
    device: str | None = None  # torch device for teacher/student/baseline training (e.g. "cuda")
    output: str = "results"
    cache_dir: str = ".speed-cache"
    noise_failure: float = 1e-12
    global_p_error: float = 1e-9

    def resolved(self) -> "ReproduceConfig":
        if self.dataset not in DATASET_DEFAULTS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(REPRODUCE_DATASETS)}")
        d = DATASET_DEFAULTS[self.dataset]
        cfg = replace(
            self,
            holders=self.holders if self.holders is not None else d["holders"],
            queries=tuple(self.queries) if self.queries else tuple(d["queries"]),
            taus=tuple(float(t) for t in self.taus),
            curve_points=self.curve_points if self.curve_points is not None else d["curve_points"],
            include_extra=self.include_extra if self.include_extra is not None else d.get("include_extra", False),
            methods=tuple(self.methods),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse bad settings before any work; messages name the `speed reproduce` option."""
        from speed.cli import options as opt

        if self.holders is None:
            raise InputError("--holders: need the number of data holders N")
        opt.check_int(self.holders, "--holders", 2, opt.MAX_HOLDERS)
        if not self.queries:
            raise InputError("--queries: need at least one query count")
        for q in self.queries:
            opt.check_positive_int(q, "--queries")
        if not self.taus:
            raise InputError("--tau: need at least one τ")
        for t in self.taus:
            opt.check_tau(t, "--tau")
        opt.check_gamma(self.gamma, "--gamma")
        opt.check_delta(self.delta, "--delta")
        opt.check_resolution(self.resolution, "--resolution")
        opt.check_positive_int(self.batch_size, "--batch-size")
        opt.check_seed(self.seed, "--seed")
        for name in ("teacher_steps", "student_steps"):
            v = getattr(self, name)
            if v is not None:
                opt.check_positive_int(v, f"--{name.replace('_', '-')}")
        opt.check_positive_int(self.student_seeds, "--student-seeds")
        if self.curve_points is not None:
            opt.check_int(self.curve_points, "--curve-points", 0)
        opt.check_positive_int(self.threads, "--threads")
        if self.workers is not None:
            opt.check_positive_int(self.workers, "--workers")
        bad = [m for m in self.methods if m not in STUDENT_METHODS]
        if bad or not self.methods:
            raise InputError(f"--students: must be among {', '.join(STUDENT_METHODS)}, got {list(self.methods)}")
        if self.model is not None:
            from speed.learning import MODELS

            if self.model not in MODELS:
                raise InputError(f"--model: unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.eval_points is not None:
            opt.check_positive_int(self.eval_points, "--eval-points")
        if self.non_iid is not None:
            opt.check_positive_float(self.non_iid, "--non-iid")
        if self.device is not None:
            opt.check_torch_device(self.device, "--device")
        opt.check_output_dir(self.output, "--output")
        opt.check_output_dir(self.cache_dir, "--cache-dir")

    @property
    def max_queries(self) -> int:
        return max(self.queries)

    @property
    def ledger_tau(self) -> float:
        """τ the owner's ledger charges with: the most pessimistic of the τ studied."""
        return min(self.taus)

    def run_config(self, tau: float | None = None):
        """The :class:`speed.pipeline.RunConfig` of this reproduction at ``tau``."""
        from speed.pipeline import RunConfig

        return RunConfig(
            dataset=self.dataset, data_dir=self.data_dir, holders=int(self.holders), queries=self.max_queries,
            mechanism="lattice", gamma=self.gamma, tau=self.ledger_tau if tau is None else float(tau), delta=self.delta,
            resolution=self.resolution, batch_size=self.batch_size, noise_failure=self.noise_failure,
            global_p_error=self.global_p_error, seed=self.seed, production_noise=self.production_noise,
            cache_dir=self.cache_dir,
        )

    def model_name(self) -> str:
        """The network of the teachers, the students and the baseline."""
        from speed.learning import default_model

        return self.model or default_model(self.dataset)

    def teacher_training(self):
        """The teachers' :class:`speed.learning.TrainConfig` (the dataset's, with ``teacher_steps``)."""
        from speed.learning import teacher_config

        t_cfg = teacher_config(self.dataset)
        return t_cfg if self.teacher_steps is None else replace(t_cfg, steps=int(self.teacher_steps))

    def state_key(self) -> str:
        """Identity of the labelling state: everything the labels depend on (not Q, not τ)."""
        key = {k: v for k, v in asdict(self).items() if k in (
            "dataset", "holders", "gamma", "resolution", "batch_size", "seed", "teacher_steps", "non_iid",
            "include_extra", "production_noise", "noise_failure", "global_p_error")}
        key["teachers"] = {"model": self.model_name(), **asdict(self.teacher_training())}
        key["data_dir"] = str(Path(self.data_dir).resolve()) if self.data_dir else None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}-N{self.holders}-s{self.seed}-{digest}"

    def command_line(self) -> str:
        """An explicit ``speed reproduce`` command that reruns (or resumes) this reproduction."""
        parts = ["speed", "reproduce", "--dataset", self.dataset, "--holders", str(self.holders),
                 "--queries", *map(str, self.queries), "--tau", *(f"{t:g}" for t in self.taus),
                 "--gamma", f"{self.gamma:g}", "--delta", f"{self.delta:g}", "--seed", str(self.seed)]
        if self.batch_size != 10:
            parts += ["--batch-size", str(self.batch_size)]
        if self.resolution != 1:
            parts += ["--resolution", str(self.resolution)]
        for flag, value in (("--model", self.model), ("--teacher-steps", self.teacher_steps), ("--student-steps", self.student_steps),
                            ("--non-iid", self.non_iid), ("--eval-points", self.eval_points),
                            ("--workers", self.workers), ("--device", self.device), ("--data-dir", self.data_dir)):
            if value is not None:
                parts += [flag, str(value)]
        if self.student_seeds != 1:
            parts += ["--student-seeds", str(self.student_seeds)]
        parts += ["--curve-points", str(self.curve_points)]
        if self.threads != 1:
            parts += ["--threads", str(self.threads)]
        if tuple(self.methods) != STUDENT_METHODS:
            parts += ["--students", *self.methods]
        if self.plaintext_check:
            parts.append("--plaintext-check")
        if self.production_noise:
            parts.append("--production-noise")
        if self.dataset == "svhn" and not self.include_extra:
            parts.append("--no-extra")
        parts += ["--output", self.output]
        if self.cache_dir != ".speed-cache":
            parts += ["--cache-dir", self.cache_dir]
        return " ".join(parts)


def curve_queries(cfg: ReproduceConfig) -> list[int]:
    """Query counts at which students are trained: ``--queries`` and Qmax/2, Qmax/4, ... (curve_points)."""
    qmax = cfg.max_queries
    points = set(cfg.queries)
    for i in range(1, int(cfg.curve_points or 0)):
        q = int(round(qmax / 2 ** i))
        if q >= 1:
            points.add(q)
    return sorted(points)


def machine_info() -> dict[str, Any]:
    """Where and when: platform, CPU count, load, library versions, git commit."""
    import torch

    from speed.machine import machine

    info = machine()
    info["torch"] = torch.__version__
    try:
        from importlib.metadata import version

        info["concrete_python"] = version("concrete-python")
    except Exception:  # pragma: no cover
        pass
    try:
        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
        if commit:
            info["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        pass
    return info


def _weights_digest(models) -> str:
    h = hashlib.sha256()
    for m in models:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _batch_generators(seed: int, batch: int, num_holders: int) -> list[np.random.Generator]:
    """Seeded noise streams of one circuit batch, one per holder (experiments only)."""
    children = np.random.SeedSequence([int(seed), 0x5EED, int(batch)]).spawn(num_holders)
    return [np.random.Generator(np.random.PCG64(c)) for c in children]


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


@dataclass
class _Stages:
    times: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, start: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def reproduce(config: ReproduceConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage and write the report; return the results dict."""
    from speed.learning.train import torch_threads

    cfg = config.resolved()
    with torch_threads(cfg.threads):
        return _reproduce(cfg, progress)


def _reproduce(cfg: ReproduceConfig, progress: bool) -> dict[str, Any]:
    from speed.learning import (
        Queries,
        accuracy,
        fit_student,
        load_dataset,
        make_splits,
        plurality,
        select_queries,
        student_config,
        train_student,
        train_teachers,
        vote_counts,
    )
    from speed.pipeline import circuit_spec, lattice_privacy, teacher_checkpoint_dir
    from speed.reproduce.report import write_report
    from speed.reproduce.store import StageCache

    wall_start = time.perf_counter()
    st = _Stages()
    cache = Path(cfg.cache_dir)
    key = cfg.state_key()
    state_dir = cache / "reproduce" / key
    stages = StageCache(state_dir / "stages.json", key)
    machine = machine_info()

    def say(msg: str) -> None:
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"[reproduce] {msg}", file=sys.stderr)

    # ---------------------------------------------------------------- data and teachers
    t0 = time.perf_counter()
    dataset = (load_dataset(cfg.dataset, cfg.data_dir, include_extra=bool(cfg.include_extra))
               if cfg.dataset == "svhn" else load_dataset(cfg.dataset, cfg.data_dir))
    cfg.run_config().validate(dataset.num_classes)
    splits = make_splits(dataset, int(cfg.holders), seed=cfg.seed, non_iid=cfg.non_iid)
    if cfg.max_queries > splits.pool_size:
        raise InputError(f"{cfg.max_queries} queries exceed the public pool of {splits.pool_size} points")
    st.timed("load_data_s", t0)

    model_name = cfg.model_name()
    t_cfg = cfg.teacher_training()
    suffix = "" if cfg.model is None else f"-{cfg.model}"
    suffix += "" if cfg.teacher_steps is None else f"-steps{cfg.teacher_steps}"
    if cfg.non_iid is not None:
        suffix += f"-noniid{cfg.non_iid:g}"
    if cfg.dataset == "svhn" and cfg.include_extra:
        suffix += "-extra"
    ckpt = teacher_checkpoint_dir(cache, dataset.name, int(cfg.holders), cfg.seed, suffix)
    say(f"teachers: {cfg.holders} × {model_name}, {t_cfg.steps} steps each, checkpoints in {ckpt}")
    t0 = time.perf_counter()
    teachers = train_teachers(dataset, splits, model_name, config=t_cfg, seed=cfg.seed, checkpoint_dir=ckpt,
                              progress=progress, workers=cfg.workers, device=cfg.device)
    st.timed("teacher_training_s", t0)
    teacher_info = {
        "model": teachers.model_name, "config": asdict(teachers.config), "checkpoint_dir": str(ckpt),
        "trained_now": len(teachers.trained), "loaded_from_checkpoints": len(teachers.loaded),
        "train_seconds_total": float(np.sum(teachers.train_seconds)),
        "train_seconds_mean": float(np.mean(teachers.train_seconds)),
        "seconds_per_step": float(np.mean(teachers.train_seconds)) / max(1, teachers.config.steps),
        "shard_size_mean": float(np.mean([len(i) for i in splits.holder_indices])),
    }

    # ------------------------------------------------------------- teacher evaluation
    t0 = time.perf_counter()
    test_x, test_y = splits.test_x, splits.test_y
    eval_idx = np.arange(len(test_y))
    if cfg.eval_points is not None and cfg.eval_points < len(test_y):
        eval_idx = np.sort(np.random.default_rng(cfg.seed).choice(len(test_y), cfg.eval_points, replace=False))
    digest = _weights_digest(teachers.models)
    eval_key = f"teacher_eval-{digest}-{len(eval_idx)}"
    teacher_eval = stages.get(eval_key)
    if teacher_eval is None:
        say(f"evaluating {len(teachers)} teachers on {len(eval_idx)} test points")
        start = time.perf_counter()
        votes = teachers.votes(test_x[eval_idx])
        per_teacher = (votes == test_y[eval_idx][None, :]).mean(axis=1)
        ensemble = plurality(vote_counts(votes, dataset.num_classes))
        teacher_eval = {
            "test_points": int(len(eval_idx)),
            "teacher_accuracy": [float(a) for a in per_teacher],
            "teacher_mean": float(per_teacher.mean()),
            "teacher_min": float(per_teacher.min()),
            "teacher_max": float(per_teacher.max()),
            "ensemble_plurality": float(np.mean(ensemble == test_y[eval_idx])),
            "seconds": time.perf_counter() - start,
        }
        stages.put(eval_key, teacher_eval)
    st.timed("teacher_evaluation_s", t0)

    # ------------------------------------------------------------ encrypted labelling
    queries = select_queries(splits, cfg.max_queries, seed=cfg.seed)
    clear_counts = vote_counts(teachers.votes(queries.x), dataset.num_classes)  # (Qmax, K), simulation only
    spec = circuit_spec(cfg.run_config(), dataset.num_classes)
    t0 = time.perf_counter()
    labelling = _encrypted_labelling(cfg, spec, splits, teachers, queries.positions, clear_counts, state_dir,
                                     progress, say)
    st.timed("encrypted_labelling_s", t0)
    labels = labelling["labels"]
    true_q = queries.true_labels

    # ---------------------------------------------------------------- plaintext check
    check: dict[str, Any] = {"requested": cfg.plaintext_check}
    if cfg.plaintext_check:
        from speed.crypto.spec import reference_argmax

        sums = labelling["clear_noisy_sums"]
        recomputed = reference_argmax(sums)
        noise = sums - cfg.resolution * clear_counts  # total noise of every class count, lattice steps
        check.update({
            "he_vs_plaintext_noisy_argmax_agreement": float(np.mean(labels == recomputed)),
            "disagreements": int(np.sum(labels != recomputed)),
            "stored_reference_agrees": bool(np.array_equal(recomputed, labelling["clear_noisy_argmax"])),
            "max_abs_total_noise_steps": int(np.abs(noise).max()),
            "noise_bound_A": int(spec.noise_bound),
            "noise_within_compiled_range": bool(np.abs(noise).max() <= spec.noise_bound),
            "noise_changed_label_vs_plurality": int(np.sum(recomputed != plurality(clear_counts))),
        })

    # ------------------------------------------------------------------------ privacy
    t0 = time.perf_counter()
    privacy_rows = []
    for q in sorted(set(cfg.queries)):
        for tau in cfg.taus:
            r = lattice_privacy(spec, clear_counts[:q], cfg.run_config(tau))
            privacy_rows.append({"queries": q, "tau": tau, **{k: r[k] for k in (
                "epsilon_data_independent", "delta_total_data_independent", "bound_data_independent",
                "per_query_epsilon_data_independent", "epsilon_data_dependent", "delta_total_data_dependent",
                "bound_data_dependent", "delta")}})
    tau_grid = sorted(set(cfg.taus) | {round(x, 3) for x in np.linspace(0.5, 1.0, 11)})
    eps_curve = []
    for q in sorted(set(cfg.queries)):
        for tau in tau_grid:
            r = lattice_privacy(spec, clear_counts[:q], cfg.run_config(tau))
            eps_curve.append({"queries": q, "tau": tau, "epsilon_data_independent": r["epsilon_data_independent"],
                              "epsilon_data_dependent": r["epsilon_data_dependent"]})
    st.timed("privacy_accounting_s", t0)

    # ----------------------------------------------------------- non-private baseline
    s_cfg = student_config(dataset.name)
    if cfg.student_steps is not None:
        s_cfg = replace(s_cfg, steps=int(cfg.student_steps))
    t0 = time.perf_counter()
    base_key = "baseline-" + hashlib.sha256(json.dumps(
        {"model": model_name, "config": asdict(s_cfg), "seed": cfg.seed, "eval": len(test_y)},
        sort_keys=True).encode()).hexdigest()[:12]
    baseline = stages.get(base_key)
    if baseline is None:
        say(f"non-private baseline: {model_name} on all {len(dataset.y_train)} training images, {s_cfg.steps} steps")
        start = time.perf_counter()
        model = train_student(dataset.x_train, dataset.y_train, num_classes=dataset.num_classes,
                              model_name=model_name, config=s_cfg, seed=cfg.seed, device=cfg.device)
        baseline = {"accuracy": accuracy(model, test_x, test_y), "train_seconds": time.perf_counter() - start,
                    "training_images": int(len(dataset.y_train)), "model": model_name, "config": asdict(s_cfg)}
        stages.put(base_key, baseline)
    st.timed("baseline_s", t0)

    # ----------------------------------------------------------------------- students
    t0 = time.perf_counter()
    curve = []
    top2 = np.sort(clear_counts, axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]  # votes of the plurality class minus the runner-up's (private)
    label_digest = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:12]
    for q in curve_queries(cfg):
        prefix = Queries(splits, queries.positions[:q])
        labelled = prefix.label(labels[:q])
        row: dict[str, Any] = {
            "queries": q,
            "label_accuracy": float(np.mean(labels[:q] == true_q[:q])),
            "plurality_label_accuracy": float(np.mean(plurality(clear_counts[:q]) == true_q[:q])),
            "vote_gap_median": float(np.median(gaps[:q])),
            "vote_gap_min": int(gaps[:q].min()),
            "queries_with_vote_gap_le_3": int(np.sum(gaps[:q] <= 3)),
        }
        for method in cfg.methods:
            accs, secs = [], []
            for s in range(cfg.student_seeds):
                skey = (f"student-{method}-q{q}-seed{s}-{label_digest}-"
                        + hashlib.sha256(json.dumps({"model": model_name, **asdict(s_cfg)},
                                                    sort_keys=True).encode()).hexdigest()[:8])
                res = stages.get(skey)
                if res is None:
                    say(f"student {method}, {q} labelled queries, seed {s}")
                    start = time.perf_counter()
                    student = fit_student(labelled, method=method, model_name=model_name, config=s_cfg,
                                          seed=1000 * cfg.seed + s,
                                          device=cfg.device)
                    res = {"accuracy": accuracy(student, test_x, test_y), "seconds": time.perf_counter() - start}
                    stages.put(skey, res)
                accs.append(res["accuracy"])
                secs.append(res["seconds"])
            row[method] = {**_mean_std(accs), "seconds_each": float(np.mean(secs))}
        curve.append(row)
    st.timed("students_s", t0)

    # ------------------------------------------------------------------------- result
    st.times["total_s"] = time.perf_counter() - wall_start
    try:
        machine["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    recorded = {  # compute time of each stage when it ran (possibly in an earlier, resumed run)
        "teacher_training_s": teacher_info["train_seconds_total"],
        "teacher_evaluation_s": teacher_eval.get("seconds"),
        "encrypted_labelling_s": labelling["seconds_all_batches"].get("wall_s"),
        "baseline_s": baseline["train_seconds"],
        "students_s": float(sum(row[m]["seconds_each"] * cfg.student_seeds for row in curve for m in cfg.methods)),
    }
    table = []
    by_q = {row["queries"]: row for row in curve}
    for p in privacy_rows:
        row = by_q[p["queries"]]
        table.append({
            "dataset": dataset.name, "holders": int(cfg.holders), "queries": p["queries"],
            "lambda": 1.0 / cfg.gamma, "gamma": cfg.gamma, "tau": p["tau"],
            "epsilon_data_independent": p["epsilon_data_independent"],
            "delta_total_data_independent": p["delta_total_data_independent"],
            "epsilon_data_dependent": p["epsilon_data_dependent"],
            "delta_total_data_dependent": p["delta_total_data_dependent"],
            "delta": cfg.delta,
            "teacher_mean_accuracy": teacher_eval["teacher_mean"],
            "ensemble_accuracy": teacher_eval["ensemble_plurality"],
            "label_accuracy": row["label_accuracy"],
            **{f"student_{m}": row[m]["mean"] for m in cfg.methods},
            "non_private_baseline": baseline["accuracy"],
        })
    result = {
        "command": cfg.command_line(),
        "settings": {**asdict(cfg), "num_classes": dataset.num_classes, "noise_scale_lambda": 1.0 / cfg.gamma,
                     "curve_queries": curve_queries(cfg), "state_dir": str(state_dir)},
        "data": {"train": int(len(dataset.y_train)), "pool": int(splits.pool_size), "test": int(len(test_y)),
                 "shape": list(dataset.in_shape)},
        "teachers": {**teacher_info, **{k: v for k, v in teacher_eval.items() if k != "teacher_accuracy"},
                     "weights_digest": digest},
        "table": table,
        "accuracy_curve": curve,
        "privacy": {
            "rows": privacy_rows,
            "epsilon_vs_tau": eps_curve,
            "ledger": labelling["ledger"],
            "ledger_tau": cfg.ledger_tau,
            "failure_probability_per_query": labelling["failure_probability_per_query"],
            "mechanism": "lattice",
            "publishable": "epsilon_data_independent",
            "note": "the data-dependent ε depends on the private votes: publishing it needs smooth-sensitivity "
                    "sanitisation (PATE 2018)",
        },
        "labelling": {k: v for k, v in labelling.items()
                      if k not in ("labels", "clear_noisy_argmax", "clear_noisy_sums", "ledger",
                                   "failure_probability_per_query")},
        "plaintext_check": check,
        "baseline": baseline,
        "reference": PATE_2017,
        "times": st.times,
        "recorded_compute_s": recorded,
        "machine": machine,
    }
    result["files"] = write_report(result, Path(cfg.output) / cfg.dataset)
    return result


def _encrypted_labelling(cfg: ReproduceConfig, spec, splits, teachers, positions: np.ndarray,
                         clear_counts: np.ndarray, state_dir: Path, progress: bool, say) -> dict[str, Any]:
    """Label ``positions`` through the real encrypted pipeline, reusing what the store already holds."""
    from tqdm.auto import tqdm

    from speed.owner.owner import ModelOwner
    from speed.pipeline import failure_probability_per_query, make_holders
    from speed.privacy.ledger import PrivacyLedger
    from speed.protocol import label_queries, setup_parties
    from speed.reproduce.store import LabelStore

    key = cfg.state_key()
    scale = 1.0 / cfg.gamma
    beta = failure_probability_per_query(spec, scale)
    store = LabelStore(state_dir / "labels.jsonl", key, {"spec": spec.to_dict(), "state_key": key})
    ledger_path = state_dir / "ledger.jsonl"
    if store.label_of:  # resuming: every stored label must have its charge in the ledger
        if not ledger_path.exists():
            raise SpeedError(f"labelling store {store.path} holds {len(store.label_of)} labels but privacy ledger "
                             f"{ledger_path} does not exist: a released label must be charged; refusing to resume")
        with PrivacyLedger(ledger_path, read_only=True, run_id=key) as led:
            store.charged_check(led.answered_query_ids(), ledger_path)
    counts_of = {int(p): clear_counts[i] for i, p in enumerate(positions)}
    todo = [int(p) for p in positions if int(p) not in store]
    info: dict[str, Any] = {
        "queries": int(len(positions)), "reused_from_store": int(len(positions) - len(todo)),
        "labelled_now": int(len(todo)), "charged_again_after_crash": 0, "store": str(store.path),
        "store_repaired_bytes": store.repaired_bytes, "compile_s": None, "keygen_s": None,
    }
    if todo:
        say(f"encrypted labelling: {len(todo)} queries to label ({info['reused_from_store']} already in the store), "
            f"batches of {spec.batch_size}")
        owner = ModelOwner(spec, cache_dir=Path(cfg.cache_dir))
        info["compile_s"], info["keygen_s"] = owner.timings["compile_s"], owner.timings["keygen_s"]
        holders = make_holders(teachers, scale, [None] * len(teachers))
        server = setup_parties(owner, holders)
        ledger = PrivacyLedger(
            ledger_path, run_id=key, delta=cfg.delta, gamma=cfg.gamma, tau=cfg.ledger_tau, mechanism="lattice",
            resolution=cfg.resolution, num_holders=int(cfg.holders), expected_holders=int(cfg.holders),
        )
        charged = {str(q) for q in ledger.answered_query_ids()}
        pool_x = splits.pool_x
        chunks = [todo[s:s + spec.batch_size] for s in range(0, len(todo), spec.batch_size)]
        try:
            for chunk in tqdm(chunks, desc="encrypted labelling", unit="batch", disable=not progress):
                b = store.next_batch
                if not cfg.production_noise:
                    for holder, rng in zip(holders, _batch_generators(cfg.seed, b, len(holders))):
                        holder.rng = rng

                def charge(batch, _sums) -> None:
                    ledger.check_budget(num_queries=len(batch.query_ids))
                    for q in batch.query_ids:
                        qid: int | str = int(q)
                        if str(qid) in charged:  # charged by a run killed before its label was stored
                            k = 1
                            while f"{q}/retry{k}" in charged:
                                k += 1
                            qid = f"{q}/retry{k}"
                            info["charged_again_after_crash"] += 1
                        ledger.record(qid, failure_probability=beta, counts=counts_of[int(q)])
                        charged.add(str(qid))

                start = time.perf_counter()
                res = label_queries(owner, server, holders, pool_x, np.asarray(chunk, dtype=np.int64),
                                    before_release=charge, progress=False)
                if res.stopped:
                    raise BudgetExhaustedError(f"labelling stopped: {res.stopped}")
                n, t = len(chunk), res.timings
                seconds = {
                    "wall_s": time.perf_counter() - start,
                    "pads_s": t["pads_s"],
                    "holder_encrypt_s": t["holder_encrypt_s_per_query"] * n * len(holders),
                    "server_s": t["server_total_s"],
                    "decrypt_s": t["decrypt_s_per_query"] * n,
                }
                store.append(b, res.query_ids, res.labels, res.clear_noisy_argmax, res.clear_noisy_sums, seconds,
                             res.bytes)
        finally:
            ledger.close()
    missing = [p for p in positions if int(p) not in store]
    if missing:  # pragma: no cover - guarded above
        raise SpeedError(f"{len(missing)} queries have no label after labelling")
    looked = store.lookup(positions)
    totals = store.totals()
    nq = max(1.0, totals["queries"])
    ledger_eps: dict[str, Any] = {}
    if ledger_path.exists():
        with PrivacyLedger(ledger_path, read_only=True, run_id=key, delta=cfg.delta) as led:
            ledger_eps = {"path": str(ledger_path), "charged_queries": led.num_queries, **led.epsilon()}
    info.update({
        "batches_in_store": int(totals["batches"]),
        "seconds_all_batches": {k: v for k, v in totals.items() if k not in ("queries", "batches")},
        "server_s_per_query": totals.get("server_s", 0.0) / nq,
        "holder_encrypt_s_per_query_per_holder": totals.get("holder_encrypt_s", 0.0) / nq / int(cfg.holders),
        "decrypt_s_per_query": totals.get("decrypt_s", 0.0) / nq,
        "wall_s_per_query": totals.get("wall_s", 0.0) / nq,
        "bytes": store.sizes(),
        "circuit": {**spec.to_dict(), "difference_width_bits": spec.difference_width,
                    "security_bits": spec.security_level},
    })
    return {**info, **looked, "ledger": ledger_eps, "failure_probability_per_query": beta}


def summary_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """Flat (label, value) rows for the terminal."""
    rows: list[tuple[str, Any]] = []
    t = result["teachers"]
    rows.append(("teacher mean accuracy (test)", t["teacher_mean"]))
    rows.append(("ensemble accuracy (plurality, test)", t["ensemble_plurality"]))
    rows.append(("non-private baseline (test)", result["baseline"]["accuracy"]))
    for row in result["accuracy_curve"]:
        rows.append((f"Q={row['queries']}: label accuracy", row["label_accuracy"]))
        for m in result["settings"]["methods"]:
            rows.append((f"Q={row['queries']}: student {m}", row[m]["mean"]))
    for p in result["privacy"]["rows"]:
        rows.append((f"Q={p['queries']} τ={p['tau']:g}: ε data-indep. / data-dep.",
                     f"{p['epsilon_data_independent']:.4g} / {p['epsilon_data_dependent']:.4g}"))
    chk = result["plaintext_check"]
    if chk.get("requested"):
        rows.append(("HE labels = plaintext noisy argmax", chk["he_vs_plaintext_noisy_argmax_agreement"]))
    for k, v in result["times"].items():
        rows.append((f"time {k}", v))
    return rows
