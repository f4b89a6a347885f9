"""Run `speed demo` with its defaults and save the JSON with the machine and date.

    .venv/bin/python benchmarks/demo.py [--cache-dir DIR]   # writes benchmarks/results/demo/demo-<date>T<HHMM>.json

Every demo number quoted in README.md / issue notes comes from such a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from speed.fsutil import atomic_write_text  # noqa: E402
from speed.machine import machine  # noqa: E402


def main() -> int:
    out_dir = Path(__file__).parent / "results" / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    machine_at_start = machine()  # CPU model, load average before the run
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "speed.cli.main", "demo", "--json", *sys.argv[1:]],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        return proc.returncode
    result = json.loads(proc.stdout)
    result["machine"] = {**machine_at_start, "wall_s": time.time() - start, "args": sys.argv[1:]}
    path = out_dir / f"demo-{time.strftime('%Y-%m-%dT%H%M', time.gmtime())}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
