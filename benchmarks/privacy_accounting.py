"""Numbers quoted in docs/privacy.md: known answers, lattice bounds, dp-accounting comparison, speed.

Run:  .venv/bin/python benchmarks/privacy_accounting.py
Prints everything to stdout, with the date and the machine, so the docs can cite it.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
import warnings

import numpy as np
import scipy

from speed.privacy import (
    continuous_argmax_epsilon,
    epsilon,
    lattice_per_query_epsilon,
    lattice_tail_probability,
    noise_bound_for,
    per_query_epsilon_parts,
)


def header() -> None:
    import dp_accounting  # noqa: F401  (version below)
    from importlib.metadata import version

    print("# SPEED privacy accounting benchmark")
    print(f"date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"dp-accounting {version('dp-accounting')}")
    print()


def known_values() -> None:
    print("## Per-query ε, γ = 3.3")
    print("| τ | ε₁ (paper) | ε₂ (paper) | ε_q (paper, SPEC §4) | lattice P=1000, argmax bound | "
          "continuous limit of that bound | lattice P=1000, histogram bound |")
    print("|---|---|---|---|---|---|---|")
    for tau in (1.0, 0.9, 0.7, 0.5, 0.3):
        p = per_query_epsilon_parts(3.3, tau)
        eps2 = "–" if np.isinf(p["eps2"]) else f"{p['eps2']:.4f}"
        eps_q = 6.6 if tau == 1.0 else p["epsilon"]
        print(f"| {tau:g} | {p['eps1']:.4f} | {eps2} | {eps_q:.4f} | "
              f"{lattice_per_query_epsilon(3.3, tau, 1000):.4f} | {continuous_argmax_epsilon(3.3, tau):.4f} | "
              f"{lattice_per_query_epsilon(3.3, tau, 1000, 'histogram'):.4f} |")
    print()


def convergence() -> None:
    print("## Lattice argmax bound vs resolution P (γ = 3.3)")
    print("| τ | P = 1 | P = 10 | P = 100 | P = 1000 | P = 10000 | continuous limit |")
    print("|---|---|---|---|---|---|---|")
    for tau in (0.9, 0.7, 0.3):
        vals = [lattice_per_query_epsilon(3.3, tau, P) for P in (1, 10, 100, 1000, 10_000)]
        print(f"| {tau:g} | " + " | ".join(f"{v:.5f}" for v in vals)
              + f" | {continuous_argmax_epsilon(3.3, tau):.5f} |")
    print()


def dp_accounting_comparison() -> None:
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    print("## τ = 1, data-independent ε at δ = 1e-5 vs dp-accounting (noisy histogram = Laplace, "
          "L1 sensitivity 2, LaplaceDpEvent(noise_multiplier = λ/2))")
    print("| γ | Q | ours (PATE 2017 data-indep., L = 25) | basic composition | dp-accounting RDP | "
          "dp-accounting PLD | ours / PLD |")
    print("|---|---|---|---|---|---|---|")
    for gamma, q in ((0.05, 100), (0.05, 1000), (0.2, 100), (0.5, 100), (3.3, 100), (3.3, 500)):
        event = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(noise_multiplier=1 / (2 * gamma)), q)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = rdp.RdpAccountant()
            r.compose(event)
            eps_rdp = r.get_epsilon(1e-5)
            p = pld.PLDAccountant(dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
                                  value_discretization_interval=1e-3)
            p.compose(event)
            eps_pld = p.get_epsilon(1e-5)
        ours = epsilon(np.zeros((q, 10)), gamma, 1.0, 1e-5)["data_independent"]
        print(f"| {gamma:g} | {q} | {ours:.4f} | {2 * gamma * q:.4f} | {eps_rdp:.4f} | {eps_pld:.4f} | "
              f"{ours / eps_pld:.3f} |")
    print()


def speed() -> None:
    print("## Time to account 10,000 queries (K = 10, N = 250), first call (integrals included)")
    rng = np.random.default_rng(0)
    counts = rng.multinomial(250, [0.55, 0.2, 0.1, 0.05, 0.04, 0.02, 0.01, 0.01, 0.01, 0.01], size=10_000)
    for mech, kw in (("gamma", {}), ("lattice", {"resolution": 1000})):
        start = time.perf_counter()
        out = epsilon(counts, 3.17, 0.83, 1e-5, mechanism=mech, **kw)
        dt = time.perf_counter() - start
        print(f"- {mech}: {dt:.3f} s (data-dependent ε = {out['data_dependent']:.4f}, "
              f"data-independent ε = {out['data_independent']:.1f})")
    print()


def noise_bound() -> None:
    print("## Noise bound A for the circuit (λ = 0.31, P = 1000, K = 10, Q = 100)")
    for beta in (1e-6, 1e-12, 2.0**-64):
        a = noise_bound_for(beta, 0.31, 1000, coordinates=10 * 100)
        print(f"- run failure ≤ {beta:.3g}: A = {a} steps = {a / 1000:.1f} votes, "
              f"per-coordinate Pr[|Z| > A] = {lattice_tail_probability(a, 0.31, 1000):.3g}")
    print()


def main() -> None:
    header()
    known_values()
    convergence()
    dp_accounting_comparison()
    speed()
    noise_bound()


if __name__ == "__main__":
    main()
