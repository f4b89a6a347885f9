"""Calibration table for docs/privacy.md ("Publishable ε: distributed Skellam noise and PLD accounting").

For ε ∈ {1, 2, 4, 8} × Q ∈ {100, 500} × τ ∈ {1, 0.9, 0.7} at δ = 1e-5: the least Skellam
σ, and the least lattice (discrete Laplace, P = 1) noise λ = 1/γ, whose publishable PLD ε
(speed.privacy.pld, pessimistic, discretisation 1e-5) is ≤ the target; plus the known
answers (σ = 40, Q = 500) and timings of the ε computation.

Run:  .venv/bin/python benchmarks/privacy_calibration.py
Writes benchmarks/results/privacy/calibration-<UTC date>.json and prints the markdown
tables quoted in the docs.  ``--markdown FILE.json`` only prints the tables of a file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy

from speed.fsutil import atomic_write_json
from speed.privacy import pld
from speed.privacy.calibrate import calibrate
from speed.privacy.mechanisms import Skellam

DELTA = 1e-5
H = 1e-5
TARGETS = (1.0, 2.0, 4.0, 8.0)
QUERIES = (100, 500)
TAUS = (1.0, 0.9, 0.7)
RESOLUTION = 1
NOISE_BOUND_FAILURE = 1e-12
OUT_DIR = Path(__file__).resolve().parent / "results" / "privacy"


def known_answers() -> dict:
    m = Skellam(40.0)
    start = time.perf_counter()
    eps = pld.publishable_epsilon(m, 500, DELTA, value_discretization_interval=H)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = pld.publishable_epsilon(m, 500, DELTA, value_discretization_interval=H)
    cached = time.perf_counter() - start
    start = time.perf_counter()
    mixed = pld.epsilon_for_queries(m, [1.0] * 400 + [0.7] * 100, DELTA, value_discretization_interval=H)
    mixed_s = time.perf_counter() - start
    start = time.perf_counter()
    rdp = pld.rdp_epsilon(m, 500, DELTA)
    rdp_s = time.perf_counter() - start
    assert again == eps
    return {
        "mechanism": m.to_dict(),
        "num_queries": 500,
        "delta": DELTA,
        "tau": 1.0,
        "epsilon_pld_pessimistic": eps,
        "epsilon_pld_optimistic": pld.publishable_epsilon(m, 500, DELTA, pessimistic=False,
                                                          value_discretization_interval=H),
        "epsilon_gaussian_same_sigma": pld.gaussian_epsilon(40.0, 500, DELTA, value_discretization_interval=H),
        "epsilon_rdp": rdp,
        "epsilon_400_tau1_plus_100_tau0.7": mixed,
        "noise_bound_1e-12": m.noise_bound(NOISE_BOUND_FAILURE, 1),
        "seconds": {
            "pld_first_call": first,
            "pld_cached_call": cached,
            "pld_heterogeneous_new_tau": mixed_s,
            "rdp": rdp_s,
        },
    }


def calibration_rows() -> list[dict]:
    rows = []
    for name in ("skellam", "lattice"):
        fixed = {"resolution": RESOLUTION} if name == "lattice" else {}
        for q in QUERIES:
            for tau in TAUS:
                for target in TARGETS:
                    start = time.perf_counter()
                    mech, eps = calibrate(name, target, q, DELTA, tau, value_discretization_interval=H,
                                          **fixed)
                    secs = time.perf_counter() - start
                    row = {
                        "mechanism": name,
                        "target_epsilon": target,
                        "num_queries": q,
                        "tau": tau,
                        "delta": DELTA,
                        "epsilon": eps,
                        "params": mech.to_dict(),
                        "noise_bound_1e-12": mech.noise_bound(NOISE_BOUND_FAILURE, 1),
                        "seconds": secs,
                    }
                    if name == "skellam":
                        row["sigma"] = mech.sigma
                    else:
                        row["gamma"] = mech.gamma
                        row["lambda"] = 1.0 / mech.gamma
                    rows.append(row)
                    print(f"{name:8s} Q={q:4d} τ={tau:g} ε≤{target:g}: "
                          f"{row.get('sigma', row.get('lambda')):.4g} (ε={eps:.4f}, {secs:.1f} s)",
                          file=sys.stderr, flush=True)
    return rows


def markdown(data: dict) -> str:
    out = []
    ka = data["known_answers"]
    out.append("| Skellam σ = 40, Q = 500, δ = 1e-5, τ = 1 | ε |")
    out.append("|---|---|")
    out.append(f"| PLD, pessimistic (published) | {ka['epsilon_pld_pessimistic']:.4f} |")
    out.append(f"| PLD, optimistic (lower estimate) | {ka['epsilon_pld_optimistic']:.4f} |")
    out.append(f"| Gaussian with the same σ (dp_accounting) | {ka['epsilon_gaussian_same_sigma']:.4f} |")
    out.append(f"| exact RDP → (ε, δ) (cross-check) | {ka['epsilon_rdp']:.4f} |")
    out.append(f"| 400 queries at τ = 1 and 100 at τ = 0.7 | {ka['epsilon_400_tau1_plus_100_tau0.7']:.4f} |")
    out.append("")
    rows = data["calibration"]
    for name, key, label in (("skellam", "sigma", "Skellam σ"),
                             ("lattice", "lambda", f"lattice λ = 1/γ (P = {data['lattice_resolution']})")):
        out.append(f"| {label} | " + " | ".join(f"ε = {t:g}" for t in data["targets"]) + " |")
        out.append("|---|" + "---|" * len(data["targets"]))
        for q in data["queries"]:
            for tau in data["taus"]:
                vals = []
                for t in data["targets"]:
                    r = next(r for r in rows if r["mechanism"] == name and r["num_queries"] == q
                             and r["tau"] == tau and r["target_epsilon"] == t)
                    vals.append(f"{r[key]:.2f}")
                out.append(f"| Q = {q}, τ = {tau:g} | " + " | ".join(vals) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="print the tables of an existing result file")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    started = time.perf_counter()
    data = {
        "script": "benchmarks/privacy_calibration.py",
        "date_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}",
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "dp-accounting": version("dp-accounting")},
        "delta": DELTA,
        "value_discretization_interval": H,
        "pessimistic": True,
        "calibration_rtol": 1e-3,
        "targets": list(TARGETS),
        "queries": list(QUERIES),
        "taus": list(TAUS),
        "lattice_resolution": RESOLUTION,
        "noise_bound_failure_probability": NOISE_BOUND_FAILURE,
        "known_answers": known_answers(),
        "calibration": calibration_rows(),
    }
    data["total_seconds"] = time.perf_counter() - started
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"calibration-{now:%Y-%m-%d}.json"
    atomic_write_json(path, data, indent=1)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print(markdown(data))


if __name__ == "__main__":
    main()
