"""Key-model invariants: the server never holds secret material, pads are single use,
bad ciphertexts and bad votes are refused with one-line errors and change no state."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest

import speed
from speed import messages
from speed.crypto.spec import CircuitSpec
from speed.errors import BudgetExhaustedError, CiphertextError, InputError, PadReuseError
from speed.owner.owner import ModelOwner
from speed.protocol import label_queries, setup_parties

from conftest import make_holders

SERVER_DIR = Path(speed.__file__).parent / "server"


def _secret_key_windows(owner: ModelOwner) -> list[bytes]:
    """A distinctive 256-byte window from the middle of every secret key's serialization."""
    keyset = owner.keys._client.keys._keyset  # the test may look at the secret
    windows = []
    for key in keyset.get_client_keys().get_secret_keys():
        data = key.serialize()
        windows.append(data[len(data) // 2 : len(data) // 2 + 256])
    full = owner.keys._client.keys.serialize()
    assert all(w in full for w in windows)  # the check below can fail: these bytes are real
    return windows


#: The aggregation server on Flower: the ServerApp module and the speed.deploy modules it imports
#: (its runtime imports as a whole: tests/test_deploy.py::test_server_app_never_loads_owner_code).
SERVER_APP_MODULES = [*(Path(speed.__file__).parent / "deploy" / name
                        for name in ("server_app.py", "records.py", "config.py")),
                      *(Path(speed.__file__).parent / name for name in ("params.py", "validation.py", "fsutil.py"))]


def test_server_modules_never_import_key_material():
    forbidden_modules = ("speed.owner", "speed.deploy.owner_node", "speed.deploy.holder_node",
                         "speed.deploy.client_app", "speed.deploy.sealing")
    forbidden_names = {"Client", "Keys", "keygen", "ClientProgram"}
    assert all(p.is_file() for p in SERVER_APP_MODULES)
    for path in [*SERVER_DIR.rglob("*.py"), *SERVER_APP_MODULES]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(forbidden_modules), f"{path} imports {node.module}"
                assert not {a.name for a in node.names} & forbidden_names, f"{path} imports a key class"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(forbidden_modules) for a in node.names)
            if isinstance(node, ast.Attribute):
                assert node.attr not in forbidden_names, f"{path} uses .{node.attr}"


def test_server_sees_no_secret_key(small_parties):
    owner, server, holders, table = small_parties
    received: list = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        workers = 2

        def aggregate_many(self, items):
            for batch, votes in items:
                received.append(batch)
                received.extend(votes)
            return self.inner.aggregate_many(items)

    received.extend([owner.circuit_bundle(), owner.evaluation_keys()])
    result = label_queries(owner, Spy(server), holders, np.arange(32), np.arange(4), progress=False)
    assert (result.labels == result.clear_noisy_argmax).all()
    allowed = (messages.CircuitBundle, messages.EvaluationKeys, messages.QueryBatch, messages.EncryptedVote)
    assert all(isinstance(m, allowed) for m in received)
    payloads = [m.program if isinstance(m, messages.CircuitBundle) else getattr(m, "data", b"") for m in received]
    windows = _secret_key_windows(owner)
    assert windows and all(len(w) == 256 for w in windows)
    for window in windows:
        assert all(window not in payload for payload in payloads)
    # the server object's own state: nothing but public types
    state_types = {type(v).__name__ for v in vars(server).values()}
    assert state_types <= {"CircuitSpec", "str", "Server", "EvaluationKeys", "set", "int", "dict", "NoneType"}, state_types
    assert server._shells == {} and server._layout is None  # shells exist in shared pad mode only


def test_labels_match_clear_noisy_argmax_with_ties(small_parties):
    owner, server, holders, _ = small_parties
    # every teacher answers class 0 for even queries, 1 for odd: many exact ties after noise
    tied = np.tile(np.array([[0, 1, 2]]), (8, 1))
    for h in holders:
        h.predict = lambda q: tied[np.asarray(q), 0] * 0 + (np.asarray(q) % 2)
    result = label_queries(owner, server, holders, np.arange(8), np.arange(8), progress=False)
    assert (result.labels == result.clear_noisy_argmax).all()


def test_reused_pad_is_refused_and_state_kept(small_parties):
    owner, server, holders, _ = small_parties
    batch = messages.QueryBatch(batch_id=0, query_ids=(0, 1))
    pads = owner.issue_pads(0, range(3))
    for h, p in zip(holders, pads):
        h.receive_pad(p)
    votes = [h.answer(batch, np.array([0, 1]))[0] for h in holders]
    server.aggregate(batch, votes)
    used_before = set(server.used_pad_ids)
    with pytest.raises(PadReuseError, match="already used"):
        server.aggregate(batch, votes)
    assert server.used_pad_ids == used_before and server.batches_done == 1
    # the holder side: a pad can be neither received twice nor used twice
    with pytest.raises(PadReuseError):
        holders[0].receive_pad(pads[0])
    with pytest.raises(PadReuseError, match="no unused pad"):
        holders[0].encrypt(0, np.zeros((2, 3), dtype=np.int64))


def test_duplicate_pad_inside_one_batch_is_refused(small_parties):
    owner, server, holders, _ = small_parties
    batch = messages.QueryBatch(batch_id=5, query_ids=(0,))
    for h, p in zip(holders, owner.issue_pads(5, range(3))):
        h.receive_pad(p)
    votes = [h.answer(batch, np.array([0]))[0] for h in holders]
    forged = copy.replace(votes[1], pad_id=votes[0].pad_id) if hasattr(copy, "replace") else messages.EncryptedVote(
        **{**votes[1].to_dict(), "pad_id": votes[0].pad_id})
    with pytest.raises(PadReuseError):
        server.aggregate(batch, [votes[0], forged, votes[2]])
    assert not server.used_pad_ids


def test_corrupted_and_foreign_ciphertexts_are_refused(small_parties, small_spec, tmp_path):
    owner, server, holders, _ = small_parties
    batch = messages.QueryBatch(batch_id=9, query_ids=(0, 1))
    for h, p in zip(holders, owner.issue_pads(9, range(3))):
        h.receive_pad(p)
    votes = [h.answer(batch, np.array([0, 1]))[0] for h in holders]
    corrupted = messages.EncryptedVote(**{**votes[0].to_dict(), "data": votes[0].data[: len(votes[0].data) // 3]})
    with pytest.raises(CiphertextError):
        server.aggregate(batch, [corrupted, *votes[1:]])
    # another owner's keyset for the same circuit
    other = ModelOwner(small_spec, cache_dir=tmp_path)
    assert other.keys.keyset_id != owner.keys.keyset_id
    foreign_holders = make_holders(small_spec, np.zeros((4, 3), dtype=np.int64))
    setup_parties(other, foreign_holders)
    for h, p in zip(foreign_holders, other.issue_pads(9, range(3))):
        h.receive_pad(p)
    foreign = foreign_holders[0].answer(batch, np.array([0, 1]))[0]
    with pytest.raises(CiphertextError, match="keyset"):
        server.aggregate(batch, [foreign, *votes[1:]])
    with pytest.raises(CiphertextError, match="keyset"):
        holders[0].receive_pad(other.issue_pads(10, [0])[0])
    assert not server.used_pad_ids and server.batches_done == 0
    # the honest votes still go through afterwards: nothing was lost
    server.aggregate(batch, votes)


def test_bad_votes_and_shapes(small_parties):
    owner, server, holders, _ = small_parties
    h = holders[0]
    with pytest.raises(InputError, match="one-hot"):
        h.noisy_votes(np.array([[1, 1, 0]]))
    with pytest.raises(InputError, match="one-hot"):
        h.noisy_votes(np.array([[2, 0, 0]]))
    with pytest.raises(InputError, match=r"shape \(queries, 3\)"):
        h.noisy_votes(np.array([[1, 0, 0, 0]]))
    with pytest.raises(InputError, match="batch size"):
        h.noisy_votes(np.eye(3, dtype=np.int64))
    h.predict = lambda q: np.full(len(q), 7)
    h.receive_pad(owner.issue_pads(3, [0])[0])
    with pytest.raises(InputError, match="outside"):
        h.answer(messages.QueryBatch(batch_id=3, query_ids=(0,)), np.array([0]))
    batch = messages.QueryBatch(batch_id=4, query_ids=(0, 1))
    with pytest.raises(InputError, match="one vote from each"):
        server.aggregate(batch, [])


def test_compiled_batch_keeps_the_per_query_error(small_owner, small_spec):
    """The compiled call of B = 2 queries has each query's PBS failure probability ≤ the spec's,
    and its per-call budget is larger than the per-query one (not B times stricter)."""
    assert small_spec.batch_size > 1
    assert 0 < small_owner.query_p_error() <= small_spec.global_p_error * (1 + 1e-9)
    assert small_owner._server_program.global_p_error > small_spec.global_p_error


def test_spec_rejects_out_of_range():
    with pytest.raises(InputError, match="classes"):
        CircuitSpec(num_holders=3, num_classes=1, noise_bound=1)
    with pytest.raises(InputError, match="holders"):
        CircuitSpec(num_holders=0, num_classes=3, noise_bound=1)
    with pytest.raises(InputError, match="global_p_error"):
        CircuitSpec(num_holders=3, num_classes=3, noise_bound=1, global_p_error=2)


def test_seeded_votes_are_small_and_encode_mode_agrees(small_spec, small_parties, tmp_path):
    """Seeded pads: 24 bytes per value on the wire; the encode path gives the same labels."""
    owner, server, holders, table = small_parties
    seeded = label_queries(owner, server, holders, np.arange(32), np.arange(6), progress=False)
    values_per_pad = small_spec.batch_size * small_spec.num_classes
    assert seeded.bytes["holder_to_server_bytes_per_query"] * small_spec.batch_size < 24 * values_per_pad + 1024
    assert (seeded.labels == seeded.clear_noisy_argmax).all()

    encode_owner = ModelOwner(small_spec, cache_dir=tmp_path, pad_mode="encode")
    encode_holders = make_holders(small_spec, table)  # same seeds: same noise as above
    encode_server = setup_parties(encode_owner, encode_holders)
    encoded = label_queries(encode_owner, encode_server, encode_holders, np.arange(32), np.arange(6), progress=False)
    np.testing.assert_array_equal(encoded.labels, seeded.labels)
    np.testing.assert_array_equal(encoded.clear_noisy_sums, seeded.clear_noisy_sums)
    assert encoded.bytes["holder_to_server_bytes_per_query"] > 20 * seeded.bytes["holder_to_server_bytes_per_query"]


def test_seeded_layout_refuses_wrong_sizes(small_owner):
    layout = small_owner.keys.layout
    pad = small_owner.issue_pads(99, [0])[0]
    with pytest.raises(CiphertextError, match="bytes"):
        layout.add(pad.data[:-1], np.zeros(layout.count, dtype=np.int64))
    with pytest.raises(InputError, match="values"):
        layout.add(pad.data, np.zeros(layout.count + 1, dtype=np.int64))


def _votes_for(owner, holders, batch_id: int, query_ids: tuple[int, ...]):
    batch = messages.QueryBatch(batch_id=batch_id, query_ids=query_ids)
    for h, p in zip(holders, owner.issue_pads(batch_id, range(len(holders)))):
        h.receive_pad(p)
    answers = [h.answer(batch, np.asarray(query_ids)) for h in holders]
    return batch, [vote for vote, _ in answers], sum(encoded for _, encoded in answers)


def test_batches_side_by_side_give_the_exact_labels(small_owner, small_spec):
    """Three batches computed together on three worker threads: every label is the clear argmax
    of its own noisy sums, answers come back in the order given, all pads are recorded."""
    table = np.random.default_rng(3).integers(0, small_spec.num_classes, size=(16, small_spec.num_holders))
    holders = make_holders(small_spec, table, seed=5)
    server = setup_parties(small_owner, holders, server_workers=3)
    assert server.workers == 3 and server.threads_per_call(3) == max(1, server.cpus // 3)
    assert server.threads_per_call(1) == server.cpus
    items, sums = [], []
    for b in range(3):
        batch, votes, encoded = _votes_for(small_owner, holders, 40 + b, (2 * b, 2 * b + 1))
        items.append((batch, votes))
        sums.append(encoded)
    answers = server.aggregate_many(items)
    assert [a.batch_id for a in answers] == [40, 41, 42]
    for answer, encoded in zip(answers, sums):
        np.testing.assert_array_equal(small_owner.decrypt(answer), np.argmax(encoded, axis=1))
    assert server.batches_done == 3 and len(server.used_pad_ids) == 3 * small_spec.num_holders


def test_side_by_side_call_is_refused_as_a_whole(small_parties):
    """A pad reused across the batches of one call, or one corrupted vote, refuses the whole
    call: no pad is recorded, and the honest batches go through afterwards."""
    owner, server, holders, _ = small_parties
    first, first_votes, _ = _votes_for(owner, holders, 50, (0, 1))
    second, second_votes, _ = _votes_for(owner, holders, 51, (2, 3))
    replayed = messages.EncryptedVote(**{**second_votes[0].to_dict(), "pad_id": first_votes[0].pad_id})
    with pytest.raises(PadReuseError, match="already used"):
        server.aggregate_many([(first, first_votes), (second, [replayed, *second_votes[1:]])])
    corrupted = messages.EncryptedVote(**{**second_votes[1].to_dict(), "data": second_votes[1].data[:40]})
    with pytest.raises(CiphertextError, match="batch 51: vote of holder 1"):
        server.aggregate_many([(first, first_votes), (second, [second_votes[0], corrupted, *second_votes[2:]])])
    assert not server.used_pad_ids and server.batches_done == 0
    assert len(server.aggregate_many([(first, first_votes), (second, second_votes)])) == 2
    with pytest.raises(InputError, match="workers"):
        setup_parties(owner, holders, server_workers=0)


def test_budget_stop_inside_a_group_of_batches_releases_nothing_after_it(small_parties):
    """Two batches computed side by side; the ledger refuses the second: only the first batch's
    labels are decrypted and returned, and no later group is sent to the server."""
    owner, server, holders, _ = small_parties
    server.workers = 2  # group batches in pairs whatever this machine's CPU count
    charged: list[int] = []

    def ledger(batch, sums):
        if charged:
            raise BudgetExhaustedError(f"budget exhausted before batch {batch.batch_id}")
        charged.append(batch.batch_id)

    result = label_queries(owner, server, holders, np.arange(32), np.arange(8), before_release=ledger, progress=False)
    assert result.stopped == "budget exhausted before batch 1" and charged == [0]
    assert len(result.labels) == 2 and (result.labels == result.clear_noisy_argmax).all()
    assert result.server_call_queries == [4] and server.batches_done == 2
