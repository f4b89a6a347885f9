"""SPEED's differential-privacy layer: distributed noise shares, the collusion-aware
accountant (continuous and lattice mechanisms) and the owner's durable privacy ledger.

* :mod:`speed.privacy.noise` — noise shares (docs/spec.md §3, §3b).
* :mod:`speed.privacy.accountant` — the paper's analysis for Gamma-difference noise (docs/spec.md §4),
  on :mod:`speed.privacy.variance_gamma` (the noise law), :mod:`speed.privacy.composition` (the
  moments accountant over queries) and :mod:`speed.privacy.checks` (parameter checks).
* :mod:`speed.privacy.lattice` — rigorous accountant for the lattice noise of the encrypted
  pipeline, and the noise bound / overflow probability for the circuit's range.
* :mod:`speed.privacy.moments` — the in-memory accountant of a run's heterogeneous queries.
* :mod:`speed.privacy.ledger` — append-only fsync-ed ledger and budget guard.
* :mod:`speed.privacy.mechanisms` — Skellam / lattice / Gamma mechanisms as typed objects.
* :mod:`speed.privacy.pld` — publishable ε by privacy loss distributions (dp_accounting).
* :mod:`speed.privacy.publishable` — the publishable-ε accountant of mechanism objects.
* :mod:`speed.privacy.calibrate` — smallest noise for a target ε.

See docs/privacy.md for the formulas, their sources and which ε may be published.
"""

from speed.privacy.accountant import (
    DEFAULT_MOMENTS,
    epsilon,
    moments_accountant,
    moments_alpha,
    per_query_epsilon,
    per_query_epsilon_parts,
    q_bound,
    vg_cdf,
    vg_pdf,
)
from speed.privacy.lattice import (
    continuous_argmax_epsilon,
    continuous_q,
    lattice_epsilon,
    lattice_log_pmf,
    lattice_per_query_epsilon,
    lattice_q_bound,
    lattice_tail_probability,
    noise_bound_for,
)
from speed.privacy.ledger import PrivacyAccountant, PrivacyLedger
from speed.privacy.mechanisms import (
    GammaLaplace,
    LatticeLaplace,
    Mechanism,
    Skellam,
    mechanism_from_dict,
    mechanism_from_name,
)
from speed.privacy.noise import (
    holder_generators,
    lattice_success_probability,
    os_uniform,
    sample_lattice_shares,
    sample_shares,
    sample_skellam_shares,
)
from speed.privacy.pld import epsilon_for_queries, publishable_epsilon, rdp_epsilon

__all__ = [
    "DEFAULT_MOMENTS",
    "GammaLaplace",
    "LatticeLaplace",
    "Mechanism",
    "PrivacyAccountant",
    "PrivacyLedger",
    "Skellam",
    "continuous_argmax_epsilon",
    "continuous_q",
    "epsilon",
    "epsilon_for_queries",
    "holder_generators",
    "lattice_epsilon",
    "lattice_log_pmf",
    "lattice_per_query_epsilon",
    "lattice_q_bound",
    "lattice_success_probability",
    "lattice_tail_probability",
    "mechanism_from_dict",
    "mechanism_from_name",
    "moments_accountant",
    "moments_alpha",
    "noise_bound_for",
    "os_uniform",
    "per_query_epsilon",
    "per_query_epsilon_parts",
    "publishable_epsilon",
    "q_bound",
    "rdp_epsilon",
    "sample_lattice_shares",
    "sample_shares",
    "sample_skellam_shares",
    "vg_cdf",
    "vg_pdf",
]
