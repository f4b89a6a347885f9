"""The results of ``speed reproduce``: the plaintext check and the results dict behind the report.

Table rows (``results.json`` ``table``): one per (Q, τ), the **publishable** ε first
(``epsilon_publishable``, ``delta_total``, ``delta``, ``mechanism``, ``tau``), then ``label_accuracy``,
``student_accuracy`` / ``student_accuracy_std`` (the primary student, :func:`primary_method`, mean
and std over ``--student-seeds``), every method's ``student_<method>`` (and ``_std``), teacher and
ensemble accuracy and ``baseline_accuracy``.  Lattice runs add the data-dependent ε, labelled not
publishable.  Top level: ``baseline_accuracy`` and ``wall_seconds``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from speed.reproduce.config import PATE_2017, curve_queries


def primary_method(methods: tuple[str, ...]) -> str:
    """The student the table's ``student_accuracy`` reports: self-training on the free features when
    it runs (it uses the public pool), else the first method asked for."""
    for m in ("linear-self-training", "semi-supervised"):
        if m in methods:
            return m
    return methods[0]


def plaintext_check(cfg, spec, labels: dict[str, Any], clear_counts: np.ndarray) -> dict[str, Any]:
    """HE labels against the clear noisy argmax of the same noisy sums (``--plaintext-check``)."""
    check: dict[str, Any] = {"requested": cfg.plaintext_check}
    if not cfg.plaintext_check:
        return check
    from speed.crypto.spec import reference_argmax
    from speed.learning import plurality

    sums, got = labels["clear_noisy_sums"], labels["labels"]
    recomputed = reference_argmax(sums, spec.rounding_shift)
    noise = sums - spec.resolution * clear_counts  # total noise of every class count, in steps
    check.update({
        "he_vs_plaintext_noisy_argmax_agreement": float(np.mean(got == recomputed)),
        "disagreements": int(np.sum(got != recomputed)),
        "stored_reference_agrees": bool(np.array_equal(recomputed, labels["clear_noisy_argmax"])),
        "max_abs_total_noise_steps": int(np.abs(noise).max()),
        "noise_bound_A": int(spec.noise_bound),
        "noise_within_compiled_range": bool(np.abs(noise).max() <= spec.noise_bound),
        "noise_changed_label_vs_plurality": int(np.sum(recomputed != plurality(clear_counts))),
    })
    return check


def assemble(cfg, data, noise, teachers, votes, teacher_eval, queries, clear_counts, labels, check, privacy,
             baseline, studs, times, machine, state_dir: Path) -> dict[str, Any]:
    """The results dict (and the report files written from it)."""
    from speed.learning import plurality
    from speed.reproduce.report import write_report

    try:
        machine["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    dataset, splits = data.dataset, data.splits
    lab, true_q = labels["labels"], queries.true_labels
    top2 = np.sort(clear_counts, axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]  # votes of the plurality class minus the runner-up's (private)
    curve = []
    for q in curve_queries(cfg):
        row: dict[str, Any] = {
            "queries": q, "label_accuracy": float(np.mean(lab[:q] == true_q[:q])),
            "plurality_label_accuracy": float(np.mean(plurality(clear_counts[:q]) == true_q[:q])),
            "vote_gap_median": float(np.median(gaps[:q])), "vote_gap_min": int(gaps[:q].min()),
            "queries_with_vote_gap_le_3": int(np.sum(gaps[:q] <= 3)),
        }
        for m in cfg.methods:
            row[m] = studs[(m, q)]
        curve.append(row)
    primary = primary_method(cfg.methods)
    by_q = {row["queries"]: row for row in curve}
    table = []
    for p in privacy["rows"]:
        row = by_q[p["queries"]]
        entry = {
            "dataset": dataset.name, "holders": int(cfg.holders), "queries": p["queries"], "tau": p["tau"],
            "epsilon_publishable": p["epsilon_publishable"], "delta_total": p["delta_total"], "delta": cfg.delta,
            "mechanism": noise.to_dict(),
            "label_accuracy": row["label_accuracy"],
            "student_method": primary,
            "student_accuracy": row[primary]["mean"], "student_accuracy_std": row[primary]["std"],
            **{f"student_{m}": row[m]["mean"] for m in cfg.methods},
            **{f"student_{m}_std": row[m]["std"] for m in cfg.methods},
            "teacher_mean_accuracy": teacher_eval["teacher_mean"],
            "ensemble_accuracy": teacher_eval["ensemble_plurality"],
            "baseline_accuracy": baseline["accuracy"],
        }
        if cfg.mechanism == "lattice":
            entry.update({"lambda": 1.0 / cfg.gamma, "gamma": cfg.gamma, "publishable": True,
                          **{k: p[k] for k in ("epsilon_data_independent", "delta_total_data_independent",
                                               "epsilon_data_dependent", "delta_total_data_dependent")},
                          "epsilon_data_dependent_publishable": False})
        table.append(entry)
    recorded = {  # compute time of each stage when it ran (possibly in an earlier, resumed run)
        "teacher_training_s": teachers.info["train_seconds_total"],
        "teacher_votes_s": votes.seconds if not votes.from_cache else teacher_eval.get("seconds"),
        "encrypted_labelling_s": labels["seconds_all_batches"].get("wall_s"),
        "baseline_s": baseline["train_seconds"],
        "students_s": float(sum(row[m]["seconds_each"] * cfg.student_seeds for row in curve for m in cfg.methods)),
    }
    if teachers.kind == "scattering":
        recorded["features_s"] = teachers.info["features_transform_seconds"]
    result = {
        "command": cfg.command_line(),
        # the headline: the largest Q at the τ the ledger charges (the most pessimistic studied)
        "epsilon_publishable": next(row["epsilon_publishable"] for row in table
                                    if row["queries"] == cfg.max_queries and row["tau"] == cfg.ledger_tau),
        "delta": cfg.delta, "mechanism": noise.to_dict(), "tau": cfg.ledger_tau,
        "baseline_accuracy": baseline["accuracy"],
        "wall_seconds": times["total_s"],
        "settings": {**asdict(cfg), "num_classes": dataset.num_classes, "noise": noise.to_dict(),
                     "curve_queries": curve_queries(cfg), "state_dir": str(state_dir), "student_primary": primary},
        "data": {"train": int(len(dataset.y_train)), "pool": int(splits.pool_size), "test": int(len(splits.test_y)),
                 "shape": list(dataset.in_shape)},
        "teachers": {**teachers.info, **{k: v for k, v in teacher_eval.items() if k != "teacher_accuracy"},
                     "weights_digest": teachers.digest, "votes_file": str(votes.path)},
        "table": table,
        "accuracy_curve": curve,
        "privacy": {**privacy, "ledger": labels["ledger"], "ledger_tau": cfg.ledger_tau,
                    "failure_probability_per_query": labels["failure_probability_per_query"],
                    "failure_probability_charged_per_query": labels["failure_probability_charged_per_query"]},
        "labelling": {k: v for k, v in labels.items()
                      if k not in ("labels", "clear_noisy_argmax", "clear_noisy_sums", "ledger")},
        "plaintext_check": check,
        "baseline": baseline,
        "reference": PATE_2017,
        "times": times,
        "recorded_compute_s": recorded,
        "machine": machine,
    }
    result["files"] = write_report(result, Path(cfg.output) / cfg.dataset)
    return result
