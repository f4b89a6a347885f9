"""Shared pads: one encryption of zero per value, its body split among the N holders.

In ``pad_mode="shared"`` the owner makes, per batch, ONE fresh seeded encryption of zero of the
class-sum input of ``aggregate`` (``aggregate_input="sum"``): per value a seed and a body
b = <a, s> + e (mod 2^64).  It splits every body into N additive shares,
r_1 … r_{N−1} uniform (the OS CSPRNG, :func:`secrets.token_bytes`) and r_N = b − Σ r_i, sends
holder i its share r_i (8 bytes per value, sealed like any pad) and the server the *shell*: the
seeds with the bodies zeroed.  Holder i sends m_i = r_i + Δ·v_i (mod 2^64), 8 bytes per value.
The server adds the N messages and writes Σ m_i = b + Δ·Σ v_i into the shell's bodies: a seeded
encryption of the class sums Σ v_i with the noise of ONE fresh encryption, which ``aggregate``
takes as its single input.

Why: the server then expands K·B seeds per call instead of N·K·B (software AES, 11.7 % of a call
at N = 250) and converts one argument instead of N, and its cost no longer grows with N beyond the
difference width.  Nothing cryptographic is implemented here: keys, encryption, seeds, mask
expansion and bootstrapping stay concrete's; the shares are an additive secret sharing of a body
with randomness from the OS, and the layout and Δ are checked against concrete at setup
(:func:`speed.crypto.seeded.discover_layout`).

Security (honest-but-curious server, the owner not colluding with it, as for every pad mode).
Given the shell, the N messages are uniform subject to Σ m_i = b + Δ·Σ v_i: the server's view
is a fresh LWE encryption of the class sums plus uniform noise, so it learns no single vote
(each is hidden by a one-time additive mask) and not the sums (LWE).  Holders colluding with it
know their own shares; the rest still sum to an LWE encryption of the other holders' votes.
Each share is single use (reusing one reveals Δ·(v − v') of that holder), and so is each shell.
Every holder must answer: a missing share leaves the body unusable (the server refuses).

Holders that do not answer (the Flower deployment, :func:`stand_in_shares`).  The owner then
makes a *second* fresh encryption of zero (mask a', body b') for the batch and gives the server
its shell plus stand-in shares, one per missing slot, that sum to b' − Σ_{answered} r_i.  The
server's N messages then sum to b' + Δ·Σ_{answered} v_i under the new shell; the old shell is
discarded.  The owner never reveals a missing holder's own share r_h, so a vote of that holder
arriving late (m_h = r_h + Δ·v_h) stays hidden: what the server can form from it,
(b' − b) − Δ·v_h, is an LWE encryption under the mask a' − a.
"""

from __future__ import annotations

import secrets

import numpy as np

from speed.crypto.seeded import BODY_DTYPE, SeededLayout
from speed.errors import CiphertextError, InputError

SHARE_DTYPE = BODY_DTYPE  # a share and a holder's message: one 64-bit word per value, like a body


def split_pad(layout: SeededLayout, pad: bytes, num_shares: int) -> tuple[bytes, list[np.ndarray]]:
    """(shell, shares): the pad with its bodies zeroed, and ``num_shares`` uint64 arrays summing
    to the bodies mod 2^64 (all but the last uniform from the OS CSPRNG)."""
    if num_shares < 1:
        raise InputError(f"a pad is split among at least one holder, got {num_shares}")
    bodies = layout.bodies(pad)
    random = np.frombuffer(secrets.token_bytes(SHARE_DTYPE.itemsize * layout.count * (num_shares - 1)),
                           dtype=SHARE_DTYPE).reshape(num_shares - 1, layout.count)
    last = bodies - sum_shares(random)  # uint64 arithmetic wraps mod 2^64
    shares = [row.copy() for row in random] + [last]
    return layout.with_bodies(pad, np.zeros(layout.count, dtype=SHARE_DTYPE)), shares


def sum_shares(shares) -> np.ndarray:
    """Σ shares (mod 2^64), per value: rows of uint64 words (shares, messages or bodies)."""
    return np.add.reduce(np.asarray(shares, dtype=SHARE_DTYPE), axis=0, dtype=SHARE_DTYPE)


def stand_in_shares(layout: SeededLayout, fresh_pad: bytes, answered_sum: np.ndarray,
                    num_missing: int) -> tuple[bytes, list[np.ndarray]]:
    """(shell, stand-in shares) for a batch whose holders did not all answer: ``fresh_pad`` is a
    new encryption of zero (bodies b'), ``answered_sum`` the sum of the answering holders' shares
    of the batch's first pad.  The ``num_missing`` stand-in shares sum to b' − answered_sum, so the
    server's N messages sum to b' + Δ·Σ v over the answering holders (module docstring)."""
    if num_missing < 1:
        raise InputError(f"stand-in shares are for at least one missing holder, got {num_missing}")
    answered_sum = np.asarray(answered_sum, dtype=SHARE_DTYPE)
    if answered_sum.shape != (layout.count,):
        raise InputError(f"the answering holders' shares sum to {answered_sum.shape} values, expected {layout.count}")
    shell, shares = split_pad(layout, fresh_pad, num_missing)
    shares[0] = shares[0] - answered_sum  # uint64: mod 2^64
    return shell, shares


def share_from_bytes(layout: SeededLayout, data: bytes, what: str) -> np.ndarray:
    """A share or a holder's message (8 bytes per value) as uint64, refusing a wrong length."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != SHARE_DTYPE.itemsize * layout.count:
        size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise CiphertextError(f"{what} has {size} bytes, expected {SHARE_DTYPE.itemsize * layout.count}")
    return np.frombuffer(bytes(data), dtype=SHARE_DTYPE)


def add_votes(layout: SeededLayout, share: np.ndarray, values: np.ndarray) -> bytes:
    """A holder's message m = r + Δ·v (mod 2^64) for its share r and encoded values v."""
    return (share + layout.times_delta(values)).tobytes()


def combine(layout: SeededLayout, shell: bytes, messages: list[np.ndarray]) -> bytes:
    """The seeded encryption of the class sums: the shell with bodies Σ m_i (mod 2^64)."""
    return layout.with_bodies(shell, sum_shares(messages))
