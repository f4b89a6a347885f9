"""The SPEED protocol run in one process: the same message objects the Flower deployment
carries (``speed.messages``), passed by function call instead of over the network.

Per batch of public queries (docs/spec.md §2): owner → holders pads; holders → server encrypted
noisy votes; server → owner encrypted argmax; owner records the batch in the privacy
ledger (``before_release``) and only then decrypts and releases the labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from speed import messages
from speed.crypto.seeded import KEYLESS_PAD_MODES
from speed.crypto.spec import reference_argmax
from speed.errors import BudgetExhaustedError
from speed.holder import DataHolder
from speed.owner.owner import ModelOwner
from speed.server import AggregationServer


@dataclass
class LabellingResult:
    """Labels of the queried points and what it cost.  ``clear_*`` exist in simulation only."""

    query_ids: np.ndarray
    labels: np.ndarray
    clear_noisy_argmax: np.ndarray
    clear_noisy_sums: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # why labelling stopped early (privacy budget), if it did
    server_call_seconds: list[float] = field(default_factory=list)  # one per server call (a group of batches)
    server_call_queries: list[int] = field(default_factory=list)  # queries answered by each server call


def make_batches(query_ids: np.ndarray, batch_size: int, first_batch_id: int = 0) -> list[messages.QueryBatch]:
    ids = [int(q) for q in query_ids]
    return [
        messages.QueryBatch(batch_id=first_batch_id + b, query_ids=tuple(ids[s : s + batch_size]))
        for b, s in enumerate(range(0, len(ids), batch_size))
    ]


def setup_parties(owner: ModelOwner, holders: list[DataHolder], server_workers: int | None = None) -> AggregationServer:
    """Owner sends program + evaluation keys to the server; holders get the program, and the
    evaluation keys only in ``encode`` pad mode (seeded and shared holders never use them).
    ``server_workers``: batches the server computes side by side (default: one per CPU)."""
    bundle, keys = owner.circuit_bundle(), owner.evaluation_keys()
    server = AggregationServer(bundle, keys, workers=server_workers)
    for holder in holders:
        holder.connect(bundle, keys if bundle.pad_mode not in KEYLESS_PAD_MODES else None, keyset_id=keys.keyset_id)
    return server


def label_queries(
    owner: ModelOwner,
    server: AggregationServer,
    holders: list[DataHolder],
    public_x: np.ndarray,
    query_ids: np.ndarray,
    before_release: Callable[[messages.QueryBatch, np.ndarray], None] | None = None,
    progress: bool = True,
) -> LabellingResult:
    """Label ``public_x[query_ids]`` through the encrypted pipeline.

    ``before_release(batch, encoded_sums)`` is the owner's ledger hook, called after the
    server answered and before the labels are decrypted; ``encoded_sums`` (the clear noisy
    sums) exists only because this is a simulation.  If it raises
    :class:`BudgetExhaustedError`, labelling stops there: the labels released so far are
    returned and ``stopped`` says why.

    Batches go to the server in groups of ``server.workers``, which it computes side by side
    (:meth:`AggregationServer.aggregate_many`); ``server_call_seconds`` has one entry per group.
    The ledger hook still runs batch by batch before each decryption: if the budget stops the
    run inside a group, the group's later labels are never decrypted (nothing released, their
    pads are spent).
    """
    spec = owner.spec
    batches = make_batches(np.asarray(query_ids), spec.batch_size)
    group_size = max(1, getattr(server, "workers", 1))
    groups = [batches[i : i + group_size] for i in range(0, len(batches), group_size)]
    labels, clear_argmax, clear_sums = [], [], []
    t = {"pads_s": 0.0, "holder_encrypt_s": 0.0, "server_s": 0.0, "decrypt_s": 0.0}
    vote_bytes = pad_bytes = label_bytes = shell_bytes = 0
    stopped = None
    server_calls: list[float] = []
    server_call_queries: list[int] = []
    bar = tqdm(total=len(query_ids), desc="encrypted labelling", unit="query", disable=not progress)
    for group in groups:
        items, sums = [], []
        for batch in group:
            start = time.perf_counter()
            pads = owner.issue_pads(batch.batch_id, range(spec.num_holders))
            shell = owner.pad_shell(batch.batch_id)  # shared pads only: the server's part
            t["pads_s"] += time.perf_counter() - start
            if shell is not None:
                server.receive_shell(shell)
                shell_bytes += shell.payload_bytes
            for holder, pad in zip(holders, pads):
                holder.receive_pad(pad)
                pad_bytes += pad.payload_bytes
            x = public_x[list(batch.query_ids)]
            votes, encoded_sum = [], np.zeros((spec.batch_size, spec.num_classes), dtype=np.int64)
            start = time.perf_counter()
            for holder in holders:
                vote, encoded = holder.answer(batch, x)
                votes.append(vote)
                encoded_sum += encoded
                vote_bytes += vote.payload_bytes
            t["holder_encrypt_s"] += time.perf_counter() - start
            items.append((batch, votes))
            sums.append(encoded_sum[: len(batch.query_ids)])
        start = time.perf_counter()
        answers = server.aggregate_many(items)  # the group's batches side by side (server.workers)
        server_calls.append(time.perf_counter() - start)
        server_call_queries.append(sum(len(batch.query_ids) for batch in group))
        t["server_s"] += server_calls[-1]
        for batch, encrypted, encoded_sum in zip(group, answers, sums):
            n_real = len(batch.query_ids)
            label_bytes += encrypted.payload_bytes
            if before_release is not None:
                try:
                    before_release(batch, encoded_sum)
                except BudgetExhaustedError as exc:
                    stopped = str(exc)
                    break
            start = time.perf_counter()
            labels.append(owner.decrypt(encrypted)[:n_real])
            t["decrypt_s"] += time.perf_counter() - start
            clear_sums.append(encoded_sum)
            clear_argmax.append(reference_argmax(encoded_sum))
            bar.update(n_real)
        if stopped is not None:
            break
    bar.close()
    answered = sum(len(x) for x in labels)
    num_queries = max(answered, 1)
    timings = {
        "pads_s": t["pads_s"],
        "holder_encrypt_s_per_query": t["holder_encrypt_s"] / num_queries / spec.num_holders,
        "server_s_per_query": t["server_s"] / num_queries,
        "decrypt_s_per_query": t["decrypt_s"] / num_queries,
        "server_total_s": t["server_s"],
    }
    sizes = {
        "holder_to_server_bytes_per_query": vote_bytes / num_queries / spec.num_holders,
        "owner_to_holder_pad_bytes_per_query": pad_bytes / num_queries / spec.num_holders,
        "owner_to_server_shell_bytes_per_query": shell_bytes / num_queries,
        "server_to_owner_bytes_per_query": label_bytes / num_queries,
        "evaluation_key_bytes": len(owner.evaluation_keys().data),
        "server_program_bytes": len(owner.circuit_bundle().program),
    }
    return LabellingResult(
        query_ids=np.asarray(query_ids)[:answered],
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        clear_noisy_argmax=np.concatenate(clear_argmax) if clear_argmax else np.zeros(0, dtype=np.int64),
        clear_noisy_sums=np.concatenate(clear_sums) if clear_sums else np.zeros((0, spec.num_classes)),
        timings=timings,
        bytes=sizes,
        stopped=stopped,
        server_call_seconds=server_calls,
        server_call_queries=server_call_queries,
    )
