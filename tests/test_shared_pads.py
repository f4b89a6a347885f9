"""Shared pads (``pad_mode="shared"``): one encryption of zero per batch whose bodies are split
among the holders; the server adds the holders' 8-byte shares into the pad's shell and the circuit
takes one encryption of the class sums (speed.crypto.shared)."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from conftest import SMALL, make_holders
from test_key_model import _secret_key_windows

from speed import messages
from speed.crypto import shared
from speed.crypto.seeded import SeededLayout
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError, InputError, PadReuseError
from speed.owner.owner import ModelOwner
from speed.protocol import label_queries, setup_parties


@pytest.fixture(scope="module")
def shared_spec() -> CircuitSpec:
    return CircuitSpec(**SMALL, aggregate_input="sum")


@pytest.fixture(scope="module")
def shared_owner(shared_spec, cache_dir) -> ModelOwner:
    return ModelOwner(shared_spec, cache_dir=cache_dir)  # the default pad mode of a class-sum circuit


@pytest.fixture()
def shared_parties(shared_owner, shared_spec):
    table = np.random.default_rng(11).integers(0, shared_spec.num_classes, size=(32, shared_spec.num_holders))
    holders = make_holders(shared_spec, table)
    return shared_owner, setup_parties(shared_owner, holders), holders


def _issue(owner, server, holders, batch_id, query_ids):
    batch = messages.QueryBatch(batch_id=batch_id, query_ids=tuple(query_ids))
    pads = owner.issue_pads(batch_id, range(len(holders)))
    shell = owner.pad_shell(batch_id)
    server.receive_shell(shell)
    for h, p in zip(holders, pads):
        h.receive_pad(p)
    answers = [h.answer(batch, np.asarray(query_ids)) for h in holders]
    return batch, shell, pads, [v for v, _ in answers], sum(e for _, e in answers)


def test_split_shares_add_up_to_the_bodies_and_the_shell_drops_them():
    layout = SeededLayout(size=7 + 24 * 5 + 3, first_body=7 + 16, count=5, delta_log2=50)
    pad = secrets.token_bytes(layout.size)
    shell, shares = shared.split_pad(layout, pad, 4)
    bodies = layout.bodies(pad)
    np.testing.assert_array_equal(np.add.reduce(np.stack(shares), axis=0, dtype=np.uint64), bodies)
    assert not layout.bodies(shell).any()
    # everything but the bodies (header, seeds, trailer) is the pad's
    mask = np.ones(layout.size, dtype=bool)
    mask[(layout.first_body + 24 * np.arange(5))[:, None] + np.arange(8)] = False
    assert np.array_equal(np.frombuffer(pad, np.uint8)[mask], np.frombuffer(shell, np.uint8)[mask])
    assert len({s.tobytes() for s in shares}) == 4  # random shares, none equal to another
    # m_i = r_i + Δ·v_i: their sum is the body plus Δ·Σv (mod 2^64), negative values included
    values = np.array([[3, -2, 0, 1, -9], [0, 1, 1, 0, 2], [-1, 0, 0, 0, 0], [0, 0, 5, 0, 0]])
    sent = [np.frombuffer(shared.add_votes(layout, r, v), np.uint64) for r, v in zip(shares, values)]
    combined = layout.bodies(shared.combine(layout, shell, sent))
    expected = bodies + values.sum(axis=0).astype(np.uint64) * np.uint64(1 << 50)
    np.testing.assert_array_equal(combined, expected)
    with pytest.raises(CiphertextError, match="bytes"):
        layout.bodies(pad[:-1])
    with pytest.raises(CiphertextError, match="expected 40"):
        shared.share_from_bytes(layout, b"\0" * 39, "vote")


def test_shared_labels_are_exact_small_and_keyless(shared_parties, shared_spec):
    owner, server, holders = shared_parties
    assert owner.keys.pad_mode == "shared" and server.pad_mode == "shared"
    assert all(not hasattr(h, "_evaluation_keys") for h in holders)  # holders never get the keys
    received: list = []

    class Spy:  # every message the server receives
        workers = server.workers

        def receive_shell(self, shell):
            received.append(shell)
            server.receive_shell(shell)

        def aggregate_many(self, items):
            received.extend(vote for _, votes in items for vote in votes)
            return server.aggregate_many(items)

    result = label_queries(owner, Spy(), holders, np.arange(32), np.arange(8), progress=False)
    assert (result.labels == result.clear_noisy_argmax).all()
    assert {type(m) for m in received} == {messages.PadShell, messages.EncryptedVote}
    for window in _secret_key_windows(owner):
        assert all(window not in m.data for m in received)
    values = shared_spec.batch_size * shared_spec.num_classes
    # 8 bytes per value from each holder; the owner's shell (seeds) once per batch
    assert result.bytes["holder_to_server_bytes_per_query"] * shared_spec.batch_size == 8 * values
    assert result.bytes["owner_to_server_shell_bytes_per_query"] * shared_spec.batch_size == owner.keys.layout.size
    assert server._shells == {} and server.batches_done == 4


def test_tied_counts_follow_numpy(shared_parties):
    owner, server, holders = shared_parties
    for h in holders:
        h.predict = lambda q: np.asarray(q) % 2  # every teacher agrees: many ties after noise
    result = label_queries(owner, server, holders, np.arange(8), np.arange(8), progress=False)
    assert (result.labels == result.clear_noisy_argmax).all()


def test_reuse_missing_and_malformed_shares_are_refused_and_state_kept(shared_parties, shared_spec):
    owner, server, holders = shared_parties
    batch, shell, pads, votes, encoded = _issue(owner, server, holders, 0, (0, 1))
    with pytest.raises(InputError, match="one vote from each"):
        server.aggregate(batch, votes[:-1])  # a missing share leaves the body unusable
    short = messages.EncryptedVote(**{**votes[1].to_dict(), "data": votes[1].data[:-8]})
    with pytest.raises(CiphertextError, match="vote of holder 1"):
        server.aggregate(batch, [votes[0], short, *votes[2:]])
    assert not server.used_pad_ids and server.batches_done == 0
    np.testing.assert_array_equal(owner.decrypt(server.aggregate(batch, votes)), np.argmax(encoded, axis=1))
    with pytest.raises(PadReuseError, match="already used"):
        server.aggregate(batch, votes)
    with pytest.raises(PadReuseError, match="shell"):
        server.receive_shell(shell)
    with pytest.raises(PadReuseError):
        holders[0].receive_pad(pads[0])
    # a batch without its shell
    lone = messages.QueryBatch(batch_id=1, query_ids=(0,))
    for h, p in zip(holders, owner.issue_pads(1, range(len(holders)))):
        h.receive_pad(p)
    loose = [h.answer(lone, np.array([0]))[0] for h in holders]
    with pytest.raises(InputError, match="no pad shell"):
        server.aggregate(lone, loose)
    server.receive_shell(owner.pad_shell(1))
    server.aggregate(lone, loose)  # nothing was lost
    assert server.batches_done == 2 and len(server.used_pad_ids) == 2 * (shared_spec.num_holders + 1)


def test_stand_in_shares_replace_the_shell_and_reveal_no_missing_share(shared_parties, shared_spec):
    """A holder that does not answer (Flower deployment): a new shell and stand-in shares make the
    sum of the answering holders' votes, without the missing holder's own share reaching the server."""
    owner, server, holders = shared_parties
    layout = owner.keys.layout
    batch, shell, pads, votes, _ = _issue(owner, server, holders, 5, (0, 1))
    missing = 1
    answered = [h for h in range(len(holders)) if h != missing]
    with pytest.raises(InputError, match="no pad shell to replace"):
        server.receive_shell(owner.keys.new_shared_pads(range(len(holders)), 6)[0], replace=True)
    answered_sum = np.add.reduce(np.stack([np.frombuffer(pads[h].data, np.uint64) for h in answered]),
                                 axis=0, dtype=np.uint64)
    new_shell, stand_ins = owner.keys.stand_in_shared_pads(5, [missing], answered_sum)
    assert new_shell.shell_id != shell.shell_id and [p.holder_id for p in stand_ins] == [missing]
    assert stand_ins[0].data != pads[missing].data  # the missing holder's own share stays with the owner
    with pytest.raises(PadReuseError, match="shell"):
        server.receive_shell(new_shell)  # a second shell only as an explicit replacement
    server.receive_shell(new_shell, replace=True)
    with pytest.raises(PadReuseError, match="shell"):
        server.receive_shell(shell, replace=True)  # the first shell is gone for good
    zeros = np.zeros((shared_spec.batch_size, shared_spec.num_classes), dtype=np.int64)
    stand_in_vote = messages.EncryptedVote(
        batch_id=5, holder_id=missing, pad_id=stand_ins[0].pad_id, keyset_id=owner.keys.keyset_id,
        data=shared.add_votes(layout, np.frombuffer(stand_ins[0].data, np.uint64), zeros))
    labels = owner.decrypt(server.aggregate(batch, [votes[h] for h in answered] + [stand_in_vote]))
    # the clear sum of the answering holders' messages minus their shares: Δ·Σ v over them
    delta_sum = np.add.reduce(np.stack([np.frombuffer(votes[h].data, np.uint64) for h in answered]),
                              axis=0, dtype=np.uint64) - answered_sum
    sums = (delta_sum.view(np.int64) >> layout.delta_log2).reshape(zeros.shape)
    np.testing.assert_array_equal(labels, np.argmax(sums, axis=1))
    with pytest.raises(InputError, match="distinct ids"):
        owner.keys.stand_in_shared_pads(5, [missing, missing], answered_sum)
    with pytest.raises(InputError, match="expected"):
        owner.keys.stand_in_shared_pads(5, [missing], answered_sum[:-1])


def test_modes_and_circuits_must_match(shared_spec, small_spec, cache_dir, shared_owner):
    with pytest.raises(InputError, match="aggregate_input='sum'"):
        ModelOwner(small_spec, cache_dir=cache_dir, pad_mode="shared")
    with pytest.raises(InputError, match="aggregate_input='holders'"):
        ModelOwner(shared_spec, cache_dir=cache_dir, pad_mode="seeded")
    with pytest.raises(InputError, match="all 3 holders"):
        shared_owner.keys.new_shared_pads([0, 1], 77)
    with pytest.raises(InputError, match="aggregate_input"):
        CircuitSpec(**SMALL, aggregate_input="mean")
