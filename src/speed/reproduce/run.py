"""``speed reproduce``: the paper's experiments (docs/spec.md §6) through the real encrypted pipeline.

Stages (each a function with a small typed input and output, each timed and resumable):

1. **data** (:func:`speed.reproduce.teachers.stage_data`) — dataset, holder shards, public pool, test split.
2. **teachers** (:func:`~speed.reproduce.teachers.stage_teachers`) — ``--teachers scattering``: linear
   heads on free scattering features, batched; ``cnn``: one network per holder; checkpointed.
3. **votes** and **evaluation** — every teacher's votes on the pool and the test split, saved in
   the run's state (accounting and noise grids can be recomputed without retraining); mean
   teacher and plurality-ensemble accuracy.
4. **labelling** (:mod:`speed.reproduce.labelling`) — the largest Q through real TFHE, every query
   charged in the privacy ledger before its label is released; resumable.
5. **accounting** (:mod:`speed.reproduce.accounting`) — the publishable ε for every (Q, τ).
6. **baseline** and **students** (:mod:`speed.reproduce.students`).
7. **report** — ``<output>/<dataset>/report.md``, ``results.json`` and two PNG plots.

Caches are keyed by the settings their contents depend on (:mod:`speed.reproduce.config`): a
resumed run never reuses teachers, votes or labels made with other settings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


from speed.reproduce.config import (  # noqa: F401  (re-exported)
    DATASET_DEFAULTS,
    PATE_2017,
    REPRODUCE_DATASETS,
    STUDENT_METHODS,
    ReproduceConfig,
    curve_queries,
    machine_info,
)


class _Clock:
    """Wall time per stage of this invocation."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._start = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self._start


def reproduce(config: ReproduceConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage and write the report; return the results dict."""
    from speed.learning.loop import torch_threads

    cfg = config.resolved()
    with torch_threads(cfg.threads):
        return _reproduce(cfg, progress)


def _reproduce(cfg: ReproduceConfig, progress: bool) -> dict[str, Any]:
    from speed.learning import select_queries, vote_counts
    from speed.params import circuit_spec
    from speed.reproduce import accounting, labelling, students
    from speed.reproduce import teachers as tstage
    from speed.reproduce.results import assemble, plaintext_check
    from speed.reproduce.store import StageCache

    clock, machine = _Clock(), machine_info()
    data = clock.run("load_data_s", tstage.stage_data, cfg)  # refuses missing data before any other work
    noise = clock.run("noise_calibration_s", cfg.noise)  # Skellam σ calibrated to the plan (cached)
    cfg.run_config().validate(data.dataset.num_classes)  # the circuit can be built
    key = cfg.state_key()
    state_dir = Path(cfg.cache_dir) / "reproduce" / key
    stages = StageCache(state_dir / "stages.json", key)

    def say(msg: str) -> None:
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"[reproduce] {msg}", file=sys.stderr)

    features = clock.run("features_s", tstage.stage_features, cfg, data, progress, say)  # a bad cache: one line
    say(f"noise: {noise.to_dict()} (state {state_dir})")
    teachers = clock.run("teacher_training_s", tstage.stage_teachers, cfg, data, features, progress, say)
    votes = clock.run("teacher_votes_s", tstage.stage_votes, cfg, data, teachers, state_dir, say)
    teacher_eval = clock.run("teacher_evaluation_s", tstage.stage_evaluation, data, teachers, votes, stages)
    queries = select_queries(data.splits, cfg.max_queries, seed=cfg.seed)
    clear_counts = vote_counts(votes.pool[:, queries.positions], data.dataset.num_classes)  # (Qmax, K), simulation
    spec = circuit_spec(cfg.protocol, data.dataset.num_classes, int(cfg.holders), noise)
    labels = clock.run("encrypted_labelling_s", labelling.stage_labelling, cfg, spec, noise, teachers,
                       queries.positions, clear_counts, state_dir, progress, say)
    check = plaintext_check(cfg, spec, labels, clear_counts)
    privacy = clock.run("privacy_accounting_s", accounting.stage_accounting, cfg, spec, noise, clear_counts,
                        labels["clip_failure_per_query"], stages)
    baseline = clock.run("baseline_s", students.stage_baseline, cfg, data, stages, say, teachers)
    studs = clock.run("students_s", students.stage_students, cfg, data, teachers, queries.positions,
                      labels["labels"], curve_queries(cfg), stages, say)
    clock.times["total_s"] = clock.total()
    return assemble(cfg, data, noise, teachers, votes, teacher_eval, queries, clear_counts, labels, check, privacy,
                    baseline, studs, clock.times, machine, state_dir)


def _encrypted_labelling(cfg, spec, splits, teachers, positions, clear_counts, state_dir, progress, say):
    """The labelling stage under its earlier name and signature (``splits`` unused: the teachers carry
    their pool inputs); the noise is the config's."""
    from speed.reproduce.labelling import stage_labelling

    noise = cfg.noise() if hasattr(cfg, "noise") else None
    return stage_labelling(cfg, spec, noise, teachers, positions, clear_counts, state_dir, progress, say)


def summary_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """Flat (label, value) rows for the terminal: the publishable ε first."""
    rows: list[tuple[str, Any]] = []
    from speed.reproduce.report import noise_text

    noise = noise_text(result["mechanism"])
    for row in result["table"]:
        rows.append((f"Q={row['queries']} τ={row['tau']:g}: publishable ε (δ_total)",
                     f"{row['epsilon_publishable']:.4g} ({row['delta_total']:.3g}), {noise}"))
        if row.get("epsilon_data_dependent") is not None:
            rows.append((f"Q={row['queries']} τ={row['tau']:g}: data-dependent ε (not publishable)",
                         f"{row['epsilon_data_dependent']:.4g}"))
    t = result["teachers"]
    rows.append(("teacher mean accuracy (test)", t["teacher_mean"]))
    rows.append(("ensemble accuracy (plurality, test)", t["ensemble_plurality"]))
    rows.append(("non-private baseline (test)", result["baseline_accuracy"]))
    for row in result["accuracy_curve"]:
        rows.append((f"Q={row['queries']}: label accuracy", row["label_accuracy"]))
        for m in result["settings"]["methods"]:
            rows.append((f"Q={row['queries']}: student {m} (± std)", f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}"))
    chk = result["plaintext_check"]
    if chk.get("requested"):
        rows.append(("HE labels = plaintext noisy argmax", chk["he_vs_plaintext_noisy_argmax_agreement"]))
    for k, v in result["times"].items():
        rows.append((f"time {k}", v))
    return rows
