"""End-to-end SPEED run in one process: teachers → encrypted labelling → student → ε.

Used by ``speed demo``; the same steps, with the paper's settings and more reporting,
make ``speed reproduce``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from speed.crypto.spec import CircuitSpec
from speed.errors import BudgetExhaustedError, InputError
from speed.holder import DataHolder
from speed.owner.owner import ModelOwner
from speed.owner.release import charge_then_release, open_ledger
from speed.params import DEFAULT_TARGET_EPSILON, ProtocolParams, default_cache_dir  # noqa: F401  (re-exported)
from speed.params import circuit_spec as params_circuit_spec
from speed.privacy.mechanisms import LatticeLaplace, Mechanism, Skellam
from speed.privacy.noise import holder_generators
from speed.protocol import label_queries, setup_parties
from speed import validation as opt


def run_id() -> str:
    return time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run (defaults: the demo, ~5 min on 2 cores).

    The protocol's parameters (noise, circuit, seed, cache) are flat fields here, as ``speed demo``
    names them and its JSON settings list them; :attr:`protocol` is the one
    :class:`speed.params.ProtocolParams` made of them (defaults, checks and meanings there).
    Bad settings are refused when the config is made (:class:`speed.errors.InputError`).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    holders: int = 20
    queries: int = 60
    mechanism: str = ProtocolParams.mechanism
    target_epsilon: float | None = ProtocolParams.target_epsilon
    sigma: float | None = ProtocolParams.sigma
    gamma: float = ProtocolParams.gamma
    tau: float = ProtocolParams.tau
    delta: float = ProtocolParams.delta
    resolution: int = ProtocolParams.resolution
    batch_size: int = ProtocolParams.batch_size
    pad_mode: str = ProtocolParams.pad_mode
    noise_failure: float = ProtocolParams.noise_failure
    global_p_error: float = ProtocolParams.global_p_error
    range_check: str = ProtocolParams.range_check
    seed: int = ProtocolParams.seed
    production_noise: bool = ProtocolParams.production_noise
    student_method: str = "supervised"
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))
    max_epsilon: float | None = None  # budget guard on the data-independent ε
    ledger: str | None = None  # privacy ledger path (default: <cache_dir>/ledgers/<run id>.jsonl)

    def __post_init__(self) -> None:
        # messages name the `speed demo` option

        opt.check_int(self.holders, "--holders", 2, opt.MAX_HOLDERS)
        opt.check_positive_int(self.queries, "--queries")
        self.protocol  # noqa: B018  (made here: its checks refuse bad settings)
        opt.check_choice(self.student_method, "--student", ("supervised", "semi-supervised"))
        if self.max_epsilon is not None:
            opt.check_max_epsilon(self.max_epsilon, "--max-epsilon")

    @property
    def protocol(self) -> ProtocolParams:
        """The protocol's parameters of this run (made from the flat fields; checked when the config is made)."""
        return ProtocolParams(**{name: getattr(self, name) for name in PROTOCOL_FIELDS})

    def validate(self, num_classes: int | None = None) -> None:
        """Refuse, before any work, what the fields alone cannot tell: a ledger file that cannot be
        written and, with ``num_classes`` (the dataset's, once loaded), a circuit that cannot be built.
        Messages name the `speed demo` option."""

        if self.ledger is not None:
            opt.check_ledger_file(self.ledger, "--ledger")
        if num_classes is not None:
            if num_classes < 2:
                raise InputError("the dataset must have at least 2 classes")
            if self.mechanism == "lattice" and self.target_epsilon is None:
                circuit_spec(self, num_classes)  # the noise bound and the circuit's ranges (cheap here)


#: Fields of :class:`RunConfig` that are :class:`speed.params.ProtocolParams` fields.
PROTOCOL_FIELDS = tuple(f.name for f in fields(ProtocolParams))


def planned_target_epsilon(config: RunConfig) -> float | None:
    """The publishable ε the noise is calibrated to (None when σ or γ is given directly)."""
    return config.protocol.planned_target_epsilon


def noise_mechanism(config: RunConfig) -> Mechanism:
    """The noise of ``config`` for its ``queries`` queries (:meth:`speed.params.ProtocolParams.noise_mechanism`)."""
    return config.protocol.noise_mechanism(config.queries)


def teacher_checkpoint_dir(cache_dir: str | os.PathLike, dataset_name: str, holders: int, seed: int,
                           suffix: str = "") -> Path:
    """Where the teachers of ``holders`` holders (split and training seed ``seed``) are checkpointed."""
    return Path(cache_dir) / "teachers" / f"{dataset_name}-N{holders}-s{seed}{suffix}"


def circuit_spec(config: RunConfig, num_classes: int, noise: Mechanism | None = None) -> CircuitSpec:
    """The circuit the owner compiles for ``config`` (:func:`speed.params.circuit_spec` with the run's
    holders and noise)."""
    return params_circuit_spec(config.protocol, num_classes, config.holders,
                               noise_mechanism(config) if noise is None else noise)


def failure_probabilities(spec: CircuitSpec, noise: Mechanism | float) -> tuple[float, float]:
    """Per query: (histogram failure, clip failure).

    *Histogram failure*: a total noise outside [−A, A] or a wrong bootstrap; the label is then not
    the exact argmax, but it is still a (randomised) function of the noisy counts alone.
    *Clip failure*: some holder's share clipped to ±S, which changes the noise law itself.
    ``noise``: the mechanism object, or the lattice scale λ (the paper's noise).
    """
    if isinstance(noise, Skellam):
        n, k = spec.num_holders, spec.num_classes
        histogram = min(1.0, k * noise.sum_tail(spec.noise_bound) + spec.global_p_error)
        # one holder's share: Skellam of variance σ²/N
        clip = min(1.0, k * n * Skellam(noise.sigma / math.sqrt(n)).sum_tail(spec.share_bound))
        return histogram, clip
    scale = noise.scale if isinstance(noise, LatticeLaplace) else float(noise)
    return spec.histogram_failure_probability(scale), spec.clip_failure_probability(scale)


def failure_probability_per_query(spec: CircuitSpec, noise: Mechanism | float) -> float:
    """Per-query probability β that the released label is not the exact noisy argmax (both failures).

    How β reaches δ (one rule, docs/privacy.md "Circuit failures and δ"): the real transcript
    equals the analysed one except with probability B = Σβ over the answered queries, and then
    δ_total = δ + (1 + e^ε)·B, where β counts only the events the accountant's ε does not
    already cover. A histogram-level ε (the publishable PLD ε of Skellam noise, the lattice
    bound at τ = 1) covers every function of the noisy counts, so only clipped shares count;
    the paper's argmax bound (τ < 1) needs the exact argmax, so both count.
    """
    histogram, clip = failure_probabilities(spec, noise)
    return histogram + clip


def charged_failure_probability(spec: CircuitSpec, noise: Mechanism) -> float:
    """β per query the ledger folds into δ (docs/privacy.md "Circuit failures and δ"): the PLD ε of
    Skellam noise is histogram-level, so only clipped shares count; the paper's lattice analysis
    needs the exact argmax, so both failures count."""
    histogram, clip = failure_probabilities(spec, noise)
    return clip if isinstance(noise, Skellam) else histogram + clip


def default_ledger_path(config: RunConfig) -> Path:
    """``config.ledger``, or a new ledger of this run under the cache directory."""
    return Path(config.ledger) if config.ledger else Path(config.cache_dir) / "ledgers" / f"{run_id()}.jsonl"


def refuse_unanswerable(config: RunConfig, noise: Mechanism | None = None) -> None:
    """Refuse, before any work, a run whose budget cannot pay for even its first batch (or whose
    ledger is corrupted).

    The owner charges the ledger one batch at a time, before releasing its labels, and stops
    at the first batch the budget cannot pay for; if that is the first one, nothing would be
    labelled after all the training, compiling and key generation.  The projection is the
    data-independent ε (it depends only on γ, τ, P and the number of queries) on top of what
    the ledger at ``config.ledger`` already holds (read-only here; the run opens it later).
    """
    from speed.privacy.ledger import PrivacyAccountant, PrivacyLedger
    from speed.privacy.publishable import PublishableAccountant

    path = Path(config.ledger) if config.ledger else None
    noise = noise_mechanism(config) if noise is None else noise
    if isinstance(noise, Skellam):
        held = PublishableAccountant(noise, config.delta)
        if path is not None and path.exists():  # also refuses a corrupted or foreign ledger before any work
            old = PrivacyLedger(path, delta=config.delta, read_only=True)
            if old.noise is not None and old.noise != noise:
                raise InputError(f"--ledger {path} was written under {old.noise.to_dict()}, this run uses "
                                 f"{noise.to_dict()}: use another ledger")
            if old.publishable is None and old.num_queries:
                raise InputError(f"--ledger {path} holds charges of the paper's accounting: use another ledger")
            if old.publishable is not None:
                held = old.publishable
        if config.max_epsilon is None:
            return
        first = min(config.batch_size, config.queries)
        projected = held.projected_epsilon(config.tau, first)
        if projected > config.max_epsilon:
            raise BudgetExhaustedError(
                f"--max-epsilon {config.max_epsilon:g}: the first batch of {first} queries would raise the "
                f"publishable ε from {held.epsilon():.4g} to {projected:.4g} (skellam σ = {noise.sigma:.4g}, "
                f"τ = {config.tau:g}, δ = {config.delta:g}); no query could be labelled, so nothing was trained"
            )
        return
    if path is not None and path.exists():  # also refuses a corrupted ledger before any work
        accountant = PrivacyLedger(path, delta=config.delta, read_only=True).accountant
    else:
        accountant = PrivacyAccountant()
    if config.max_epsilon is None:
        return
    first = min(config.batch_size, config.queries)
    spent = accountant.get_epsilon(config.delta) if accountant.num_queries else 0.0
    projected = accountant.projected_epsilon(config.delta, gamma=noise.gamma, tau=config.tau, mechanism="lattice",
                                             resolution=noise.resolution, num_queries=first)
    if projected > config.max_epsilon:
        held = f", ledger {path} already holds {accountant.num_queries} queries" if accountant.num_queries else ""
        raise BudgetExhaustedError(
            f"--max-epsilon {config.max_epsilon:g}: the first batch of {first} queries would raise the "
            f"data-independent ε from {spent:.4g} to {projected:.4g} (γ = {noise.gamma:g}, τ = {config.tau:g}, "
            f"δ = {config.delta:g}{held}); no query could be labelled, so nothing was trained"
        )


def make_holders(teachers, noise: Mechanism | float, rngs: list) -> list[DataHolder]:
    """One :class:`DataHolder` per teacher; holder i answers with teacher i (the query points are public).

    ``noise``: the mechanism object, or the lattice scale λ (the paper's noise)."""
    from speed.learning.inference import predict

    kwargs = {"noise": noise} if isinstance(noise, Mechanism) else {"noise_scale": float(noise)}
    return [DataHolder(i, (lambda x, m=teachers[i]: predict(m, x)), rng=rngs[i], **kwargs)
            for i in range(len(teachers))]


def run(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run every stage; return a JSON-ready dict of settings, results, ε, times and sizes."""
    from speed.learning import (
        Queries,
        accuracy,
        fit_student,
        load_dataset,
        make_splits,
        plurality,
        select_queries,
        train_teachers,
        vote_counts,
    )

    times: dict[str, float] = {}
    config.validate()
    dataset = load_dataset(config.dataset, config.data_dir)
    # every check before the expensive stages (teachers, compile, keygen)
    config.validate(dataset.num_classes)
    cache = Path(config.cache_dir)
    if config.holders > len(dataset.y_train):
        raise InputError(f"--holders {config.holders} exceeds the {len(dataset.y_train)} training points of "
                         f"{dataset.name} (every holder needs at least one)")
    splits = make_splits(dataset, config.holders, seed=config.seed)
    if config.queries > splits.pool_size:
        raise InputError(f"--queries {config.queries} exceeds the public pool of {splits.pool_size} points "
                         f"of {dataset.name}")
    noise = noise_mechanism(config)  # calibration: only once the number of queries is known to be sane
    circuit_spec(config, dataset.num_classes, noise)  # the noise bound and the circuit's ranges
    refuse_unanswerable(config, noise)

    start = time.perf_counter()
    teachers = train_teachers(
        dataset, splits, seed=config.seed, progress=progress, workers=1,  # small digits models: 1 process is faster
        checkpoint_dir=teacher_checkpoint_dir(cache, dataset.name, config.holders, config.seed),
    )
    times["teacher_training_s"] = time.perf_counter() - start
    queries = select_queries(splits, config.queries, seed=config.seed)
    test_x, test_y = splits.test_x, splits.test_y
    teacher_acc = teachers.accuracies(test_x, test_y)
    clear_votes = teachers.votes(queries.x)  # (N, Q), for the clear reference only
    clear_counts = vote_counts(clear_votes, dataset.num_classes)

    spec = circuit_spec(config, dataset.num_classes, noise)
    owner = ModelOwner(spec, cache_dir=cache, pad_mode=config.pad_mode)
    times["compile_s"] = owner.timings["compile_s"]
    times["keygen_s"] = owner.timings["keygen_s"]

    rngs = [None] * config.holders if config.production_noise else holder_generators(config.seed, config.holders)
    holders = make_holders(teachers, noise, rngs)
    server = setup_parties(owner, holders)
    failure_per_query = failure_probability_per_query(spec, noise)
    charged_failure = charged_failure_probability(spec, noise)
    ledger_path = default_ledger_path(config)
    ledger = open_ledger(ledger_path, config.protocol, noise, num_holders=config.holders,
                         planned_queries=config.queries, max_epsilon=config.max_epsilon)
    row_of = {int(pos): row for row, pos in enumerate(queries.positions)}

    def charge(batch, clear_noisy_sums) -> None:
        """Owner: durable ledger records (budget-checked) before any label is released."""
        ids = [int(q) for q in batch.query_ids]
        counts = None if isinstance(noise, Skellam) else [clear_counts[row_of[q]] for q in ids]
        charge_then_release(ledger, ids, failure_probability=charged_failure, counts=counts)

    try:
        labelling = label_queries(
            owner, server, holders, splits.pool_x, queries.positions, before_release=charge, progress=progress
        )
    finally:
        ledger.close()
    ledger_epsilon = ledger.epsilon()
    times.update(labelling.timings)
    if len(labelling.labels) == 0:
        raise BudgetExhaustedError(f"no query could be answered: {labelling.stopped}")
    queries = Queries(splits, queries.positions[: len(labelling.labels)])
    clear_counts = clear_counts[: len(labelling.labels)]
    labelled = queries.label(labelling.labels)
    start = time.perf_counter()
    student = fit_student(labelled, method=config.student_method, seed=config.seed)
    times["student_training_s"] = time.perf_counter() - start

    if isinstance(noise, Skellam):
        privacy = skellam_privacy(noise, ledger_epsilon, config)
    else:
        privacy = lattice_privacy(spec, clear_counts, config, noise)
    agree = labelling.labels == labelling.clear_noisy_argmax
    return {
        "settings": {**asdict(config), "num_classes": dataset.num_classes, "noise": noise.to_dict()},
        "circuit": {
            **spec.to_dict(),
            "difference_width_bits": spec.difference_width,
            "pbs_per_call": owner.pbs_count(),
            "p_error_per_pbs": owner.p_error(),
            "p_error_per_query": owner.query_p_error(),
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
            **privacy,
            "failure_probability_per_query": failure_per_query,
            "ledger": str(ledger_path),
            "ledger_epsilon": ledger_epsilon,
            "stopped_early": labelling.stopped,
        },
        "times": times,
        "bytes": labelling.bytes,
    }


def skellam_privacy(noise: Skellam, spent: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The publishable ε of the answered queries, as the ledger charged it (PLD, docs/privacy.md)."""
    return {
        "epsilon_publishable": spent["epsilon"],
        "delta": config.delta,
        "delta_total": spent["delta_total"],
        "mechanism": noise.to_dict(),
        "tau": config.tau,
        "target_epsilon": planned_target_epsilon(config),
        "accounting": "privacy loss distributions (dp_accounting, pessimistic), collusion-aware τ",
        "epsilon_data_dependent": None,
        "note": "no data-dependent ε for Skellam noise: the publishable ε is the one to report",
    }


def lattice_privacy(spec: CircuitSpec, counts: np.ndarray, config: RunConfig,
                    noise: LatticeLaplace | None = None) -> dict[str, Any]:
    """ε of the answered queries for the lattice mechanism the circuit really runs.

    Both rigorous per-query bounds of :mod:`speed.privacy.lattice` are evaluated: the
    histogram bound (the output is post-processing of the noisy counts, so the circuit's
    histogram failures only enlarge q) and the tighter argmax bound (needs the exact
    argmax, so those failures go to δ as (1 + e^ε)·Q·β).  For each of the two ε values the
    pair with the smaller ε among those keeping δ_total ≤ 1.01·δ is reported (else the
    smaller δ_total).  Clipped shares change the noise law: δ_total += (1 + e^ε)·Q·β_clip.
    """
    from speed.privacy.composition import delta_total
    from speed.privacy.lattice import lattice_epsilon

    noise = LatticeLaplace(config.gamma, config.resolution) if noise is None else noise
    gamma, scale = noise.gamma, noise.scale
    beta_hist = spec.histogram_failure_probability(scale)
    beta_clip = spec.clip_failure_probability(scale)
    results = {
        bound: lattice_epsilon(counts, gamma, config.tau, config.delta, noise.resolution,
                               bound=bound, failure_probability=beta_hist)
        for bound in ("histogram", "argmax")
    }
    out: dict[str, Any] = {}
    for kind in ("data_independent", "data_dependent"):
        pairs = []
        for bound, r in results.items():
            eps = r[kind]
            delta_tot = delta_total(r[f"delta_total_{kind}"], eps, len(counts) * beta_clip)
            pairs.append((eps, delta_tot, bound, r["per_query_epsilon"]))
        ok = [p for p in pairs if p[1] <= 1.01 * config.delta]
        eps, delta_tot, bound, per_query = min(ok) if ok else min(pairs, key=lambda p: (p[1], p[0]))
        out[f"epsilon_{kind}"] = eps
        out[f"delta_total_{kind}"] = delta_tot
        out[f"bound_{kind}"] = bound
        out[f"per_query_epsilon_{kind}"] = per_query
    return {
        "epsilon_publishable": out["epsilon_data_independent"],
        "delta_total": out["delta_total_data_independent"],
        **out,
        "delta": config.delta,
        "histogram_failure_per_query": beta_hist,
        "clip_failure_per_query": beta_clip,
        "mechanism": noise.to_dict(),
        "accounting": "the paper's moments accountant (SPEED's collusion-aware analysis, docs/privacy.md)",
        "publishable": "epsilon_data_independent",
        "note": "the data-dependent ε depends on private votes: publishing it needs smooth-sensitivity "
        "sanitisation (PATE 2018)",
    }
