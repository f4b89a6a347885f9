"""The symmetric variance-gamma law: the noise of SPEED's continuous (Gamma-difference) mechanism
(docs/spec.md §3).

Unit-scale variables (λ = 1 unless a ``scale`` argument says otherwise):

* ``W_s = Gamma(s, 1) − Gamma(s, 1)``: symmetric variance-gamma law.  With τN secret
  shares the protecting noise on one class count is ``Z_τ = λ W_τ`` (docs/spec.md §3), and the
  difference of two classes' noises is ``λ W_{2τ}`` (four independent gammas).
* density ``f_s(x) = |x|^{s−1/2} K_{s−1/2}(|x|) / (√π Γ(s) 2^{s−1/2})``;
  ``f_s(0) = Γ(s − 1/2) / (2√π Γ(s))`` for s > 1/2 (infinite for s ≤ 1/2).
* central mass (DLMF 10.43.2 with the modified Struve functions L_ν):
  ``Pr[|W_s| ≤ x] = x [K_ν(x) L_{ν−1}(x) + L_ν(x) K_{ν−1}(x)]``, ν = s − 1/2.
* tail ``Pr[W_s > x] = e^{−x} ∫_0^∞ f̃_s(x + u) e^{−u} du`` with the exponentially scaled
  density ``f̃_s(y) = f_s(y) e^{y}`` (``scipy.special.kve``): log-space, no underflow.

:func:`vg_pdf`, :func:`vg_cdf` and :func:`vg_log_sf` take any scale; :func:`scaled_pdf`,
:func:`pdf_at_zero`, :func:`log_tail` and :func:`central_mass` are the unit-scale pieces the
per-query ε of :mod:`speed.privacy.accountant` is computed from.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import integrate, special

__all__ = ["central_mass", "log_tail", "pdf_at_zero", "scaled_pdf", "vg_cdf", "vg_log_sf", "vg_pdf"]


def _nu(s: float) -> float:
    return s - 0.5


def _log_norm(s: float) -> float:
    # log of 1 / (√π Γ(s) 2^{s−1/2})
    return -0.5 * math.log(math.pi) - special.gammaln(s) - _nu(s) * math.log(2.0)


def scaled_pdf(y: np.ndarray | float, s: float) -> np.ndarray | float:
    """f̃_s(y) = f_s(y) e^{y} for y > 0 (unit scale)."""
    nu = _nu(s)
    return np.exp(_log_norm(s) + nu * np.log(y)) * special.kve(nu, y)


def pdf_at_zero(s: float) -> float:
    if s <= 0.5:
        return math.inf
    return math.exp(special.gammaln(s - 0.5) - special.gammaln(s)) / (2.0 * math.sqrt(math.pi))


def _central_struve(x: float, s: float) -> float:
    """Pr[|W_s| ≤ x] by the Bessel–Struve closed form (accurate while it is not near 1)."""
    if x == 0.0:
        return 0.0
    nu = _nu(s)
    return float(
        x
        * (
            special.kv(nu, x) * special.modstruve(nu - 1.0, x)
            + special.modstruve(nu, x) * special.kv(nu - 1.0, x)
        )
    )


@functools.lru_cache(maxsize=65536)
def log_tail(x: float, s: float) -> float:
    """log Pr[W_s > x] for x ≥ 0 (unit scale), accurate in relative terms far into the tail."""
    if x < 0:
        raise ValueError("internal: log_tail needs x ≥ 0")
    if x == 0.0:
        return math.log(0.5)
    if x <= 1.0:
        c = _central_struve(x, s)
        if 0.0 <= c < 0.5:
            return math.log1p(-c) - math.log(2.0)
    val, _err = integrate.quad(
        lambda u: scaled_pdf(x + u, s) * math.exp(-u),
        0.0,
        math.inf,
        epsabs=0.0,
        epsrel=1e-13,
        limit=400,
    )
    return -x + math.log(val)


@functools.lru_cache(maxsize=65536)
def central_mass(x: float, s: float) -> float:
    """Pr[|W_s| ≤ x] for x ≥ 0, without cancellation for small x."""
    if x == 0.0:
        return 0.0
    if x <= 1.0:
        c = _central_struve(x, s)
        if 0.0 <= c < 0.5:
            return c
    return -math.expm1(math.log(2.0) + log_tail(x, s))


def _check_shape(shape: float, scale: float) -> tuple[float, float]:
    s, lam = float(shape), float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"shape (τ) must be a positive number, got {shape!r}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"scale λ must be a positive number, got {scale!r}")
    return s, lam


def vg_pdf(t: Any, tau: float, scale: float = 1.0) -> np.ndarray:
    """Density of Z_τ = Gamma(τ, λ) − Gamma(τ, λ) at t (docs/spec.md §3); any shape τ > 0."""
    tau, lam = _check_shape(tau, scale)
    x = np.abs(np.asarray(t, dtype=np.float64)) / lam
    out = np.empty_like(x)
    zero = x == 0
    out[zero] = pdf_at_zero(tau) / lam
    nz = ~zero
    out[nz] = scaled_pdf(x[nz], tau) * np.exp(-x[nz]) / lam
    return out


def vg_log_sf(x: float, shape: float, scale: float = 1.0) -> float:
    """log Pr[Gamma(shape, λ) − Gamma(shape, λ) > x] for any real x (shape > 0)."""
    s, lam = _check_shape(shape, scale)
    y = float(x) / lam
    if y >= 0:
        return log_tail(y, s)
    return math.log1p(-math.exp(log_tail(-y, s)))


def vg_cdf(t: Any, tau: float, scale: float = 1.0) -> np.ndarray:
    """CDF of Z_τ = Gamma(τ, λ) − Gamma(τ, λ) (vectorised; any shape τ > 0, e.g. 2τ for pairs)."""
    s, lam = _check_shape(tau, scale)
    x = np.asarray(t, dtype=np.float64) / lam
    flat = x.ravel()
    out = np.empty_like(flat)
    for i, v in enumerate(flat):
        a = abs(float(v))
        if a <= 1.0:
            half = 0.5 * central_mass(a, s)
            out[i] = 0.5 + half if v >= 0 else 0.5 - half
        else:
            tail = math.exp(log_tail(a, s))
            out[i] = 1.0 - tail if v >= 0 else tail
    return out.reshape(x.shape)
