"""Seeded pads: a holder's encrypted vote in 24 bytes per value instead of ~10 KB.

With ``compress_input_ciphertexts`` concrete serialises a fresh input ciphertext in
*seeded* form: per value a 16-byte seed (from which the LWE mask is re-derived) and
the 8-byte body b = <a, s> + Δ·m + e (mod 2^64).  Adding a clear integer v to an LWE
ciphertext only changes its body: b' = b + Δ·v (mod 2^64), the textbook homomorphic
plaintext addition, exactly what ``encode`` computes (zero + vote) on the expanded
ciphertext.  Done on the seeded form, the result stays seeded: a valid fresh-looking
encryption of v under the owner's key, 24 bytes per value.

So in ``pad_mode="seeded"`` (the default) the owner issues each holder a seeded
encryption of zero prepared directly as *that holder's input of ``aggregate``*; the
holder adds Δ·v to the bodies (no evaluation keys, no program needed) and sends the
bytes to the server.  No cryptographic primitive is implemented here: keys, encryption,
seeds and mask expansion stay concrete's; we only add a plaintext multiple of Δ to a
body, and the owner verifies the byte layout and Δ against concrete itself at setup
(:func:`discover_layout`), so a change of concrete's format fails loudly, never silently.

Security is that of ``encode``: the server sees one fresh-looking ciphertext per pad;
each pad is single use (its reuse would reveal the difference of two votes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from speed.errors import CiphertextError, InputError

#: How holders encrypt (``CircuitBundle.pad_mode``): "seeded" (one seeded pad per holder), "encode",
#: "shared" (:mod:`speed.crypto.shared`; the default of a circuit with ``aggregate_input="sum"``, and
#: of demo, bench, reproduce and deploy).  Keyless modes' holders never get evaluation keys.
PAD_MODES = ("seeded", "encode", "shared")
KEYLESS_PAD_MODES = ("seeded", "shared")


def aggregate_input_for(pad_mode: str) -> str:
    """The circuit input a pad mode needs: the class sums for shared pads, one encrypted vote per
    holder otherwise (``CircuitSpec.aggregate_input``)."""
    return "sum" if pad_mode == "shared" else "holders"


def check_pad_mode(spec, pad_mode: str) -> None:
    """Refuse a pad mode whose circuit input (:func:`aggregate_input_for`) is not ``spec``'s."""
    wanted = aggregate_input_for(pad_mode)
    if spec.aggregate_input != wanted:
        raise InputError(f"pad mode {pad_mode!r} needs a circuit with aggregate_input={wanted!r}, "
                         f"this one has {spec.aggregate_input!r}")


def pad_mode_for(spec) -> str:
    """The default pad mode of a circuit: "shared" for a class-sum input, else "seeded"."""
    return "shared" if spec.aggregate_input == "sum" else "seeded"


def message_sizes(pad_mode: str, pad_layout: dict) -> dict[str, int]:
    """Exact byte lengths of a pad, a vote and (shared pads) a shell under a bundle's ``pad_layout``:
    every party refuses any other length (concrete would read a value and ignore trailing bytes).
    Seeded: pad and vote are one seeded value; shared: 8 bytes per value for a share and a vote,
    the shell a seeded value; encode: the sizes the owner measured at setup."""
    if pad_mode in KEYLESS_PAD_MODES:
        layout = SeededLayout.from_dict(pad_layout)
        if pad_mode == "seeded":
            return {"pad": layout.size, "vote": layout.size}
        return {"pad": BODY_BYTES * layout.count, "vote": BODY_BYTES * layout.count, "shell": layout.size}
    if not {"pad_bytes", "vote_bytes"} <= set(pad_layout):
        raise InputError("an encode-mode circuit bundle must give the pad and vote sizes (pad_bytes, vote_bytes)")
    return {"pad": int(pad_layout["pad_bytes"]), "vote": int(pad_layout["vote_bytes"])}


def check_size(data, expected: int, what: str) -> None:
    """Refuse ``data`` unless it is bytes of exactly ``expected`` bytes (one-line CiphertextError)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != expected:
        size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise CiphertextError(f"{what} has {size} bytes, expected exactly {expected}")


SEED_BYTES = 16
BODY_BYTES = 8
STRIDE = SEED_BYTES + BODY_BYTES
BODY_DTYPE = np.dtype("<u8")  # an LWE body: one little-endian 64-bit word


@dataclass(frozen=True)
class SeededLayout:
    """Where the bodies are in a serialized seeded pad of ``count`` values, and Δ."""

    size: int  # total serialized length
    first_body: int  # byte offset of value 0's body
    count: int  # values per pad (batch_size · K)
    delta_log2: int  # Δ = 2^delta_log2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SeededLayout":
        return cls(**data)

    def _body_offsets(self) -> np.ndarray:
        """(count, 8) byte offsets of every body in a serialized seeded value."""
        starts = self.first_body + STRIDE * np.arange(self.count)
        return starts[:, None] + np.arange(BODY_BYTES)

    def bodies(self, data: bytes) -> np.ndarray:
        """The ``count`` LWE bodies of a serialized seeded value, as uint64."""
        if len(data) != self.size:
            raise CiphertextError(f"seeded value has {len(data)} bytes, a seeded pad of this run has {self.size}")
        raw = np.frombuffer(data, dtype=np.uint8)[self._body_offsets()]
        return np.ascontiguousarray(raw).view(BODY_DTYPE).reshape(-1)

    def with_bodies(self, data: bytes, bodies: np.ndarray) -> bytes:
        """``data`` with its ``count`` bodies replaced by ``bodies`` (uint64)."""
        if len(data) != self.size:
            raise CiphertextError(f"seeded value has {len(data)} bytes, a seeded pad of this run has {self.size}")
        out = np.frombuffer(data, dtype=np.uint8).copy()
        words = np.ascontiguousarray(np.asarray(bodies, dtype=BODY_DTYPE)).view(np.uint8)
        out[self._body_offsets()] = words.reshape(self.count, BODY_BYTES)
        return out.tobytes()

    def times_delta(self, values: np.ndarray) -> np.ndarray:
        """Δ·v mod 2^64 (uint64) for ``count`` integer values v (negative ones wrap)."""
        flat = np.asarray(values, dtype=np.int64).reshape(-1)
        if flat.size != self.count:
            raise InputError(f"expected {self.count} values for this pad, got {flat.size}")
        return flat.astype(BODY_DTYPE) * np.uint64(1 << self.delta_log2)  # uint64 arithmetic wraps mod 2^64

    def add(self, pad: bytes, values: np.ndarray) -> bytes:
        """The pad with Δ·values added to its bodies (values: int array of ``count`` entries)."""
        shift = self.times_delta(values)
        return self.with_bodies(pad, self.bodies(pad) + shift)


def discover_layout(
    make_pad: Callable[[], bytes], count: int, decrypt_after_add: Callable[[bytes], np.ndarray], max_abs: int
) -> SeededLayout:
    """Find the bodies and Δ from concrete itself, then verify on random values.

    ``make_pad()`` returns a fresh seeded encryption of zeros (``count`` values);
    ``decrypt_after_add(bytes)`` decrypts such a pad after modification (the owner runs
    it through ``encode`` with a clear 0 and decrypts).  Raises CiphertextError if the
    serialization does not look like 24-byte (seed, body) records or the check fails.
    """
    pads = [make_pad() for _ in range(4)]
    size = len(pads[0])
    if any(len(p) != size for p in pads):
        raise CiphertextError("seeded pads of one shape have different lengths: unknown concrete format")
    a = np.frombuffer(pads[0], dtype=np.uint8)
    differ = np.zeros(size, dtype=bool)
    for other in pads[1:]:
        differ |= a != np.frombuffer(other, dtype=np.uint8)
    changed = np.flatnonzero(differ)
    start, end = int(changed.min()), int(changed.max()) + 1
    if end - start != STRIDE * count:
        raise CiphertextError(
            f"seeded pad random region is {end - start} bytes, expected {STRIDE * count}: unknown concrete format"
        )
    first_body = start + SEED_BYTES
    unit = np.zeros(count, dtype=np.int64)
    unit[0] = 1
    for delta_log2 in range(63, 30, -1):
        layout = SeededLayout(size=size, first_body=first_body, count=count, delta_log2=delta_log2)
        got = np.asarray(decrypt_after_add(layout.add(make_pad(), unit))).reshape(-1)
        if np.array_equal(got, unit):
            # Δ must be the largest such power below which 1 still decodes as 1: check 2 and −1 too.
            rng = np.random.default_rng()
            checks = [2 * unit, -unit, rng.integers(-max_abs, max_abs + 1, size=count)]
            if all(
                np.array_equal(np.asarray(decrypt_after_add(layout.add(make_pad(), v))).reshape(-1), v)
                for v in checks
            ):
                return layout
    raise CiphertextError("could not verify the seeded pad layout against concrete: use pad_mode='encode'")
