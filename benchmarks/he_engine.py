"""Scaling table of the encrypted aggregation engine (issue 3).

    .venv/bin/python benchmarks/he_engine.py [--classes 2 10 100] [--holders 10 250 1000] [--queries 6]
                                             [--argmax tournament all-pairs] [--pad-mode shared seeded]
                                             [--batch-size 1]

Each configuration runs `speed bench he --json` in its own process with a time limit, so a
configuration that cannot run here is reported with the measured reason (time limit,
exit status, peak memory) instead of a guess.  "server s/query" is the median over the server
calls after the first (two batches side by side per call on two CPUs; the first call of a keyset
is 1.5–2× slower and has its own column).  Writes benchmarks/results/he_engine/he_engine-<date>.json
and .md (machine, date and the load average at the start included: run it on a quiet machine).
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
from speed.bench.results import save_result  # noqa: E402
from speed.machine import machine  # noqa: E402
from speed.crypto.seeded import PAD_MODES  # noqa: E402
from speed.crypto.spec import ARGMAX_LAYOUTS  # noqa: E402

COLUMNS = [
    ("pad_mode", "pads"), ("argmax", "argmax"), ("batch_size", "B"), ("classes", "K"), ("holders", "N"), ("queries", "Q"),
    ("exact", "exact"),
    ("median_server_s_per_query", "server s/query"), ("first_server_call_s", "first call s"),
    ("pbs_per_query", "PBS/query"),
    ("bytes_per_holder_per_query", "holder→server B/query"), ("pad_bytes_per_holder_per_query", "pad B/query"),
    ("shell_bytes_per_query", "shell B/query"),
    ("evaluation_key_bytes", "eval keys B"), ("compile_s", "compile s"), ("keygen_s", "keygen s"),
    ("holder_encrypt_s_per_query", "holder enc s/query"), ("difference_width_bits", "diff bits"),
    ("p_error", "p_error/PBS"), ("peak_rss_gb", "peak RSS GB"),
]


def run_one(k: int, n: int, q: int, limit: int, cache: str, argmax: str = "tournament", pad_mode: str = "shared",
            batch_size: int = 1) -> dict:
    cmd = [sys.executable, "-m", "speed.cli.main", "bench", "he", "--json", "--classes", str(k),
           "--holders", str(n), "--queries", str(q), "--cache-dir", cache, "--argmax", argmax,
           "--pad-mode", pad_mode, "--batch-size", str(batch_size)]
    start = time.time()
    row = {"pad_mode": pad_mode, "argmax": argmax, "batch_size": batch_size, "classes": k, "holders": n, "queries": q}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"did not finish in {limit} s (time limit)"}
    if proc.returncode != 0:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
        return {**row, "status": f"exit {proc.returncode} after {time.time() - start:.0f} s: {last[0][:200]}"}
    result = json.loads(proc.stdout)
    result["status"] = "ok"
    result["wall_s"] = time.time() - start
    return result


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 10, 100])
    ap.add_argument("--holders", type=int, nargs="+", default=[10, 250, 1000])
    ap.add_argument("--queries", type=int, default=6)
    ap.add_argument("--limit", type=int, default=600, help="seconds per configuration")
    ap.add_argument("--cache-dir", default=".speed-cache")
    ap.add_argument("--argmax", nargs="+", choices=ARGMAX_LAYOUTS, default=[ARGMAX_LAYOUTS[0]])
    ap.add_argument("--pad-mode", nargs="+", choices=PAD_MODES, default=["shared"],
                    help="shared: the circuit takes the class sums; seeded/encode: one input per holder")
    ap.add_argument("--batch-size", type=int, default=1, help="queries per circuit call (two calls side by side)")
    args = ap.parse_args()
    load_at_start = os.getloadavg()
    rows = []
    for pad_mode in args.pad_mode:
        for argmax in args.argmax:
            for k in args.classes:
                for n in args.holders:
                    print(f"{pad_mode} {argmax} K={k} N={n} ...", file=sys.stderr, flush=True)
                    rows.append(run_one(k, n, args.queries, args.limit, args.cache_dir, argmax, pad_mode, args.batch_size))
                    print("  ", rows[-1].get("status"), rows[-1].get("median_server_s_per_query"), file=sys.stderr)
    info = {**machine(), "load_average_at_start": load_at_start}
    lines = [f"Measured {info['date_utc']} on {info['cpu_model'] or info['processor']}, {info['cpus']} CPUs, {info['platform']}; "
             f"load average at the start {load_at_start[0]:.2f}.", "",
             "| " + " | ".join(h for _, h in COLUMNS) + " | status |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(key, "")) for key, _ in COLUMNS) + f" | {r['status']} |")
    save_result(Path(__file__).parent / "results" / "he_engine", "he_engine", {"machine": info, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
