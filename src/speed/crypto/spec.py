"""What the encrypted circuit is compiled for, and the exactness bounds that follow.

Encoding (docs/spec.md §3b, §5).  Holder i sends, for every class k of every query in a batch,
the integer ``v_ik = P·e_ik + clip(η_ik, −S, S)`` where e_i is its one-hot vote, P the
lattice resolution (one vote = P steps), η_ik its lattice noise share and S the share
bound (:attr:`CircuitSpec.share_bound`, as large as the circuit's integer width allows).
The server sums ``c_k = Σ_i v_ik`` and computes the argmax of c.

Exactness.  The circuit is compiled for class sums in ``[−A, N·P + A]`` and differences
in ``[−(N·P + 2A), N·P + 2A]``.  Whenever every total noise ``Z_k = Σ_i η_ik`` satisfies
``|Z_k| ≤ A`` the circuit computes the exact argmax of the noisy counts (up to concrete's
PBS error probability).  Two failure events, with different privacy consequences:

* ``histogram_failure``: ``K · Pr[|Z| > A]`` (Z discrete Laplace, scale λP) plus the PBS
  error.  The server's output is still a (randomised) function of the noisy sums only
  (ciphertext sums depend on the votes only through their sum), i.e. post-processing
  of the noisy histogram: it enlarges q, not δ, where ε is a histogram-level bound.
* ``clip_failure``: ``K · N · Pr[|η| > S]`` (η = X − Y, X, Y ~ NB(1/N, p), so
  ``Pr[|η| > S] ≤ 2·Pr[X > S]``): a clipped share changes the noise law, so this
  probability goes to δ as ``(1 + e^ε)·Q·β_clip`` (coupling argument).  S is large, so
  this is astronomically small (≈1e-40 at the demo's settings).

A is chosen as the smallest integer with ``K · Pr[|Z| > A] ≤`` the requested per-query
probability (default 1e-12).

Tie rule: the lowest class index wins among equal maxima (``numpy.argmax``'s rule).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from speed.errors import InputError
from speed.privacy.lattice import lattice_tail_probability, noise_bound_for
from speed.privacy.mechanisms import Skellam

#: Digest of circuit.py and this file, read once when this module is first imported (no later than
#: circuit.py, which imports it); part of every compile-cache key (:attr:`CircuitSpec.cache_key`): a
#: long run keeps the key of the code it runs even if the files change under it, so it never caches a
#: program under the key of other code.
CODE_DIGEST = hashlib.sha256(
    b"".join((Path(__file__).parent / name).read_bytes() for name in ("circuit.py", "spec.py"))
).hexdigest()[:16]

#: Sanity limits on the configuration (docs/spec.md §5 costs grow as K²; docs/he-engine.md has measurements).
MAX_CLASSES = 256
MAX_HOLDERS = 10_000


def share_tail(bound: int, num_holders: int, scale_steps: float) -> float:
    """Upper bound on Pr[|η| > bound] for one holder's lattice share η = X − Y, X,Y ~ NB(1/N, p).

    |X − Y| > A implies X > A or Y > A, so the probability is at most 2·Pr[X > A].
    """
    success = -math.expm1(-1.0 / scale_steps)
    return float(min(1.0, 2.0 * stats.nbinom.sf(bound, 1.0 / num_holders, success)))


def choose_noise_bound(
    num_holders: int, num_classes: int, scale: float, resolution: int, failure_probability: float
) -> int:
    """Smallest A (lattice steps) with ``K · Pr[|Z| > A] ≤ failure_probability`` per query.

    Z is the discrete-Laplace total noise of one class (all N shares, whatever N: the range
    must hold it whatever the coalition); :func:`speed.privacy.lattice.noise_bound_for`.
    """
    del num_holders  # the total noise law does not depend on N
    return noise_bound_for(failure_probability, scale, resolution, coordinates=num_classes)


def signed_width(low: int, high: int) -> int:
    """Bits of a two's-complement integer holding every value of [low, high]."""
    width = 1
    while not (-(2 ** (width - 1)) <= low and high <= 2 ** (width - 1) - 1):
        width += 1
    return width


#: Difference width from which the tournament reads bit 0 through a table of its own by default
#: (:attr:`CircuitSpec.relu_chunk_sizes`).
LONE_LOW_BIT_WIDTH = 10

#: GLWE dimensions concrete's parameter search may use by default (:attr:`CircuitSpec.glwe_dimensions`).
#: Its optimizer ranks parameters by operation count, but a bootstrap is partly limited by memory:
#: every PBS reads a whole Fourier bootstrap key of n·(k + 1)²·L·N·8 bytes (tens of MB, beyond the
#: caches), which grows with the GLWE dimension k at fixed k·N.  Limited to k ≤ 2, concrete picks
#: 1024/2/level 1 instead of 512/4/level 1 for the bit extractions at K = 10, N = 250: smaller keys
#: read per PBS, and faster per query although its own estimate says slower (measurements:
#: docs/he-engine.md).
DEFAULT_GLWE_DIMENSIONS = (1, 2)

#: Homomorphic argmax layouts (crypto/circuit.py).
ARGMAX_LAYOUTS = ("tournament", "all-pairs")

#: What ``aggregate`` takes (crypto/circuit.py): one encrypted vote per holder, summed inside the
#: circuit ("holders": seeded and encode pads), or one encryption of the class sums ("sum": shared
#: pads, the holders' shares summed by the server outside the circuit; crypto/shared.py).
AGGREGATE_INPUTS = ("holders", "sum")

#: Encrypted range check computed next to the label (:attr:`CircuitSpec.range_check`,
#: crypto/circuit.py :func:`~speed.crypto.circuit.range_check_flags`): "off"; "classes" (every class
#: sum c_k inside the window [−A, −A + 2^{w−1}) that keeps every difference exact); "total" (the
#: total Σ_k c_k inside [N·P − K·A, N·P − K·A + 2^j), j the bits of 2·K·A + 1).
RANGE_CHECKS = ("off", "classes", "total")


@dataclass(frozen=True)
class CircuitSpec:
    """Everything the compiled circuit depends on (also the compile-cache key)."""

    num_holders: int
    num_classes: int
    noise_bound: int
    resolution: int = 1
    batch_size: int = 1
    global_p_error: float = 1e-9  # per QUERY: probability that a PBS behind one query's label is wrong
    security_level: int = 128
    argmax: str = "tournament"  # "tournament" (K − 1 matches) or "all-pairs" (K(K − 1)/2 sign tests)
    chunk_bits: int = 3  # tournament: bits per table lookup when selecting the larger sum
    relu_chunks: tuple[int, ...] = ()  # tournament: explicit chunk sizes from the LSB up (sum w − 1); () = the default rule
    glwe_dimensions: tuple[int, ...] = DEFAULT_GLWE_DIMENSIONS  # concrete's parameter search: GLWE dimensions allowed; () = any
    aggregate_input: str = "holders"  # "holders": N encrypted votes in; "sum": one encryption of the class sums
    range_check: str = "off"  # "off", "classes" or "total": a second, encrypted output flags sums outside the range
    rounding_shift: int = 0  # r: the argmax of ⌊c_k / 2^r⌋ (0: of the sums themselves); post-processing

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise InputError(f"number of classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if not 1 <= self.num_holders <= MAX_HOLDERS:
            raise InputError(f"number of holders must be in [1, {MAX_HOLDERS}], got {self.num_holders}")
        if self.resolution < 1 or self.noise_bound < 0 or self.batch_size < 1:
            raise InputError("resolution and batch size must be ≥ 1 and the noise bound ≥ 0")
        if not 0 < self.global_p_error < 1:
            raise InputError(f"global_p_error must be in (0, 1), got {self.global_p_error}")
        if self.argmax not in ARGMAX_LAYOUTS:
            raise InputError(f"argmax must be one of {', '.join(ARGMAX_LAYOUTS)}, got {self.argmax!r}")
        if not 1 <= self.chunk_bits <= 6:
            raise InputError(f"chunk_bits must be in [1, 6], got {self.chunk_bits}")
        object.__setattr__(self, "relu_chunks", tuple(int(c) for c in self.relu_chunks))  # JSON gives a list
        if not all(1 <= c <= 6 for c in self.relu_chunks):
            raise InputError(f"relu chunk sizes must be in [1, 6], got {list(self.relu_chunks)}")
        if self.aggregate_input not in AGGREGATE_INPUTS:
            raise InputError(f"aggregate_input must be one of {', '.join(AGGREGATE_INPUTS)}, got {self.aggregate_input!r}")
        if not isinstance(self.rounding_shift, (int, np.integer)) or not 0 <= self.rounding_shift <= self.difference_width - 2:
            raise InputError(f"rounding shift r must be an integer in [0, {self.difference_width - 2}], "
                             f"got {self.rounding_shift!r}")
        object.__setattr__(self, "rounding_shift", int(self.rounding_shift))
        if self.range_check not in RANGE_CHECKS:
            raise InputError(f"range_check must be one of {', '.join(RANGE_CHECKS)}, got {self.range_check!r}")
        if self.range_check == "total" and self.total_check_bits > self.difference_width - 1:
            raise InputError(f"range_check 'total' needs 2·K·A + 1 = {2 * self.num_classes * self.noise_bound + 1} "
                             f"to fit in the circuit's {self.difference_width - 1} low bits; use 'classes'")
        object.__setattr__(self, "glwe_dimensions", tuple(sorted({int(g) for g in self.glwe_dimensions})))
        if not all(1 <= g <= 6 for g in self.glwe_dimensions):
            raise InputError(f"GLWE dimensions must be in [1, 6], got {list(self.glwe_dimensions)}")

    @property
    def sum_width(self) -> int:
        """Signed bit width of a class sum (holder values share it: they are added)."""
        return signed_width(*self.sum_range)

    @property
    def share_bound(self) -> int:
        """S: holders clip their shares to [−S, S], the largest S the sum's width holds."""
        return max(self.noise_bound, 2 ** (self.sum_width - 1) - 1 - self.resolution)

    @property
    def vote_range(self) -> tuple[int, int]:
        """Range of one holder's encoded value v = P·e + clip(η, −S, S)."""
        return -self.share_bound, self.resolution + self.share_bound

    @property
    def sum_range(self) -> tuple[int, int]:
        """Range of a class sum c_k when no total noise leaves [−A, A]."""
        return -self.noise_bound, self.num_holders * self.resolution + self.noise_bound

    @property
    def difference_bound(self) -> int:
        """Largest |c_i − c_j| inside the compiled range."""
        low, high = self.sum_range
        return high - low

    @property
    def difference_width(self) -> int:
        """Signed bit width of c_i − c_j; the sign test truncates all but its 2 top bits."""
        return signed_width(-self.difference_bound, self.difference_bound)

    @property
    def argmax_difference_bound(self) -> int:
        """Largest |⌊c_i / 2^r⌋ − ⌊c_j / 2^r⌋| inside the compiled range (the difference bound at r = 0)."""
        low, high = self.sum_range
        return (high >> self.rounding_shift) - (low >> self.rounding_shift)

    @property
    def argmax_width(self) -> int:
        """Signed bit width of the differences the argmax extracts: of the rounded sums ⌊c / 2^r⌋
        (``difference_width`` when r = 0)."""
        return signed_width(-self.argmax_difference_bound, self.argmax_difference_bound)

    @property
    def total_check_bits(self) -> int:
        """``range_check="total"``: j, the bits of the total's window [N·P − K·A, N·P − K·A + 2^j)."""
        return max(1, int(2 * self.num_classes * self.noise_bound).bit_length())

    @property
    def range_check_passed(self) -> int:
        """What a query's range-check output decrypts to when it passes (K, 1, or 0 when off)."""
        return {"classes": self.num_classes, "total": 1}.get(self.range_check, 0)

    @property
    def range_check_bootstraps(self) -> int:
        """PBS per query of the range check: "classes" truncates the w − 1 low bits of each of the
        K shifted sums and tests the rest (w PBS per class); "total" does it once on the total
        with j low bits (j + 1 PBS)."""
        if self.range_check == "classes":
            return self.num_classes * self.difference_width
        if self.range_check == "total":
            return self.total_check_bits + 1
        return 0

    @property
    def pair_count(self) -> int:
        return self.num_classes * (self.num_classes - 1) // 2

    @property
    def relu_chunk_sizes(self) -> tuple[int, ...]:
        """Tournament: bits per relu table, least significant first, adding up to w − 1.

        ``relu_chunks`` when given; otherwise chunks of ``chunk_bits`` (the last one shorter), with
        bit 0 in a table of its own when w ≥ :data:`LONE_LOW_BIT_WIDTH`.  concrete extracts bit j at
        the chain's precision (w − j bits) and multiplies it up to a table's input precision (×2^{w−4}
        for bits 0–2 in a 4-bit table), so the table that reads the lowest bits sets how little
        noise every extraction may carry; reading bit 0 alone lets them use decomposition level 1
        at w = 10 (faster per query at K = 10, N = 250; same parameters at w = 11, costlier at
        w = 7: docs/he-engine.md).
        """
        low_bits = self.argmax_width - 1
        if self.relu_chunks:
            if sum(self.relu_chunks) != low_bits:
                raise InputError(f"relu chunk sizes {list(self.relu_chunks)} must add up to the "
                                 f"difference's {low_bits} low bits")
            return self.relu_chunks
        lone = [1] if self.argmax_width >= LONE_LOW_BIT_WIDTH and self.chunk_bits > 1 else []
        rest = low_bits - len(lone)
        tail = [rest % self.chunk_bits] if rest % self.chunk_bits else []
        return tuple(lone + [self.chunk_bits] * (rest // self.chunk_bits) + tail)

    @property
    def relu_chunk_bounds(self) -> list[tuple[int, int]]:
        """Tournament: the (start, stop) bit ranges of d's w − 1 low bits, one relu table each."""
        sizes = self.relu_chunk_sizes
        starts = np.cumsum([0, *sizes[:-1]])
        return [(int(start), int(start) + size) for start, size in zip(starts, sizes)]

    @property
    def bootstraps_per_query(self) -> int:
        """PBS per query of the compiled argmax (concrete's count; tests/test_argmax.py checks it).

        Tournament: every match extracts the w bits of its difference, every match but the final
        adds one relu table per chunk, and carrying the winner's index costs
        :func:`tournament_index_tables` tables: ``(K − 1)·w + (K − 2)·chunks + index tables``
        (129 at K = 10, N = 250).  All-pairs: ``K(K − 1)/2·(w − 1) + K`` (415).  w is
        :attr:`argmax_width`; plus :attr:`rounding_bootstraps` and :attr:`range_check_bootstraps`.
        """
        k, w = self.num_classes, self.argmax_width
        extra = self.rounding_bootstraps + self.range_check_bootstraps
        if self.argmax == "all-pairs":
            return self.pair_count * (w - 1) + k + extra
        return (k - 1) * w + (k - 2) * len(self.relu_chunk_bounds) + tournament_index_tables(k) + extra

    @property
    def rounding_bootstraps(self) -> int:
        """PBS per query of the rounding (r > 0): an exact truncation of r bits (r PBS) and one
        table at the remaining precision (⌊c / 2^r⌋) per class."""
        return self.num_classes * (self.rounding_shift + 1) if self.rounding_shift else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CircuitSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def cache_key(self) -> str:
        """Key for the compile cache: the spec and the source of the circuit code (any change
        to ``crypto/circuit.py`` or this file recompiles)."""
        payload = json.dumps({"code": CODE_DIGEST, **self.to_dict()}, sort_keys=True).encode()
        digest = hashlib.sha256(payload).hexdigest()[:16]
        return f"K{self.num_classes}-N{self.num_holders}-P{self.resolution}-A{self.noise_bound}-B{self.batch_size}-{digest}"

    @property
    def call_p_error(self) -> float:
        """concrete's ``global_p_error`` for one call of B queries: ``1 − (1 − p)^B``, p = global_p_error.

        The B queries of a call are B identical, independent rows of bootstraps (no bootstrap mixes
        two queries), so if the call fails with probability ``1 − (1 − p)^B`` each query's label is
        wrong with probability p (:func:`per_query_p_error`).  Budgeting the whole call at p instead
        would make each query's failure probability about p / B, paid for by the whole call (at
        K = 10, N = 250, B = 10 concrete picks the same parameters under both budgets: docs/he-engine.md).
        """
        return float(-math.expm1(self.batch_size * math.log1p(-self.global_p_error)))

    def per_query_p_error(self, call_p_error: float) -> float:
        """Per-query PBS failure probability of a compiled call whose ``global_p_error`` is ``call_p_error``."""
        return float(-math.expm1(math.log1p(-call_p_error) / self.batch_size))

    def histogram_failure_probability(self, scale: float) -> float:
        """Per query: total noise outside [−A, A] or a PBS error (post-processing: enlarges q)."""
        tail = self.num_classes * lattice_tail_probability(self.noise_bound, scale, self.resolution)
        return min(1.0, tail + self.global_p_error)

    def clip_failure_probability(self, scale: float) -> float:
        """Per query: some holder's share clipped to ±S (changes the noise law: goes to δ)."""
        tail = share_tail(self.share_bound, self.num_holders, scale * self.resolution)
        return float(min(1.0, self.num_classes * self.num_holders * tail))


def tournament_index_tables(num_classes: int) -> int:
    """Tables (PBS) the tournament spends per query on carrying the winner's index.

    Walks the public bracket (neighbours paired, an odd last entry passes through) with each
    index bit of each entry either known (the same for every class that can be there) or
    encrypted: a match costs nothing for a bit both sides know (equal: that value; different:
    the sign bit or its complement), one table when one side's bit is encrypted, one table when
    both are (:func:`speed.crypto.circuit._select_index_bit`).  K = 10: 7 tables (16 when every bit
    of every match went through a table).
    """
    index_bits = max(1, int(num_classes - 1).bit_length())
    entries = [[(c >> j) & 1 for j in range(index_bits)] for c in range(num_classes)]  # None = encrypted
    tables = 0
    while len(entries) > 1:
        winners = []
        for left, right in zip(entries[0::2], entries[1::2]):
            tables += sum(1 for a, b in zip(left, right) if a is None or b is None)
            winners.append([a if a == b and a is not None else None for a, b in zip(left, right)])
        entries = winners + ([entries[-1]] if len(entries) % 2 else [])
    return tables


def reference_argmax(counts: np.ndarray, rounding_shift: int = 0) -> np.ndarray:
    """The argmax the circuit computes, in clear: of ⌊counts / 2^r⌋ (r = ``rounding_shift``,
    ``CircuitSpec.rounding_shift``; a floor, also for negative counts), lowest index wins ties.
    counts: (..., K)."""
    counts = np.asarray(counts)
    if rounding_shift:
        counts = np.floor_divide(counts, 2**int(rounding_shift))
    return np.argmax(counts, axis=-1)


def skellam_noise_bound(sigma: float, num_classes: int, failure_probability: float = 1e-12) -> int:
    """A (resolution 1) for distributed Skellam noise of standard deviation σ per class count: the
    smallest bound with ``K·Pr[|Z| > A] ≤ failure_probability`` per query, from
    :meth:`speed.privacy.mechanisms.Skellam.noise_bound` (exact PMF; 469 at σ = 63, K = 10)."""
    return int(Skellam(sigma).noise_bound(failure_probability, num_classes))
