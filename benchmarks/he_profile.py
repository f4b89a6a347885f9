"""Where the aggregation server's time goes (issue 3): cores, batching, input handling, parameters.

    .venv/bin/python benchmarks/he_profile.py [--holders 250] [--classes 10] [--calls 4]

Each measurement runs in its own process (compile, keygen, one warm-up round, then ``--calls``
timed rounds; a round is one call of the ``aggregate`` function on random in-range votes, or
two calls side by side in two threads with one OpenMP thread each, as the server runs them):

* ``tournament B=1``: the default circuit on both CPUs; under ``taskset -c 0`` (one thread);
  two calls side by side;
* ``tournament B=10``: ten queries per call (per-query error budget, ``CircuitSpec.call_p_error``),
  one call on both CPUs and two side by side;
* ``sums only``: the same 250 inputs summed with no argmax: the cost of taking the holders'
  ciphertexts in (argument conversion, seed expansion, additions), a floor for any argmax.

Also records concrete's parameter choice for the default circuit (bootstraps per parameter set,
optimizer complexity).  Writes ``benchmarks/results/he_profile/he_profile-<date>T<HHMM>.json`` and ``.md``;
run it on a quiet machine (the load average at the start is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def measure(variant: str, holders: int, classes: int, batch: int, calls: int, workers: int) -> dict:
    """Compile ``variant`` and time its calls (runs in a child process).

    ``workers`` calls run side by side in threads, each on CPUs/workers OpenMP threads, as the
    aggregation server does (:class:`speed.server.AggregationServer`); a round's wall time over
    its ``workers × batch`` queries is the time per query."""
    import numpy as np

    from speed.bench.he import (
        keyed_with_votes,
        paper_spec,
        pbs_per_parameter,
        timed_side_by_side,
    )
    from speed.crypto import circuit
    from speed.crypto.spec import reference_argmax
    from speed.server.aggregator import available_cpus, threads_per_call

    spec = paper_spec(holders, classes, batch_size=batch)
    reference = reference_argmax
    if variant == "sums-only":
        def reference(sums):
            return sums[:, 0] - sums[:, 1]

        circuit.argmax_from_sums = lambda spec, fhe, sums: reference(sums)
    start = time.perf_counter()
    module = circuit.compile_module(spec)
    compile_s = time.perf_counter() - start
    module, blobs, expected = keyed_with_votes(module, spec, seed=0, reference=reference)
    seconds, correct = [], True
    for _ in range(calls + 1):  # the first call (slower) apart
        per_query, ok = timed_side_by_side(module, blobs, expected, workers)
        seconds.append(per_query * batch * workers)
        correct &= ok
    stats = module.aggregate.statistics
    return {
        "variant": variant, "holders": holders, "classes": classes, "batch_size": batch,
        "cpus_allowed": sorted(os.sched_getaffinity(0)), "workers": workers,
        "openmp_threads_per_call": threads_per_call(workers, available_cpus()),
        "compile_s": compile_s, "first_round_s": seconds[0], "rounds_s": seconds[1:],
        "median_round_s": float(np.median(seconds[1:])),
        "median_s_per_query": float(np.median(seconds[1:])) / (batch * workers),
        "correct": bool(correct), "complexity": float(module.complexity),
        "pbs_per_call": int(stats.get("programmable_bootstrap_count", 0)), "pbs_per_parameter": pbs_per_parameter(stats),
        "global_p_error_per_call": float(module.server.global_p_error),
    }


def child(variant: str, holders: int, classes: int, batch: int, calls: int, cpus: str | None, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--holders", str(holders), "--classes", str(classes),
           "--batch", str(batch), "--calls", str(calls), "--workers", str(workers)]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"variant": variant, "batch_size": batch, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.holders, a.classes, a.batch, a.calls, a.workers)))
        return 0

    from speed.bench.results import save_result
    from speed.machine import machine

    info = machine()
    # (circuit, queries per call, CPUs, calls side by side)
    plan = [("tournament", 1, None, 1), ("tournament", 1, "0", 1), ("tournament", 1, None, 2),
            ("tournament", 10, None, 1), ("tournament", 10, None, 2), ("sums-only", 1, None, 1),
            ("sums-only", 1, None, 2)]
    rows = []
    for variant, batch, cpus, workers in plan:
        print(f"{variant} B={batch} cpus={cpus or 'all'} workers={workers} ...", file=sys.stderr, flush=True)
        calls = a.calls if batch == 1 else max(2, a.calls // 2)
        rows.append(child(variant, a.holders, a.classes, batch, calls, cpus, workers))
        print("  ", {k: rows[-1].get(k) for k in ("median_s_per_query", "first_round_s", "correct", "error")},
              file=sys.stderr, flush=True)
    lines = [f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; "
             f"load average at the start {info.get('load_average_1_5_15', ['?'])[0]}. "
             f"K = {a.classes}, N = {a.holders}.", "",
             "| circuit | queries per call | CPUs | calls side by side × threads each | s per query (median) | "
             "first round s | PBS per call | optimizer complexity | correct |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch_size']} | | | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['batch_size']} | {len(r['cpus_allowed'])} | "
                     f"{r['workers']} × {r['openmp_threads_per_call']} | {r['median_s_per_query']:.3f} | "
                     f"{r['first_round_s']:.2f} | {r['pbs_per_call']} | {r['complexity']:.3g} | {r['correct']} |")
    default = rows[0]
    if "pbs_per_parameter" in default:
        lines += ["", "Bootstraps of the default circuit per parameter set:", "",
                  "| PBS | polynomial size | GLWE dimension | LWE dimension | level | base log |", "|---|---|---|---|---|---|"]
        lines += [f"| {p['count']} | {p['polynomial_size']} | {p['glwe_dimension']} | {p['input_lwe_dimension']} | "
                  f"{p['level']} | {p['base_log']} |" for p in default["pbs_per_parameter"]]
    save_result(Path(__file__).parent / "results" / "he_profile", "he_profile", {"machine": info, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
