"""Stage ``accounting`` of ``speed reproduce``: ε for every (Q, τ) of the study.

* Skellam noise: the **publishable** ε of Q noisy histograms, each protected by τN secret shares,
  by privacy-loss distributions (:func:`speed.privacy.pld.publishable_epsilon`); it does not look at
  the votes.  δ_total = δ + (1 + e^ε)·Q·β_clip (only clipped shares change the noise law; a
  histogram-level ε covers every other circuit failure, docs/privacy.md "Circuit failures and δ").
* Lattice noise (the paper's configuration): :func:`speed.pipeline.lattice_privacy`, the
  data-independent ε (publishable) and the data-dependent ε, which reads the private vote counts
  and is **not publishable** as is (PATE 2018's smooth-sensitivity release would be needed).

Every number comes from the saved vote counts and the noise object: nothing is retrained.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

TAU_GRID = tuple(round(x, 3) for x in np.linspace(0.5, 1.0, 6))


def _skellam_row(noise, q: int, tau: float, delta: float, clip: float) -> dict[str, Any]:
    from speed.privacy.composition import delta_total
    from speed.privacy.pld import publishable_epsilon

    eps = publishable_epsilon(noise, q, delta, tau)
    return {"queries": q, "tau": tau, "epsilon_publishable": eps, "delta": delta,
            "delta_total": delta_total(delta, eps, q * clip)}


def _lattice_row(cfg, spec, noise, counts: np.ndarray, q: int, tau: float) -> dict[str, Any]:
    from speed.pipeline import lattice_privacy

    r = lattice_privacy(spec, counts[:q], cfg.run_config(tau), noise)
    return {"queries": q, "tau": tau, "epsilon_publishable": r["epsilon_data_independent"], "delta": cfg.delta,
            "delta_total": r["delta_total_data_independent"],
            **{k: r[k] for k in ("epsilon_data_independent", "delta_total_data_independent", "bound_data_independent",
                                 "per_query_epsilon_data_independent", "epsilon_data_dependent",
                                 "delta_total_data_dependent", "bound_data_dependent")}}


def stage_accounting(cfg, spec, noise, clear_counts: np.ndarray, clip_failure: float, stages) -> dict[str, Any]:
    """Rows for the table (every Q of ``--queries`` × every τ of ``--tau``) and the ε-vs-τ curve."""
    from speed.privacy.mechanisms import Skellam

    skellam = isinstance(noise, Skellam)
    qs = sorted(set(cfg.queries))
    taus_curve = sorted(set(cfg.taus) | set(TAU_GRID))
    ident = {"noise": noise.to_dict(), "queries": qs, "taus": list(cfg.taus), "delta": cfg.delta,
             "clip": clip_failure, "spec": spec.to_dict()}
    if not skellam:  # the data-dependent ε reads the counts
        ident["counts"] = hashlib.sha256(np.ascontiguousarray(clear_counts, dtype=np.int64).tobytes()).hexdigest()
    key = "accounting-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    cached = stages.get(key)
    if cached is not None:
        return cached

    def row(q: int, tau: float) -> dict[str, Any]:
        if skellam:
            return _skellam_row(noise, q, tau, cfg.delta, clip_failure)
        return _lattice_row(cfg, spec, noise, clear_counts, q, tau)

    rows = [row(q, tau) for q in qs for tau in cfg.taus]
    curve = []
    for q in qs:
        for tau in taus_curve:
            r = next((x for x in rows if x["queries"] == q and x["tau"] == tau), None) or row(q, tau)
            curve.append({k: r.get(k) for k in ("queries", "tau", "epsilon_publishable", "epsilon_data_dependent")})
    result = {
        "rows": rows, "epsilon_vs_tau": curve, "mechanism": noise.to_dict(), "kind": noise.to_dict()["mechanism"],
        "publishable": "epsilon_publishable",
        "accounting": ("privacy loss distributions (dp_accounting, pessimistic), collusion-aware τ" if skellam else
                       "the paper's moments accountant (SPEED's collusion-aware analysis, docs/privacy.md)"),
        "note": ("no data-dependent ε for Skellam noise: the publishable ε is the one to report" if skellam else
                 "research run: the data-dependent ε depends on the private votes and is not publishable "
                 "(it needs PATE 2018's smooth-sensitivity release); the publishable ε is the data-independent one"),
    }
    stages.put(key, result)
    return result
