"""Results as JSON text: numpy values become Python numbers and lists, non-finite floats strings.

Shared by the command line (``--json``) and the files of a reproduction (``results.json``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["dump_json", "to_jsonable"]


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
