"""Settings of ``speed reproduce``: :class:`ReproduceConfig`, per-dataset defaults, cache keys.

Every cache of a reproduction is keyed by the settings its contents depend on:

* teachers — CNN checkpoints per teacher (:func:`speed.learning.train_teachers`, fingerprinted per
  holder) or one batched checkpoint of linear heads on scattering features (fingerprint of the
  features, the shards, the training recipe and the seed);
* votes — the teachers' vote matrices on the pool and the test split, keyed by a digest of the
  teachers' weights;
* labels and ledger — ``CACHE/reproduce/<state_key>/``: everything the labels depend on (teachers,
  noise mechanism and its parameter, circuit, seed); with Skellam noise also the ledger's plan
  (the largest Q, the τ charged, the target ε), which the ledger refuses to change.  Lattice runs
  keep the key of earlier versions: the labels do not depend on Q or τ.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from speed.errors import InputError
from speed.params import FALLBACK_CACHE_DIR, ProtocolParams, default_cache_dir
from speed import validation as opt

#: docs/spec.md §6 settings per dataset (digits: the small bundled-data defaults of ``speed demo``).
#: ``teachers``: the recipe measured best (benchmarks/teachers_scattering.py: scattering + linear
#: heads 84.8 % plurality vs 81.3 % for CNN teachers on Fashion-MNIST, minutes instead of 2.3 h).
#: ``target_epsilon``: the publishable ε the Skellam noise is calibrated to when neither
#: ``--target-epsilon`` nor ``--sigma`` is given (20 holders need more ε than 250).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"holders": 20, "queries": (60,), "curve_points": 4, "teachers": "cnn", "target_epsilon": 8.0},
    "fashion-mnist": {"holders": 250, "queries": (100,), "curve_points": 3, "teachers": "scattering",
                      "target_epsilon": 4.0},
    "mnist": {"holders": 250, "queries": (100,), "curve_points": 3, "teachers": "scattering", "target_epsilon": 4.0},
    "svhn": {"holders": 250, "queries": (500,), "curve_points": 3, "include_extra": True, "teachers": "cnn",
             "target_epsilon": 4.0},
}
REPRODUCE_DATASETS = tuple(DATASET_DEFAULTS)
TEACHER_KINDS = ("scattering", "cnn")

#: The baseline to beat (docs/spec.md §6): PATE 2017 with a central trusted aggregator.
PATE_2017 = {
    "mnist": {"queries": 100, "epsilon": 2.04, "student_accuracy": 0.980},
    "svhn": {"queries": 500, "epsilon": 5.04, "student_accuracy": 0.827},
}

#: CNN students (the model of --model) and linear heads on the scattering features.
CNN_STUDENTS = ("supervised", "semi-supervised")
FEATURE_STUDENTS = ("linear", "linear-self-training")
STUDENT_METHODS = CNN_STUDENTS + FEATURE_STUDENTS

#: Scattering teachers (benchmarks/teachers_scattering.py): full-batch Adam on linear heads.
SCATTERING_TEACHER = {"steps": 300, "lr": 1e-2, "weight_decay": 1e-2, "init_std": 0.01}
#: Linear-head students on the same features (benchmarks/frontier.py), and one round of self-training.
FEATURE_STUDENT = {"steps": 300, "lr": 1e-2, "weight_decay": 1e-2, "init_std": 0.01,
                   "self_train_threshold": 0.9, "self_train_steps": 150}


@dataclass(frozen=True)
class ReproduceConfig:
    """Settings of one reproduction; ``None`` fields take the dataset's default (:meth:`resolved`).

    The protocol's parameters are flat fields, as ``speed reproduce`` names them and the cache
    keys read them; :attr:`protocol` is the :class:`speed.params.ProtocolParams` made of them
    (τ: the most pessimistic of ``taus``, which the ledger charges; the dataset's target ε).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    holders: int | None = None
    queries: tuple[int, ...] = ()
    taus: tuple[float, ...] = (1.0, 0.9, 0.7)
    mechanism: str = ProtocolParams.mechanism  # "skellam" (publishable PLD ε) or "lattice" (the paper's)
    target_epsilon: float | None = None  # skellam: σ calibrated to this ε over max(queries) at min(taus)
    sigma: float | None = ProtocolParams.sigma  # skellam σ given directly
    gamma: float = ProtocolParams.gamma  # lattice: γ = 1/λ (docs/spec.md §6: λ = 0.31, analysed with γ = 3.3)
    delta: float = ProtocolParams.delta
    resolution: int = ProtocolParams.resolution
    batch_size: int = ProtocolParams.batch_size
    seed: int = ProtocolParams.seed
    teachers: str | None = None  # "scattering" or "cnn"; None: the dataset's default
    features: str | None = None  # an existing scattering feature cache file (error if missing or corrupt)
    model: str | None = None  # CNN teachers, CNN students and baseline; None: the dataset's default_model
    teacher_steps: int | None = None  # None: the dataset's TEACHER_CONFIG (CNN) or SCATTERING_TEACHER
    student_steps: int | None = None  # None: the dataset's STUDENT_CONFIG (also for the baseline)
    student_seeds: int = 3  # students per (method, Q): mean and std
    curve_points: int | None = None  # extra prefixes Qmax/2, Qmax/4, ... for the accuracy curve
    methods: tuple[str, ...] = ()  # empty: linear students with scattering teachers, CNN students with CNN ones
    plaintext_check: bool = False
    production_noise: bool = ProtocolParams.production_noise
    non_iid: float | None = None
    include_extra: bool | None = None  # SVHN: add the 531k "extra" images to the holders' data
    eval_points: int | None = None  # teacher/ensemble accuracy on this many test points (None: all)
    workers: int | None = None  # teacher worker processes (None: one per CPU)
    threads: int = 1  # torch threads for everything in this process
    device: str | None = None  # torch device for training (e.g. "cuda")
    output: str = "results"
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))
    noise_failure: float = ProtocolParams.noise_failure
    global_p_error: float = ProtocolParams.global_p_error

    def resolved(self) -> "ReproduceConfig":
        if self.dataset not in DATASET_DEFAULTS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(REPRODUCE_DATASETS)}")
        d = DATASET_DEFAULTS[self.dataset]
        teachers = self.teachers or d["teachers"]
        methods = tuple(self.methods) or (FEATURE_STUDENTS if teachers == "scattering" else CNN_STUDENTS)
        target = self.target_epsilon
        if self.mechanism == "skellam" and self.sigma is None and target is None:
            target = d["target_epsilon"]
        cfg = replace(
            self,
            holders=self.holders if self.holders is not None else d["holders"],
            queries=tuple(self.queries) if self.queries else tuple(d["queries"]),
            taus=tuple(float(t) for t in self.taus),
            curve_points=self.curve_points if self.curve_points is not None else d["curve_points"],
            include_extra=self.include_extra if self.include_extra is not None else d.get("include_extra", False),
            teachers=teachers, methods=tuple(dict.fromkeys(methods)), target_epsilon=target,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse bad settings before any work; messages name the `speed reproduce` option."""

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
        self.protocol  # noqa: B018  (the protocol's checks: noise, δ, P, batch size, seed, ...)
        if self.target_epsilon is not None:
            if self.mechanism != "skellam":
                raise InputError("--target-epsilon applies to --mechanism skellam (lattice: give --gamma)")
        if self.teachers is not None:
            opt.check_choice(self.teachers, "--teachers", TEACHER_KINDS)
        if self.features is not None:
            if self.teachers not in (None, "scattering"):
                raise InputError("--features applies to --teachers scattering")
            opt.check_existing_file(self.features, "--features", "feature cache")
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
        if bad:
            raise InputError(f"--students: must be among {', '.join(STUDENT_METHODS)}, got {list(self.methods)}")
        if self.teachers == "cnn" and any(m in FEATURE_STUDENTS for m in self.methods):
            raise InputError(f"--students {' '.join(FEATURE_STUDENTS)} need --teachers scattering (their features)")
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
        """τ the owner's ledger charges with (and Skellam σ is calibrated for): the most pessimistic τ studied."""
        return min(self.taus)

    @property
    def protocol(self) -> ProtocolParams:
        """The protocol's parameters: τ the ledger charges (:attr:`ledger_tau`) and, for Skellam noise
        without σ, the target ε (the dataset's unless given)."""
        target = self.target_epsilon
        if self.mechanism == "skellam" and self.sigma is None and target is None:
            target = DATASET_DEFAULTS[self.dataset]["target_epsilon"]
        return ProtocolParams(
            mechanism=self.mechanism, target_epsilon=target, sigma=self.sigma, gamma=self.gamma, tau=self.ledger_tau,
            delta=self.delta, resolution=self.resolution, batch_size=self.batch_size,
            noise_failure=self.noise_failure, global_p_error=self.global_p_error, seed=self.seed,
            production_noise=self.production_noise, cache_dir=self.cache_dir,
        )

    def noise(self):
        """The noise mechanism the holders sample from (Skellam σ calibrated once per (ε, Q, δ, τ))."""
        return self.protocol.noise_mechanism(self.max_queries)

    def run_config(self, tau: float | None = None):
        """The :class:`speed.pipeline.RunConfig` of this reproduction at ``tau`` (noise fixed by :meth:`noise`)."""
        from speed.pipeline import RunConfig

        sigma = self.noise().sigma if self.mechanism == "skellam" else None
        return RunConfig(
            dataset=self.dataset, data_dir=self.data_dir, holders=int(self.holders), queries=self.max_queries,
            mechanism=self.mechanism, sigma=sigma, gamma=self.gamma,
            tau=self.ledger_tau if tau is None else float(tau), delta=self.delta, resolution=self.resolution,
            batch_size=self.batch_size, noise_failure=self.noise_failure, global_p_error=self.global_p_error,
            seed=self.seed, production_noise=self.production_noise, cache_dir=self.cache_dir,
        )

    def model_name(self) -> str:
        """The network of the CNN teachers, the CNN students and the baseline."""
        from speed.learning import default_model

        return self.model or default_model(self.dataset)

    def teacher_training(self):
        """The CNN teachers' :class:`speed.learning.TrainConfig` (the dataset's, with ``teacher_steps``)."""
        from speed.learning import teacher_config

        t_cfg = teacher_config(self.dataset)
        return t_cfg if self.teacher_steps is None else replace(t_cfg, steps=int(self.teacher_steps))

    def scattering_training(self):
        """The scattering teachers' :class:`speed.learning.BatchedConfig` (with ``teacher_steps``)."""
        from speed.learning.batched import BatchedConfig

        cfg = dict(SCATTERING_TEACHER)
        if self.teacher_steps is not None:
            cfg["steps"] = int(self.teacher_steps)
        return BatchedConfig(**cfg)

    def teacher_recipe(self) -> dict[str, Any]:
        """Everything the teachers depend on besides the data split."""
        if self.teachers == "scattering":
            from speed.learning.features import KYMATIO_VERSION, ScatteringSpec

            return {"kind": "scattering", "features": asdict(ScatteringSpec()), "kymatio": KYMATIO_VERSION,
                    **asdict(self.scattering_training())}
        return {"model": self.model_name(), **asdict(self.teacher_training())}

    def state_key(self) -> str:
        """Identity of the labelling state: everything the labels depend on (not Q, not τ, except through
        a calibrated σ). Lattice runs with CNN teachers keep the key of earlier versions (they resume)."""
        key = {k: v for k, v in asdict(self).items() if k in (
            "dataset", "holders", "gamma", "resolution", "batch_size", "seed", "teacher_steps", "non_iid",
            "include_extra", "production_noise", "noise_failure", "global_p_error")}
        key["teachers"] = self.teacher_recipe()
        key["data_dir"] = str(Path(self.data_dir).resolve()) if self.data_dir else None
        if self.mechanism != "lattice":  # the noise and the ledger's plan (Q planned, τ charged)
            key.pop("gamma")
            key["noise"] = self.noise().to_dict()
            key["plan"] = {"queries": self.max_queries, "tau": self.ledger_tau, "target": self.target_epsilon}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}-N{self.holders}-s{self.seed}-{digest}"

    def command_line(self) -> str:
        """An explicit ``speed reproduce`` command that reruns (or resumes) this reproduction."""
        parts = ["speed", "reproduce", "--dataset", self.dataset, "--holders", str(self.holders),
                 "--queries", *map(str, self.queries), "--tau", *(f"{t:g}" for t in self.taus),
                 "--mechanism", self.mechanism]
        if self.mechanism == "lattice":
            parts += ["--gamma", f"{self.gamma:g}"]
        elif self.sigma is not None:
            parts += ["--sigma", f"{self.sigma:g}"]
        else:
            parts += ["--target-epsilon", f"{self.target_epsilon:g}"]
        parts += ["--delta", f"{self.delta:g}", "--seed", str(self.seed), "--teachers", str(self.teachers)]
        if self.batch_size != 10:
            parts += ["--batch-size", str(self.batch_size)]
        if self.resolution != 1:
            parts += ["--resolution", str(self.resolution)]
        for flag, value in (("--features", self.features), ("--model", self.model),
                            ("--teacher-steps", self.teacher_steps), ("--student-steps", self.student_steps),
                            ("--non-iid", self.non_iid), ("--eval-points", self.eval_points),
                            ("--workers", self.workers), ("--device", self.device), ("--data-dir", self.data_dir)):
            if value is not None:
                parts += [flag, str(value)]
        if self.student_seeds != 3:
            parts += ["--student-seeds", str(self.student_seeds)]
        parts += ["--curve-points", str(self.curve_points)]
        if self.threads != 1:
            parts += ["--threads", str(self.threads)]
        parts += ["--students", *self.methods]
        if self.plaintext_check:
            parts.append("--plaintext-check")
        if self.production_noise:
            parts.append("--production-noise")
        if self.dataset == "svhn" and not self.include_extra:
            parts.append("--no-extra")
        parts += ["--output", self.output]
        if self.cache_dir != FALLBACK_CACHE_DIR:
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
