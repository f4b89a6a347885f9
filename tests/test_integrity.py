"""Integrity (issue 18 §3): what can be refused cheaply is refused (exact byte lengths in every pad
mode), and a class sum pushed outside the compiled range turns the label into a refusal instead of
a silently wrong label (``CircuitSpec.range_check``, real encrypted execution).

LWE ciphertexts carry no integrity: a small change of a body (a few Δ) is indistinguishable from
noise and moves the label like a dishonest vote would; these tests check only that nothing outside
the compiled range gets through silently.  Integrity in transit is TLS's (README, Security model).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL, make_holders

from speed import messages
from speed.crypto.spec import CircuitSpec, reference_argmax
from speed.errors import CiphertextError, InputError
from speed.owner.keys import LabelsRefusedError
from speed.owner.owner import ModelOwner
from speed.protocol import label_queries, setup_parties


def _with(message, data: bytes):
    return type(message)(**{**message.to_dict(), "data": data})


# -- (b) exact lengths -----------------------------------------------------------------------------


def test_seeded_votes_and_pads_of_any_other_length_are_refused(small_parties):
    """Seeded pads: concrete reads a seeded value and ignores trailing bytes; we do not."""
    owner, server, holders, _ = small_parties
    batch = messages.QueryBatch(batch_id=41, query_ids=(0, 1))
    pads = owner.issue_pads(41, range(3))
    with pytest.raises(CiphertextError, match="exactly"):
        holders[0].receive_pad(_with(pads[0], pads[0].data + bytes(8)))
    for h, p in zip(holders, pads):
        h.receive_pad(p)
    votes = [h.answer(batch, np.array([0, 1]))[0] for h in holders]
    for bad in (votes[0].data + bytes(8), votes[0].data + b"\x01", votes[0].data[:-1]):
        with pytest.raises(CiphertextError, match="exactly"):
            server.aggregate(batch, [_with(votes[0], bad), *votes[1:]])
    assert not server.used_pad_ids and server.batches_done == 0
    server.aggregate(batch, votes)  # the honest votes still go through


def test_encode_mode_pads_and_votes_have_exact_lengths(small_spec, tmp_path):
    owner = ModelOwner(small_spec, cache_dir=tmp_path, pad_mode="encode")
    sizes = owner.circuit_bundle().pad_layout
    assert set(sizes) == {"pad_bytes", "vote_bytes"} and sizes["vote_bytes"] > sizes["pad_bytes"]
    holders = make_holders(small_spec, np.zeros((4, 3), dtype=np.int64))
    server = setup_parties(owner, holders)
    batch = messages.QueryBatch(batch_id=1, query_ids=(0, 1))
    pads = owner.issue_pads(1, range(3))
    assert {len(p.data) for p in pads} == {sizes["pad_bytes"]}
    with pytest.raises(CiphertextError, match="exactly"):
        holders[0].receive_pad(_with(pads[0], pads[0].data + bytes(8)))
    for h, p in zip(holders, pads):
        h.receive_pad(p)
    votes = [h.answer(batch, np.array([0, 1]))[0] for h in holders]
    assert {len(v.data) for v in votes} == {sizes["vote_bytes"]}
    with pytest.raises(CiphertextError, match="exactly"):
        server.aggregate(batch, [_with(votes[0], votes[0].data + bytes(8)), *votes[1:]])
    np.testing.assert_array_equal(owner.decrypt(server.aggregate(batch, votes)), [0, 0])
    bundle = owner.circuit_bundle()
    with pytest.raises(InputError, match="pad and vote sizes"):
        setup_parties_with(bundle, owner, pad_layout={})


def setup_parties_with(bundle, owner, **changes):
    from speed.server import AggregationServer

    return AggregationServer(messages.CircuitBundle(**{**bundle.to_dict(), **changes}), owner.evaluation_keys())


# -- (c) the encrypted range check ---------------------------------------------------------------


#: N·P + 2A = 12: w = 5, class sums in [−2, 10] (window [−2, 14)); 2·K·A = 12 < 2^4 (total window [2, 18))
CHECKED = dict(num_holders=8, num_classes=3, noise_bound=2, batch_size=2)


@pytest.fixture(scope="module", params=["classes", "total"])
def checked(request, cache_dir):
    spec = CircuitSpec(**CHECKED, aggregate_input="sum", range_check=request.param)
    return spec, ModelOwner(spec, cache_dir=cache_dir)


def _batch(owner, spec, batch_id, encoded=None, tamper=None):
    """One batch through shared pads; ``encoded`` (N, B, K) replaces the holders' noisy votes,
    ``tamper(words)`` changes holder 0's 8-byte words.  Returns (labels or the error, clear sums)."""
    table = np.random.default_rng(batch_id).integers(0, spec.num_classes, size=(8, spec.num_holders))
    holders = make_holders(spec, table, seed=batch_id)
    server = setup_parties(owner, holders)
    batch = messages.QueryBatch(batch_id=batch_id, query_ids=(0, 1))
    pads = owner.issue_pads(batch_id, range(spec.num_holders))
    server.receive_shell(owner.pad_shell(batch_id))
    votes, sums = [], 0
    for i, (h, p) in enumerate(zip(holders, pads)):
        h.receive_pad(p)
        values = encoded[i] if encoded is not None else h.noisy_votes(np.eye(spec.num_classes, dtype=np.int64)[table[:2, i]])
        votes.append(h.encrypt(batch_id, values))
        sums = sums + values
    if tamper is not None:
        words = tamper(np.frombuffer(votes[0].data, dtype="<u8").copy(), owner.keys.layout.delta_log2)
        votes[0] = _with(votes[0], words.tobytes())
    encrypted = server.aggregate(batch, votes)
    assert len(encrypted.check) > 0
    try:
        return owner.decrypt(encrypted), sums
    except LabelsRefusedError as exc:
        return exc, sums


def test_range_check_passes_honest_extremes(checked):
    """Class sums at −A and N·P + A, and random noise: never refused, labels exact."""
    spec, owner = checked
    n, b, k, a = spec.num_holders, spec.batch_size, spec.num_classes, spec.noise_bound
    low_total = np.zeros((n, b, k), dtype=np.int64)
    low_total[:, :, 0] = 1
    low_total[0] -= a  # every class at −A around its votes: total N·P − K·A
    high_total = np.zeros((n, b, k), dtype=np.int64)
    high_total[:, 0, 1] = 1
    high_total[:, 1, 2] = 1
    high_total[0] += a  # total N·P + K·A, one class at N·P + A
    for batch_id, encoded in enumerate([low_total, high_total, None, None], start=1):
        labels, sums = _batch(owner, spec, batch_id, encoded)
        assert not isinstance(labels, Exception), labels
        np.testing.assert_array_equal(labels, reference_argmax(sums))


def _add(row: int, klass: int, amount: int):
    def tamper(words, delta_log2):
        words[row * 3 + klass] = np.uint64((int(words[row * 3 + klass]) + (amount << delta_log2)) % 2**64)
        return words
    return tamper


@pytest.mark.parametrize("power", [4, 5])
def test_out_of_range_sum_is_refused(checked, power):
    """A dishonest holder adds +2^k Δ to one class of its message (k = 4: the class sum leaves
    [−A, N·P + A] = [−2, 10] and the window; k = 5: concrete's padding bit): refused, not a
    silently wrong label."""
    spec, owner = checked
    labels, _ = _batch(owner, spec, 10 + power, tamper=_add(0, 1, 2**power))
    assert isinstance(labels, LabelsRefusedError) and "refused" in str(labels)


def _computed_on(sums, words_before, words_after, delta_log2, spec):
    """Class sums the circuit may have computed on after holder 0's words changed: the honest sums
    plus the change in units of Δ, reduced modulo 2^m for m = w + 1 (concrete's padding bit) or the
    whole plaintext space above Δ (it may drop bits above the sums' own width)."""
    change = ((words_after - words_before) + np.uint64(1 << (delta_log2 - 1))) >> np.uint64(delta_log2)
    change = change.astype(np.int64).reshape(sums.shape)
    a = spec.noise_bound
    return [((sums + change % 2**m + a) % 2**m) - a for m in (spec.difference_width + 1, 64 - delta_log2)]


def test_no_bit_flip_is_silently_wrong(checked):
    """Flip each bit of one body word from Δ up to the top: the batch is refused, or its labels are
    numpy's argmax of class sums the circuit could have computed on, all inside the window.  For
    "total" only the flips that move the total by ≥ 2^j (smaller ones are its documented gap)."""
    spec, owner = checked
    delta_log2 = owner.keys.layout.delta_log2
    first = delta_log2 + (spec.total_check_bits if spec.range_check == "total" else 0)
    outcomes = []
    for bit in range(first, 64):
        seen = {}

        def flip(words, d, bit=bit):
            seen["before"] = words.copy()
            words[2] ^= np.uint64(1 << bit)
            seen["after"] = words.copy()
            return words

        labels, sums = _batch(owner, spec, 30 + bit, tamper=flip)
        if isinstance(labels, LabelsRefusedError):
            outcomes.append("refused")
            continue
        candidates = [c for c in _computed_on(sums, seen["before"], seen["after"], delta_log2, spec)
                      if (c + spec.noise_bound >= 0).all() and (c + spec.noise_bound < 2 ** (spec.difference_width - 1)).all()]
        assert any(np.array_equal(labels, reference_argmax(c)) for c in candidates), (bit, labels, sums)
        outcomes.append("exact")
    assert "refused" in outcomes


def test_what_the_total_check_misses(checked):
    """+e on one class and −e on another keeps the total: "classes" refuses it, "total" cannot
    (documented in README and docs/he-engine.md)."""
    spec, owner = checked

    def swap(words, delta_log2):
        return _add(0, 1, -14)(_add(0, 0, 14)(words, delta_log2), delta_log2)

    labels, _ = _batch(owner, spec, 21, tamper=swap)
    if spec.range_check == "classes":
        assert isinstance(labels, LabelsRefusedError)
    else:
        assert not isinstance(labels, Exception)


def test_refused_batch_is_charged_and_stops_the_run(checked):
    """Through the protocol: the ledger hook runs before decryption, so a refused batch is charged;
    the refusal is a one-line CiphertextError (the CLI prints ``error: …``)."""
    spec, owner = checked
    table = np.zeros((8, spec.num_holders), dtype=np.int64)
    holders = make_holders(spec, table, seed=3)
    server = setup_parties(owner, holders)
    original = holders[0].encrypt

    def dishonest(batch_id, encoded):
        vote = original(batch_id, encoded)
        words = _add(0, 2, 16)(np.frombuffer(vote.data, dtype="<u8").copy(), owner.keys.layout.delta_log2)
        return _with(vote, words.tobytes())

    holders[0].encrypt = dishonest
    charged = []
    with pytest.raises(CiphertextError, match="refused") as info:
        label_queries(owner, server, holders, np.arange(8), np.arange(2),
                      before_release=lambda batch, sums: charged.append(batch.batch_id), progress=False)
    assert charged == [0] and "\n" not in str(info.value)


def test_range_check_is_validated():
    with pytest.raises(InputError, match="range_check must be one of"):
        CircuitSpec(**SMALL, range_check="maybe")
    with pytest.raises(InputError, match="use 'classes'"):
        CircuitSpec(**SMALL, range_check="total")  # 2·K·A + 1 = 25 > 2^4
    assert CircuitSpec(**SMALL, range_check="classes").range_check_passed == SMALL["num_classes"]
