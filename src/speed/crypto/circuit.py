"""Build, compile and cache the SPEED concrete module.

One ``@fhe.module`` (one keyset) with two functions, wired so that ``encode``'s output
is a valid input of ``aggregate``:

* ``encode(zero: encrypted, vote: clear) -> zero + vote`` — a holder turns a one-time
  encryption of zero ("pad", issued by the owner) into an encryption of its noisy vote,
  with evaluation keys only (concrete-python has no public-key encryption).
* ``aggregate(v_0, ..., v_{N−1}: encrypted) -> label index`` — class sums, then the
  all-pairs argmax of SPEC §5 at depth 2 with exact truncated sign tests:

  1. ``c = Σ_i v_i`` (shape (B, K): B queries per call), leveled.
  2. For every pair i < j: ``d = c_i − c_j`` and ``g_ij = [trunc(d, w − 2) ≥ 0]`` where
     trunc removes the w − 2 low bits of the w-bit two's-complement d.  Truncation is a
     floor, so its sign is exactly d's sign: ``g_ij = 1`` iff ``c_i ≥ c_j``.
  3. ``s_k = Σ_{j>k} g_kj + Σ_{i<k} (1 − g_ik)`` (a clear ±1 matrix product, leveled) counts
     the classes k beats; i beats j (i < j) iff c_i ≥ c_j is a strict total order, so
     exactly one class has ``s_k = K − 1``: the argmax with the lowest index among ties.
  4. ``label = Σ_k k·[s_k = K − 1]``: one encrypted integer per query.

PBS: (w − 1) per pair for the sign test (w − 2 bit extractions + the comparison) plus K
equality tests.  Parameters: concrete's optimizer at ``security_level`` (128-bit default,
concrete's own parameter tables) and ``global_p_error`` (probability that any PBS of one
circuit call is wrong).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from speed.crypto.spec import CircuitSpec

DEFAULT_CACHE_DIR = Path(os.environ.get("SPEED_CACHE_DIR", ".speed-cache"))


def _pair_matrices(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of the pairs i < j, the ±1 tally matrix and the constant of step 3."""
    first, second = np.triu_indices(num_classes, 1)
    tally = np.zeros((len(first), num_classes), dtype=np.int64)
    constant = np.zeros(num_classes, dtype=np.int64)
    for pair, (i, j) in enumerate(zip(first, second)):
        tally[pair, i] += 1  # g_ij = 1: i beats j
        tally[pair, j] -= 1  # j beats i when g_ij = 0: 1 − g_ij
        constant[j] += 1
    return first, second, tally, constant


def argmax_from_sums(spec: CircuitSpec, fhe, class_sums):
    """Traced argmax of class sums (B, K) -> (B,) label indices (steps 2–4 above)."""
    first, second, tally, constant = _pair_matrices(spec.num_classes)
    differences = class_sums[:, first] - class_sums[:, second]
    truncated = fhe.truncate_bit_pattern(differences, lsbs_to_remove=spec.difference_width - 2)
    first_wins = truncated >= 0
    wins = first_wins @ tally + constant
    is_winner = wins == spec.num_classes - 1
    return is_winner @ np.arange(spec.num_classes, dtype=np.int64)


def _aggregate_function(spec: CircuitSpec, fhe):
    """A Python function with one named parameter per holder (concrete reads the signature)."""

    def body(*votes):
        class_sums = votes[0]
        for vote in votes[1:]:
            class_sums = class_sums + vote
        return argmax_from_sums(spec, fhe, class_sums)

    names = ", ".join(f"v{i}" for i in range(spec.num_holders))
    namespace = {"body": body}
    exec(f"def aggregate({names}):\n    return body({names})\n", namespace)  # noqa: S102
    return namespace["aggregate"]


def build_module(spec: CircuitSpec):
    """The (uncompiled) ``fhe.module`` with ``encode`` and ``aggregate`` wired together."""
    from concrete import fhe

    aggregate_fn = _aggregate_function(spec, fhe)
    holders = range(spec.num_holders)

    @fhe.module()
    class SpeedModule:
        @fhe.function({"zero": "encrypted", "vote": "clear"})
        def encode(zero, vote):
            return zero + vote

        aggregate = fhe.function({f"v{i}": "encrypted" for i in holders})(aggregate_fn)

    encode_output = fhe.Output(SpeedModule.encode, 0)
    SpeedModule.composition = fhe.Wired(
        {fhe.Wire(encode_output, fhe.Input(SpeedModule.aggregate, i)) for i in holders}
    )
    return SpeedModule


def inputsets(spec: CircuitSpec, seed: int = 0) -> dict[str, list]:
    """Inputsets reaching every extreme the circuit must handle.

    Concrete sizes every intermediate from the inputset, and values outside the compiled
    bounds give wrong results silently, so: the holder values at ±A around 0 and P, class
    sums at −A and N·P + A, and differences at ±(N·P + 2A).
    """
    rng = np.random.default_rng(seed)
    n, k, b = spec.num_holders, spec.num_classes, spec.batch_size
    p, a = spec.resolution, spec.noise_bound

    def extreme(winner: int) -> np.ndarray:
        votes = np.zeros((n, b, k), dtype=np.int64)
        votes[:, :, winner] = p
        votes[0, :, :] -= a
        votes[0, :, winner] += 2 * a  # winner's sum N·P + A, every other class −A
        return votes

    samples = [extreme(0), extreme(k - 1)]
    # single holders at the share bound ±S, compensated so the sums stay in range
    clipped = np.zeros((n, b, k), dtype=np.int64)
    clipped[0] = -spec.share_bound
    clipped[-1] += spec.share_bound + (p if n > 1 else 0)
    if n > 1:
        samples.append(clipped)
    for _ in range(16):
        labels = rng.integers(0, k, size=(n, b))
        votes = np.eye(k, dtype=np.int64)[labels] * p
        votes += rng.integers(-min(a, 2), min(a, 2) + 1, size=(n, b, k))
        samples.append(votes)
    aggregate_set = [tuple(votes[i] for i in range(n)) for votes in samples]
    zeros = np.zeros((b, k), dtype=np.int64)
    low, high = spec.vote_range
    encode_set = [(zeros, np.full((b, k), value, dtype=np.int64)) for value in (low, high, 0)]
    return {"encode": encode_set, "aggregate": aggregate_set}


def configuration(spec: CircuitSpec, simulate: bool = False):
    from concrete import fhe

    return fhe.Configuration(
        compress_evaluation_keys=True,
        compress_input_ciphertexts=True,
        global_p_error=spec.global_p_error,
        security_level=fhe.compilation.configuration.SecurityLevel(spec.security_level),
        fhe_simulation=simulate,
        fhe_execution=not simulate,
    )


def compile_module(spec: CircuitSpec, simulate: bool = False):
    """Compile the module (≈1 s at N = 20, ~40 s at N = 250 on 2 cores)."""
    return build_module(spec).compile(inputsets(spec), configuration(spec, simulate))


def server_program_path(spec: CircuitSpec, cache_dir: Path | None = None) -> Path:
    """Compiled server program for ``spec``, compiled once and then read from the cache."""
    directory = Path(cache_dir or DEFAULT_CACHE_DIR) / "circuits" / spec.cache_key
    path = directory / "server.zip"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        module = compile_module(spec)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        module.server.save(tmp_path)
        os.replace(tmp_path, path)  # atomic: a killed compile never leaves a half file
    return path


def server_program_bytes(spec: CircuitSpec, cache_dir: Path | None = None) -> bytes:
    return server_program_path(spec, cache_dir).read_bytes()
