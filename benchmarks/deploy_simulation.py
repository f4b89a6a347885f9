"""`speed deploy simulate` at N holders: wall time, peak memory, bytes per party, labels checked.

    .venv/bin/python benchmarks/deploy_simulation.py --holders 20 --queries 5
    .venv/bin/python benchmarks/deploy_simulation.py --holders 250 --queries 5

Task ``table``: holder i answers query q with column i of a synthetic teacher table (the
true label with probability 0.8, another class otherwise; seed 0), so the numbers are the
cost of the protocol and of Flower, not of teacher training.  Each run uses a fresh work
directory (the owner compiles or loads the circuit from ``--cache-dir`` and generates
keys; every holder receives what it needs from scratch).  The labels are checked against
the clear noisy argmax of the very votes and seeded noise shares the holders encrypted
(``DataHolder.noisy_votes`` with the same seeds, summed in numpy): they must be equal.

Writes ``benchmarks/results/deploy_simulation/deploy_simulation-N<N>-<date>[-<tag>].json`` with the machine,
date and load average (other jobs may share the cores: see ``load_average``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def teacher_table(rows: int, holders: int, classes: int, seed: int = 0, accuracy: float = 0.8) -> np.ndarray:
    """Synthetic teachers: the true label with probability ``accuracy``, another class otherwise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, size=rows)
    wrong = (truth[:, None] + rng.integers(1, classes, size=(rows, holders))) % classes
    return np.where(rng.random((rows, holders)) < accuracy, truth[:, None], wrong).astype(np.int64)


def clear_reference(table: np.ndarray, config) -> dict[int, int]:
    """Noisy argmax in clear of the same seeded votes and noise shares, batch by batch."""
    from speed.crypto.spec import reference_argmax
    from speed.holder.holder import DataHolder, one_hot_votes
    from speed.privacy.noise import holder_generators

    k = config.classes
    spec = config.circuit_spec(k)
    rngs = holder_generators(config.seed, config.holders)
    holders = [DataHolder(i, lambda q: q, config.noise_scale, rngs[i]) for i in range(config.holders)]
    for h in holders:
        h.spec = spec
    out: dict[int, int] = {}
    for start in range(0, config.queries, config.batch_size):
        ids = list(range(start, min(start + config.batch_size, config.queries)))
        total = sum(h.noisy_votes(one_hot_votes(table[ids, i], k))[: len(ids)] for i, h in enumerate(holders))
        out.update({q: int(v) for q, v in zip(ids, reference_argmax(total))})
    return out


def bytes_overview(parties: dict) -> dict:
    holders = [v for k, v in parties.items() if k.startswith("holder-")]
    to_h = [h["bytes_sent_to"] for h in holders]
    from_h = [h["bytes_received_from"] for h in holders]
    return {
        "to_each_holder": {"min": min(to_h), "max": max(to_h), "mean": sum(to_h) / len(to_h)},
        "from_each_holder": {"min": min(from_h), "max": max(from_h), "mean": sum(from_h) / len(from_h)},
        "to_all_holders": sum(to_h), "from_all_holders": sum(from_h),
        "to_owner": parties["owner"]["bytes_sent_to"], "from_owner": parties["owner"]["bytes_received_from"],
        "server_sent": parties["server"]["bytes_sent"], "server_received": parties["server"]["bytes_received"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--holders", type=int, default=20)
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--pad-mode", choices=["shared", "seeded", "encode"], default="shared")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=Path(".speed-cache"))
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = p.parse_args()

    from speed.deploy.config import DeployConfig
    from speed.fsutil import atomic_path, atomic_write_text

    out_dir = Path(__file__).parent / "results" / "deploy_simulation"
    out_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"speed-sim-N{args.holders}-"))
    table = teacher_table(max(64, args.queries), args.holders, args.classes)
    with atomic_path(work / "table.npy", suffix=".npy") as tmp:
        np.save(tmp, table)
    config = DeployConfig(task="table", holders=args.holders, classes=args.classes, queries=args.queries,
                          batch_size=args.batch_size, pad_mode=args.pad_mode, mechanism="lattice", gamma=3.3,
                          seed=0)  # the paper's noise, as in the runs docs/deploy.md quotes
    load_before = os.getloadavg()
    start = time.time()
    cmd = [sys.executable, "-m", "speed.cli.main", "deploy", "simulate", "--task", "table",
           "--classes", str(args.classes), "--holders", str(args.holders), "--queries", str(args.queries),
           "--batch-size", str(args.batch_size), "--pad-mode", args.pad_mode, "--teacher-table",
           str(work / "table.npy"), "--workdir", str(work / "federation"), "--cache-dir", str(args.cache_dir),
           "--cpus-per-node", str(args.cpus_per_node), "--mechanism", "lattice", "--gamma", "3.3"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # progress goes to stderr
    result = json.loads(proc.stdout) if proc.stdout.strip() else {"status": "no output", "reason": proc.returncode}
    reference = clear_reference(table, config)
    labels = {int(q): v for q, v in (result.get("labels") or {}).items()}
    report = {
        "command": " ".join(cmd[2:]),
        "status": result.get("status"), "reason": result.get("reason"),
        "holders": args.holders, "queries": args.queries, "classes": args.classes, "batch_size": args.batch_size,
        "pad_mode": result.get("pad_mode"),
        "labels_equal_clear_noisy_argmax": labels == reference, "labels": labels, "reference": reference,
        "wall_time_s": result.get("wall_time_s"), "timings": result.get("timings"),
        "batches": result.get("batches"),
        "memory": (result.get("simulation") or {}).get("memory"),
        "bytes": bytes_overview(result["bytes"]) if result.get("bytes") else None,
        "bytes_per_party": result.get("bytes"),
        "epsilon": result.get("epsilon"), "delta_total": result.get("delta_total"),
        "circuit": result.get("circuit"),
        "processes": result.get("processes"),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "wall_s": time.time() - start,
        },
    }
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    path = out_dir / f"deploy_simulation-N{args.holders}-{stamp}{'-' + args.tag if args.tag else ''}.json"
    atomic_write_text(path, json.dumps(report, indent=2))
    print(path)
    print(json.dumps({k: report[k] for k in ("status", "reason", "labels_equal_clear_noisy_argmax", "wall_time_s",
                                             "memory", "bytes")}, indent=1))
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0 if report["status"] == "completed" and report["labels_equal_clear_noisy_argmax"] else 1


if __name__ == "__main__":
    sys.exit(main())
