"""Version-1 privacy ledgers (JSON lines with a CRC-32 each): the parser behind their one-time,
announced upgrade to the tamper-evident journal (docs/privacy.md §10)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from speed.errors import SpeedError

__all__ = ["legacy_v1_line"]


def _crc(obj: dict[str, Any]) -> int:
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return zlib.crc32(body.encode("ascii"))


def legacy_v1_line(path: Path) -> Any:
    """Parser of version-1 ledger lines (JSON + CRC-32), for the journal's one-time upgrade."""

    def parse(raw: bytes, lineno: int) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw.decode("utf-8"))
            crc = rec.pop("crc")
        except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError):
            raise SpeedError(f"privacy ledger {path} is corrupted at line {lineno}") from None
        if _crc(rec) != crc:
            raise SpeedError(f"privacy ledger {path}: checksum mismatch at line {lineno}")
        return rec

    return parse
