"""Homomorphic aggregation: sum the holders' encrypted votes and compute the encrypted argmax.

Several batches run at once (``workers``), each circuit call on ``cpus // workers`` threads:
the tournament's last rounds hold one or two matches and concrete's loop parallelism would
leave a core waiting, so independent calls side by side use the cores better (measurements:
docs/he-engine.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from speed import messages
from speed.crypto import shared
from speed.crypto.runtime import (
    digest,
    load_evaluation_keys,
    load_server_program,
    load_value,
)
from speed.crypto.seeded import SeededLayout, check_pad_mode, check_size, message_sizes
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError, InputError, PadReuseError

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def openmp_threads(count: int):
    """Context limiting the OpenMP threads of the calling thread's circuit calls to ``count``.

    concrete runs its tensor loops with OpenMP; the limit is a per-thread setting, so each
    worker thread sets its own (threadpoolctl calls ``omp_set_num_threads``)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=count, user_api="openmp")


def threads_per_call(calls: int, cpus: int) -> int:
    """OpenMP threads of each of ``calls`` circuit calls run side by side on ``cpus`` CPUs."""
    return max(1, cpus // max(1, calls))


def map_side_by_side(function: Callable[[T], R], items: Sequence[T], calls: int, cpus: int | None = None) -> list[R]:
    """``function(item)`` for every item, ``calls`` at a time in threads, each limited to
    :func:`threads_per_call` OpenMP threads; results in the order of ``items``.  The first
    exception is raised once every started call has finished."""
    threads = threads_per_call(calls, cpus or available_cpus())

    def limited(item: T) -> R:
        with openmp_threads(threads):
            return function(item)

    if calls <= 1:
        return [limited(item) for item in items]
    with ThreadPoolExecutor(max_workers=calls, thread_name_prefix="aggregate") as pool:
        return list(pool.map(limited, items))


class AggregationServer:
    """Runs ``aggregate`` on batches of encrypted votes, up to ``workers`` batches at once.

    State: the compiled program, the evaluation keys, and the ids of pads already used
    (a pad presented twice is refused: its reuse would reveal the difference of two
    votes).  A refused call changes no state.

    ``pad_mode="shared"``: the votes are additive shares of one pad per batch, whose shell (seeds,
    bodies zeroed) comes from the owner (:meth:`receive_shell`); the server adds the N shares into
    the shell's bodies and ``aggregate`` takes that one encryption of the class sums
    (:mod:`speed.crypto.shared`).
    """

    def __init__(self, bundle: messages.CircuitBundle, keys: messages.EvaluationKeys, workers: int | None = None):
        if not isinstance(bundle, messages.CircuitBundle) or not isinstance(keys, messages.EvaluationKeys):
            raise InputError("the server takes a CircuitBundle and EvaluationKeys, nothing else")
        if digest(bundle.program) != bundle.program_id:
            raise CiphertextError("server program bytes do not match their id (corrupted transfer)")
        if digest(keys.data) != keys.keyset_id:
            raise CiphertextError("evaluation key bytes do not match their keyset id (corrupted transfer)")
        if workers is not None and workers < 1:
            raise InputError(f"server workers must be ≥ 1, got {workers}")
        self.spec = CircuitSpec.from_dict(bundle.spec)
        self.keyset_id = keys.keyset_id
        self.cpus = available_cpus()
        self.workers = workers or self.cpus
        self._program = load_server_program(bundle.program)
        self._evaluation_keys = load_evaluation_keys(keys.data)
        self.pad_mode = bundle.pad_mode
        check_pad_mode(self.spec, self.pad_mode)
        self._layout = SeededLayout.from_dict(bundle.pad_layout) if self.pad_mode == "shared" else None
        self._sizes = message_sizes(self.pad_mode, bundle.pad_layout)  # exact lengths, every pad mode
        self._shells: dict[int, messages.PadShell] = {}
        self.used_pad_ids: set[str] = set()
        self.batches_done = 0

    def receive_shell(self, shell: messages.PadShell, replace: bool = False) -> None:
        """``pad_mode="shared"``: the owner's shell of a batch's pad (single use).  ``replace``:
        the owner's new shell for a batch whose holders did not all answer (it comes with stand-in
        shares, :func:`speed.crypto.shared.stand_in_shares`); the batch's first shell is discarded
        and never accepted again."""
        if self.pad_mode != "shared":
            raise InputError(f"pad shells belong to pad mode 'shared', this server runs {self.pad_mode!r}")
        if not isinstance(shell, messages.PadShell):
            raise InputError("receive_shell takes a PadShell message")
        if shell.keyset_id != self.keyset_id:
            raise CiphertextError(f"pad shell {shell.shell_id} belongs to keyset {shell.keyset_id}, not {self.keyset_id}")
        check_size(shell.data, self._sizes["shell"], f"pad shell {shell.shell_id}")
        current = self._shells.get(shell.batch_id)
        if shell.shell_id in self.used_pad_ids or (current is not None and (not replace or current.shell_id == shell.shell_id)):
            raise PadReuseError(f"pad shell {shell.shell_id} for batch {shell.batch_id} was already received or used: refused")
        if replace and current is None:
            raise InputError(f"batch {shell.batch_id}: no pad shell to replace")
        if current is not None:
            self.used_pad_ids.add(current.shell_id)
        self._shells[shell.batch_id] = shell

    def check_votes(self, batch: messages.QueryBatch, votes: list[messages.EncryptedVote],
                    also_used: set[str] | frozenset[str] = frozenset()) -> None:
        """Every problem with a batch of votes, as one-line errors, before any state changes.

        ``also_used``: pad ids taken by other batches of the same call (refused here too)."""
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
            if vote.pad_id in self.used_pad_ids or vote.pad_id in seen or vote.pad_id in also_used:
                raise PadReuseError(f"pad {vote.pad_id} (holder {vote.holder_id}) was already used: refused")
            seen.add(vote.pad_id)
            check_size(vote.data, self._sizes["vote"], f"batch {batch.batch_id}: vote of holder {vote.holder_id}")
        if self.pad_mode == "shared" and batch.batch_id not in self._shells:
            raise InputError(f"batch {batch.batch_id}: no pad shell from the owner (shared pads)")

    def threads_per_call(self, batches: int) -> int:
        """OpenMP threads of each circuit call when ``batches`` batches are computed together."""
        return threads_per_call(min(self.workers, batches), self.cpus)

    def aggregate(self, batch: messages.QueryBatch, votes: list[messages.EncryptedVote]) -> messages.EncryptedLabels:
        """Encrypted label index for each query of ``batch`` (one call on all CPUs)."""
        return self.aggregate_many([(batch, votes)])[0]

    def aggregate_many(
        self, items: list[tuple[messages.QueryBatch, list[messages.EncryptedVote]]]
    ) -> list[messages.EncryptedLabels]:
        """Encrypted labels of several batches, computed ``workers`` at a time, in order.

        All batches are checked first; if any is refused or its circuit call fails, nothing is
        recorded (no pad is marked used) and the error names the batch."""
        if not items:
            return []
        taken: set[str] = set()
        prepared = []
        for batch, votes in items:
            self.check_votes(batch, votes, also_used=taken)
            taken.update(v.pad_id for v in votes)
            ordered = sorted(votes, key=lambda v: v.holder_id)
            if self.pad_mode == "shared":
                shell = self._shells[batch.batch_id]
                summed = shared.combine(self._layout, shell.data, [
                    shared.share_from_bytes(self._layout, v.data, f"vote of holder {v.holder_id}") for v in ordered
                ])
                values = [load_value(summed, f"batch {batch.batch_id}: class sums")]
            else:
                values = [load_value(v.data, f"batch {batch.batch_id}: vote of holder {v.holder_id}") for v in ordered]
            prepared.append((batch, ordered, values))

        def run(entry):
            batch, _, values = entry
            try:
                return self._program.run(*values, evaluation_keys=self._evaluation_keys, function_name="aggregate")
            except Exception as exc:
                raise CiphertextError(
                    f"batch {batch.batch_id}: a vote does not fit the circuit (wrong shape, class count or keyset)"
                ) from exc

        results = map_side_by_side(run, prepared, min(self.workers, len(prepared)), self.cpus)
        out = []
        for (batch, ordered, _), result in zip(prepared, results):
            self.used_pad_ids.update(v.pad_id for v in ordered)
            if self.pad_mode == "shared":
                self.used_pad_ids.add(self._shells.pop(batch.batch_id).shell_id)
            self.batches_done += 1
            label, check = result if isinstance(result, tuple) else (result, None)  # range check: 2 outputs
            out.append(messages.EncryptedLabels(
                batch_id=batch.batch_id,
                query_ids=tuple(batch.query_ids),
                holder_ids=tuple(v.holder_id for v in ordered),
                keyset_id=self.keyset_id,
                data=label.serialize(),
                check=check.serialize() if check is not None else b"",
            ))
        return out
