"""Server time per query of two revisions of the circuit code, in alternating rounds (issue 3).

    .venv/bin/python benchmarks/he_circuit_ab.py --base REV [--holders 250] [--classes 10]
        [--rounds 6] [--workers 2] [--base-spec JSON] [--current-spec JSON]

``REV`` is any git revision of this repository; its ``src/speed/crypto/circuit.py`` (and the
``spec.py`` next to it, for the compile-cache digest) is loaded beside the working tree's and both
circuits are compiled in this process.  Each round runs, for each circuit in turn, ``workers``
one-query calls side by side as :class:`speed.server.AggregationServer` does; rounds alternate so
that a machine whose speed drifts (shared 2-vCPU machines drift 20–30 % within hours) affects both
alike, and the per-round ratio is reported next to the medians.  Every decrypted label is checked
against numpy's argmax of the same votes.  ``--base-spec`` / ``--current-spec`` add
:class:`~speed.crypto.spec.CircuitSpec` fields to one side (e.g. ``'{"relu_chunks": [1, 3, 3, 2]}'``
with ``--base HEAD`` compares two layouts of the same code).  Writes
``benchmarks/results/he_circuit_ab/he_circuit_ab-<date>T<HHMM>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from speed.fsutil import atomic_write_text  # noqa: E402


def circuit_at(revision: str, directory: Path):
    """The module ``speed/crypto/circuit.py`` as it was at ``revision`` (imported under another name)."""
    for name in ("circuit.py", "spec.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:src/speed/crypto/{name}"],
                              check=True, capture_output=True, text=True).stdout
        atomic_write_text(directory / name, text)
    spec = importlib.util.spec_from_file_location(f"circuit_{revision}", directory / "circuit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision whose circuit code is compared with the working tree's")
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2, help="one-query calls side by side per round")
    ap.add_argument("--base-spec", type=json.loads, default={}, help="CircuitSpec fields for the base side (JSON)")
    ap.add_argument("--current-spec", type=json.loads, default={}, help="CircuitSpec fields for the current side (JSON)")
    a = ap.parse_args()

    import numpy as np

    from speed.bench.he import (
        alternating_rounds,
        keyed_with_votes,
        paper_spec,
        timed_side_by_side,
    )
    from speed.bench.results import save_result
    from speed.crypto import circuit as current
    from speed.machine import machine

    info = machine()
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.base],
                              check=True, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = circuit_at(a.base, Path(tmp))
    circuits = {f"base {revision} {json.dumps(a.base_spec) if a.base_spec else ''}".strip(): (base, a.base_spec),
                f"current {head} {json.dumps(a.current_spec) if a.current_spec else ''}".strip(): (current, a.current_spec)}
    if len(circuits) < 2:
        ap.error("base and current are the same code and spec: nothing to compare")
    compiled, statistics = {}, {}
    for label, (code, overrides) in circuits.items():
        spec = paper_spec(a.holders, a.classes, **overrides)
        start = time.perf_counter()
        module = code.compile_module(spec)
        statistics[label] = {"pbs_per_query": int(module.aggregate.statistics["programmable_bootstrap_count"]),
                             "optimizer_cost": float(module.complexity), "compile_s": time.perf_counter() - start}
        compiled[label] = keyed_with_votes(module, spec, seed=0)
    per_query, correct = alternating_rounds(
        {label: (lambda label=label: timed_side_by_side(*compiled[label], calls=a.workers)) for label in compiled},
        a.rounds)
    (base_label, current_label) = compiled
    ratios = [b / c for b, c in zip(per_query[base_label], per_query[current_label])]
    rows = [{"circuit": label, **statistics[label], "s_per_query_rounds": per_query[label],
             "median_s_per_query": float(np.median(per_query[label])), "correct": correct[label]}
            for label in compiled]
    result = {"machine": info, "holders": a.holders, "classes": a.classes, "rounds": a.rounds,
              "base_spec": a.base_spec, "current_spec": a.current_spec,
              "workers": a.workers, "rows": rows, "base_over_current_per_round": ratios,
              "median_base_over_current": float(np.median(ratios))}
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs; "
              f"load average at the start {info.get('load_average_1_5_15', ['?'])[0]}. K = {a.classes}, "
              f"N = {a.holders}, one query per call, {a.workers} calls side by side; {a.rounds} alternating "
              f"rounds after one warm-up round each."), "",
             "| circuit code | PBS per query | optimizer cost | compile s | s per query (median) | rounds | correct |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['circuit']} | {r['pbs_per_query']} | {r['optimizer_cost']:.3g} | {r['compile_s']:.0f} | "
              f"{r['median_s_per_query']:.2f} | {', '.join(f'{s:.2f}' for s in r['s_per_query_rounds'])} | "
              f"{r['correct']} |" for r in rows]
    lines += ["", (f"Base / current, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
                   f"(median {result['median_base_over_current']:.2f}).")]
    save_result(ROOT / "benchmarks" / "results" / "he_circuit_ab", "he_circuit_ab", result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
