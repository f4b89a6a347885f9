"""Pool several runs of ``benchmarks/he_engine.py`` (one configuration, measured at different hours).

    .venv/bin/python benchmarks/he_runs_summary.py benchmarks/results/he_engine/he_engine-2026-12-01T0350.json ...

On a machine whose speed drifts from hour to hour, one run says little about a target such as
"median server time ≤ 1.5 s per query".  This reads the runs' JSON files (nothing is re-measured),
keeps the rows of one configuration (``--classes``, ``--holders``, ``--batch-size``,
``--pad-mode``) and reports, per run, the median server time per query and its calls; then the
median of the runs' medians and the median of all calls after each run's first (the first call
of a keyset pays for loading and is excluded from every median, as in ``he_engine.py``).  Writes
``benchmarks/results/he_runs_summary/he_runs_summary-<date>T<HHMM>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def runs_of(paths: list[Path], classes: int, holders: int, batch_size: int, pad_mode: str) -> list[dict]:
    """One entry per file that holds a completed row of the configuration."""
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        for row in data["rows"]:
            if (row.get("classes"), row.get("holders"), row.get("batch_size"), row.get("pad_mode")) != (
                    classes, holders, batch_size, pad_mode) or row.get("status", "ok") != "ok":
                continue
            per_call = [s / q for s, q in zip(row["server_s_per_call"], row["queries_per_server_call"])]
            out.append({"file": path.name, "measured_utc": data["machine"]["date_utc"], "queries": row["queries"],
                        "exact": row["exact"], "median_server_s_per_query": row["median_server_s_per_query"],
                        "s_per_query_per_call": per_call,
                        "throughput_queries_per_s": row.get("throughput_queries_per_s")})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--holders", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--pad-mode", default="shared")
    ap.add_argument("--target", type=float, default=1.5, help="seconds per query the runs are compared with")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results" / "he_runs_summary")
    a = ap.parse_args()
    from speed.bench.results import save_result

    runs = runs_of(a.files, a.classes, a.holders, a.batch_size, a.pad_mode)
    if not runs:
        print(f"error: no completed row with K = {a.classes}, N = {a.holders}, B = {a.batch_size}, "
              f"pad mode {a.pad_mode} in the files given", file=sys.stderr)
        return 2
    medians = [r["median_server_s_per_query"] for r in runs]
    later_calls = [s for r in runs for s in r["s_per_query_per_call"][1:]]
    summary = {"runs": len(runs), "median_of_run_medians": statistics.median(medians),
               "median_of_calls_after_first": statistics.median(later_calls) if later_calls else None,
               "calls_after_first": len(later_calls), "runs_at_or_below_target": sum(m <= a.target for m in medians),
               "target_s_per_query": a.target, "all_exact": all(r["exact"] == r["queries"] for r in runs)}
    lines = [(f"K = {a.classes}, N = {a.holders}, B = {a.batch_size}, {a.pad_mode} pads: {len(runs)} runs of "
              "`benchmarks/he_engine.py` pooled (nothing re-measured)."), "",
             "| file | measured (UTC) | queries | exact | server s/query (median) | per call (first excluded from medians) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['measured_utc']} | {r['queries']} | {r['exact']} | "
              f"{r['median_server_s_per_query']:.2f} | {', '.join(f'{s:.2f}' for s in r['s_per_query_per_call'])} |"
              for r in runs]
    lines += ["", (f"Median of the runs' medians: {summary['median_of_run_medians']:.2f} s per query; median of the "
                   f"{len(later_calls)} calls after each run's first: "
                   f"{summary['median_of_calls_after_first']:.2f} s; runs at or below {a.target:g} s: "
                   f"{summary['runs_at_or_below_target']} of {len(runs)}; every label exact: {summary['all_exact']}.")]
    save_result(a.out_dir, "he_runs_summary",
                {"configuration": {"classes": a.classes, "holders": a.holders, "batch_size": a.batch_size,
                                   "pad_mode": a.pad_mode}, "runs": runs, "summary": summary}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
