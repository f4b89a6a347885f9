"""Checking option values up front, shared by every ``speed`` subcommand.

Two layers over the same rules:

* ``check_*(value, option)`` functions (:mod:`speed.validation`, re-exported here) raise
  :class:`speed.errors.InputError` with a message that names the option the user typed
  (``--gamma must be ...``).  The protocol's parameters (:class:`speed.params.ProtocolParams`)
  and the configs (``RunConfig``, ``ReproduceConfig``, ``DeployConfig``) call them from
  :mod:`speed.validation`, so library callers get the same refusals as the command line.
* argparse ``type=`` functions (``positive_int``, ``gamma``, ``fraction``, ``existing_file``,
  ``ledger_file``, ...) apply them while parsing, before any work starts; argparse prefixes
  their message with ``argument --option:``.

:func:`add_protocol_options` declares the protocol's options (noise, circuit, seed) once for
every subcommand that takes them, and :func:`add_cache_dir_option` the cache directory.

:class:`Parser` makes argparse's own errors (unknown option, bad choice, a ``type=``
refusal) one line ``error: ...`` instead of a usage block: :func:`speed.cli.main.main`
prints it and exits with status 2.

This module imports nothing heavy (no numpy, torch or concrete): ``speed --help`` and
every refusal at parse time stay fast.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from speed.errors import InputError
from speed.validation import *  # noqa: F403 - the checks and limits, re-exported for the subcommands
from speed.validation import (
    MAX_CLASSES, PAD_MODES, MAX_DAYS, MAX_HOLDERS, MAX_MOMENTS, check_delta, check_existing_dir, check_existing_file,
    check_file_name, check_gamma, check_int, check_job_id, check_ledger_file, check_max_epsilon,
    check_nonnegative_float, check_output_dir, check_positive_float, check_positive_int, check_resolution,
    check_seed, check_sigma, check_target_epsilon, check_tau, check_torch_device,
)

class UsageError(InputError):
    """A command-line usage error (argparse's), reported as one line with status 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (raised, not printed; ``main`` prints them).

    Subparsers made with ``add_subparsers`` are of the same class.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ----------------------------------------------------------------------- argparse types
def _type(check: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Callable[[str], Any]:
    """An argparse ``type=``: ``check(text, "", ...)`` with its InputError as ArgumentTypeError."""

    def convert(text: str) -> Any:
        try:
            return check(text, "", *args, **kwargs)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    return _type(check_int, "int", low, high)


positive_int = _type(check_positive_int, "positive_int")
nonnegative_int = _type(check_int, "nonnegative_int", 0)
positive_float = _type(check_positive_float, "positive_float")
nonnegative_float = _type(check_nonnegative_float, "nonnegative_float")
gamma = _type(check_gamma, "gamma")
fraction = _type(check_tau, "fraction")  # τ: (0, 1]
probability = _type(check_delta, "probability")  # δ: (0, 1)
max_epsilon = _type(check_max_epsilon, "max_epsilon")
resolution = _type(check_resolution, "resolution")
sigma = _type(check_sigma, "sigma")
target_epsilon = _type(check_target_epsilon, "target_epsilon")
seed = _type(check_seed, "seed")
moments = int_range(1, MAX_MOMENTS)
classes = int_range(2, MAX_CLASSES)
holders = int_range(2, MAX_HOLDERS)
days = int_range(1, MAX_DAYS)
existing_file = _type(check_existing_file, "existing_file")
existing_dir = _type(check_existing_dir, "existing_dir")
output_dir = _type(check_output_dir, "output_dir")
ledger_file = _type(check_ledger_file, "ledger_file")
torch_device = _type(check_torch_device, "torch_device")
file_name = _type(check_file_name, "file_name")
job_id = _type(check_job_id, "job_id")


# ----------------------------------------------------------------------- shared options
def _g(value: float) -> str:
    return f"{value:g}".replace("e-0", "e-")


def _protocol_options() -> dict[str, tuple[str, dict[str, Any]]]:
    """flag and argparse keywords of each protocol option, defaults from :class:`speed.params.ProtocolParams`."""
    from speed.params import MECHANISMS, RANGE_CHECKS, ProtocolParams as P

    return {
        "mechanism": ("--mechanism", dict(
            choices=list(MECHANISMS), default=P.mechanism,
            help="noise: skellam (distributed Skellam shares, publishable ε by PLD accounting; default) "
                 "or lattice (the paper's discrete Laplace shares, with --gamma)")),
        "target_epsilon": ("--target-epsilon", dict(
            type=target_epsilon, default=P.target_epsilon,
            help="publishable ε for the --queries planned: the noise is calibrated to it "
                 "(default 10 with skellam: 20 holders need more ε than 250; see README)")),
        "sigma": ("--sigma", dict(type=sigma, default=P.sigma,
                                  help="Skellam σ given directly (instead of --target-epsilon)")),
        "gamma": ("--gamma", dict(
            type=gamma, default=P.gamma,
            help="γ = 1/λ, inverse Laplace scale, with --mechanism lattice (default %(default)s, the paper's)")),
        "tau": ("--tau", dict(type=fraction, default=P.tau,
                              help=f"fraction of holders whose noise stays secret (default {_g(P.tau)})")),
        "delta": ("--delta", dict(type=probability, default=P.delta, help=f"target δ (default {_g(P.delta)})")),
        "resolution": ("--resolution", dict(type=resolution, default=P.resolution,
                                            help=f"lattice steps P per vote (default {P.resolution})")),
        "batch_size": ("--batch-size", dict(type=positive_int, default=P.batch_size,
                                            help=f"queries per encrypted circuit call (default {P.batch_size})")),
        "pad_mode": ("--pad-mode", dict(
            choices=list(PAD_MODES), default=P.pad_mode,
            help="how holders encrypt: shared (one pad per batch, its bodies split among the holders; default), "
                 "seeded (one seeded pad each), encode (holders run encode with the evaluation keys)")),
        "range_check": ("--range-check", dict(
            choices=list(RANGE_CHECKS), default=P.range_check,
            help="encrypted check that every class sum (classes) or their total (total) stayed in the compiled "
                 "range; a batch that fails is refused in one line (about 1.5x / 1.2x server time at K = 10; "
                 "default off: the trust model has honest-but-curious holders)")),
        "seed": ("--seed", dict(type=seed, default=P.seed, help="seed for splits, teachers and seeded noise")),
        "production_noise": ("--production-noise", dict(
            action="store_true",
            help="draw noise from the OS CSPRNG (default: seeded per-holder streams, for experiments only)")),
    }


def add_protocol_options(parser: Any, *names: str, **changes: dict[str, Any]) -> None:
    """Add the options of the protocol's parameters ``names`` (:class:`speed.params.ProtocolParams`
    fields: ``"mechanism"``, ``"target_epsilon"``, ``"sigma"``, ``"gamma"``, ``"tau"``, ``"delta"``,
    ``"resolution"``, ``"batch_size"``, ``"pad_mode"``, ``"range_check"``, ``"seed"``,
    ``"production_noise"``) to ``parser`` (a parser or an argument group), in that order.

    Flag, type (the checks of this module), choices and default are declared here once;
    ``changes[name]`` replaces argparse keywords of one option where a subcommand words or sets
    it differently (its help, a default, ``nargs``).
    """
    options = _protocol_options()
    unknown = [n for n in (*names, *changes) if n not in options]
    if unknown:
        raise ValueError(f"not protocol options: {unknown}")
    for name in names:
        flag, kwargs = options[name]
        parser.add_argument(flag, **{**kwargs, **changes.get(name, {})})


def add_cache_dir_option(parser: Any, help: str) -> None:
    """``--cache-dir``: a writable directory, default ``$SPEED_CACHE_DIR`` or ``.speed-cache``
    (:func:`speed.params.default_cache_dir`, checked while parsing like a given one)."""
    from speed.params import default_cache_dir

    parser.add_argument("--cache-dir", type=output_dir, default=str(default_cache_dir()),
                        help=f"{help} (default $SPEED_CACHE_DIR or .speed-cache)")
