"""Build, compile and cache the SPEED concrete module.

One ``@fhe.module`` (one keyset) with two functions, wired so that ``encode``'s output
is a valid input of ``aggregate``:

* ``encode(zero: encrypted, vote: clear) -> zero + vote`` — a holder turns a one-time
  encryption of zero ("pad", issued by the owner) into an encryption of its noisy vote,
  with evaluation keys only (concrete-python has no public-key encryption).
* ``aggregate(v_0, ..., v_{N−1}: encrypted) -> label index`` — class sums
  ``c = Σ_i v_i`` (shape (B, K): B queries per call, leveled), then an exact argmax (lowest
  index wins ties, as :func:`speed.crypto.spec.reference_argmax`) in one of two layouts
  (``CircuitSpec.argmax``):

  - ``"tournament"`` (default, :func:`tournament_argmax`): K − 1 knockout matches in
    ⌈log2 K⌉ rounds; each extracts the bits of ``c_a − c_b`` once (sign and the chunks of
    relu(c_a − c_b) that select the larger sum) and carries the winner's index.  129 PBS per
    query at K = 10, N = 250.
  - ``"all-pairs"`` (:func:`all_pairs_argmax`, docs/spec.md §5 at depth 2): for every pair i < j,
    ``g_ij = [trunc(c_i − c_j, w − 2) ≥ 0]`` (truncation is a floor, so its sign is exactly
    the difference's), ``s_k = Σ_{j>k} g_kj + Σ_{i<k} (1 − g_ik)`` (clear ±1 matrix, leveled),
    ``label = Σ_k k·[s_k = K − 1]``.  (w − 1) PBS per pair plus K equality tests: 415 PBS per
    query at K = 10, N = 250.

Parameters: concrete's optimizer at ``security_level`` (128-bit default, concrete's own
parameter tables) and ``global_p_error`` per query (a call of B queries is compiled for
``CircuitSpec.call_p_error`` = 1 − (1 − p)^B: every query keeps failure probability p).  The measured trade-offs
(time, key sizes) are in docs/he-engine.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speed.crypto.spec import CircuitSpec
from speed.fsutil import atomic_path, default_cache_dir



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


def all_pairs_argmax(spec: CircuitSpec, fhe, class_sums):
    """Traced all-pairs argmax of class sums (B, K) -> (B,) label indices (module docstring)."""
    first, second, tally, constant = _pair_matrices(spec.num_classes)
    differences = class_sums[:, first] - class_sums[:, second]
    truncated = fhe.truncate_bit_pattern(differences, lsbs_to_remove=spec.argmax_width - 2)
    first_wins = truncated >= 0
    wins = first_wins @ tally + constant
    is_winner = wins == spec.num_classes - 1
    return is_winner @ np.arange(spec.num_classes, dtype=np.int64)


def tournament_argmax(spec: CircuitSpec, fhe, class_sums):
    """Traced knockout argmax of class sums (B, K) -> (B,) label indices.

    Each round pairs neighbours (0, 1), (2, 3), … (an odd last entry passes through), so the
    left side of every match holds the lower class indices.  One match of sums a (left) and
    b (right), d = a − b of width w:

    * the bits of d (two's complement) are extracted once, from the least significant up
      (w PBS, exact); the sign bit s = bit_{w−1}, and ``left_wins = 1 − s`` ⇔ a ≥ b, so ties
      go left: the lowest index among equal maxima wins, as :func:`reference_argmax`;
    * the winner's sum is ``max(a, b) = b + relu(d)`` with ``relu(d) = Σ_c T_c[chunk_c + 2^{m_c}·s]``,
      chunk_c being the c-th group of m_c bits among d's w − 1 low bits, from bit start_c up
      (``spec.relu_chunk_bounds``: m = ``chunk_bits`` = 3 each by default, or the sizes of
      ``relu_chunks``) and T_c a table that outputs ``2^{start_c}·chunk_c`` when s = 0 and 0
      otherwise (one PBS per chunk);
    * the winner's index is carried as ⌈log2 K⌉ bits, ``s ? bit_b : bit_a``, each clear while
      the public bracket fixes it and encrypted otherwise; a table only where a side's bit is
      encrypted (:func:`_select_index_bit`); the label is ``Σ_j 2^j·bit_j``.

    Every table input packs extracted bits with small weights, and the tables output values
    already shifted: large clear multipliers on bootstrap outputs amplify their noise, and
    concrete then chooses larger parameters (measured: docs/he-engine.md).  One such multiplier
    remains: concrete extracts bit j at the chain's precision (w − j bits) and scales it up to a
    table's input precision, so the tables that read d's lowest bits ask for the least noisy
    extractions (bit 0 alone in a 1-bit chunk brings the extractions to decomposition level 1,
    at the price of one more table per match: docs/he-engine.md).

    K − 1 matches in ⌈log2 K⌉ rounds, w PBS each plus one per relu chunk (not in the final) and
    a few index tables (``spec.bootstraps_per_query`` counts them exactly), against K(K − 1)/2
    sign tests of w − 1 PBS for the all-pairs layout.
    """
    width = spec.argmax_width
    chunks = spec.relu_chunk_bounds
    k = spec.num_classes
    index_bits = max(1, int(k - 1).bit_length())
    keep_chunk = {(start, stop): fhe.LookupTable([u << start for u in range(2 ** (stop - start))] + [0] * 2 ** (stop - start))
                  for start, stop in chunks}
    values = class_sums
    # the winner's index, bit by bit and column by column: a clear int while every candidate for
    # that column agrees on the bit (the bracket is public), else an encrypted (B, 1) tensor
    index = [[(c >> j) & 1 for c in range(k)] for j in range(index_bits)]
    while True:
        m = values.shape[1]
        half = m // 2
        left, right = np.arange(0, 2 * half, 2), np.arange(1, 2 * half, 2)
        difference = values[:, left] - values[:, right]
        # every bit of d from one call: slicing fhe.bits(d)[start:stop] separately made concrete
        # extract the top chunk's bits a second time (2 more PBS per match with a relu)
        bits = [fhe.bits(difference)[j] for j in range(width)]
        sign = bits[width - 1]  # 1 iff a < b: the right side wins
        index = [[_select_index_bit(fhe, column[2 * p], column[2 * p + 1], sign[:, [p]]) for p in range(half)]
                 + ([column[m - 1]] if m % 2 else []) for column in index]
        if m == 2:
            label = sum(bit[0] * 2**j for j, bit in enumerate(index))
            return label[:, 0]
        relu = None
        for start, stop in chunks:
            chunk_value = bits[start]
            for j in range(start + 1, stop):
                chunk_value = chunk_value + bits[j] * 2 ** (j - start)
            part = keep_chunk[start, stop][chunk_value + sign * 2 ** (stop - start)]
            relu = part if relu is None else relu + part
        winner_value = values[:, right] + relu
        if m % 2:
            winner_value = np.concatenate((winner_value, values[:, [m - 1]]), axis=1)
        values = winner_value


def _select_index_bit(fhe, left, right, sign):
    """One bit of a match winner's index, ``sign ? right : left``, with as few PBS as the bits allow.

    ``left`` / ``right``: a clear int (the bit is the same for every class that can reach that
    side) or an encrypted (B, 1) bit.  Clear and equal: no PBS; clear and different: ``sign`` or
    ``1 − sign`` (leveled); one side clear: a table on ``bit + 2·sign`` (2-bit input); both
    encrypted: a table on ``left + 2·right + 4·sign`` (3-bit input).
    """
    if isinstance(left, int) and isinstance(right, int):
        return left if left == right else (sign if right else 1 - sign)
    if isinstance(left, int):  # input right + 2·sign
        return fhe.LookupTable([left, left, 0, 1])[right + 2 * sign]
    if isinstance(right, int):  # input left + 2·sign
        return fhe.LookupTable([0, 1, right, right])[left + 2 * sign]
    return fhe.LookupTable([0, 1, 0, 1, 0, 0, 1, 1])[left + 2 * right + 4 * sign]


def rounded_sums(spec: CircuitSpec, fhe, class_sums):
    """Traced ⌊c / 2^r⌋ of class sums (B, K), r = ``spec.rounding_shift``: an exact truncation of
    the r low bits (a floor, r PBS per value) and a table at the remaining w − r bits (concrete
    reads a truncated value at its reduced precision) that divides by 2^r.  Rounding the noisy
    sums is post-processing of the noisy histogram: no privacy cost."""
    r = spec.rounding_shift
    low, high = spec.sum_range
    shift = -(low >> r) * 2**r  # make every value non-negative: the table's domain starts at 0
    truncated = fhe.truncate_bit_pattern(class_sums + shift, lsbs_to_remove=r)
    return fhe.univariate(lambda x: (x >> r) + (low >> r))(truncated)


def argmax_from_sums(spec: CircuitSpec, fhe, class_sums):
    """Traced argmax of class sums (B, K) -> (B,) label indices, in the spec's layout (of the
    rounded sums ⌊c / 2^r⌋ when ``spec.rounding_shift`` > 0)."""
    if spec.rounding_shift:
        class_sums = rounded_sums(spec, fhe, class_sums)
    if spec.argmax == "all-pairs":
        return all_pairs_argmax(spec, fhe, class_sums)
    return tournament_argmax(spec, fhe, class_sums)


def range_check_flags(spec: CircuitSpec, fhe, class_sums):
    """Traced range check of class sums (B, K) -> (B,) encrypted counts of checks passed: K for
    ``"classes"``, 1 for ``"total"`` (:attr:`CircuitSpec.range_check_passed`); the owner refuses a
    query whose count decrypts to anything else.

    Values outside the compiled range give wrong results silently, so the check reads only the top
    bits of a shifted value, in the w-bit plaintext space the sums live in: ``u = x − low`` lies in
    ``[0, 2^j)`` iff ``truncate_bit_pattern(u, j)`` (a floor to a multiple of 2^j, exact) is 0.  The
    hint makes concrete build the test's table over all w bits (it would otherwise size it from the
    inputset, where the truncation is always 0, and drop the test).  A passed test is a 1, not a 0:
    concrete keeps one padding bit above the w bits, and a bootstrap whose input has it set returns
    the table's value negated, so a value pushed there gives 0 or −1, never a pass.

    * ``"classes"``: ``u_k = c_k + A`` with j = w − 1, per class: every c_k in [−A, −A + 2^{w−1}),
      which holds [−A, N·P + A] and keeps every difference the argmax takes inside w signed bits,
      so a query that passes has the exact argmax of the sums it computed on.
    * ``"total"``: ``u = Σ_k c_k − (N·P − K·A)`` with j = :attr:`CircuitSpec.total_check_bits`: the
      total of the noisy sums within N·P ± K·A (and the 2^j − 2·K·A − 1 above).  One value per
      query, so cheap; a change that keeps the total (+e on one class, −e on another) passes.
    """
    width = spec.difference_width
    if spec.range_check == "classes":
        high = fhe.truncate_bit_pattern(class_sums + spec.noise_bound, lsbs_to_remove=width - 1)
        return np.sum(fhe.hint(high, bit_width=width) == 0, axis=1)
    low = spec.num_holders * spec.resolution - spec.num_classes * spec.noise_bound
    high = fhe.truncate_bit_pattern(np.sum(class_sums, axis=1) - low, lsbs_to_remove=spec.total_check_bits)
    return fhe.hint(high, bit_width=width) == 0


def _outputs(spec: CircuitSpec, fhe, class_sums):
    """``aggregate``'s outputs: the labels, and with a range check (label, flags)."""
    label = argmax_from_sums(spec, fhe, class_sums)
    if spec.range_check == "off":
        return label
    return label, range_check_flags(spec, fhe, class_sums)


def _aggregate_function(spec: CircuitSpec, fhe):
    """A Python function with one named parameter per holder (concrete reads the signature), or,
    for ``aggregate_input="sum"``, one parameter: the encrypted class sums (B, K)."""
    if spec.aggregate_input == "sum":

        def aggregate(v0):  # v0: the class sums Σ_i v_i, shape (B, K)
            return _outputs(spec, fhe, v0)

        return aggregate

    def body(*votes):
        class_sums = votes[0]
        for vote in votes[1:]:
            class_sums = class_sums + vote
        return _outputs(spec, fhe, class_sums)

    names = ", ".join(f"v{i}" for i in range(spec.num_holders))
    namespace = {"body": body}
    exec(f"def aggregate({names}):\n    return body({names})\n", namespace)  # noqa: S102
    return namespace["aggregate"]


def build_module(spec: CircuitSpec):
    """The (uncompiled) ``fhe.module`` with ``encode`` and ``aggregate`` wired together."""
    from concrete import fhe

    aggregate_fn = _aggregate_function(spec, fhe)
    holders = range(aggregate_arity(spec))

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


def aggregate_arity(spec: CircuitSpec) -> int:
    """Encrypted arguments of ``aggregate``: one per holder, or one (the class sums)."""
    return 1 if spec.aggregate_input == "sum" else spec.num_holders


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
    if spec.range_check == "total":  # the total's extremes N·P ± K·A: every class at ±A around its votes
        for sign in (1, -1):
            votes = np.zeros((n, b, k), dtype=np.int64)
            votes[:, :, 0] = p
            votes[0] += sign * a
            samples.append(votes)
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
    if spec.aggregate_input == "sum":  # the same class sums, handed over already summed
        aggregate_set = [votes.sum(axis=0) for votes in samples]
    else:
        aggregate_set = [tuple(votes[i] for i in range(n)) for votes in samples]
    zeros = np.zeros((b, k), dtype=np.int64)
    low, high = spec.vote_range
    encode_set = [(zeros, np.full((b, k), value, dtype=np.int64)) for value in (low, high, 0)]
    return {"encode": encode_set, "aggregate": aggregate_set}


def configuration(spec: CircuitSpec, simulate: bool = False):
    """concrete's configuration for ``spec``: compressed keys and inputs, the per-call error budget,
    the security level, and the GLWE dimensions its parameter search may use
    (``spec.glwe_dimensions``, :data:`speed.crypto.spec.DEFAULT_GLWE_DIMENSIONS`)."""
    from concrete import fhe
    from concrete.compiler import RangeRestriction

    restriction = None
    if spec.glwe_dimensions:
        restriction = RangeRestriction()
        for dimension in spec.glwe_dimensions:
            restriction.add_available_glwe_dimension(dimension)
    return fhe.Configuration(
        range_restriction=restriction,
        compress_evaluation_keys=True,
        compress_input_ciphertexts=True,
        global_p_error=spec.call_p_error,
        security_level=fhe.compilation.configuration.SecurityLevel(spec.security_level),
        fhe_simulation=simulate,
        fhe_execution=not simulate,
    )


def compile_module(spec: CircuitSpec, simulate: bool = False):
    """Compile the module (≈1 s at N = 20, ~40 s at N = 250 on 2 cores)."""
    return build_module(spec).compile(inputsets(spec), configuration(spec, simulate))


def server_program_path(spec: CircuitSpec, cache_dir: Path | None = None) -> Path:
    """Compiled server program for ``spec``, compiled once and then read from the cache."""
    directory = Path(cache_dir or default_cache_dir()) / "circuits" / spec.cache_key
    path = directory / "server.zip"
    if not path.exists():
        module = compile_module(spec)
        with atomic_path(path, suffix=".zip") as tmp:  # a killed compile never leaves a half file
            module.server.save(tmp)  # (it strips a ".zip" and adds it back: the suffix keeps the name)
    return path


def server_program_bytes(spec: CircuitSpec, cache_dir: Path | None = None) -> bytes:
    return server_program_path(spec, cache_dir).read_bytes()
