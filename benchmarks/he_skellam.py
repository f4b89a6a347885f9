"""The circuit at Skellam noise (issue 19 §5): today's default against σ = 28 and σ = 63, side by
side in one run on the same machine, and the effect of rounding the sums to 2^r on the labels.

    .venv/bin/python benchmarks/he_skellam.py [--classes 10] [--holders 250] [--rounds 3]
        [--sigmas 28,63] [--shifts 0,1,2] [--clear-only] [--note "..."]

Encrypted part: per configuration the circuit of shared pads (one encryption of the class sums in),
B = 1, two calls side by side as the server runs them, timed in alternating rounds after one
warm-up round each (``he_sanity.measure``); "default" is today's spec (``paper_spec``: lattice
noise at γ = 3.3, A = 9), the others integer noise (resolution 1) with the Skellam bound
A = ``skellam_noise_bound(σ, K)`` and a rounding shift r (the argmax of ⌊c_k / 2^r⌋, lowest index
among ties).  Every label is compared with ``reference_argmax`` of the same sums and the same r.

Clear part (cheap, numpy): over random vote histograms (``speed.bench.he.vote_table``: N holders,
a share ``agreement`` voting the query's class, 30 % of queries split between two classes) plus
Skellam noise of variance σ² per class, how often the argmax of the rounded noisy sums equals the
argmax of the unrounded noisy sums and the true plurality.

Writes ``benchmarks/results/he_skellam/skellam-<UTC stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def clear_rounding_effect(num_holders: int, num_classes: int, sigmas, shifts, queries: int = 20_000,
                          agreements=(0.3, 0.6, 0.9), seed: int = 0) -> list[dict]:
    """Label agreement of the rounded noisy argmax with the unrounded one and with the plurality."""
    import numpy as np

    from speed.bench.he import vote_table
    from speed.crypto.spec import reference_argmax

    rng = np.random.default_rng(seed)
    rows = []
    for agreement in agreements:
        table = vote_table(queries, num_holders, num_classes, seed + int(agreement * 100), agreement)
        counts = np.stack([np.bincount(row, minlength=num_classes) for row in table]).astype(np.int64)
        plurality = reference_argmax(counts)
        for sigma in sigmas:
            mu = sigma**2 / 2  # Skellam(μ, μ): variance σ²
            noisy = counts + rng.poisson(mu, counts.shape) - rng.poisson(mu, counts.shape)
            exact = reference_argmax(noisy)
            for shift in shifts:
                rounded = reference_argmax(noisy, shift)
                rows.append({"agreement": agreement, "sigma": sigma, "rounding_shift": shift, "queries": queries,
                             "same_as_unrounded": float(np.mean(rounded == exact)),
                             "same_as_plurality": float(np.mean(rounded == plurality)),
                             "unrounded_same_as_plurality": float(np.mean(exact == plurality))})
    return rows


def _measure_one(name, spec_dict, rounds, queue) -> None:
    from he_sanity import measure

    from speed.crypto.spec import CircuitSpec

    import resource

    row = measure({name: CircuitSpec.from_dict(spec_dict)}, rounds)[name]
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    queue.put(row)


def measure_isolated(specs: dict, rounds: int, limit_s: float = 1800) -> dict:
    """``he_sanity.measure`` for each spec in a process of its own, one after the other (all
    keysets in one process ran this 24 GB machine out of memory on 2026-12-06): a spec that fails
    or is killed gets an ``error`` entry and the others still run."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = {}
    for name, spec in specs.items():
        queue = context.Queue()
        process = context.Process(target=_measure_one, args=(name, spec.to_dict(), rounds, queue))
        process.start()
        process.join(timeout=limit_s)
        if process.is_alive():
            process.kill()
            process.join()
        try:
            out[name] = queue.get(timeout=5)
        except Exception:  # noqa: BLE001 - killed (out of memory) or over the time limit
            out[name] = {"error": f"no result within {limit_s:.0f} s (exit code {process.exitcode})"}
        print(name, {k: v for k, v in out[name].items() if k != "spec"}, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sigmas", default="28,63")
    ap.add_argument("--shifts", default="0,1,2", help="rounding shifts r to time (each with every σ)")
    ap.add_argument("--configs", default="", help="explicit σ:r pairs to time instead, e.g. 28:1,63:2")
    ap.add_argument("--clear-only", action="store_true")
    ap.add_argument("--limit", type=float, default=1800, help="seconds per circuit (compile, keys, rounds)")
    ap.add_argument("--alternating", action="store_true",
                    help="all circuits in this process, timed in alternating rounds (he_sanity.measure; needs the "
                         "memory of every keyset at once: use it without rounding shifts)")
    ap.add_argument("--note", default="", help="what else ran on the machine")
    a = ap.parse_args()

    from speed.bench.he import paper_spec
    from speed.bench.results import save_result
    from speed.crypto.spec import CircuitSpec, skellam_noise_bound
    from speed.machine import machine

    info = machine()
    sigmas = [float(s) for s in a.sigmas.split(",")]
    shifts = [int(r) for r in a.shifts.split(",")]
    clear = clear_rounding_effect(a.holders, a.classes, sigmas, sorted(set(shifts) | {0, 1, 2, 3, 4}))
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; load "
              f"average at the start {info.get('load_average_1_5_15', ['?'])[0]}. {a.note} K = {a.classes}, "
              f"N = {a.holders}."), "",
             "Clear (numpy, 20,000 random vote histograms per row, Skellam noise of variance σ² per class):", "",
             "| teacher agreement | σ | r | = unrounded noisy argmax | = plurality (unrounded: …) |", "|---|---|---|---|---|"]
    lines += [f"| {r['agreement']} | {r['sigma']:g} | {r['rounding_shift']} | {100 * r['same_as_unrounded']:.2f} % | "
              f"{100 * r['same_as_plurality']:.2f} % ({100 * r['unrounded_same_as_plurality']:.2f} %) |" for r in clear]
    payload = {"machine": info, "note": a.note, "classes": a.classes, "holders": a.holders, "clear": clear}
    if not a.clear_only:
        specs = {"default": paper_spec(a.holders, a.classes, aggregate_input="sum")}
        pairs = ([(float(s), int(r)) for s, r in (p.split(":") for p in a.configs.split(","))] if a.configs
                 else [(s, r) for s in sigmas for r in shifts])
        for sigma, shift in pairs:
            specs[f"sigma={sigma:g} r={shift}"] = CircuitSpec(
                num_holders=a.holders, num_classes=a.classes, noise_bound=skellam_noise_bound(sigma, a.classes),
                aggregate_input="sum", rounding_shift=shift)
        if a.alternating:
            from he_sanity import measure

            rows = measure(specs, a.rounds)
        else:
            specs["default (again)"] = specs["default"]
            rows = measure_isolated(specs, a.rounds, a.limit)
        base = rows["default"]["median_s_per_query"]
        payload.update(rounds=a.rounds, rows=rows)
        how = ("all circuits in one process, in alternating rounds" if a.alternating else
               "each circuit in a process of its own, one after the other (today's default first and last, to bracket drift)")
        lines += ["", (f"Encrypted: shared pads (class-sum input), B = 1, two calls side by side, {a.rounds} rounds "
                       f"after one warm-up round (round 1 at the extremes of the range), {how}."), "",
                  "| circuit | A | w (argmax) | PBS per query | s per query (median) | vs default | rounds | labels exact "
                  "| compile s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            spec = specs[name]
            if "error" in r:
                lines.append(f"| {name} | {spec.noise_bound} | {spec.argmax_width} | – | {r['error']} | | | | |")
                continue
            lines.append(f"| {name} | {spec.noise_bound} | {spec.argmax_width} | {r['pbs_per_query']} | "
                         f"{r['median_s_per_query']:.2f} | {r['median_s_per_query'] / base:.2f}× | "
                         f"{', '.join(f'{s:.2f}' for s in r['rounds_s_per_query'])} | {r['exact']}/{r['labels']} | "
                         f"{r['compile_s']:.0f} |")
    save_result(Path(__file__).parent / "results" / "he_skellam", "skellam", payload, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
