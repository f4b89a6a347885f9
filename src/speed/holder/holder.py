"""Data holder (teacher side) of docs/spec.md §2, steps 1–3.

Per query: one-hot vote e ∈ {0,1}^K of the teacher, lattice noise share η (docs/spec.md §3b),
encoded value v = P·e + clip(η, −S, S), encrypted with a one-time pad of the owner: Δ·v added to
a seeded pad's bodies or to a share of one pad's bodies (no keys at all), or ``encode`` run on
the pad (evaluation keys only, never a secret key).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from speed import messages
from speed.crypto.runtime import ClearArguments, digest, load_evaluation_keys, load_server_program, load_value
from speed.crypto import shared
from speed.crypto.seeded import KEYLESS_PAD_MODES, SeededLayout, check_size, message_sizes
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError, InputError, PadReuseError
from speed.privacy.mechanisms import Mechanism
from speed.privacy.noise import sample_lattice_shares

Predictor = Callable[[np.ndarray], np.ndarray]


def one_hot_votes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n,) predicted labels → (n, K) one-hot votes, refusing labels outside [0, K)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError("teacher predictions must be a 1-D array of integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"teacher predicted a label outside [0, {num_classes})")
    return np.eye(num_classes, dtype=np.int64)[labels]


def check_one_hot(votes: np.ndarray, num_classes: int) -> np.ndarray:
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != num_classes:
        raise InputError(f"votes must have shape (queries, {num_classes}), got {votes.shape}")
    if not np.isin(votes, (0, 1)).all() or not (votes.sum(axis=1) == 1).all():
        raise InputError("a vote vector is not one-hot (exactly one 1, zeros elsewhere) before noise")
    return votes.astype(np.int64)


class DataHolder:
    """One data holder.  ``rng=None`` draws noise from the OS CSPRNG (production)."""

    def __init__(
        self,
        holder_id: int,
        predict: Predictor,
        noise_scale: float | None = None,
        rng: np.random.Generator | None = None,
        *,
        noise: Mechanism | None = None,
    ):
        """``noise``: the run's mechanism object (:mod:`speed.privacy.mechanisms`, e.g.
        ``Skellam(σ)``), whose :meth:`sample_shares` draws this holder's share; without it,
        ``noise_scale`` λ gives the discrete Laplace lattice shares of docs/privacy.md."""
        if noise is None and noise_scale is None:
            raise InputError("a data holder needs a noise mechanism (noise=...) or a noise scale λ")
        if noise is not None and not isinstance(noise, Mechanism):
            raise InputError(f"noise must be a mechanism object of speed.privacy.mechanisms, got {noise!r}")
        self.holder_id = holder_id
        self.predict = predict
        self.noise = noise
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.rng = rng
        self.spec: CircuitSpec | None = None
        self._pads: dict[int, messages.Pad] = {}
        self.used_pad_ids: set[str] = set()

    # -- setup -----------------------------------------------------------------------
    def connect(self, bundle: messages.CircuitBundle, keys: messages.EvaluationKeys | None = None,
                keyset_id: str | None = None) -> None:
        """Receive the compiled program (and, for ``pad_mode="encode"``, the evaluation keys).

        Seeded pads (the default) need no evaluation keys: the holder adds Δ·v to the pad's LWE
        bodies, so it is connected with ``keyset_id`` alone (the id every pad must carry).
        """
        if digest(bundle.program) != bundle.program_id:
            raise CiphertextError("program does not match its id (corrupted transfer)")
        if keys is not None and digest(keys.data) != keys.keyset_id:
            raise CiphertextError("evaluation keys do not match their id (corrupted transfer)")
        if keys is not None and keyset_id is not None and keys.keyset_id != keyset_id:
            raise InputError(f"evaluation keys of keyset {keys.keyset_id}, expected {keyset_id}")
        if keys is None and bundle.pad_mode not in KEYLESS_PAD_MODES:
            raise InputError(f"pad mode {bundle.pad_mode!r} needs the evaluation keys at the holder")
        if keys is None and keyset_id is None:
            raise InputError("connect needs the evaluation keys or, in seeded or shared pad mode, the keyset id")
        self.spec = CircuitSpec.from_dict(bundle.spec)
        self.keyset_id = keys.keyset_id if keys is not None else keyset_id
        self.pad_mode = bundle.pad_mode
        self._sizes = message_sizes(self.pad_mode, bundle.pad_layout)  # exact lengths, every pad mode
        if self.pad_mode in KEYLESS_PAD_MODES:  # no program, no keys: Δ·v goes into the bodies (or a share)
            self._layout = SeededLayout.from_dict(bundle.pad_layout)
        else:
            self._program = load_server_program(bundle.program)
            self._evaluation_keys = load_evaluation_keys(keys.data)
            self._clear = ClearArguments(self._program, "encode")

    def receive_pad(self, pad: messages.Pad) -> None:
        self._require_spec()
        if pad.keyset_id != self.keyset_id:
            raise CiphertextError(f"pad {pad.pad_id} belongs to keyset {pad.keyset_id}, not this run's {self.keyset_id}")
        if pad.holder_id != self.holder_id:
            raise InputError(f"pad {pad.pad_id} is for holder {pad.holder_id}, not {self.holder_id}")
        if pad.pad_id in self.used_pad_ids or pad.batch_id in self._pads:
            raise PadReuseError(f"pad {pad.pad_id} for batch {pad.batch_id} was already issued or used: refused")
        check_size(pad.data, self._sizes["pad"], f"pad {pad.pad_id}")
        self._pads[pad.batch_id] = pad

    # -- per batch -------------------------------------------------------------------
    def noisy_votes(self, one_hot: np.ndarray) -> np.ndarray:
        """Encoded noisy votes, shape (batch_size, K): P·e + clip(η, −S, S); padding rows 0."""
        spec = self._require_spec()
        votes = check_one_hot(one_hot, spec.num_classes)
        if len(votes) > spec.batch_size:
            raise InputError(f"{len(votes)} queries exceed the circuit's batch size {spec.batch_size}")
        if self.noise is not None:
            if self.noise.vote_step != spec.resolution:
                raise InputError(f"the {self.noise.name} noise counts a vote as {self.noise.vote_step} steps, "
                                 f"the circuit as {spec.resolution}")
            shares = self.noise.sample_shares(spec.num_holders, spec.num_classes, self.rng, rows=len(votes))
        else:
            shares = sample_lattice_shares(
                spec.num_holders, spec.num_classes, self.noise_scale, spec.resolution, self.rng, rows=len(votes)
            )
        shares = np.clip(shares, -spec.share_bound, spec.share_bound)  # prob. folded into δ (crypto.spec)
        encoded = np.zeros((spec.batch_size, spec.num_classes), dtype=np.int64)
        encoded[: len(votes)] = spec.resolution * votes + shares
        return encoded

    def encrypt(self, batch_id: int, encoded: np.ndarray) -> messages.EncryptedVote:
        """Encrypt v on the batch's pad (seeded: bodies + Δ·v; shared: share + Δ·v; encode: run
        ``encode``); single use."""
        spec = self._require_spec()
        encoded = np.asarray(encoded, dtype=np.int64)
        low, high = spec.vote_range
        if encoded.shape != (spec.batch_size, spec.num_classes) or encoded.min() < low or encoded.max() > high:
            raise InputError(f"encoded votes must be a ({spec.batch_size}, {spec.num_classes}) array in [{low}, {high}]")
        pad = self._pads.pop(batch_id, None)
        if pad is None:
            raise PadReuseError(f"holder {self.holder_id} has no unused pad for batch {batch_id}")
        self.used_pad_ids.add(pad.pad_id)  # consumed even if encryption fails below: never retried
        if self.pad_mode == "shared":
            share = shared.share_from_bytes(self._layout, pad.data, f"pad {pad.pad_id}")
            data = shared.add_votes(self._layout, share, encoded)
        elif self.pad_mode == "seeded":
            data = self._layout.add(pad.data, encoded)
        else:
            zero = load_value(pad.data, f"pad {pad.pad_id}")
            try:
                value = self._program.run(
                    zero, self._clear.prepare(encoded, 1), evaluation_keys=self._evaluation_keys,
                    function_name="encode",
                )
            except Exception as exc:
                raise CiphertextError(f"pad {pad.pad_id} does not fit the circuit (foreign or corrupted)") from exc
            data = value.serialize()
        return messages.EncryptedVote(
            batch_id=batch_id, holder_id=self.holder_id, pad_id=pad.pad_id, keyset_id=self.keyset_id, data=data
        )

    def answer(self, batch: messages.QueryBatch, queries: np.ndarray) -> tuple[messages.EncryptedVote, np.ndarray]:
        """Vote on ``queries`` (the batch's public points): encrypted message + own clear encoding."""
        spec = self._require_spec()
        votes = one_hot_votes(np.asarray(self.predict(queries)), spec.num_classes)
        encoded = self.noisy_votes(votes)
        return self.encrypt(batch.batch_id, encoded), encoded

    def _require_spec(self) -> CircuitSpec:
        if self.spec is None:
            raise InputError(f"holder {self.holder_id} has not received the circuit and evaluation keys yet")
        return self.spec
