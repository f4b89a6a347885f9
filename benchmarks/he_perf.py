"""Where one aggregation call spends its CPU time, from a ``perf`` profile (issue 3).

    .venv/bin/python benchmarks/he_perf.py [--holders 250] [--classes 10] [--batch 1] [--seconds 8]

Compiles the default circuit, generates keys, then runs one call after another on one CPU
(``taskset -c 0``, one OpenMP thread) in a child process while ``perf record --call-graph dwarf``
samples it for ``--seconds``.  Reports, for a few functions of concrete's runtime, the share of
samples spent inside them (callees included): bootstraps, key switches, the conversion of every
bootstrap key to the Fourier domain that concrete's ``RuntimeContext`` does at the start of each
call, and the expansion of the seeded input ciphertexts.  Needs ``perf`` (Debian: linux-perf) and
permission to profile (root or ``kernel.perf_event_paranoid`` ≤ 1).  Writes
``benchmarks/results/he_perf/he_perf-<date>T<HHMM>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: label -> a function of concrete's runtime (perf symbol) whose inclusive share is reported
FUNCTIONS = {
    "bootstraps (PBS)": "concrete_cpu_bootstrap_lwe_ciphertext_u64",
    "key switches": "concrete_cpu_keyswitch_lwe_ciphertext_u64",
    "bootstrap keys to Fourier, once per call": "mlir::concretelang::RuntimeContext::convert_to_fourier_domain",
    "seeded inputs expanded (software AES)": "concrete_cpu_decompress_seeded_lwe_ciphertext_u64",
}

CHILD = """
import sys
sys.path.insert(0, {src!r})
from speed.bench.he import keyed_with_votes, paper_spec, timed_side_by_side
from speed.crypto import circuit
spec = paper_spec({holders}, {classes}, batch_size={batch})
module, blobs, expected = keyed_with_votes(circuit.compile_module(spec), spec, seed=0)
timed_side_by_side(module, blobs, expected, 1)  # the first call of a keyset is slower
open({ready!r}, "w").close()
while True:
    seconds, ok = timed_side_by_side(module, blobs, expected, 1)
    print(seconds, ok, flush=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1, help="queries per call")
    ap.add_argument("--seconds", type=int, default=8,
                    help="how long perf samples the calls (at least two whole calls: ~4.5 s each at B = 1, ~40 s at B = 10)")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        print("error: perf not found (Debian package linux-perf)", file=sys.stderr)
        return 2

    import numpy as np

    from speed.bench.results import save_result
    from speed.machine import machine

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        ready, data = Path(tmp) / "ready", Path(tmp) / "perf.data"
        code = CHILD.format(src=str(ROOT / "src"), holders=a.holders, classes=a.classes, batch=a.batch,
                            ready=str(ready))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", code], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            while not ready.exists():
                if child.poll() is not None:
                    print("error: the profiled process ended before its first call", file=sys.stderr)
                    return 1
                time.sleep(1)
            subprocess.run(["perf", "record", "-F", "49", "--call-graph", "dwarf,16384", "-p", str(child.pid),
                            "-o", str(data), "--", "sleep", str(a.seconds)], check=True,
                           capture_output=True)
        finally:
            child.kill()
            calls = [line.split() for line in child.communicate()[0].splitlines() if line.strip()]
        if len(calls) < 2:  # a window shorter than two calls over-weights whichever phase it caught
            print(f"error: {len(calls)} call(s) finished in the {a.seconds} s sampled; sample at least two "
                  f"whole calls (--seconds)", file=sys.stderr)
            return 1
        report = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "symbol",
                                 "--stdio", "-g", "none"], check=True, capture_output=True, text=True).stdout
    shares = {}
    for label, symbol in FUNCTIONS.items():
        match = re.search(r"([0-9.]+)%\s+[0-9.]+%\s+\[\.\]\s+" + re.escape(symbol) + r"(?:\s|$)", report)
        shares[label] = float(match.group(1)) if match else 0.0
    seconds = [float(c[0]) for c in calls]
    result = {"machine": info, "holders": a.holders, "classes": a.classes, "batch": a.batch,
              "seconds_sampled": a.seconds, "calls_s_per_query": seconds,
              "all_labels_correct": all(c[1] == "True" for c in calls), "inclusive_share_percent": shares}
    lines = [(f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}; K = {a.classes}, "
              f"N = {a.holders}, {a.batch} quer{'y' if a.batch == 1 else 'ies'} per call, one CPU, "
              f"{len(seconds)} calls sampled for {a.seconds} s "
              f"(median {np.median(seconds):.2f} s per query; every label correct: "
              f"{result['all_labels_correct']})."), "",
             "| where | share of the CPU samples (callees included) |", "|---|---|"]
    lines += [f"| {label} | {share:.1f} % |" for label, share in shares.items()]
    lines += [f"| everything else (argument copies, allocation, runtime) | {100 - sum(shares.values()):.1f} % |"]
    save_result(ROOT / "benchmarks" / "results" / "he_perf", "he_perf", result, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
