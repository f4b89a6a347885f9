"""Server time per query when calls run side by side vs one call at a time (issue 3).

    .venv/bin/python benchmarks/he_side_by_side.py [--holders 250] [--classes 10] [--rounds 4]
        [--modes 1x1,1x2,10x1,10x2,10x2:sum]

A mode ``BxW`` runs W calls of the B-query circuit at once, in W threads with CPUs/W OpenMP
threads each, as :class:`speed.server.AggregationServer` does with ``workers = W``; ``BxW:sum``
does the same with the circuit of shared pads, which takes one fresh encryption of the class sums
instead of N encrypted votes (``CircuitSpec.aggregate_input = "sum"``, speed.crypto.shared).  The modes
are measured in alternating rounds in one process (after one warm-up round each), so that a
machine whose speed drifts (shared 2-vCPU machines do) affects every mode alike.  Time per query
of a round = its wall time / (B·W); the median over the rounds is reported, every decrypted label
is checked against numpy's argmax of the same votes.  Writes
``benchmarks/results/he_side_by_side/he_side_by_side-<date>T<HHMM>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--modes", default="1x1,1x2,10x1,10x2", help="comma-separated BxW (queries per call x calls at once)")
    a = ap.parse_args()

    import numpy as np

    from speed.bench.he import (
        alternating_rounds,
        keyed_with_votes,
        paper_spec,
        timed_side_by_side,
    )
    from speed.bench.results import save_result
    from speed.crypto import circuit
    from speed.machine import machine
    from speed.server.aggregator import available_cpus, threads_per_call

    info = machine()
    modes = []
    for text in a.modes.split(","):
        shape, _, inputs = text.partition(":")
        if inputs not in ("", "sum"):
            ap.error(f"mode {text!r}: the only suffix is ':sum'")
        batch, calls = (int(x) for x in shape.split("x"))
        modes.append((batch, calls, inputs or "holders"))
    compiled = {}
    for batch, inputs in sorted({(b, i) for b, _, i in modes}):
        spec = paper_spec(a.holders, a.classes, batch_size=batch, aggregate_input=inputs)
        compiled[batch, inputs] = keyed_with_votes(circuit.compile_module(spec), spec, seed=batch)
    per_query, correct = alternating_rounds(
        {(b, w, i): (lambda b=b, w=w, i=i: timed_side_by_side(*compiled[b, i], calls=w)) for b, w, i in modes},
        a.rounds)
    rows = [{"batch_size": b, "calls_side_by_side": w, "aggregate_input": i,
             "openmp_threads_per_call": threads_per_call(w, available_cpus()),
             "s_per_query_rounds": per_query[(b, w, i)], "median_s_per_query": float(np.median(per_query[(b, w, i)])),
             "correct": correct[(b, w, i)]} for b, w, i in modes]
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; "
              f"load average at the start {info.get('load_average_1_5_15', ['?'])[0]}. K = {a.classes}, "
              f"N = {a.holders}, tournament argmax; {a.rounds} alternating rounds after one warm-up round each."), "",
             ("| aggregate input | queries per call | calls side by side × OpenMP threads each | s per query (median) "
              "| rounds | correct |"),
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['aggregate_input']} | {r['batch_size']} | {r['calls_side_by_side']} × {r['openmp_threads_per_call']} | "
              f"{r['median_s_per_query']:.2f} | {', '.join(f'{s:.2f}' for s in r['s_per_query_rounds'])} | "
              f"{r['correct']} |" for r in rows]
    save_result(Path(__file__).parent / "results" / "he_side_by_side", "he_side_by_side",
                {"machine": info, "holders": a.holders, "classes": a.classes, "rounds": a.rounds, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
