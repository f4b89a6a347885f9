"""Benchmark result files: ``<name>-<UTC date>T<HHMM>.json`` and ``.md`` side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from speed.fsutil import atomic_write_text


def save_result(directory: Path, name: str, payload: dict[str, Any], lines: list[str]) -> Path:
    """Write ``payload`` as JSON and ``lines`` as the Markdown table next to it, print the table,
    return the JSON path."""
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{name}-{stamp}.json"
    atomic_write_text(path, json.dumps(payload, indent=2))
    atomic_write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
