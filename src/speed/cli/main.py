"""``speed`` entry point.

Each subcommand lives in a module of this package exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args; returns an exit
code).  Problems the user can fix (a bad option, refused while parsing by
:mod:`speed.cli.options`; :class:`speed.errors.SpeedError`, ``ValueError``, ``OSError``)
print one line ``error: ...`` on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from speed.cli.options import Parser
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
    parser = Parser(
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


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: an OSError as 'reason: path', anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except (SpeedError, ValueError, OSError) as exc:
        # bad input: options (refused while parsing), data, files (IsADirectoryError, PermissionError, ...)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
