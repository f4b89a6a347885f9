"""Server time per query when calls run side by side vs one call at a time (issue 3).

    .venv/bin/python benchmarks/he_side_by_side.py [--holders 250] [--classes 10] [--rounds 4]
        [--modes 1x1,1x2,10x1,10x2]

A mode ``BxW`` runs W calls of the B-query circuit at once, in W threads with CPUs/W OpenMP
threads each, as :class:`speed.server.AggregationServer` does with ``workers = W``.  The modes
are measured in alternating rounds in one process (after one warm-up round each), so that a
machine whose speed drifts (shared 2-vCPU machines do) affects every mode alike.  Time per query
of a round = its wall time / (B·W); the median over the rounds is reported, every decrypted label
is checked against numpy's argmax of the same votes.  Writes
``benchmarks/results/he_side_by_side-<date>T<HHMM>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    from concrete import fhe
    from tqdm import tqdm

    from speed.bench.he import encrypted_random_votes, paper_spec
    from speed.crypto import circuit
    from speed.machine import machine
    from speed.server.aggregator import (
        available_cpus,
        map_side_by_side,
        threads_per_call,
    )

    info = machine()
    modes = [tuple(int(x) for x in m.split("x")) for m in a.modes.split(",")]
    compiled = {}
    for batch in sorted({b for b, _ in modes}):
        spec = paper_spec(a.holders, a.classes, batch_size=batch)
        module = circuit.build_module(spec).compile(circuit.inputsets(spec), circuit.configuration(spec))
        module.keygen()
        votes, blobs = encrypted_random_votes(module, spec, seed=batch)
        compiled[batch] = (module, np.argmax(votes.sum(axis=0), axis=1), blobs)

    def one_round(batch: int, workers: int) -> tuple[float, bool]:
        module, expected, blobs = compiled[batch]
        arguments = [[fhe.Value.deserialize(b) for b in blobs] for _ in range(workers)]
        start = time.perf_counter()
        outs = map_side_by_side(lambda values: module.aggregate.run(*values), arguments, workers)
        seconds = time.perf_counter() - start
        ok = all(np.array_equal(np.atleast_1d(module.aggregate.decrypt(o)), expected) for o in outs)
        return seconds / (batch * workers), ok

    for mode in modes:
        one_round(*mode)  # warm-up: the first call of a keyset is slower
    per_query = {m: [] for m in modes}
    correct = {m: True for m in modes}
    for _ in tqdm(range(a.rounds), desc="rounds", unit="round"):
        for mode in modes:
            seconds, ok = one_round(*mode)
            per_query[mode].append(seconds)
            correct[mode] &= ok
    rows = [{"batch_size": b, "calls_side_by_side": w, "openmp_threads_per_call": threads_per_call(w, available_cpus()),
             "s_per_query_rounds": per_query[(b, w)], "median_s_per_query": float(np.median(per_query[(b, w)])),
             "correct": correct[(b, w)]} for b, w in modes]
    out = Path(__file__).parent / "results"
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    (out / f"he_side_by_side-{stamp}.json").write_text(json.dumps(
        {"machine": info, "holders": a.holders, "classes": a.classes, "rounds": a.rounds, "rows": rows}, indent=2))
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; "
              f"load average at the start {info.get('load_average_1_5_15', ['?'])[0]}. K = {a.classes}, "
              f"N = {a.holders}, tournament argmax; {a.rounds} alternating rounds after one warm-up round each."), "",
             "| queries per call | calls side by side × OpenMP threads each | s per query (median) | rounds | correct |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['calls_side_by_side']} × {r['openmp_threads_per_call']} | "
              f"{r['median_s_per_query']:.2f} | {', '.join(f'{s:.2f}' for s in r['s_per_query_rounds'])} | "
              f"{r['correct']} |" for r in rows]
    (out / f"he_side_by_side-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
