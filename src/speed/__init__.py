"""SPEED: Secure, PrivatE, and Efficient Deep learning.

Private collaborative learning: data holders' teachers vote on public queries,
each vote carries a share of distributed differential-privacy noise and is
encrypted (TFHE, concrete-python); an honest-but-curious server sums the votes
and computes the argmax homomorphically; the model owner decrypts one label per
query and trains a student.  Reference: Grivet Sébert et al., "SPEED: Secure,
PrivatE, and Efficient Deep learning", Machine Learning 110 (2021).

The public API (README, "Python API")::

    speed.label(predictions, num_classes, target_epsilon=4.0, ledger="ledger.jsonl")
    speed.calibrate("skellam", target_epsilon=4.0, num_queries=500, delta=1e-5, tau=1.0)
    speed.PrivacyLedger("ledger.jsonl", read_only=True).epsilon()["epsilon"]
    speed.publishable_epsilon(speed.Skellam(40.0), num_queries=500, delta=1e-5)

Names load on first use, so ``import speed`` stays light for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# concrete-python's atexit hook would turn every exit status into 0 once a circuit ran.
from speed.exitstatus import install as _install_exit_status_guard  # noqa: E402

_install_exit_status_guard()

_EXPORTS = {
    "label": "speed.api",
    "PrivateLabels": "speed.api",
    "calibrate": "speed.privacy.calibrate",
    "PrivacyLedger": "speed.privacy.ledger",
    "publishable_epsilon": "speed.privacy.pld",
    "Skellam": "speed.privacy.mechanisms",
    "LatticeLaplace": "speed.privacy.mechanisms",
    "GammaLaplace": "speed.privacy.mechanisms",
    "SpeedError": "speed.errors",
    "InputError": "speed.errors",
    "BudgetExhaustedError": "speed.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'speed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
