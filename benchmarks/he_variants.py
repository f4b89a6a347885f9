"""Compile-only comparison of circuit variants: what concrete's optimizer makes of them.

    .venv/bin/python benchmarks/he_variants.py [--holders 250] [--variants NAME ...] [--limit 900]

For each variant (circuit layout or concrete configuration option) this compiles the SPEED module
in its own process, with a time limit, and records concrete's cost estimate (``complexity``), the
bootstraps per parameter set, key sizes and compile time.  No keys are generated and nothing runs:
the estimate ranks variants, ``benchmarks/he_profile.py`` and ``speed bench he`` time them.
Writes ``benchmarks/results/he_variants/he_variants-<date>T<HHMM>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: name -> (CircuitSpec overrides, fhe.Configuration overrides, holders override or None)
VARIANTS: dict[str, tuple[dict, dict, int | None]] = {
    "tournament": ({}, {}, None),
    "tournament-chunk1": ({"chunk_bits": 1}, {}, None),
    "tournament-chunk2": ({"chunk_bits": 2}, {}, None),
    # relu chunks at N = 250 (w − 1 = 9 low bits): bit 0 alone (the default there since 2026-11-30)
    # or three 3-bit chunks (the default before)
    "tournament-bit0-alone": ({"relu_chunks": (1, 3, 3, 2)}, {}, 250),
    "tournament-chunks-3-3-3": ({"relu_chunks": (3, 3, 3)}, {}, 250),
    # the same choice at N = 20 (w = 7: default three 3-bit chunks) and N = 1000 (w = 11: default 1, 3, 3, 3)
    "tournament-N20-bit0-alone": ({"relu_chunks": (1, 3, 2)}, {}, 20),
    "tournament-N1000": ({}, {}, 1000),
    "tournament-N1000-chunks-3-3-3-1": ({"relu_chunks": (3, 3, 3, 1)}, {}, 1000),
    "all-pairs": ({"argmax": "all-pairs"}, {}, None),
    "tournament-N20": ({}, {}, 20),
    "tournament-N20-precision-and-norm2": ({}, {"multi_parameter_strategy": "precision_and_norm2"}, 20),
    "tournament-precision-and-norm2": ({}, {"multi_parameter_strategy": "precision_and_norm2"}, None),
    # ten queries per call: per-query error budget (the default) vs the whole call at 1e-9 (before 2026-11-30)
    "tournament-B10": ({"batch_size": 10}, {}, None),
    "tournament-B10-call-budget": ({"batch_size": 10}, {"global_p_error": 1e-9}, None),
    # concrete's parameter search over any GLWE dimension (the default before 2026-11-30 evening) vs k ≤ 2
    "tournament-any-glwe": ({"glwe_dimensions": ()}, {}, None),
    "tournament-B10-any-glwe": ({"batch_size": 10, "glwe_dimensions": ()}, {}, None),
    "tournament-N1000-any-glwe": ({"glwe_dimensions": ()}, {}, 1000),
    "tournament-N20-any-glwe": ({"glwe_dimensions": ()}, {}, 20),
    # shared pads' circuit (the class sums as input), ten queries per call: GLWE dimensions allowed
    "shared-B10": ({"batch_size": 10, "aggregate_input": "sum"}, {}, None),
    "shared-B10-glwe-1": ({"batch_size": 10, "aggregate_input": "sum", "glwe_dimensions": (1,)}, {}, None),
    "shared-B10-glwe-2": ({"batch_size": 10, "aggregate_input": "sum", "glwe_dimensions": (2,)}, {}, None),
    "shared-B10-glwe-1-3": ({"batch_size": 10, "aggregate_input": "sum", "glwe_dimensions": (1, 2, 3)}, {}, None),
}


def compile_variant(name: str, holders: int) -> dict:
    from speed.bench.he import bootstrap_key_bytes_streamed, paper_spec, pbs_per_parameter
    from speed.crypto import circuit

    spec_over, config_over, n = VARIANTS[name]
    n = n or holders
    spec = paper_spec(n, 10, **spec_over)
    start = time.perf_counter()
    module = circuit.build_module(spec).compile(circuit.inputsets(spec),
                                                circuit.configuration(spec).fork(**config_over))
    seconds = time.perf_counter() - start
    stats = module.aggregate.statistics
    return {
        "variant": name, "holders": n, "spec": spec.to_dict(), "configuration": config_over, "compile_s": seconds,
        "complexity": float(module.complexity), "pbs": int(stats["programmable_bootstrap_count"]),
        "pbs_per_parameter": pbs_per_parameter(stats),
        "bootstrap_key_bytes_streamed_per_call": bootstrap_key_bytes_streamed(stats),
        "bootstrap_key_bytes": int(module.server.size_of_bootstrap_keys),
        "keyswitch_key_bytes": int(module.server.size_of_keyswitch_keys),
        "global_p_error": float(module.server.global_p_error),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "tournament-precision-and-norm2"],
                    choices=list(VARIANTS))
    ap.add_argument("--limit", type=int, default=900, help="seconds per compilation")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(compile_variant(a.child, a.holders)))
        return 0
    from speed.bench.results import save_result
    from speed.machine import machine

    info, rows = machine(), []
    for name in a.variants:
        print(f"{name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", name, "--holders", str(a.holders)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.limit, check=False)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
                        {"variant": name, "status": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"})
        except subprocess.TimeoutExpired:
            rows.append({"variant": name, "status": f"did not compile in {a.limit} s"})
        print("  ", {k: rows[-1].get(k) for k in ("complexity", "pbs", "compile_s", "status")}, file=sys.stderr)
    lines = [(f"Compiled {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs "
              f"(load average {info.get('load_average_1_5_15')}); K = 10."), "",
             ("| variant | N | optimizer complexity | PBS | PBS per parameter set (count × poly size/GLWE dim/level) | "
              "bootstrap key bytes read per call | bootstrap keys | keyswitch keys | compile s |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "status" in r:
            lines.append(f"| {r['variant']} | | {r['status']} | | | | | | |")
            continue
        params = ", ".join(f"{p['count']} × {p['polynomial_size']}/{p['glwe_dimension']}/{p['level']}"
                           for p in r["pbs_per_parameter"])
        lines.append(f"| {r['variant']} | {r['holders']} | {r['complexity']:.3g} | {r['pbs']} | {params} | "
                     f"{r['bootstrap_key_bytes_streamed_per_call'] / 1e9:.2f} GB | "
                     f"{r['bootstrap_key_bytes'] / 1e6:.0f} MB | {r['keyswitch_key_bytes'] / 1e6:.0f} MB | "
                     f"{r['compile_s']:.0f} |")
    save_result(Path(__file__).parent / "results" / "he_variants", "he_variants", {"machine": info, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
