"""Durable file helpers shared by the privacy ledger and the reproduction state."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a file just created or renamed in it survives a crash.

    Best effort: platforms or filesystems without directory file descriptors (or that refuse
    to fsync one) are skipped."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystem refuses fsync on a directory
        pass
    finally:
        os.close(fd)
