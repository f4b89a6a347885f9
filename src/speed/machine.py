"""Where and when a measurement ran: every benchmark result carries this."""

from __future__ import annotations

import os
import platform
import time
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where it cannot be read).

    Two 2-core machines of the same kind differed by 1.8x in concrete's bootstrap speed, so
    results name the CPU, not only the core count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    """Platform, CPU model and count, Python version, UTC date and the load average now."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return info
