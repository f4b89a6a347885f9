"""The publishable ε of a run: privacy-loss-distribution accounting of the noise it really ran.

A deployed owner never sees vote counts, so the ε it can publish depends only on the noise
mechanism, the number of answered queries and, per query, the fraction τ of holders whose
noise share stayed secret (docs/privacy.md, "Publishable ε"). :class:`PublishableAccountant`
keeps one entry per answered query (the effective τ of its batch and the probability β that
its released label is not the exact argmax of the noisy counts) and composes the per-query
privacy loss distributions of :mod:`speed.privacy.pld`.

**One rule for the circuit's failures** (docs/privacy.md, "Circuit failures and δ"). If the
real transcript equals the analysed one except with probability at most B = Σ β over the
answered queries, it is (ε, δ_total)-DP with

    δ_total = δ + (1 + e^ε) · B

(coupling). The PLD ε here is histogram-level: it covers every function of the noisy counts,
so a total outside the compiled range or a wrong bootstrap (the label is still a randomised
function of the noisy counts) costs nothing, and β is the probability that some holder's share
was clipped (the noise law itself changed). The ledger, the reports and the CLI all use
:func:`speed.privacy.composition.delta_total` for this.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

from speed.errors import InputError
from speed.privacy.checks import check_delta, check_tau
from speed.privacy.composition import delta_total
from speed.privacy.mechanisms import mechanism_from_dict
from speed.privacy.pld import epsilon_for_queries

__all__ = ["PublishableAccountant"]


def _check_beta(value: Any) -> float:
    try:
        b = float(value)
    except (TypeError, ValueError):
        raise InputError(f"failure_probability must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= b <= 1.0):
        raise InputError(f"failure_probability must lie in [0, 1], got {value!r}")
    return b


class PublishableAccountant:
    """Running publishable ε of one mechanism over answered queries (Opacus-style state).

    ``mechanism`` is a mechanism object of :mod:`speed.privacy.mechanisms`; a ledger runs one
    mechanism, so every query is charged with it and only τ and β vary per query.
    """

    def __init__(self, mechanism: Any, delta: float) -> None:
        self.mechanism = mechanism
        self.delta = check_delta(delta)
        self.taus: list[float] = []
        self.failure_probability = 0.0  # B = Σ β

    @property
    def num_queries(self) -> int:
        return len(self.taus)

    def step(self, tau: float, failure_probability: float = 0.0, num_queries: int = 1) -> None:
        """Charge ``num_queries`` answered queries whose batch had effective τ ``tau``."""
        t = check_tau(tau)
        n = int(num_queries)
        if n < 1:
            raise InputError(f"num_queries must be ≥ 1, got {num_queries!r}")
        self.taus.extend([t] * n)
        self.failure_probability += n * _check_beta(failure_probability)

    def epsilon(self, taus: Sequence[float] | None = None) -> float:
        """Publishable ε at the accountant's δ for ``taus`` (default: the queries charged so far)."""
        taus = self.taus if taus is None else list(taus)
        if not taus:
            return 0.0
        return float(epsilon_for_queries(self.mechanism, taus, self.delta))

    def projected_epsilon(self, tau: float, num_queries: int = 1) -> float:
        """ε after ``num_queries`` more queries at effective τ ``tau`` (nothing is charged)."""
        return self.epsilon(self.taus + [check_tau(tau)] * int(num_queries))

    def get_privacy_spent(self) -> dict[str, Any]:
        eps = self.epsilon()
        return {
            "epsilon": eps,
            "delta": self.delta,
            "delta_total": delta_total(self.delta, eps, self.failure_probability) if eps < math.inf else 1.0,
            "failure_probability": self.failure_probability,
            "num_queries": self.num_queries,
            "mechanism": self.mechanism.to_dict(),
            "accounting": "privacy loss distributions (dp_accounting, pessimistic)",
            "publishable": True,
        }

    def state_dict(self, destination: dict | None = None) -> dict[str, Any]:
        dest = OrderedDict() if destination is None else destination
        dest["mechanism"] = self.mechanism.to_dict()
        dest["delta"] = self.delta
        dest["taus"] = list(self.taus)
        dest["failure_probability"] = self.failure_probability
        return dest

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mechanism = mechanism_from_dict(state["mechanism"])
        self.delta = check_delta(state["delta"])
        self.taus = [check_tau(t) for t in state["taus"]]
        b = float(state["failure_probability"])
        if not (b >= 0.0 and math.isfinite(b)):
            raise InputError(f"failure_probability must be a finite number ≥ 0, got {b!r}")
        self.failure_probability = b
