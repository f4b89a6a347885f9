"""End-to-end SPEED run in one process: teachers → encrypted labelling → student → ε.

Used by ``speed demo``; the same steps, with the paper's settings and more reporting,
make ``speed reproduce``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speed.crypto.spec import CircuitSpec, choose_noise_bound
from speed.errors import InputError
from speed.holder import DataHolder
from speed.owner.owner import ModelOwner
from speed.privacy.noise import holder_generators
from speed.protocol import label_queries, setup_parties


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run (defaults: the demo, ~5 min on 2 cores)."""

    dataset: str = "digits"
    data_dir: str | None = None
    holders: int = 20
    queries: int = 60
    gamma: float = 3.3  # γ = 1/λ (SPEC §6's analysis value)
    tau: float = 1.0  # fraction of holders whose noise stays secret, for the accountant
    delta: float = 1e-5
    resolution: int = 1  # P lattice steps per vote
    batch_size: int = 10  # queries per circuit call
    noise_failure: float = 1e-12  # per-query probability that noise leaves the compiled range
    global_p_error: float = 1e-9  # concrete: probability that any PBS of one call is wrong
    seed: int = 0
    production_noise: bool = False  # True: OS CSPRNG; False: seeded per-holder streams
    student_method: str = "supervised"
    cache_dir: str = ".speed-cache"
    max_epsilon: float | None = None  # budget guard on the data-independent ε

    def validate(self, num_classes: int) -> None:
        if self.holders < 2:
            raise InputError(f"need at least 2 holders, got {self.holders}")
        if self.queries < 1:
            raise InputError(f"need at least 1 query, got {self.queries}")
        if self.gamma <= 0:
            raise InputError(f"γ must be > 0, got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise InputError(f"τ must be in (0, 1], got {self.tau}")
        if not 0 < self.delta < 1:
            raise InputError(f"δ must be in (0, 1), got {self.delta}")
        if num_classes < 2:
            raise InputError("the dataset must have at least 2 classes")


def run(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run every stage; return a JSON-ready dict of settings, results, ε, times and sizes."""
    from speed.learning import (
        accuracy,
        fit_student,
        load_dataset,
        make_splits,
        plurality,
        select_queries,
        train_teachers,
        vote_counts,
    )
    from speed.learning.train import predict
    from speed.privacy import epsilon

    times: dict[str, float] = {}
    dataset = load_dataset(config.dataset, config.data_dir)
    config.validate(dataset.num_classes)
    cache = Path(config.cache_dir)

    start = time.perf_counter()
    splits = make_splits(dataset, config.holders, seed=config.seed)
    teachers = train_teachers(
        dataset, splits, seed=config.seed, progress=progress,
        checkpoint_dir=cache / "teachers" / f"{dataset.name}-N{config.holders}-s{config.seed}",
    )
    times["teacher_training_s"] = time.perf_counter() - start
    if config.queries > splits.pool_size:
        raise InputError(f"{config.queries} queries exceed the public pool of {splits.pool_size} points")
    queries = select_queries(splits, config.queries, seed=config.seed)
    test_x, test_y = splits.test_x, splits.test_y
    teacher_acc = teachers.accuracies(test_x, test_y)
    clear_votes = teachers.votes(queries.x)  # (N, Q), for the clear reference only
    clear_counts = vote_counts(clear_votes, dataset.num_classes)

    scale = 1.0 / config.gamma
    bound = choose_noise_bound(config.holders, dataset.num_classes, scale, config.resolution, config.noise_failure)
    spec = CircuitSpec(
        num_holders=config.holders, num_classes=dataset.num_classes, noise_bound=bound,
        resolution=config.resolution, batch_size=config.batch_size, global_p_error=config.global_p_error,
    )
    owner = ModelOwner(spec, cache_dir=cache)
    times["compile_s"] = owner.timings["compile_s"]
    times["keygen_s"] = owner.timings["keygen_s"]

    rngs = [None] * config.holders if config.production_noise else holder_generators(config.seed, config.holders)
    # Holder i answers with its own teacher; the query points are public.
    holders = [
        DataHolder(i, (lambda x, m=teachers[i]: predict(m, x)), scale, rngs[i]) for i in range(config.holders)
    ]
    server = setup_parties(owner, holders)
    labelling = label_queries(owner, server, holders, splits.pool_x, queries.positions, progress=progress)
    times.update(labelling.timings)

    labelled = queries.label(labelling.labels)
    start = time.perf_counter()
    student = fit_student(labelled, method=config.student_method, seed=config.seed)
    times["student_training_s"] = time.perf_counter() - start

    privacy = epsilon(
        clear_counts, config.gamma, config.tau, config.delta, mechanism="lattice", resolution=config.resolution
    )
    failure_per_query = spec.noise_failure_probability(scale) + config.global_p_error
    agree = labelling.labels == labelling.clear_noisy_argmax
    return {
        "settings": {**asdict(config), "num_classes": dataset.num_classes, "noise_scale_lambda": scale},
        "circuit": {
            **spec.to_dict(),
            "difference_width_bits": spec.difference_width,
            "pbs_per_call": owner.pbs_count(),
            "p_error_per_pbs": owner.p_error(),
            "security_bits": spec.security_level,
        },
        "accuracy": {
            "teacher_mean": float(np.mean(teacher_acc)),
            "plaintext_ensemble_on_queries": float(np.mean(plurality(clear_counts) == queries.true_labels)),
            "he_label_accuracy": labelled.label_accuracy,
            "he_vs_plaintext_noisy_argmax_agreement": float(np.mean(agree)),
            "student_test": float(accuracy(student, test_x, test_y)),
            "test_points": int(len(test_y)),
        },
        "privacy": {
            "epsilon_data_independent": privacy["data_independent"],
            "epsilon_data_dependent": privacy["data_dependent"],
            "per_query_epsilon": privacy["per_query_epsilon"],
            "delta": config.delta,
            "failure_probability_per_query": failure_per_query,
            "delta_total": config.delta + config.queries * failure_per_query,
            "mechanism": "lattice",
            "publishable": "epsilon_data_independent",
            "note": "the data-dependent ε depends on private votes: publishing it needs smooth-sensitivity "
            "sanitisation (PATE 2018); δ_total adds the probability that noise left the compiled range or a PBS failed",
        },
        "times": times,
        "bytes": labelling.bytes,
    }
