"""Cost of the encrypted range check (issue 18 §3 (c)): server time per query with and without it,
side by side in one run on the same machine.

    .venv/bin/python benchmarks/he_sanity.py [--classes 10] [--holders 250] [--rounds 5]
        [--checks off,total,classes] [--note "4 other processes running"]

Every configuration is the circuit of shared pads (one encryption of the class sums in, the
deployment's default) at the paper's noise (``speed.bench.he.paper_spec``), B = 1 query per call,
two calls side by side as the server runs them.  The configurations are timed in alternating
rounds after one warm-up round each (a machine whose speed drifts affects all alike); every round
encrypts fresh random class sums (holder 0's noise in [−A, A], and one round at the extremes
−A / N·P + A), and every decrypted label is compared with numpy's argmax of the same sums and
every range check must pass.  Writes ``benchmarks/results/he_sanity/sanity-<UTC stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RESULTS = Path(__file__).parent / "results" / "he_sanity"


def random_sums(spec, rng, extremes: bool = False):
    """Class sums (B, K) in the compiled range: N one-hot votes plus noise in [−A, A] per class
    (or the extremes: one class at N·P + A, the others at −A)."""
    import numpy as np

    n, b, k, p, a = spec.num_holders, spec.batch_size, spec.num_classes, spec.resolution, spec.noise_bound
    if extremes:
        sums = np.full((b, k), -a, dtype=np.int64)
        sums[np.arange(b), rng.integers(0, k, size=b)] = n * p + a
        return sums
    votes = np.eye(k, dtype=np.int64)[rng.integers(0, k, size=(n, b))].sum(axis=0) * p
    return votes + rng.integers(-a, a + 1, size=(b, k))


def measure(specs: dict, rounds: int, calls: int = 2, seed: int = 0) -> dict:
    """Compile and key every spec, then time them in alternating rounds (one warm-up round each):
    per spec the seconds per query of each round, labels exact (against
    ``speed.crypto.spec.reference_argmax`` of the same sums, with the spec's rounding), range
    checks passed, compile and keygen seconds and PBS per query."""
    import numpy as np

    from speed.bench.he import pbs_per_parameter
    from speed.crypto.circuit import compile_module
    from speed.crypto.spec import reference_argmax
    from speed.server.aggregator import map_side_by_side

    rng = np.random.default_rng(seed)
    state = {}
    for name, spec in specs.items():
        start = time.perf_counter()
        module = compile_module(spec)
        compiled = time.perf_counter() - start
        start = time.perf_counter()
        module.keygen(force=True)
        state[name] = {"spec": spec, "module": module, "compile_s": compiled, "keygen_s": time.perf_counter() - start,
                       "rounds_s_per_query": [], "labels": 0, "exact": 0, "checks_failed": 0,
                       "pbs_per_query": int(module.aggregate.statistics["programmable_bootstrap_count"]) // spec.batch_size,
                       "pbs_parameters": pbs_per_parameter(module.aggregate.statistics)}

    def one_round(name: str, record: bool, extremes: bool) -> None:
        entry = state[name]
        spec, module = entry["spec"], entry["module"]
        sums = [random_sums(spec, rng, extremes) for _ in range(calls)]
        arguments = [[module.aggregate.encrypt(s)] for s in sums]
        start = time.perf_counter()
        outs = map_side_by_side(lambda values: module.aggregate.run(*values), arguments, calls)
        seconds = time.perf_counter() - start
        if not record:
            return
        entry["rounds_s_per_query"].append(seconds / (spec.batch_size * calls))
        for s, out in zip(sums, outs):
            decrypted = module.aggregate.decrypt(*out) if isinstance(out, tuple) else module.aggregate.decrypt(out)
            label, check = decrypted if isinstance(out, tuple) else (decrypted, None)
            expected = reference_argmax(s, spec.rounding_shift) if hasattr(spec, "rounding_shift") else reference_argmax(s)
            entry["labels"] += spec.batch_size
            entry["exact"] += int(np.sum(np.atleast_1d(label) == expected))
            if check is not None:
                entry["checks_failed"] += int(np.sum(np.atleast_1d(check) != spec.range_check_passed))

    for name in specs:
        one_round(name, record=False, extremes=False)
    for r in range(rounds):
        for name in specs:
            one_round(name, record=True, extremes=(r == 0))
    out = {}
    for name, entry in state.items():
        out[name] = {key: value for key, value in entry.items() if key not in ("module", "spec")}
        out[name]["spec"] = entry["spec"].to_dict()
        out[name]["median_s_per_query"] = float(np.median(entry["rounds_s_per_query"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--checks", default="off,total,classes")
    ap.add_argument("--note", default="", help="what else ran on the machine")
    a = ap.parse_args()

    from speed.bench.he import paper_spec
    from speed.bench.results import save_result
    from speed.machine import machine

    info = machine()
    specs = {check: paper_spec(a.holders, a.classes, aggregate_input="sum", range_check=check)
             for check in a.checks.split(",")}
    rows = measure(specs, a.rounds)
    base = rows.get("off", {}).get("median_s_per_query")
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; load "
              f"average at the start {info.get('load_average_1_5_15', ['?'])[0]}. {a.note} K = {a.classes}, "
              f"N = {a.holders}, shared pads (class-sum input), B = 1, two calls side by side, {a.rounds} "
              "alternating rounds after one warm-up round each (round 1 at the extremes of the range)."), "",
             "| range check | PBS per query | s per query (median) | vs off | rounds | labels exact | checks failed "
             "| compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = f"{r['median_s_per_query'] / base:.2f}×" if base else "–"
        lines.append(f"| {name} | {r['pbs_per_query']} | {r['median_s_per_query']:.2f} | {ratio} | "
                     f"{', '.join(f'{s:.2f}' for s in r['rounds_s_per_query'])} | {r['exact']}/{r['labels']} | "
                     f"{r['checks_failed']} | {r['compile_s']:.0f} |")
    save_result(RESULTS, "sanity", {"machine": info, "note": a.note, "classes": a.classes, "holders": a.holders,
                                    "rounds": a.rounds, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
