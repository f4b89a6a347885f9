"""Encrypted aggregation engine benchmark: compile, keys, holder encryption, server time per
query, bytes, exactness against numpy on the same noisy votes (real TFHE execution)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from speed.crypto.circuit import server_program_path
from speed.crypto.seeded import aggregate_input_for
from speed.crypto.spec import CircuitSpec, choose_noise_bound, reference_argmax
from speed.holder import DataHolder
from speed.machine import machine
from speed.owner.owner import ModelOwner
from speed.privacy.noise import holder_generators
from speed.protocol import label_queries, setup_parties
from speed import validation as opt
from speed.fsutil import default_cache_dir
from speed.params import ProtocolParams


def paper_spec(num_holders: int, num_classes: int, **overrides: Any) -> CircuitSpec:
    """The circuit at the paper's noise (γ = 3.3, docs/spec.md §6), P = 1 and a noise failure of 1e-12 per
    query; ``overrides`` are further :class:`CircuitSpec` fields (batch_size, argmax, ...)."""
    p = ProtocolParams(mechanism="lattice")
    bound = choose_noise_bound(num_holders, num_classes, 1 / p.gamma, p.resolution, p.noise_failure)
    return CircuitSpec(num_holders=num_holders, num_classes=num_classes, noise_bound=bound, **overrides)


def pbs_per_parameter(statistics: dict[str, Any]) -> list[dict[str, int]]:
    """Bootstraps per TFHE parameter set, from a compiled function's concrete ``statistics``:
    count, polynomial size, GLWE dimension, input LWE dimension, decomposition level, base log."""
    fields = ("polynomial_size", "glwe_dimension", "input_lwe_dimension", "level", "base_log")
    return [{"count": int(n), **{f: int(getattr(p, f)()) for f in fields}}
            for p, n in statistics.get("programmable_bootstrap_count_per_parameter", {}).items()]


def bootstrap_key_bytes_streamed(statistics: dict[str, Any]) -> int:
    """Bytes of Fourier bootstrap keys one compiled call reads: every PBS walks its whole key,
    n·(k + 1)²·L·N/2 complex doubles = n·(k + 1)²·L·N·8 bytes (n input LWE dimension, k GLWE
    dimension, L decomposition level, N polynomial size), tens of MB each, beyond the caches.
    On the 2-vCPU machines we measure, time per query follows this more than concrete's operation
    count (docs/he-engine.md)."""
    return sum(p["count"] * p["input_lwe_dimension"] * (p["glwe_dimension"] + 1) ** 2 * p["level"]
               * p["polynomial_size"] * 8 for p in pbs_per_parameter(statistics))


def encrypted_random_votes(module, spec: CircuitSpec, seed: int) -> tuple[np.ndarray, list[bytes]]:
    """In-range votes for a compiled module's ``aggregate`` (benchmarks that call it directly):
    random one-hot votes (N, B, K), holder 0 adding noise in [−A, A]; and their serialized
    encryptions, one per holder, or for ``aggregate_input="sum"`` one fresh encryption of their
    class sums (what the server builds from shared pads: speed.crypto.shared)."""
    rng = np.random.default_rng(seed)
    n, b, k = spec.num_holders, spec.batch_size, spec.num_classes
    votes = np.eye(k, dtype=np.int64)[rng.integers(0, k, size=(n, b))]
    votes[0] += rng.integers(-spec.noise_bound, spec.noise_bound + 1, size=(b, k))
    if spec.aggregate_input == "sum":
        return votes, [module.aggregate.encrypt(votes.sum(axis=0)).serialize()]
    return votes, [v.serialize() for v in module.aggregate.encrypt(*votes)]


def keyed_with_votes(
    module, spec: CircuitSpec, seed: int, reference: Callable[[np.ndarray], np.ndarray] = reference_argmax,
) -> tuple[Any, list[bytes], np.ndarray]:
    """Benchmarks that call ``aggregate`` directly: ``module`` (compiled for ``spec``) with fresh
    keys, the serialized encryptions of :func:`encrypted_random_votes` and what ``reference`` (by
    default numpy's argmax, lowest index among ties) gives their class sums (B, K): the first
    arguments of :func:`timed_side_by_side`, in its order."""
    module.keygen()
    votes, blobs = encrypted_random_votes(module, spec, seed)
    return module, blobs, reference(votes.sum(axis=0))


def timed_side_by_side(module, blobs: list[bytes], expected: np.ndarray, calls: int) -> tuple[float, bool]:
    """One round: ``calls`` calls of ``module.aggregate`` on copies of the same inputs, side by side
    as the server runs them (:func:`speed.server.aggregator.map_side_by_side`).  Returns the wall
    time per query and whether every decrypted label equals ``expected``."""
    from concrete import fhe

    from speed.server.aggregator import map_side_by_side

    arguments = [[fhe.Value.deserialize(b) for b in blobs] for _ in range(calls)]
    start = time.perf_counter()
    outs = map_side_by_side(lambda values: module.aggregate.run(*values), arguments, calls)
    seconds = time.perf_counter() - start
    ok = all(np.array_equal(np.atleast_1d(module.aggregate.decrypt(o)), expected) for o in outs)
    return seconds / (len(expected) * calls), ok


def alternating_rounds(rounds_of: dict, rounds: int) -> tuple[dict, dict]:
    """Time every entry of ``rounds_of`` (key -> a function returning (s per query, correct)) in
    ``rounds`` alternating rounds after one warm-up call each (the first call of a keyset is
    slower), so that a machine whose speed drifts affects every entry alike.  Returns the seconds
    per query of each round and whether every round was correct, per key."""
    from tqdm import tqdm

    for run_round in rounds_of.values():
        run_round()
    per_query = {key: [] for key in rounds_of}
    correct = dict.fromkeys(rounds_of, True)
    for _ in tqdm(range(rounds), desc="rounds", unit="round"):
        for key, run_round in rounds_of.items():
            seconds, ok = run_round()
            per_query[key].append(seconds)
            correct[key] &= ok
    return per_query, correct


def vote_table(num_queries: int, num_holders: int, num_classes: int, seed: int, agreement: float) -> np.ndarray:
    """Teacher answers (Q, N): a fraction ``agreement`` votes the query's class, others random;
    some queries are made near-ties between two classes (harder for the argmax)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_classes, size=num_queries)
    table = rng.integers(0, num_classes, size=(num_queries, num_holders))
    agree = rng.random((num_queries, num_holders)) < agreement
    table[agree] = np.broadcast_to(truth[:, None], table.shape)[agree]
    near = rng.random(num_queries) < 0.3  # split the holders evenly between two classes
    for q in np.flatnonzero(near):
        a, b = rng.choice(num_classes, size=2, replace=False)
        table[q] = np.where(np.arange(num_holders) % 2 == 0, a, b)
    return table


def check_inputs(*, num_classes: int, num_holders: int, num_queries: int, batch_size: int, gamma: float,
                 resolution: int, pad_mode: str, argmax: str, chunk_bits: int, seed: int,
                 server_workers: int | None) -> None:
    """Refuse bad settings (naming the `speed bench he` option) before compiling anything."""
    from speed.crypto.seeded import PAD_MODES
    from speed.crypto.spec import ARGMAX_LAYOUTS

    opt.check_int(num_classes, "--classes", 2, opt.MAX_CLASSES)
    opt.check_int(num_holders, "--holders", 1, opt.MAX_HOLDERS)
    opt.check_int(num_queries, "--queries", 1, opt.MAX_BENCH_QUERIES)
    opt.check_positive_int(batch_size, "--batch-size")
    opt.check_gamma(gamma, "--gamma")
    opt.check_resolution(resolution, "--resolution")
    opt.check_choice(pad_mode, "--pad-mode", PAD_MODES)
    opt.check_choice(argmax, "--argmax", ARGMAX_LAYOUTS)
    opt.check_int(chunk_bits, "--chunk-bits", 1, 6)
    opt.check_seed(seed, "--seed")
    if server_workers is not None:
        opt.check_positive_int(server_workers, "--server-workers")


def run(
    num_classes: int = 10,
    num_holders: int = 250,
    num_queries: int = 5,
    batch_size: int = 1,
    gamma: float = ProtocolParams.gamma,
    resolution: int = 1,
    noise_failure: float = 1e-12,
    global_p_error: float = 1e-9,
    pad_mode: str = "shared",
    argmax: str = "tournament",
    chunk_bits: int = 3,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    server_workers: int | None = None,
) -> dict[str, Any]:
    check_inputs(num_classes=num_classes, num_holders=num_holders, num_queries=num_queries, batch_size=batch_size,
                 gamma=gamma, resolution=resolution, pad_mode=pad_mode, argmax=argmax, chunk_bits=chunk_bits,
                 seed=seed, server_workers=server_workers)
    scale = 1.0 / gamma
    bound = choose_noise_bound(num_holders, num_classes, scale, resolution, noise_failure)
    spec = CircuitSpec(
        num_holders=num_holders, num_classes=num_classes, noise_bound=bound, resolution=resolution,
        batch_size=batch_size, global_p_error=global_p_error, argmax=argmax, chunk_bits=chunk_bits,
        aggregate_input=aggregate_input_for(pad_mode),
    )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = (cache_dir / "circuits" / spec.cache_key / "server.zip").exists()
    start = time.perf_counter()
    server_program_path(spec, cache_dir)
    compile_s = time.perf_counter() - start
    owner = ModelOwner(spec, cache_dir=cache_dir, pad_mode=pad_mode)
    table = vote_table(num_queries, num_holders, num_classes, seed, agreement=0.6)
    rngs = holder_generators(seed, num_holders)
    holders = [
        DataHolder(i, (lambda q, i=i: table[np.asarray(q, dtype=np.int64), i]), scale, rngs[i])
        for i in range(num_holders)
    ]
    start = time.perf_counter()
    server = setup_parties(owner, holders, server_workers)
    setup_s = time.perf_counter() - start
    result = label_queries(owner, server, holders, np.arange(num_queries), np.arange(num_queries), progress=progress)
    # one server call = server.workers batches side by side: its wall time over its queries.  The
    # first call of a keyset is 1.5–2× slower (docs/he-engine.md): reported apart, and left out of
    # the medians whenever there is a later call
    per_query = [t / q for t, q in zip(result.server_call_seconds, result.server_call_queries)]
    timed = slice(1, None) if len(per_query) > 1 else slice(None)
    exact = int(np.sum(result.labels == result.clear_noisy_argmax))
    srv = owner._server_program  # public statistics of the compiled program
    return {
        "classes": num_classes,
        "holders": num_holders,
        "queries": len(result.labels),
        "batch_size": batch_size,
        "pad_mode": pad_mode,
        "argmax": argmax,
        "chunk_bits": chunk_bits if argmax == "tournament" else None,
        "relu_chunks": list(spec.relu_chunk_sizes) if argmax == "tournament" else None,  # bits per relu table, LSB first
        "glwe_dimensions_allowed": list(spec.glwe_dimensions),  # concrete's parameter search ([] = any)
        "median_server_s_per_query": float(np.median(per_query[timed])),  # server wall time / queries answered
        "median_query_latency_s": float(np.median(result.server_call_seconds[timed])),  # a query waits for its whole call
        "first_server_call_s": float(result.server_call_seconds[0]),
        "first_server_call_queries": int(result.server_call_queries[0]),
        "server_calls_in_medians": len(per_query[timed]),
        "server_workers": server.workers,
        "server_threads_per_batch": server.threads_per_call(-(-num_queries // batch_size)),
        "server_s_per_call": result.server_call_seconds,
        "queries_per_server_call": result.server_call_queries,
        "throughput_queries_per_s": float(len(result.labels) / max(sum(result.server_call_seconds), 1e-9)),
        "exact": exact,
        "ties_in_noisy_counts": int(np.sum(np.sort(result.clear_noisy_sums, axis=1)[:, -1]
                                           == np.sort(result.clear_noisy_sums, axis=1)[:, -2])),
        "bytes_per_holder_per_query": result.bytes["holder_to_server_bytes_per_query"],
        "pad_bytes_per_holder_per_query": result.bytes["owner_to_holder_pad_bytes_per_query"],
        "shell_bytes_per_query": result.bytes["owner_to_server_shell_bytes_per_query"],  # shared pads: owner → server
        "label_bytes_per_query": result.bytes["server_to_owner_bytes_per_query"],
        "evaluation_key_bytes": result.bytes["evaluation_key_bytes"],
        "bootstrap_key_bytes_uncompressed": int(srv.size_of_bootstrap_keys),
        "keyswitch_key_bytes_uncompressed": int(srv.size_of_keyswitch_keys),
        "pbs_count": owner.pbs_count(),
        "pbs_per_query": owner.pbs_count() / batch_size,
        "p_error": owner.p_error(),
        "global_p_error": float(srv.global_p_error),  # per call of batch_size queries
        "global_p_error_per_query": owner.query_p_error(),
        "security_bits": spec.security_level,
        "noise_bound": bound,
        "difference_width_bits": spec.difference_width,
        "compile_s": compile_s,
        "compile_cached": cached,
        "keygen_s": owner.timings["keygen_s"],
        "setup_s": setup_s,
        "holder_encrypt_s_per_query": result.timings["holder_encrypt_s_per_query"],
        "pads_s_total": result.timings["pads_s"],
        "decrypt_s_per_query": result.timings["decrypt_s_per_query"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # KB on Linux
        "machine": machine(),
    }
