"""``python -m speed.journal verify|reseal FILE``: check a journal, or write the missing head of
one known to be complete (see :mod:`speed.journal`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speed import journal
from speed.errors import SpeedError
from speed.journal import Journal

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m speed.journal verify|reseal FILE``."""
    p = argparse.ArgumentParser(prog="python -m speed.journal", description=(journal.__doc__ or "").split("\n")[0])
    p.add_argument("action", choices=["verify", "reseal"],
                   help="verify: check a journal read-only; reseal: write the missing head file of a "
                        "journal YOU KNOW to be complete (nothing cut from its end)")
    p.add_argument("path", type=Path)
    args = p.parse_args(argv)
    try:
        if args.action == "verify":
            j = Journal(args.path, read_only=True)
            print(f"{args.path}: {len(j)} records, chain and head verified")
        else:
            with Journal(args.path, lock=True, _reseal=True) as j:
                print(f"{args.path}: head written for {len(j)} records")
    except SpeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
