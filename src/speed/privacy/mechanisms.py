"""Noise mechanisms as small immutable typed objects (in the style of dp_accounting's DpEvent).

Three mechanisms, each a frozen dataclass that knows how to draw its distributed shares
(:mod:`speed.privacy.noise`), the law of the sum of τN secret shares of one class count,
the noise bound of the homomorphic circuit, and its publishable ε (:mod:`speed.privacy.pld`):

* :class:`Skellam` ``(sigma)`` — ``"skellam"``: holder i adds X − Y, X, Y i.i.d.
  Poisson(σ²/(2N)); τN shares sum to Skellam(τσ²/2, τσ²/2), variance τσ² (Agarwal,
  Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
  NeurIPS 2021).  Integer-valued: what the encrypted pipeline can add exactly.
* :class:`LatticeLaplace` ``(gamma, resolution)`` — ``"lattice"``: X − Y with X, Y i.i.d.
  NegativeBinomial(1/N, 1 − e^{−γ/P}) in steps of 1/P vote; the N shares sum to the
  discrete Laplace law, τN shares to NB(τ, p) − NB(τ, p) (docs/privacy.md §1, §3).
* :class:`GammaLaplace` ``(gamma)`` — ``"gamma"`` (alias ``"laplace"``): the paper's
  continuous Gamma(1/N, 1/γ) differences (Grivet Sébert et al. 2021), summing to
  Laplace(1/γ); clear-text simulation only.

Units: ``sum_log_pmf`` and ``noise_bound`` work in the mechanism's integer steps (one
vote = ``vote_step`` steps: 1 for Skellam, P for the lattice); :class:`GammaLaplace` is
continuous (``sum_log_pmf`` is a log *density*, ``noise_bound`` in votes).

All parameters are validated in ``__post_init__``; a bad one raises
:class:`speed.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
from scipy import special

from speed.errors import InputError
from speed.privacy import noise as _noise
from speed.privacy.lattice import lattice_log_pmf, lattice_tail_probability, noise_bound_for
from speed.privacy.variance_gamma import vg_log_sf, vg_pdf

__all__ = [
    "GammaLaplace",
    "LatticeLaplace",
    "MECHANISM_NAMES",
    "Mechanism",
    "Skellam",
    "mechanism_from_dict",
    "mechanism_from_name",
]

_DEFAULT_LOG_TAIL = -45.0  # truncated supports keep all but e^{-45} ≈ 3e-20 of the mass
_MAX_SUPPORT = 1 << 23
_SKELLAM_MAX_VARIANCE = 1e9  # scipy's ive(v, x) is accurate to x = 1e9 (NaN beyond ~1e10)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _tau(tau: Any) -> float:
    if isinstance(tau, bool):
        raise InputError(f"tau must be a number in (0, 1], got {tau!r}")
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise InputError(f"tau must be a number in (0, 1], got {tau!r}") from None
    if not (0.0 < t <= 1.0):
        raise InputError(
            f"tau (fraction of holders whose noise stays secret) must lie in (0, 1], got {tau!r}"
        )
    return t


def _failure(failure_probability: Any, coordinates: Any) -> tuple[float, int]:
    try:
        beta = float(failure_probability)
    except (TypeError, ValueError):
        beta = math.nan
    if not (0.0 < beta < 1.0):
        raise InputError(f"failure_probability must lie in (0, 1), got {failure_probability!r}")
    if isinstance(coordinates, bool) or int(coordinates) != coordinates or coordinates < 1:
        raise InputError(f"coordinates must be a positive integer, got {coordinates!r}")
    return beta, int(coordinates)


def _rows_arg(rows: int | None, size: int | None) -> int | None:
    if rows is not None and size is not None and rows != size:
        raise InputError("give rows or size (the same thing: rows of shares), not both")
    return rows if rows is not None else size


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """Base class.  Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    discrete: ClassVar[bool] = True

    # ------------------------------------------------------------------ interface
    @property
    def vote_step(self) -> int:
        """Integer steps per vote (the shift of one moved vote on one count)."""
        return 1

    def sum_log_pmf(self, z: Any, tau: float = 1.0) -> np.ndarray:
        """log Pr[S_τ = z] for the sum S_τ of τN shares of one class count (steps)."""
        raise NotImplementedError

    def sum_tail(self, bound: int, tau: float = 1.0) -> float:
        """Pr[|S_τ| > bound] (an upper bound accurate to rounding)."""
        raise NotImplementedError

    def noise_bound(self, failure_probability: float, coordinates: int = 1) -> int:
        """Smallest integer A with ``coordinates · Pr[|S| > A] ≤ failure_probability``.

        S is the full noise sum of one class count (all N shares: the circuit's range must
        hold it whatever the coalition); ``coordinates = K·Q`` covers a whole run by a
        union bound.  A is in the mechanism's steps (votes for Skellam, 1/P vote for the
        lattice, votes for the continuous Laplace).
        """
        raise NotImplementedError

    def _sample(self, num_holders: int, num_classes: int, rng: Any, rows: int | None) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # ------------------------------------------------------------------ common
    def sample_shares(self, num_holders: int, num_classes: int, rng: Any = None, *,
                      rows: int | None = None, size: int | None = None) -> np.ndarray:
        """Shares of shape (rows, num_classes), rows defaulting to num_holders.

        ``rng``: ``None`` (production, OS CSPRNG), a numpy Generator (seeded experiment
        mode) or a list of per-holder Generators (:func:`speed.privacy.noise.holder_generators`,
        one per row).  ``size`` is an alias of ``rows``.
        """
        n_rows = _rows_arg(rows, size)
        if isinstance(rng, (list, tuple)) and not isinstance(self, Skellam):
            if len(rng) != (num_holders if n_rows is None else n_rows):
                raise InputError(f"got {len(rng)} generators for "
                                 f"{num_holders if n_rows is None else n_rows} rows of shares")
            return np.concatenate([self._sample(num_holders, num_classes, g, 1) for g in rng])
        return self._sample(num_holders, num_classes, rng, n_rows)

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.name, **self.params()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Mechanism":
        mech = mechanism_from_dict(data)
        if cls is not Mechanism and not isinstance(mech, cls):
            raise InputError(f"{data.get('mechanism')!r} is not a {cls.__name__} mechanism")
        return mech

    # ------------------------------------------------------------ truncated support
    def support(self, tau: float = 1.0,
                log_tail: float = _DEFAULT_LOG_TAIL) -> tuple[np.ndarray, np.ndarray, float]:
        """(z, log Pr[S_τ = z], Pr[|S_τ| > T]) on z = −T..T, T the smallest (up to a factor)
        window whose two-sided tail is below e^{log_tail}."""
        t = _tau(tau)
        T = self._initial_window(t, log_tail)
        while True:
            tail = self.sum_tail(T, t)
            if tail <= math.exp(log_tail) or T >= _MAX_SUPPORT:
                break
            T = int(T * 1.5) + 1
        if tail > math.exp(log_tail):
            raise InputError(f"{self!r}: the noise law needs more than {_MAX_SUPPORT} points per side; "
                             "use less noise or a smaller resolution")
        z = np.arange(-T, T + 1, dtype=np.int64)
        return z, self.sum_log_pmf(z, t), tail

    def _initial_window(self, tau: float, log_tail: float) -> int:
        raise NotImplementedError


# ---------------------------------------------------------------------------- Skellam
@dataclasses.dataclass(frozen=True)
class Skellam(Mechanism):
    """Distributed Skellam noise of standard deviation ``sigma`` per class count (all N shares)."""

    sigma: float
    name: ClassVar[str] = "skellam"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _positive("Skellam noise sigma", self.sigma))

    def _mu2(self, tau: float) -> float:
        # 2μ with μ = τσ²/2 the Poisson mean of each side of S_τ
        return tau * self.sigma * self.sigma

    def sum_log_pmf(self, z: Any, tau: float = 1.0) -> np.ndarray:
        """log Pr[Sk(μ, μ) = z], μ = τσ²/2: ``e^{−2μ} I_|z|(2μ)`` = ``ive(|z|, 2μ)``."""
        x = self._mu2(_tau(tau))
        if x > _SKELLAM_MAX_VARIANCE:
            raise InputError(f"Skellam σ = {self.sigma:g} is beyond the exact PMF's range "
                             f"(τσ² ≤ {_SKELLAM_MAX_VARIANCE:g})")
        zz = np.abs(np.asarray(z, dtype=np.float64))
        if not np.all(np.floor(zz) == zz):
            raise InputError("Skellam noise takes integer values: z must be integers")
        with np.errstate(divide="ignore"):
            return np.log(special.ive(zz, x))

    def sum_tail(self, bound: int, tau: float = 1.0) -> float:
        """Pr[|S_τ| > A] by summing the exact PMF; the rest is bounded by log-concavity.

        Skellam laws are discrete log-concave (convolution of two Poissons), so
        Pr[S ≥ m] ≤ π(m) / (1 − π(m+1)/π(m)) for m past the mode.
        """
        t = _tau(tau)
        A = int(bound)
        if A < 0:
            return 1.0
        sd = math.sqrt(self._mu2(t))
        width = int(40.0 * sd + 200.0)
        z = np.arange(A + 1, A + 2 + width, dtype=np.float64)
        logp = self.sum_log_pmf(z, t)
        finite = logp[np.isfinite(logp)]
        if finite.size == 0:
            return 0.0
        head = float(np.exp(special.logsumexp(finite)))
        last = z[-2]
        l0, l1 = self.sum_log_pmf(np.array([last, last + 1.0]), t)
        rest = 0.0
        if np.isfinite(l0):
            r = math.exp(l1 - l0) if np.isfinite(l1) else 0.0
            rest = math.exp(l0) / max(1e-300, 1.0 - r)
        return float(min(1.0, 2.0 * (head + rest)))

    def noise_bound(self, failure_probability: float, coordinates: int = 1) -> int:
        beta, c = _failure(failure_probability, coordinates)
        target = beta / c
        A = max(0, int(math.sqrt(2.0 * math.log(2.0 / target)) * self.sigma) - 2)
        while A > 0 and self.sum_tail(A - 1) <= target:
            A -= 1
        while self.sum_tail(A) > target:
            A += 1
        return A

    def _initial_window(self, tau: float, log_tail: float) -> int:
        return int(math.ceil(math.sqrt(self._mu2(tau) * 2.0 * (-log_tail + 1.0)))) + 2

    def _sample(self, num_holders: int, num_classes: int, rng: Any, rows: int | None) -> np.ndarray:
        return _noise.sample_skellam_shares(num_holders, num_classes, self.sigma, rng, rows=rows)


# ------------------------------------------------------------------- lattice Laplace
@dataclasses.dataclass(frozen=True)
class LatticeLaplace(Mechanism):
    """Lattice (discrete Laplace) noise, ``gamma`` = 1/λ per vote, ``resolution`` P steps per vote."""

    gamma: float
    resolution: int = 1
    name: ClassVar[str] = "lattice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _positive("lattice noise gamma (= 1/λ)", self.gamma))
        P = self.resolution
        if isinstance(P, bool) or not isinstance(P, (int, np.integer, float)) or int(P) != P or P < 1:
            raise InputError(f"resolution P must be a positive integer, got {P!r}")
        object.__setattr__(self, "resolution", int(P))

    @property
    def scale(self) -> float:
        return 1.0 / self.gamma

    @property
    def vote_step(self) -> int:
        return self.resolution

    def sum_log_pmf(self, z: Any, tau: float = 1.0) -> np.ndarray:
        """log Pr[NB(τ, p) − NB(τ, p) = z] (τ = 1: discrete Laplace), z in lattice steps."""
        return lattice_log_pmf(z, self.scale, self.resolution, _tau(tau))

    def sum_tail(self, bound: int, tau: float = 1.0) -> float:
        return lattice_tail_probability(int(bound), self.scale, self.resolution, _tau(tau))

    def noise_bound(self, failure_probability: float, coordinates: int = 1) -> int:
        beta, c = _failure(failure_probability, coordinates)
        return noise_bound_for(beta, self.scale, self.resolution, coordinates=c)

    def _initial_window(self, tau: float, log_tail: float) -> int:
        return int(math.ceil((-log_tail + 2.0) * self.resolution / self.gamma)) + 2

    def _sample(self, num_holders: int, num_classes: int, rng: Any, rows: int | None) -> np.ndarray:
        return _noise.sample_lattice_shares(num_holders, num_classes, self.scale, self.resolution,
                                            rng, rows=rows)


# ---------------------------------------------------------------- continuous Laplace
@dataclasses.dataclass(frozen=True)
class GammaLaplace(Mechanism):
    """The paper's continuous Gamma-difference shares, summing to Laplace(1/gamma)."""

    gamma: float
    name: ClassVar[str] = "gamma"
    discrete: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _positive("Laplace noise gamma (= 1/λ)", self.gamma))

    @property
    def scale(self) -> float:
        return 1.0 / self.gamma

    def sum_log_pmf(self, z: Any, tau: float = 1.0) -> np.ndarray:
        """log *density* of Gamma(τ, λ) − Gamma(τ, λ) at z (votes; τ = 1: Laplace(λ))."""
        t = _tau(tau)
        zz = np.asarray(z, dtype=np.float64)
        if t == 1.0:
            return -np.abs(zz) * self.gamma - math.log(2.0 * self.scale)
        with np.errstate(divide="ignore"):
            return np.log(vg_pdf(zz, t, self.scale))

    def sum_tail(self, bound: float, tau: float = 1.0) -> float:
        t = _tau(tau)
        if bound < 0:
            return 1.0
        if t == 1.0:
            return float(math.exp(-bound * self.gamma))
        return float(min(1.0, 2.0 * math.exp(vg_log_sf(float(bound), t, self.scale))))

    def noise_bound(self, failure_probability: float, coordinates: int = 1) -> int:
        """Smallest integer A (votes) with coordinates · e^{−Aγ} ≤ failure_probability."""
        beta, c = _failure(failure_probability, coordinates)
        A = max(0, math.ceil(math.log(c / beta) * self.scale))
        while A > 0 and c * math.exp(-(A - 1) * self.gamma) <= beta:
            A -= 1
        return int(A)

    def support(self, tau: float = 1.0, log_tail: float = _DEFAULT_LOG_TAIL):  # type: ignore[override]
        raise InputError("the continuous Gamma/Laplace mechanism has no lattice support; "
                         "use LatticeLaplace for an exact PMF")

    def _sample(self, num_holders: int, num_classes: int, rng: Any, rows: int | None) -> np.ndarray:
        return _noise.sample_shares(num_holders, num_classes, self.scale, rng, rows=rows)


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Mechanism]] = {
    "skellam": Skellam,
    "lattice": LatticeLaplace,
    "gamma": GammaLaplace,
    "laplace": GammaLaplace,  # alias
}
MECHANISM_NAMES = tuple(_REGISTRY)


def mechanism_from_name(name: str, **params: Any) -> Mechanism:
    """``mechanism_from_name("skellam", sigma=40)``, ``("lattice", gamma=3.3, resolution=1)``,
    ``("gamma", gamma=3.3)`` (alias ``"laplace"``)."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise InputError(f"unknown noise mechanism {name!r}; choose one of {', '.join(MECHANISM_NAMES)}")
    cls = _REGISTRY[key]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(f"mechanism {key!r} takes {sorted(allowed)}, got unexpected {unknown}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InputError(f"mechanism {key!r}: {exc}") from None


def mechanism_from_dict(data: dict[str, Any]) -> Mechanism:
    """Inverse of ``Mechanism.to_dict``."""
    if not isinstance(data, dict) or "mechanism" not in data:
        raise InputError("a mechanism dict needs a 'mechanism' key (its registry name)")
    params = {k: v for k, v in data.items() if k != "mechanism"}
    return mechanism_from_name(data["mechanism"], **params)
