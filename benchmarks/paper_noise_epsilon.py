"""Publishable ε of the paper's noise (Laplace, γ = 3.3) against Skellam noise, by PLD accounting.

    .venv/bin/python benchmarks/paper_noise_epsilon.py   # writes benchmarks/results/privacy/paper-noise-<date>.json

Backs the README's "The number you can publish": the data-independent ε that a deployed owner
could publish at the paper's noise level, for 100 and 500 queries (τ = 1, δ = 1e-5), next to the
paper's basic composition (2γ per query) and the moments accountant's data-independent ε.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from speed.fsutil import atomic_write_text  # noqa: E402
from speed.machine import machine  # noqa: E402
from speed.privacy.accountant import epsilon  # noqa: E402
from speed.privacy.mechanisms import GammaLaplace, LatticeLaplace  # noqa: E402
from speed.privacy.pld import publishable_epsilon  # noqa: E402

import numpy as np  # noqa: E402


def main() -> int:
    gamma, delta, rows = 3.3, 1e-5, []
    for q in (60, 100, 500):
        start = time.perf_counter()
        counts = np.zeros((q, 10))  # the data-independent ε does not look at them
        rows.append({
            "queries": q, "gamma": gamma, "tau": 1.0, "delta": delta,
            "basic_composition": 2 * gamma * q,
            "pld_continuous_laplace": publishable_epsilon(GammaLaplace(gamma), q, delta),
            "pld_lattice_laplace_P1": publishable_epsilon(LatticeLaplace(gamma, 1), q, delta),
            "moments_data_independent": epsilon(counts, gamma, 1.0, delta)["data_independent"],
            "seconds": time.perf_counter() - start,
        })
    out = Path(__file__).parent / "results" / "privacy"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"paper-noise-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    atomic_write_text(path, json.dumps({"script": "benchmarks/paper_noise_epsilon.py", "machine": machine(), "rows": rows},
                                       indent=2))
    for r in rows:
        print(r)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
