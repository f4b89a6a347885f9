"""The one-call Python entry point: label a prediction matrix through the real encrypted protocol.

:func:`label` plays every party of SPEED in one process, with the same message objects the
Flower deployment carries: each of the N holders votes with its column of ``predictions``,
adds its share of distributed Skellam noise and encrypts; the aggregation server (evaluation
keys only) sums and computes the exact argmax on ciphertexts; the owner charges its privacy
ledger for each batch *before* decrypting the batch's labels. What it returns is what a
deployed owner could publish: the labels and the publishable ε (PLD accounting of the noise
actually drawn, docs/privacy.md "Publishable ε").

    >>> import numpy as np, speed
    >>> predictions = np.random.default_rng(0).integers(0, 3, size=(20, 5))   # 20 queries x 5 teachers
    >>> out = speed.label(predictions, num_classes=3, target_epsilon=8.0, ledger="ledger.jsonl")
    >>> out.labels.shape, out.epsilon <= 8.0                                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speed.errors import InputError
from speed.privacy.mechanisms import Mechanism

__all__ = ["PrivateLabels", "label"]


@dataclass(frozen=True)
class PrivateLabels:
    """Labels released by :func:`label`, with the privacy they cost.

    ``labels[i]`` answers query ``query_ids[i]``; if the budget stopped labelling early, only the
    first queries are answered and ``stopped`` says why. ``epsilon`` is the publishable ε of the
    answered queries at ``delta`` (``delta_total`` adds the circuit's clip failures by the rule of
    docs/privacy.md). ``clear_noisy_argmax`` is the argmax computed in clear on the same noisy
    votes: it exists only because every party ran in this process, as a check.
    """

    query_ids: np.ndarray
    labels: np.ndarray
    epsilon: float
    delta: float
    delta_total: float
    noise: Mechanism
    tau: float
    ledger: Path
    clear_noisy_argmax: np.ndarray
    stopped: str | None


def _check_predictions(predictions: object, num_classes: int) -> np.ndarray:
    arr = np.asarray(predictions)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise InputError(f"predictions must be a (queries, holders) array with at least 2 holders, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError("predictions must hold integer class labels")
    if arr.min() < 0 or arr.max() >= num_classes:
        raise InputError(f"predictions must be class labels in 0..{num_classes - 1}")
    return arr.astype(np.int64)


def label(
    predictions: object,
    num_classes: int,
    *,
    target_epsilon: float | None = None,
    sigma: float | None = None,
    delta: float = 1e-5,
    tau: float = 1.0,
    ledger: str | os.PathLike | None = None,
    max_epsilon: float | None = None,
    batch_size: int = 10,
    pad_mode: str = "shared",
    range_check: str = "off",
    seed: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> PrivateLabels:
    """Label every row of ``predictions`` (queries × holders, class labels) with real encryption.

    Noise: distributed Skellam shares, σ calibrated so that the publishable ε of all the rows is at
    most ``target_epsilon`` at ``delta`` when a fraction ``tau`` of the holders kept their shares
    secret (or ``sigma`` given directly). ``ledger``: the owner's privacy ledger file (default: a
    new one under the cache directory); ``max_epsilon``: a budget it enforces. ``seed=None`` draws
    the noise from the operating system's CSPRNG; an integer gives reproducible per-holder streams
    (experiments only). ``cache_dir``: compiled circuits and keys (default ``$SPEED_CACHE_DIR`` or
    ``.speed-cache``). ``range_check``: "classes" or "total" adds an encrypted check that the class
    sums stayed in the compiled range (a batch that fails raises :class:`speed.errors.CiphertextError`
    after it was charged). Raises :class:`speed.errors.InputError` on bad input, before any work.
    """
    from speed.holder import DataHolder
    from speed.owner.owner import ModelOwner
    from speed.owner.release import charge_then_release, open_ledger
    from speed.params import circuit_spec, default_cache_dir
    from speed.pipeline import RunConfig, charged_failure_probability, default_ledger_path
    from speed.privacy.noise import holder_generators
    from speed.protocol import label_queries, setup_parties

    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"num_classes must be an integer ≥ 2, got {num_classes!r}")
    preds = _check_predictions(predictions, int(num_classes))
    if target_epsilon is None and sigma is None:
        raise InputError("give target_epsilon (the publishable ε to meet) or sigma (the Skellam noise)")
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir())
    num_queries, num_holders = preds.shape
    config = RunConfig(
        holders=num_holders, queries=num_queries, mechanism="skellam", target_epsilon=target_epsilon, sigma=sigma,
        tau=tau, delta=delta, batch_size=batch_size, pad_mode=pad_mode, range_check=range_check,
        seed=0 if seed is None else seed,
        production_noise=seed is None, cache_dir=str(cache), max_epsilon=max_epsilon,
        ledger=None if ledger is None else str(ledger),
    )
    config.validate(int(num_classes))
    noise = config.protocol.noise_mechanism(num_queries)
    spec = circuit_spec(config.protocol, int(num_classes), num_holders, noise)
    clip_failure = charged_failure_probability(spec, noise)  # all the histogram-level PLD ε does not cover

    owner = ModelOwner(spec, cache_dir=cache, pad_mode=pad_mode)
    rngs = [None] * num_holders if seed is None else holder_generators(seed, num_holders)
    holders = [DataHolder(i, (lambda q, i=i: preds[np.asarray(q, dtype=np.int64), i]), rng=rngs[i], noise=noise)
               for i in range(num_holders)]
    server = setup_parties(owner, holders)
    ledger_path = default_ledger_path(config)
    book = open_ledger(ledger_path, config.protocol, noise, num_holders=num_holders, planned_queries=num_queries,
                       max_epsilon=max_epsilon)
    try:
        result = label_queries(
            owner, server, holders, np.arange(num_queries), np.arange(num_queries),
            before_release=lambda batch, _sums: charge_then_release(book, batch.query_ids,
                                                                    failure_probability=clip_failure),
            progress=progress,
        )
        spent = book.epsilon()
    finally:
        book.close()
    return PrivateLabels(
        query_ids=result.query_ids, labels=result.labels, epsilon=spent["epsilon"], delta=delta,
        delta_total=spent["delta_total"], noise=noise, tau=float(tau), ledger=ledger_path,
        clear_noisy_argmax=result.clear_noisy_argmax, stopped=result.stopped,
    )
