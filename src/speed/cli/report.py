"""Printing results: a rich table for people, JSON for programs (:mod:`speed.jsonable`)."""

from __future__ import annotations

from typing import Any

from speed.jsonable import dump_json, to_jsonable

__all__ = ["dump_json", "fmt", "print_sections", "to_jsonable"]


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
