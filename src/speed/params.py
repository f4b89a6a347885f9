"""The protocol's parameters, in one place: :class:`ProtocolParams`, checked once.

The demo (:class:`speed.pipeline.RunConfig`), the reproduction
(:class:`speed.reproduce.config.ReproduceConfig`), the Flower job
(:class:`speed.deploy.config.DeployConfig`) and :func:`speed.label` run the same protocol
(docs/spec.md §2: holders add noise shares to their votes and encrypt, the server computes the
argmax on ciphertexts, the owner decrypts one label per query after charging its privacy
ledger).  Each keeps the flat fields of its own interface (command-line flags, Flower's flat
run config, JSON settings, cache keys) and derives its ``protocol`` from them; the defaults,
the checks, the noise each setting resolves to and the circuit compiled for it live here.

This module imports nothing heavy (the calibration and the crypto stack are imported when
called): ``speed --help``, the command-line checks and Flower's ServerApp import it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from speed import validation as opt
from speed.errors import InputError
from speed.fsutil import FALLBACK_CACHE_DIR, default_cache_dir  # re-exported: the one default

if TYPE_CHECKING:
    from speed.crypto.spec import CircuitSpec
    from speed.privacy.mechanisms import Mechanism

__all__ = ["DEFAULT_TARGET_EPSILON", "FALLBACK_CACHE_DIR", "MECHANISMS", "RANGE_CHECKS", "ProtocolParams",
           "circuit_spec", "default_cache_dir"]

#: Noise mechanisms the encrypted pipeline runs (integer shares): distributed Skellam (publishable
#: ε by PLD accounting, docs/privacy.md "Publishable ε") and the paper's lattice Laplace
#: (docs/spec.md §3b).  The clear-text-only "gamma" noise is not one of them.
MECHANISMS = ("skellam", "lattice")
#: Encrypted range checks of the class sums (README, "Security model"; docs/he-engine.md "Integrity").
RANGE_CHECKS = ("off", "classes", "total")
#: Publishable ε planned when neither a target ε nor σ is given: with only 20 holders a vote
#: margin is a few votes, so the noise that keeps labels useful costs more ε than at N = 250
#: (README, "Choosing your privacy level").  ``speed reproduce`` has its own per dataset.
DEFAULT_TARGET_EPSILON = 10.0
#: The cache directory when ``$SPEED_CACHE_DIR`` is not set.


def _default_cache_dir_text() -> str:
    return str(default_cache_dir())


@dataclass(frozen=True)
class ProtocolParams:
    """The parameters of one labelling run, checked when made (:class:`speed.errors.InputError`,
    one line naming the command-line option, e.g. ``--gamma``).

    Noise (docs/spec.md §3b, §3c; docs/privacy.md):

    * ``mechanism`` — ``"skellam"``: each holder adds a Skellam share, the sum is Skellam of
      standard deviation σ (publishable ε by privacy-loss distributions); ``"lattice"``: the
      paper's discrete Laplace shares of scale λ = 1/γ (moments accountant).
    * ``target_epsilon`` — the publishable ε planned for the run's queries: σ (or, for the
      lattice, γ) is calibrated to it (docs/privacy.md "Calibration").  With neither it nor
      ``sigma``, Skellam noise plans :data:`DEFAULT_TARGET_EPSILON`.
    * ``sigma`` — Skellam σ given directly (instead of ``target_epsilon``).
    * ``gamma`` — γ = 1/λ of the lattice noise (default 3.3, the value of the paper's analysis,
      docs/spec.md §6).
    * ``tau`` — τ, the fraction of holders whose noise shares stay secret (collusion-aware
      accounting, docs/spec.md §4); the ledger charges with it.
    * ``delta`` — the target δ of the (ε, δ) guarantee.
    * ``resolution`` — P, lattice steps per vote (docs/spec.md §3b); the vote's weight in the
      encoded class sums.

    Circuit (docs/he-engine.md; docs/privacy.md §4 "Noise bound of the circuit"):

    * ``batch_size`` — queries per encrypted circuit call.
    * ``noise_failure`` — per-query probability that the total noise leaves the compiled range:
      the noise bound A satisfies K · Pr[|Z| > A] ≤ ``noise_failure``.
    * ``global_p_error`` — probability that a programmable bootstrap behind one query's label
      is wrong (concrete's ``global_p_error``).
    * ``pad_mode`` — how holders encrypt: ``"shared"`` (one pad per batch, its bodies split
      among the holders and summed by the server; docs/he-engine.md "Shared pads"),
      ``"seeded"`` (one seeded pad each) or ``"encode"`` (holders run ``encode`` with the
      evaluation keys).
    * ``range_check`` — encrypted check that every class sum (``"classes"``) or their total
      (``"total"``) stayed in the compiled range; ``"off"`` under the honest-but-curious model.

    Randomness and storage:

    * ``seed`` — seeds the data splits, the teachers and the holders' seeded noise streams.
    * ``production_noise`` — True: holders draw noise from the OS CSPRNG; False: seeded
      per-holder streams, for experiments only.
    * ``cache_dir`` — compiled circuits, keys and checkpoints (default :func:`default_cache_dir`).
    """

    mechanism: str = "skellam"
    target_epsilon: float | None = None
    sigma: float | None = None
    gamma: float = 3.3
    tau: float = 1.0
    delta: float = 1e-5
    resolution: int = 1
    batch_size: int = 10
    noise_failure: float = 1e-12
    global_p_error: float = 1e-9
    pad_mode: str = "shared"
    range_check: str = "off"
    seed: int = 0
    production_noise: bool = False
    cache_dir: str = field(default_factory=_default_cache_dir_text)

    def __post_init__(self) -> None:
        opt.check_choice(self.mechanism, "--mechanism", MECHANISMS)
        opt.check_gamma(self.gamma, "--gamma")
        if self.sigma is not None:
            opt.check_sigma(self.sigma, "--sigma")
            if self.mechanism != "skellam":
                raise InputError(f"--sigma applies to --mechanism skellam, not {self.mechanism}")
            if self.target_epsilon is not None:
                raise InputError("give --target-epsilon or --sigma, not both")
        if self.target_epsilon is not None:
            opt.check_target_epsilon(self.target_epsilon, "--target-epsilon")
        opt.check_tau(self.tau, "--tau")
        opt.check_delta(self.delta, "--delta")
        opt.check_resolution(self.resolution, "--resolution")
        opt.check_positive_int(self.batch_size, "--batch-size")
        opt.check_float(self.noise_failure, "noise_failure", low=0.0, high=1.0, low_open=True, high_open=True)
        opt.check_float(self.global_p_error, "global_p_error", low=0.0, high=1.0, low_open=True, high_open=True)
        opt.check_choice(self.pad_mode, "--pad-mode", opt.PAD_MODES)
        opt.check_choice(self.range_check, "--range-check", RANGE_CHECKS)
        opt.check_seed(self.seed, "--seed")
        object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))

    @property
    def planned_target_epsilon(self) -> float | None:
        """The publishable ε the noise is calibrated to (None when σ or γ is given directly)."""
        if self.sigma is not None or (self.mechanism != "skellam" and self.target_epsilon is None):
            return None
        return DEFAULT_TARGET_EPSILON if self.target_epsilon is None else self.target_epsilon

    def noise_mechanism(self, queries: int) -> Mechanism:
        """The noise the holders sample for a run of ``queries`` queries: Skellam(σ) from ``sigma``
        or calibrated to the planned ε over ``queries`` queries at ``tau`` and ``delta``; the
        lattice Laplace of ``gamma`` and ``resolution`` (or calibrated to ``target_epsilon``).

        A calibration takes seconds to a minute; it is done once per process and setting."""
        from speed.privacy.mechanisms import LatticeLaplace, Skellam

        if self.mechanism == "skellam":
            if self.sigma is not None:
                return Skellam(float(self.sigma))
            return _calibrated("skellam", float(self.planned_target_epsilon), int(queries), float(self.delta),
                               float(self.tau), int(self.resolution))
        if self.target_epsilon is not None:
            return _calibrated("lattice", float(self.target_epsilon), int(queries), float(self.delta),
                               float(self.tau), int(self.resolution))
        return LatticeLaplace(self.gamma, self.resolution)


@functools.lru_cache(maxsize=32)
def _calibrated(mechanism: str, target: float, queries: int, delta: float, tau: float, resolution: int) -> Mechanism:
    from speed.privacy.calibrate import calibrate

    fixed = {"resolution": resolution} if mechanism == "lattice" else {}
    return calibrate(mechanism, target, queries, delta, tau, **fixed)[0]


def circuit_spec(params: ProtocolParams, num_classes: int, num_holders: int, noise: Mechanism) -> CircuitSpec:
    """The circuit the owner compiles: ``num_holders`` votes of ``num_classes`` classes, the noise
    bound A of ``noise`` for the failure target (K · Pr[|Z| > A] ≤ ``noise_failure`` per query;
    docs/privacy.md §4), one vote = ``noise.vote_step`` lattice steps, and the batch size, bootstrap
    error, pad mode and range check of ``params``."""
    # imported here: the crypto stack (scipy) takes a second, and the command line checks its
    # options before it needs it
    from speed.crypto.seeded import aggregate_input_for
    from speed.crypto.spec import CircuitSpec, choose_noise_bound
    from speed.privacy.mechanisms import LatticeLaplace

    if isinstance(noise, LatticeLaplace):
        bound = choose_noise_bound(num_holders, num_classes, noise.scale, noise.resolution, params.noise_failure)
    else:
        bound = noise.noise_bound(params.noise_failure, coordinates=num_classes)
    return CircuitSpec(
        num_holders=num_holders, num_classes=num_classes, noise_bound=bound, resolution=noise.vote_step,
        batch_size=params.batch_size, global_p_error=params.global_p_error,
        aggregate_input=aggregate_input_for(params.pad_mode), range_check=params.range_check,
    )
