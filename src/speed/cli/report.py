"""Printing results: a rich table for people, JSON for programs."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def dump_json(result: dict) -> str:
    return json.dumps(to_jsonable(result), indent=2, sort_keys=False)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def print_sections(title: str, sections: list[tuple[str, list[tuple[str, Any]]]]) -> None:
    """One table, rows grouped by section."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("", style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, rows in sections:
        for i, (label, value) in enumerate(rows):
            table.add_row(name if i == 0 else "", label, fmt(value))
        table.add_section()
    Console().print(table)
