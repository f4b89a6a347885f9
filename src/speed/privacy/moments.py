"""The paper's moments accountant over a run's heterogeneous queries (Opacus-style state).

:class:`PrivacyAccountant` composes SPEED's collusion-aware per-query ε (docs/spec.md §4, the
lattice bound of docs/privacy.md §3) with PATE's moments accountant, and the data-dependent
research ε when vote counts are known (clear-text simulation only: not publishable). The
owner's :class:`speed.privacy.ledger.PrivacyLedger` uses it for the paper's noise
(``mechanism="gamma"``/``"lattice"`` with ``gamma``); noise mechanism objects such as Skellam are
accounted with privacy loss distributions instead (:mod:`speed.privacy.publishable`).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Any

import numpy as np

from speed.errors import InputError
from speed.privacy.accountant import log_q_bound_gamma, per_query_epsilon
from speed.privacy.checks import (
    check_counts,
    check_delta,
    check_gamma,
    check_mechanism,
    check_moments,
    check_tau,
    require_resolution,
)
from speed.privacy.composition import DEFAULT_MOMENTS, delta_total, moments_accountant, moments_alpha
from speed.privacy.lattice import lattice_per_query_epsilon, log_q_lattice

__all__ = ["PrivacyAccountant"]

_NOT_PUBLISHABLE = (
    "data-dependent ε uses the private vote counts: not publishable without "
    "smooth-sensitivity sanitisation (Papernot et al., PATE 2018)"
)


@functools.lru_cache(maxsize=1024)
def query_epsilon(mechanism: str, gamma: float, tau: float, resolution: int | None) -> float:
    if mechanism == "gamma":
        return per_query_epsilon(gamma, tau)
    return lattice_per_query_epsilon(gamma, tau, resolution)


def check_query(mechanism: str, gamma: Any, tau: Any, resolution: Any) -> tuple[str, float, float, int | None]:
    g, t = check_gamma(gamma), check_tau(tau)
    if mechanism == "lattice":
        resolution = require_resolution(resolution)
    else:
        check_mechanism(mechanism, resolution)
    return mechanism, g, t, resolution


class PrivacyAccountant:
    """In-memory accountant for heterogeneous queries (Opacus-style ``history`` / ``state_dict``).

    ``history`` is a list of ``[mechanism, gamma, tau, resolution, count]`` entries; consecutive
    identical queries are merged (as Opacus' RDP accountant does with steps).
    """

    def __init__(self, moments: int = DEFAULT_MOMENTS) -> None:
        self.moments = check_moments(moments)
        self.history: list[list[Any]] = []
        self.failure_probability = 0.0  # Σ β over all queries
        self.failure_probability_folded = 0.0  # Σ β over queries whose ε needs the exact argmax
        self._alpha = np.zeros(self.moments)
        self._basic = 0.0
        self._num = 0
        # data-dependent part: only while every query came with counts
        self._alpha_dd: np.ndarray | None = np.zeros(self.moments)

    # -- bookkeeping
    def _alpha_of(self, eps_q: float, count: int) -> np.ndarray:
        return count * moments_alpha([eps_q], None, self.moments)[0]

    def step(self, *, gamma: float, tau: float, mechanism: str = "gamma",
             resolution: int | None = None, counts: Any = None,
             failure_probability: float = 0.0, num_queries: int = 1) -> float:
        """Account for ``num_queries`` answered queries; returns their per-query ε."""
        mechanism, g, t, res = check_query(mechanism, gamma, tau, resolution)
        n = int(num_queries)
        if n < 1:
            raise InputError(f"num_queries must be ≥ 1, got {num_queries!r}")
        fp = float(failure_probability)
        if not (0.0 <= fp <= 1.0):
            raise InputError(f"failure_probability must lie in [0, 1], got {failure_probability!r}")
        eps_q = query_epsilon(mechanism, g, t, res)
        # τ = 1: ε_q = 2γ is a histogram-level bound, valid whatever the circuit outputs, so
        # β only enlarges q; otherwise ε_q needs the exact argmax and β is folded into δ
        histogram_level = t == 1.0
        dd = self._dd_alpha(counts, eps_q, mechanism, g, t, res, n, fp if histogram_level else 0.0)
        self._alpha = self._alpha + self._alpha_of(eps_q, n)
        self._basic += n * eps_q
        self._num += n
        self.failure_probability += n * fp
        if not histogram_level:
            self.failure_probability_folded += n * fp
        self._alpha_dd = None if (dd is None or self._alpha_dd is None) else self._alpha_dd + dd
        key = [mechanism, g, t, res]
        if self.history and self.history[-1][:4] == key:
            self.history[-1][4] += n
        else:
            self.history.append(key + [n])
        return eps_q

    def _dd_alpha(self, counts: Any, eps_q: float, mechanism: str, g: float, t: float,
                  res: int | None, n: int, q_extra: float) -> np.ndarray | None:
        if counts is None:
            return None
        arr = check_counts(counts)
        if arr.shape[0] != n:
            raise InputError(f"counts has {arr.shape[0]} rows for {n} queries")
        if mechanism == "gamma":
            k = arr.shape[1]
            log_q = np.minimum(log_q_bound_gamma(arr, g, t), math.log1p(-1.0 / k))
        else:
            log_q = np.minimum(log_q_lattice(arr, g, t, res, eps_q, self.moments), 0.0)
        if q_extra > 0:
            log_q = np.minimum(np.logaddexp(log_q, math.log(q_extra)), 0.0)
        return moments_alpha(np.full(n, eps_q), log_q, self.moments).sum(axis=0)

    # -- queries
    @property
    def num_queries(self) -> int:
        return self._num

    def _eps(self, alpha: np.ndarray, basic: float, delta: float) -> tuple[float, int, str]:
        value, order = moments_accountant(alpha, delta)
        if basic <= value:
            return basic, order, "basic_composition"
        return value, order, "moments"

    def get_epsilon(self, delta: float) -> float:
        """Data-independent ε at δ (the publishable number)."""
        return self._eps(self._alpha, self._basic, check_delta(delta))[0]

    def projected_epsilon(self, delta: float, *, gamma: float, tau: float, mechanism: str = "gamma",
                          resolution: int | None = None, num_queries: int = 1) -> float:
        """Data-independent ε after ``num_queries`` more queries of the given kind (nothing recorded)."""
        mechanism, g, t, res = check_query(mechanism, gamma, tau, resolution)
        eps_q = query_epsilon(mechanism, g, t, res)
        alpha = self._alpha + self._alpha_of(eps_q, num_queries)
        return self._eps(alpha, self._basic + num_queries * eps_q, check_delta(delta))[0]

    def get_privacy_spent(self, delta: float) -> dict[str, Any]:
        d = check_delta(delta)
        eps, order, method = self._eps(self._alpha, self._basic, d)
        out: dict[str, Any] = {
            "epsilon": eps,
            "delta": d,
            "order": order,
            "method": method,
            "num_queries": self._num,
            "basic_composition": self._basic,
            "failure_probability": self.failure_probability,
            "failure_probability_folded": self.failure_probability_folded,
            "delta_total": delta_total(d, eps, self.failure_probability_folded),
            "publishable": True,
            "data_dependent": None,
            "data_dependent_note": _NOT_PUBLISHABLE,
        }
        if self._alpha_dd is not None and self._num > 0:
            dd, dd_order, dd_method = self._eps(self._alpha_dd, self._basic, d)
            out.update(
                data_dependent=dd,
                data_dependent_order=dd_order,
                data_dependent_method=dd_method,
                data_dependent_delta_total=delta_total(d, dd, self.failure_probability_folded),
            )
        return out

    # -- persistence of the in-memory state
    def state_dict(self, destination: dict | None = None) -> dict[str, Any]:
        dest = OrderedDict() if destination is None else destination
        dest["history"] = [list(h) for h in self.history]
        dest["moments"] = self.moments
        dest["failure_probability"] = self.failure_probability
        dest["failure_probability_folded"] = self.failure_probability_folded
        dest["data_dependent_alpha"] = None if self._alpha_dd is None else self._alpha_dd.tolist()
        dest["mechanism"] = "speed-moments"
        return dest

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        moments = check_moments(state_dict.get("moments", DEFAULT_MOMENTS))
        fresh = PrivacyAccountant(moments)
        for mechanism, g, t, res, n in state_dict["history"]:
            fresh.step(gamma=g, tau=t, mechanism=mechanism, resolution=res, num_queries=int(n))
        dd = state_dict.get("data_dependent_alpha")
        if dd is not None and len(dd) != moments:
            raise InputError("data_dependent_alpha does not match the number of moments")
        self.moments = fresh.moments
        self.history = fresh.history
        self._alpha, self._basic, self._num = fresh._alpha, fresh._basic, fresh._num
        self.failure_probability = float(state_dict.get("failure_probability", 0.0))
        self.failure_probability_folded = float(state_dict.get("failure_probability_folded", 0.0))
        self._alpha_dd = None if dd is None else np.asarray(dd, dtype=np.float64)
