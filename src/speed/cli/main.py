"""``speed`` entry point.

Each subcommand lives in a module of this package exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args; returns an exit
code).  Problems the user can fix (:class:`speed.errors.SpeedError`, ``ValueError``)
print one line ``error: ...`` on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from speed.errors import SpeedError

# Order = order in `speed --help`.
COMMAND_MODULES = (
    "speed.cli.demo_cmd",
    "speed.cli.privacy_cmd",
    "speed.cli.bench_cmd",
    "speed.cli.reproduce_cmd",
    "speed.cli.deploy_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speed",
        description=(
            "SPEED: private collaborative deep learning. Data holders vote on public queries "
            "with distributed differential-privacy noise, an aggregation server computes the "
            "encrypted argmax (TFHE), the model owner decrypts one label per query and trains "
            "a student."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SpeedError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
