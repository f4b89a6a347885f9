"""Stage ``labelling`` of ``speed reproduce``: the queries through the real encrypted pipeline.

The largest Q of ``--queries`` is labelled once (:mod:`speed.protocol`: pads, holder encryption,
homomorphic argmax, owner decryption).  Every batch is appended to a label store as soon as it is
decrypted, and every query is charged in the privacy ledger *before* its label is released
(:func:`speed.owner.release.charge_then_release`: one budget check per batch, then one record per
query).  A resumed run labels only what is missing.

Noise: the holders sample their shares from the run's mechanism object (Skellam: the ledger
charges the publishable PLD ε with the plan written first, and folds only the clip failure into
δ, docs/privacy.md "Circuit failures and δ"; lattice: the paper's moments accountant with the vote
counts, both failures folded).  With seeded (experiment) noise each circuit batch draws from
streams seeded by (seed, batch index); the batch index is persisted, so a resumed run never
reuses the noise of an earlier batch.  ``production_noise`` draws from the OS CSPRNG.

Crash between charge and store: the ledger is written before decryption and the label store
after it; a run killed in between has charged queries whose labels are lost.  On resume they are
asked again and charged again under ``"<pos>/retry<k>"``: never assumed free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from speed.errors import BudgetExhaustedError, SpeedError


def _batch_generators(seed: int, batch: int, num_holders: int) -> list[np.random.Generator]:
    """Seeded noise streams of one circuit batch, one per holder (experiments only)."""
    children = np.random.SeedSequence([int(seed), 0x5EED, int(batch)]).spawn(num_holders)
    return [np.random.Generator(np.random.PCG64(c)) for c in children]


def stage_labelling(cfg, spec, noise, teachers, positions: np.ndarray, clear_counts: np.ndarray,
                    state_dir: Path, progress: bool, say) -> dict[str, Any]:
    """Label ``positions`` through the encrypted pipeline, reusing what the store already holds."""
    from tqdm.auto import tqdm

    from speed.owner.owner import ModelOwner
    from speed.owner.release import charge_then_release, open_ledger
    from speed.pipeline import charged_failure_probability, failure_probabilities
    from speed.privacy.ledger import PrivacyLedger
    from speed.privacy.mechanisms import Skellam
    from speed.protocol import label_queries, setup_parties
    from speed.reproduce.store import LabelStore

    key = cfg.state_key()
    store = LabelStore(state_dir / "labels.jsonl", key, {"spec": spec.to_dict(), "state_key": key,
                                                         "noise": None if noise is None else noise.to_dict()})
    ledger_path = state_dir / "ledger.jsonl"
    if store.label_of:  # resuming: every stored label must have its charge in the ledger
        if not ledger_path.exists():
            raise SpeedError(f"labelling store {store.path} holds {len(store.label_of)} labels but privacy ledger "
                             f"{ledger_path} does not exist: a released label must be charged; refusing to resume")
        with PrivacyLedger(ledger_path, read_only=True, run_id=key) as led:
            store.charged_check(led.answered_query_ids(), ledger_path)
    histogram, clip = failure_probabilities(spec, noise)
    skellam = isinstance(noise, Skellam)
    charged_beta = charged_failure_probability(spec, noise)  # what the ledger folds into δ
    counts_of = {int(p): clear_counts[i] for i, p in enumerate(positions)}
    todo = [int(p) for p in positions if int(p) not in store]
    info: dict[str, Any] = {
        "queries": int(len(positions)), "reused_from_store": int(len(positions) - len(todo)),
        "labelled_now": int(len(todo)), "charged_again_after_crash": 0, "store": str(store.path),
        "store_repaired_bytes": store.repaired_bytes, "compile_s": None, "keygen_s": None,
    }
    if todo:
        say(f"encrypted labelling: {len(todo)} queries to label ({info['reused_from_store']} already in the store), "
            f"batches of {spec.batch_size}, noise {noise.to_dict()}")
        owner = ModelOwner(spec, cache_dir=Path(cfg.cache_dir))
        info["compile_s"], info["keygen_s"] = owner.timings["compile_s"], owner.timings["keygen_s"]
        holders = teachers.holders(noise)
        server = setup_parties(owner, holders)
        ledger = open_ledger(ledger_path, cfg.protocol, noise, num_holders=int(cfg.holders),
                             planned_queries=cfg.max_queries, run_id=key)
        charged = {str(q) for q in ledger.answered_query_ids()}
        chunks = [todo[s:s + spec.batch_size] for s in range(0, len(todo), spec.batch_size)]
        try:
            for chunk in tqdm(chunks, desc="encrypted labelling", unit="batch", disable=not progress):
                b = store.next_batch
                if not cfg.production_noise:
                    for holder, rng in zip(holders, _batch_generators(cfg.seed, b, len(holders))):
                        holder.rng = rng

                def charge(batch, _sums) -> None:
                    ids: list[int | str] = []
                    for q in batch.query_ids:
                        qid: int | str = int(q)
                        if str(qid) in charged:  # charged by a run killed before its label was stored
                            k = 1
                            while f"{q}/retry{k}" in charged:
                                k += 1
                            qid = f"{q}/retry{k}"
                        ids.append(qid)
                    charge_then_release(ledger, ids, failure_probability=charged_beta,
                                        counts=None if skellam else [counts_of[int(q)] for q in batch.query_ids])
                    info["charged_again_after_crash"] += sum(isinstance(q, str) for q in ids)
                    charged.update(str(q) for q in ids)

                start = time.perf_counter()
                res = label_queries(owner, server, holders, teachers.pool_inputs, np.asarray(chunk, dtype=np.int64),
                                    before_release=charge, progress=False)
                if res.stopped:
                    raise BudgetExhaustedError(f"labelling stopped: {res.stopped}")
                n, t = len(chunk), res.timings
                seconds = {
                    "wall_s": time.perf_counter() - start, "pads_s": t["pads_s"],
                    "holder_encrypt_s": t["holder_encrypt_s_per_query"] * n * len(holders),
                    "server_s": t["server_total_s"], "decrypt_s": t["decrypt_s_per_query"] * n,
                }
                store.append(b, res.query_ids, res.labels, res.clear_noisy_argmax, res.clear_noisy_sums, seconds,
                             res.bytes)
        finally:
            ledger.close()
    missing = [p for p in positions if int(p) not in store]
    if missing:  # pragma: no cover - guarded above
        raise SpeedError(f"{len(missing)} queries have no label after labelling")
    looked = store.lookup(positions)
    totals = store.totals()
    store.close()
    nq = max(1.0, totals["queries"])
    ledger_eps: dict[str, Any] = {}
    if ledger_path.exists():
        with PrivacyLedger(ledger_path, read_only=True, run_id=key, delta=cfg.delta) as led:
            ledger_eps = {"path": str(ledger_path), "charged_queries": led.num_queries, **led.epsilon()}
    info.update({
        "batches_in_store": int(totals["batches"]),
        "seconds_all_batches": {k: v for k, v in totals.items() if k not in ("queries", "batches")},
        "server_s_per_query": totals.get("server_s", 0.0) / nq,
        "holder_encrypt_s_per_query_per_holder": totals.get("holder_encrypt_s", 0.0) / nq / int(cfg.holders),
        "decrypt_s_per_query": totals.get("decrypt_s", 0.0) / nq,
        "wall_s_per_query": totals.get("wall_s", 0.0) / nq,
        "bytes": store.sizes(),
        "circuit": {**spec.to_dict(), "difference_width_bits": spec.difference_width,
                    "security_bits": spec.security_level},
    })
    return {**info, **looked, "ledger": ledger_eps, "failure_probability_per_query": histogram + clip,
            "histogram_failure_per_query": histogram, "clip_failure_per_query": clip,
            "failure_probability_charged_per_query": charged_beta}
