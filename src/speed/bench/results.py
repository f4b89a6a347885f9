"""Benchmark result files: ``<name>-<UTC date>T<HHMM>.json`` and ``.md`` side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def save_result(directory: Path, name: str, payload: dict[str, Any], lines: list[str]) -> Path:
    """Write ``payload`` as JSON and ``lines`` as the Markdown table next to it, print the table,
    return the JSON path."""
    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
