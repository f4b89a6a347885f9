"""Checks of parameter values, shared by the library and the command line.

``check_*(value, option)`` returns the value converted (int, float, Path, ...) or raises
:class:`speed.errors.InputError` with a message that names the option the user typed
(``--gamma must be ...``).  The protocol's parameters (:class:`speed.params.ProtocolParams`), the
run configurations and the CLI's argparse types (:mod:`speed.cli.options`) all call these, so a
library caller gets the same one-line refusal as the command line.

This module sits at the bottom of the package (it imports only :mod:`speed.errors`) and imports
nothing heavy, so parsing stays fast.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from speed.errors import InputError

#: How holders encrypt (speed.crypto.seeded.PAD_MODES, repeated here so that parsing does not
#: import the crypto stack, which takes a second; tests/test_cli_errors.py checks they agree).
PAD_MODES = ("seeded", "encode", "shared")
#: Largest γ accepted.  Beyond it one query costs ε > 2·10⁶ (no privacy at all), and the
#: paper's Gamma-noise accountant loses all precision from γ ≈ 10⁹ (ε₁ = 0, ε₂ = nan).
MAX_GAMMA = 1e6
#: Largest lattice resolution P (steps per vote): the lattice accountant's PMF tables grow as
#: P/λ, and the encrypted class sums as N·P.
MAX_RESOLUTION = 100_000
#: Largest moment order L of the moments accountant (default 25).
MAX_MOMENTS = 1000
#: Seeds seed numpy's SeedSequence and torch: non-negative, below 2³².
MAX_SEED = 2**32 - 1
#: ``speed bench he``: its (Q, N) vote table is made in memory, and a query takes about a second.
MAX_BENCH_QUERIES = 100_000
#: Certificates: at most a century.
MAX_DAYS = 36_500
#: Classes and holders the compiled circuit can take (speed.crypto.spec.MAX_CLASSES / MAX_HOLDERS).
MAX_CLASSES = 256
MAX_HOLDERS = 10_000


# ----------------------------------------------------------------------- plain checks
def _msg(option: str, text: str) -> str:
    return f"{option}: {text}" if option else text


def _fail(option: str, requirement: str, got: Any) -> InputError:
    return InputError(_msg(option, f"{requirement}, got {got!r}"))


def _number(value: Any, option: str, kind: type) -> Any:
    if isinstance(value, bool):
        raise _fail(option, f"must be a{'n integer' if kind is int else ' number'}", value)
    try:
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip(), 10) if isinstance(value, str) else int(value)
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise _fail(option, f"must be a{'n integer' if kind is int else ' number'}", value) from None


def check_int(value: Any, option: str, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high] (either end open when None)."""
    v = _number(value, option, int)
    if (low is not None and v < low) or (high is not None and v > high):
        if high is None:
            req = "must be a positive integer" if low == 1 else f"must be an integer ≥ {low}"
        elif low is None:
            req = f"must be an integer ≤ {high}"
        else:
            req = f"must be an integer in {low}..{high}"
        raise _fail(option, req, value)
    return v


def check_positive_int(value: Any, option: str, high: int | None = None) -> int:
    return check_int(value, option, 1, high)


def check_float(value: Any, option: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, requirement: str | None = None) -> float:
    """A finite float in the interval given (closed ends unless ``*_open``)."""
    v = _number(value, option, float)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        if requirement is None:
            lo = "-∞" if low is None else f"{low:g}"
            hi = "∞" if high is None else f"{high:g}"
            requirement = (f"must be a finite number in {'(' if low_open or low is None else '['}{lo}, "
                           f"{hi}{')' if high_open or high is None else ']'}")
        raise _fail(option, requirement, value)
    return v


def check_positive_float(value: Any, option: str) -> float:
    return check_float(value, option, low=0.0, low_open=True, requirement="must be a positive finite number")


def check_nonnegative_float(value: Any, option: str) -> float:
    return check_float(value, option, low=0.0, requirement="must be a finite number ≥ 0")


def check_gamma(value: Any, option: str = "--gamma") -> float:
    return check_float(value, option, low=0.0, low_open=True, high=MAX_GAMMA,
                       requirement=f"γ (= 1/λ) must be a positive finite number ≤ {MAX_GAMMA:g}")


def check_tau(value: Any, option: str = "--tau") -> float:
    return check_float(value, option, low=0.0, low_open=True, high=1.0,
                       requirement="τ (the fraction of holders whose noise stays secret) must be in (0, 1]")


def check_delta(value: Any, option: str = "--delta") -> float:
    return check_float(value, option, low=0.0, high=1.0, low_open=True, high_open=True,
                       requirement="δ must be in the open interval (0, 1)")


def check_max_epsilon(value: Any, option: str = "--max-epsilon") -> float:
    return check_float(value, option, low=0.0, low_open=True,
                       requirement="the budget on ε must be a positive finite number")


#: Skellam noise: σ up to ~31,600 (τσ² ≤ 1e9, where scipy's Bessel functions stay accurate).
MAX_SIGMA = 31_000.0
#: A target ε above this is no privacy at all; calibration searches noise in a finite range.
MAX_TARGET_EPSILON = 1_000.0
MECHANISMS = ("skellam", "lattice", "gamma", "laplace")  # speed.privacy.mechanisms registry


def check_sigma(value: Any, option: str = "--sigma") -> float:
    return check_float(value, option, low=0.0, low_open=True, high=MAX_SIGMA,
                       requirement=f"σ (the Skellam noise's standard deviation) must be a positive finite number ≤ {MAX_SIGMA:g}")


def check_target_epsilon(value: Any, option: str = "--target-epsilon") -> float:
    return check_float(value, option, low=0.0, low_open=True, high=MAX_TARGET_EPSILON,
                       requirement=f"the target ε must be a positive finite number ≤ {MAX_TARGET_EPSILON:g}")


def check_resolution(value: Any, option: str = "--resolution") -> int:
    return check_int(value, option, 1, MAX_RESOLUTION)


def check_seed(value: Any, option: str = "--seed") -> int:
    return check_int(value, option, 0, MAX_SEED)


def check_choice(value: Any, option: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise _fail(option, f"must be one of {', '.join(choices)}", value)
    return value


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_existing_file(value: Any, option: str, what: str = "file") -> Path:
    p = Path(str(value)).expanduser()
    if not p.exists():
        raise InputError(_msg(option, f"{what} {p} does not exist"))
    if p.is_dir():
        raise InputError(_msg(option, f"{p} is a directory, not a {what}"))
    if not os.access(p, os.R_OK):
        raise InputError(_msg(option, f"{what} {p} is not readable"))
    return p


def check_existing_dir(value: Any, option: str, what: str = "directory") -> Path:
    p = Path(str(value)).expanduser()
    if not p.exists():
        raise InputError(_msg(option, f"{what} {p} does not exist"))
    if not p.is_dir():
        raise InputError(_msg(option, f"{p} is not a directory"))
    return p


def _check_creatable(p: Path, option: str) -> None:
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise InputError(_msg(option, f"cannot create {p}: {base} is not a directory"))
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(_msg(option, f"cannot create {p}: {base} is not writable"))


def check_output_dir(value: Any, option: str) -> Path:
    """A directory the command may write into: an existing writable one, or one it can create."""
    p = Path(str(value)).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(_msg(option, f"{p} exists and is not a directory"))
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(_msg(option, f"directory {p} is not writable"))
    else:
        _check_creatable(p, option)
    return p


def check_ledger_file(value: Any, option: str = "--ledger") -> Path:
    """A privacy ledger the owner appends to: an existing regular file, or one it can create."""
    p = Path(str(value)).expanduser()
    if p.is_dir():
        raise InputError(_msg(option, f"{p} is a directory; give the ledger's file name (e.g. {p / 'ledger.jsonl'})"))
    if p.exists():
        if not p.is_file():
            raise InputError(_msg(option, f"{p} is not a regular file"))
        if not os.access(p, os.R_OK | os.W_OK):
            raise InputError(_msg(option, f"ledger {p} is not readable and writable"))
    else:
        _check_creatable(p, option)
    return p


def check_torch_device(value: Any, option: str = "--device") -> str:
    """A torch device string that names a device this machine has (imports torch)."""
    text = str(value).strip()
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise _fail(option, "must be a torch device such as cpu, cuda or cuda:0", value) from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _fail(option, "names a CUDA device, but torch sees no CUDA device on this machine", value)
        if dev.index is not None and dev.index >= count:
            raise _fail(option, f"names CUDA device {dev.index}, but torch sees {count}", value)
        return text
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise _fail(option, "names an MPS device, but torch sees no MPS device on this machine", value)
        return text
    raise _fail(option, "must be cpu, cuda, cuda:N or mps", value)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_file_name(value: Any, option: str) -> str:
    """A plain file-name stem (letters, digits, ``.``, ``_``, ``-``; no path separators)."""
    text = str(value)
    if not _NAME.fullmatch(text):
        raise _fail(option, "must be a plain name (letters, digits, '.', '_', '-'; no '/')", value)
    return text


def check_job_id(value: Any, option: str = "--job-id") -> str:
    """``""`` (derived from the settings) or a plain name: it names a directory of the parties' state."""
    return "" if value == "" else check_file_name(value, option)
