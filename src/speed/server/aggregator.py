"""Homomorphic aggregation: sum the holders' encrypted votes and compute the encrypted argmax."""

from __future__ import annotations

from speed import messages
from speed.crypto.runtime import digest, load_evaluation_keys, load_server_program, load_value
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError, InputError, PadReuseError


class AggregationServer:
    """Runs ``aggregate`` on one batch of encrypted votes per call.

    State: the compiled program, the evaluation keys, and the ids of pads already used
    (a pad presented twice is refused: its reuse would reveal the difference of two
    votes).  A refused batch changes no state.
    """

    def __init__(self, bundle: messages.CircuitBundle, keys: messages.EvaluationKeys):
        if not isinstance(bundle, messages.CircuitBundle) or not isinstance(keys, messages.EvaluationKeys):
            raise InputError("the server takes a CircuitBundle and EvaluationKeys, nothing else")
        if digest(bundle.program) != bundle.program_id:
            raise CiphertextError("server program bytes do not match their id (corrupted transfer)")
        if digest(keys.data) != keys.keyset_id:
            raise CiphertextError("evaluation key bytes do not match their keyset id (corrupted transfer)")
        self.spec = CircuitSpec.from_dict(bundle.spec)
        self.keyset_id = keys.keyset_id
        self._program = load_server_program(bundle.program)
        self._evaluation_keys = load_evaluation_keys(keys.data)
        self.used_pad_ids: set[str] = set()
        self.batches_done = 0

    def check_votes(self, batch: messages.QueryBatch, votes: list[messages.EncryptedVote]) -> None:
        """Every problem with a batch of votes, as one-line errors, before any state changes."""
        spec = self.spec
        if len(batch.query_ids) > spec.batch_size:
            raise InputError(f"batch {batch.batch_id} has {len(batch.query_ids)} queries; circuit takes ≤ {spec.batch_size}")
        holders = sorted(v.holder_id for v in votes)
        if holders != list(range(spec.num_holders)):
            raise InputError(
                f"batch {batch.batch_id} needs one vote from each of the {spec.num_holders} holders, "
                f"got holders {holders[:10]}{'...' if len(holders) > 10 else ''}"
            )
        seen: set[str] = set()
        for vote in votes:
            if vote.batch_id != batch.batch_id:
                raise InputError(f"vote of holder {vote.holder_id} is for batch {vote.batch_id}, not {batch.batch_id}")
            if vote.keyset_id != self.keyset_id:
                raise CiphertextError(
                    f"vote of holder {vote.holder_id} was encrypted under keyset {vote.keyset_id}, "
                    f"not this run's {self.keyset_id}"
                )
            if vote.pad_id in self.used_pad_ids or vote.pad_id in seen:
                raise PadReuseError(f"pad {vote.pad_id} (holder {vote.holder_id}) was already used: refused")
            seen.add(vote.pad_id)

    def aggregate(self, batch: messages.QueryBatch, votes: list[messages.EncryptedVote]) -> messages.EncryptedLabels:
        """Encrypted label index for each query of ``batch``."""
        self.check_votes(batch, votes)
        ordered = sorted(votes, key=lambda v: v.holder_id)
        values = [load_value(v.data, f"vote of holder {v.holder_id}") for v in ordered]
        try:
            result = self._program.run(*values, evaluation_keys=self._evaluation_keys, function_name="aggregate")
        except Exception as exc:
            raise CiphertextError(
                f"batch {batch.batch_id}: a vote does not fit the circuit (wrong shape, class count or keyset)"
            ) from exc
        self.used_pad_ids.update(v.pad_id for v in ordered)
        self.batches_done += 1
        return messages.EncryptedLabels(
            batch_id=batch.batch_id,
            query_ids=tuple(batch.query_ids),
            holder_ids=tuple(v.holder_id for v in ordered),
            keyset_id=self.keyset_id,
            data=result.serialize(),
        )
