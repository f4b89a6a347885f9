"""The model owner's SuperNode: :class:`speed.owner.owner.ModelOwner` and the privacy
ledger, with durable state so that a crash, a killed holder or a restarted server never
loses a label or a ledger record, and a rerun resumes.

Durable state under the node's ``state-dir`` (never leaves this machine):

* ``keys/<circuit key>.keys`` — the secret key (mode 0600) and evaluation keys, reused
  by later jobs with the same circuit;
* ``jobs/<job id>/ledger.jsonl`` — :class:`speed.privacy.ledger.PrivacyLedger` (run id =
  job id): one fsync-ed record per query, written BEFORE its label is decrypted;
* ``jobs/<job id>/pending/*.json`` — each batch's encrypted labels as received, saved
  (fsync) before anything is recorded, deleted once its labels are stored;
* ``jobs/<job id>/labels.jsonl`` — the decrypted labels, the job's output: a
  :class:`speed.journal.Journal` (checksum + hash chain per line, head file
  ``labels.jsonl.head``), so an edited or lost label is refused, never used; at setup every
  stored label must have its ledger charge;
* ``jobs/<job id>/fillers.jsonl`` — every stand-in vote issued for a missing holder (fsync-ed
  JSON lines, :func:`speed.fsutil.append_jsonl`; a damaged line is refused, a torn last one
  repaired, :func:`speed.fsutil.read_jsonl`);
* ``jobs/<job id>/shares/`` — shared pad mode only: the N body shares of each batch's pad
  (mode 0600), kept until the batch's labels are stored (a stand-in needs the answering
  holders' sum) and cleared at the next setup;
* ``holder-keys.json`` — holders' pad keys first seen (unless pinned, :mod:`speed.deploy.sealing`).

Pads leave this node only sealed to their holder (:mod:`speed.deploy.sealing`): they
travel through the SuperLink and the ServerApp, which also sees the votes, and a pad
plus the vote made from it would give the vote away.

Order on receiving a batch's encrypted labels: save the ciphertext → record the queries
in the ledger (budget-checked, with the number of holders that really answered) →
decrypt → append the labels.  A crash between two steps is repaired at the next setup
(:meth:`OwnerNode.recover`): recorded-but-undecrypted batches are decrypted, unrecorded
ones are recorded first.  Nothing is released without a ledger record.

Missing holders.  The compiled circuit takes exactly N votes.  For a holder that did not
answer, the owner issues a *stand-in*: a fresh pad for that holder's slot turned into a
vote of all zeros by the holder code itself (``DataHolder.encrypt`` of a zero array), so
it adds neither a vote nor noise.  The noisy sum then holds only the n answering
holders' noise shares: the total noise is NB(n/N, p) − NB(n/N, p), the lattice
mechanism at τ_eff = τ − (N − n)/N (worst case: every missing holder was an honest one).
The owner counts n from the stand-ins *it* issued for that batch, not from the server's
word, and records ``num_holders=n, expected_holders=N`` so the ledger uses τ_eff.

With shared pads (``pad-mode shared``) the batch's pad was split among all N slots, so a
stand-in cannot be a fresh pad.  The owner makes a second encryption of zero for the batch and
sends the server its shell (replacing the first) with stand-in shares that sum, with the
answering holders' shares, to its bodies (:func:`speed.crypto.shared.stand_in_shares`).  It
never reveals a missing holder's own share, so a vote of that holder that arrives late stays
hidden from the server.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from speed import messages
from speed.crypto import shared
from speed.deploy.config import DeployConfig, NodeConfig
from speed.deploy.sealing import PinnedHolderKeys, seal_pad
from speed.deploy.task import num_classes, owner_query_ids
from speed.errors import CiphertextError, InputError, SpeedError
from speed.fsutil import append_jsonl, atomic_path, atomic_write_json, read_jsonl
from speed.holder import DataHolder
from speed.journal import Journal, head_path
from speed.owner.release import charge_then_release, open_ledger
from speed.protocol import make_batches

__all__ = ["OwnerNode", "read_labels"]


def _labels_journal(path: Path, *, read_only: bool) -> Journal:
    def legacy(raw: bytes, lineno: int) -> dict[str, Any] | None:
        """Lines of a labels file written before it was a journal (plain JSON, no checksum)."""
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw)
            return {**rec, "query_id": int(rec["query_id"]), "label": int(rec["label"])}
        except (ValueError, KeyError, TypeError):
            raise SpeedError(f"labels file {path} is corrupted at line {lineno}") from None

    return Journal(path, what="labels file", read_only=read_only, lock=not read_only, legacy=legacy,
                   consequence="refusing to use its labels")


def read_labels(path: str | os.PathLike) -> dict[int, int]:
    """``labels.jsonl`` of a job → {query id: label} (verified; {} if the job stored none yet)."""
    path = Path(path)
    if not path.exists() and not head_path(path).exists():
        return {}
    return {int(r["query_id"]): int(r["label"]) for r in _labels_journal(path, read_only=True).records}


def _append_labels(path: Path, rows: list[dict[str, Any]]) -> dict[int, int]:
    """Append the rows whose query has no label yet (durable when this returns); all labels after."""
    with _labels_journal(path, read_only=False) as journal:
        have = {int(r["query_id"]) for r in journal.records}
        journal.append_many([r for r in rows if int(r["query_id"]) not in have])
        return {int(r["query_id"]): int(r["label"]) for r in journal.records}


class OwnerNode:
    def __init__(self, config: DeployConfig, node: NodeConfig, session: str = "", expected_keyset: str = ""):
        if node.role != "owner":
            raise InputError(f"this SuperNode is a {node.role}, not the model owner")
        self.config, self.node, self.session = config, node, str(session)
        self.job_id = config.effective_job_id
        self.job_dir = node.state_dir / "jobs" / self.job_id
        from speed.pipeline import charged_failure_probability

        self.noise = config.noise_mechanism()
        self.spec = config.circuit_spec(num_classes(config))
        self.failure_per_query = charged_failure_probability(self.spec, self.noise)  # what the ledger folds into δ
        self._owner = None
        self.expected_keyset = expected_keyset  # set at this run's setup: later messages must use the same keys

    # -- paths
    @property
    def ledger_path(self) -> Path:
        return self.job_dir / "ledger.jsonl"

    @property
    def labels_path(self) -> Path:
        return self.job_dir / "labels.jsonl"

    @property
    def fillers_path(self) -> Path:
        return self.job_dir / "fillers.jsonl"

    @property
    def key_path(self) -> Path:
        return self.node.state_dir / "keys" / f"{self.spec.cache_key}.keys"

    @property
    def owner(self):
        """The :class:`ModelOwner` (compiled program from the cache, secret key from ``state-dir``)."""
        if self._owner is None:
            from speed.owner.owner import ModelOwner

            self.node.state_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.node.state_dir, 0o700)
            owner = ModelOwner(self.spec, cache_dir=self.node.cache_dir, key_path=self.key_path,
                               pad_mode=self.config.pad_mode)
            if self.expected_keyset and owner.keys.keyset_id != self.expected_keyset:
                raise CiphertextError(
                    f"the owner's keyset changed during this run ({self.expected_keyset} at setup, now "
                    f"{owner.keys.keyset_id}): the circuit code, spec or key file changed; rerun the job"
                )
            self._owner = owner
        return self._owner

    def ledger(self):
        """The job's :class:`speed.privacy.ledger.PrivacyLedger` (run id = job id), opened for charging."""
        c = self.config
        return open_ledger(self.ledger_path, c.protocol, self.noise, num_holders=c.holders, planned_queries=c.queries,
                           run_id=self.job_id, max_epsilon=c.max_epsilon or None)

    # -- setup / resume --------------------------------------------------------------
    def setup(self, holder_keys: dict[int, str]) -> dict[str, Any]:
        """Program, evaluation keys, the batches still to label, and sealed pads for the first of them."""
        start = time.perf_counter()
        owner = self.owner
        prepared = time.perf_counter() - start
        recovered = self.recover()
        query_ids = owner_query_ids(self.config)
        with self.ledger() as ledger:
            answered = {int(q) for q in ledger.answered_query_ids()}
            status = self._status(ledger)
        uncharged = sorted(set(read_labels(self.labels_path)) - answered)
        if uncharged:  # a released label without its charge would under-state ε
            raise SpeedError(f"labels file {self.labels_path} holds {len(uncharged)} labels with no charge in privacy "
                             f"ledger {self.ledger_path} (queries {uncharged[:5]}); refusing to resume")
        plan = []
        for batch in make_batches(query_ids, self.spec.batch_size):
            remaining = [int(q) for q in batch.query_ids if int(q) not in answered]
            plan.append({"batch_id": batch.batch_id, "query_ids": [int(q) for q in batch.query_ids],
                         "remaining": remaining})
        first = next((b for b in plan if b["remaining"]), None)
        shutil.rmtree(self.job_dir / "shares", ignore_errors=True)  # earlier sessions' shares: their shells are gone
        pads, shell = self.pads(first["batch_id"], sorted(holder_keys), holder_keys) if first else ([], None)
        return {
            "bundle": owner.circuit_bundle(), "keys": owner.evaluation_keys(), "pads": pads, "shell": shell,
            "info": {"job_id": self.job_id, "plan": plan, "recovered": recovered, "status": status,
                     "prepare_s": prepared, "spec": self.spec.to_dict(), "pad_mode": owner.keys.pad_mode,
                     "failure_probability_per_query": self.failure_per_query},
        }

    def recover(self) -> dict[str, Any]:
        """Finish batches whose encrypted labels arrived but whose labels were not stored."""
        done, refused = 0, []
        pending = sorted((self.job_dir / "pending").glob("*.json")) if (self.job_dir / "pending").is_dir() else []
        for path in pending:
            record = json.loads(path.read_text())
            data = dict(record["labels"])
            for key in data.pop("bytes_fields", ["data"]):  # files written before the range check: data only
                data[key] = base64.b64decode(data[key])
            labels = messages.EncryptedLabels.from_dict(data)
            try:
                self._release(labels, int(record["num_holders"]), record.get("session", ""))
                path.unlink()
                done += 1
            except Exception as exc:  # budget exhausted, foreign keyset...: keep the file, report
                refused.append(f"{path.name}: {exc}")
        return {"batches_recovered": done, "refused": refused}

    # -- per batch -------------------------------------------------------------------
    def pads(self, batch_id: int, holder_ids: list[int],
             holder_keys: dict[int, str]) -> tuple[list[messages.Pad], messages.PadShell | None]:
        """Fresh pads for ``batch_id``, each sealed to its holder's pad key (the router cannot read
        them), and in shared pad mode the batch's shell for the server when its pad was split now
        (None otherwise)."""
        self._check_holders(holder_ids)
        offered = {int(h): str(k) for h, k in holder_keys.items()}
        keys = PinnedHolderKeys(self.node.state_dir, self.node.holder_keys or None).check(
            {int(h): offered[int(h)] for h in holder_ids if int(h) in offered})
        lacking = [h for h in holder_ids if int(h) not in keys]
        if lacking:
            raise InputError(f"no pad key for holders {lacking}: pads are only sent sealed")
        if self.owner.keys.pad_mode == "shared":
            pads, shell = self._shares(int(batch_id), [int(h) for h in holder_ids])
        else:
            pads, shell = self.owner.issue_pads(int(batch_id), [int(h) for h in holder_ids]), None
        return [seal_pad(p, keys[p.holder_id]) for p in pads], shell

    def _shares_path(self, batch_id: int) -> Path:
        return self.job_dir / "shares" / f"{self.session or 'local'}-batch-{batch_id:06d}.npz"

    def _shares(self, batch_id: int, holder_ids: list[int]) -> tuple[list[messages.Pad], messages.PadShell | None]:
        """Shared pads: the batch's pad is split among all N slots once (the shares kept on disk,
        mode 0600, until the batch's labels are stored: a stand-in needs the answering holders'
        sum, and Flower runs every message in a fresh process); ``holder_ids`` get theirs."""
        path = self._shares_path(batch_id)
        shell = None
        if not path.exists():
            shell, issued = self.owner.keys.new_shared_pads(list(range(self.spec.num_holders)), batch_id)
            with atomic_path(path, mode=0o600, suffix=".npz") as tmp:
                np.savez(tmp, shares=np.stack([np.frombuffer(p.data, dtype=np.uint64) for p in issued]),
                         pad_ids=np.array([p.pad_id for p in issued]))
        with np.load(path) as kept:
            shares, pad_ids = kept["shares"], kept["pad_ids"]
        keyset = self.owner.keys.keyset_id
        pads = [messages.Pad(pad_id=str(pad_ids[h]), keyset_id=keyset, holder_id=h, batch_id=batch_id,
                             data=shares[h].tobytes()) for h in holder_ids]
        return pads, shell

    def fill(self, batch: messages.QueryBatch,
             holder_ids: list[int]) -> tuple[list[messages.EncryptedVote], messages.PadShell | None]:
        """Stand-in votes (encryptions of zero) for holders that did not answer ``batch``; in
        shared pad mode also the batch's new shell, which replaces the first one at the server
        (:func:`speed.crypto.shared.stand_in_shares`: no missing holder's share is revealed)."""
        self._check_holders(holder_ids)
        owner = self.owner
        bundle, keys = owner.circuit_bundle(), owner.evaluation_keys()
        zeros = np.zeros((self.spec.batch_size, self.spec.num_classes), dtype=np.int64)
        missing = sorted({int(h) for h in holder_ids})
        shell = None
        if owner.keys.pad_mode == "shared":
            path = self._shares_path(batch.batch_id)
            if not path.exists():
                raise InputError(f"batch {batch.batch_id}: no shared pad was issued for it in this session")
            with np.load(path) as kept:
                shares = kept["shares"]
            answered = [h for h in range(self.spec.num_holders) if h not in missing]
            answered_sum = shared.sum_shares(shares[answered])
            shell, stand_in_pads = owner.keys.stand_in_shared_pads(batch.batch_id, missing, answered_sum)
        else:
            stand_in_pads = [owner.issue_pads(batch.batch_id, [h])[0] for h in missing]
        votes = []
        for pad in stand_in_pads:
            stand_in = DataHolder(pad.holder_id, lambda x: x, self.config.noise_scale)
            stand_in.connect(bundle, keys)
            stand_in.receive_pad(pad)
            votes.append(stand_in.encrypt(batch.batch_id, zeros))
        self._fillers()  # a torn last line (a crash mid-append) is dropped before appending after it
        append_jsonl(self.fillers_path, [
            {"session": self.session, "batch_id": batch.batch_id, "holder_id": v.holder_id, "pad_id": v.pad_id,
             "query_ids": list(batch.query_ids), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            for v in votes
        ], mode=0o600)
        return votes, shell

    def labels(self, encrypted: messages.EncryptedLabels) -> dict[str, Any]:
        """Save → record (ledger, reduced τ if stand-ins were used) → decrypt → store labels."""
        if encrypted.keyset_id != self.owner.keys.keyset_id:  # refuse before anything is recorded
            raise CiphertextError(f"labels of batch {encrypted.batch_id} were computed under keyset "
                                  f"{encrypted.keyset_id}, not this owner's {self.owner.keys.keyset_id}")
        if sorted(encrypted.holder_ids) != list(range(self.spec.num_holders)):
            raise InputError(f"batch {encrypted.batch_id}: labels were not computed from all {self.spec.num_holders} slots")
        stand_ins = {int(r["holder_id"]) for r in self._fillers()
                     if r["session"] == self.session and int(r["batch_id"]) == encrypted.batch_id}
        answered = self.spec.num_holders - len(stand_ins)
        data = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v  # data and the range check
                for k, v in encrypted.to_dict().items()}
        data["bytes_fields"] = sorted(k for k, v in encrypted.to_dict().items() if isinstance(v, bytes))
        pending = self.job_dir / "pending" / f"{self.session or 'local'}-batch-{encrypted.batch_id:06d}.json"
        atomic_write_json(pending, {"labels": data, "num_holders": answered, "missing": sorted(stand_ins),
                                    "session": self.session}, indent=None)
        result = self._release(encrypted, answered, self.session)
        pending.unlink()
        self._shares_path(encrypted.batch_id).unlink(missing_ok=True)  # shared pads: no stand-in needs them now
        return result

    def _release(self, encrypted: messages.EncryptedLabels, answered: int, session: str) -> dict[str, Any]:
        n_expected = self.spec.num_holders
        if encrypted.keyset_id != self.owner.keys.keyset_id:  # would not decrypt: record nothing
            raise CiphertextError(f"labels of batch {encrypted.batch_id} were computed under keyset "
                                  f"{encrypted.keyset_id}, not this owner's {self.owner.keys.keyset_id}")
        with self.ledger() as ledger:
            charged = {int(q) for q in ledger.answered_query_ids()}
            todo = [int(q) for q in encrypted.query_ids if int(q) not in charged]
            # the whole batch cleared (one PLD evaluation), then each query recorded (fsync), and only
            # then decrypted
            values, records = charge_then_release(
                ledger, todo, lambda: self.owner.decrypt(encrypted), num_holders=answered,
                expected_holders=n_expected, failure_probability=self.failure_per_query)
            status = self._status(ledger)
        if len(values) != len(encrypted.query_ids):
            raise CiphertextError(f"batch {encrypted.batch_id}: {len(values)} labels for {len(encrypted.query_ids)} queries")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stored = _append_labels(self.labels_path, [
            {"query_id": int(q), "label": int(v), "batch_id": encrypted.batch_id, "num_holders": answered,
             "expected_holders": n_expected, "session": session, "utc": stamp}
            for q, v in zip(encrypted.query_ids, values)
        ])
        status["labels_stored"] = len(stored)
        tau_eff = records[0]["tau_effective"] if records else None
        return {"batch_id": encrypted.batch_id, "recorded": len(todo), "labelled": len(values),
                "num_holders": answered, "tau_effective": tau_eff, "status": status}

    def finish(self) -> dict[str, Any]:
        with self.ledger() as ledger:
            status = self._status(ledger)
        summary = {"job_id": self.job_id, **status, "ledger": str(self.ledger_path), "labels": str(self.labels_path)}
        atomic_write_json(self.job_dir / "summary.json", summary, sort_keys=True)
        return summary

    # -- helpers
    def _fillers(self) -> list[dict[str, Any]]:
        """The stand-ins issued so far (this node is the file's only writer: a torn last line is repaired)."""
        return read_jsonl(self.fillers_path, what="fillers file", repair=True)

    def _status(self, ledger) -> dict[str, Any]:
        spent = ledger.epsilon()
        taus = sorted({float(r["tau_effective"]) for r in ledger.records if str(r["run_id"]) == self.job_id})
        return {"epsilon": spent["epsilon"], "delta": spent["delta"], "delta_total": spent["delta_total"],
                "epsilon_publishable": bool(spent["publishable"]), "mechanism": self.noise.to_dict(),
                "tau": self.config.tau, "tau_effective_values": taus,
                "target_epsilon": self.config.planned_target_epsilon,
                "accounting": ("privacy loss distributions (PLD), collusion-aware τ per batch" if ledger.noise is not None
                               else "the paper's moments accountant (data-independent)"),
                "queries_charged": ledger.num_queries, "labels_stored": len(read_labels(self.labels_path))}

    def _check_holders(self, holder_ids: list[int]) -> None:
        bad = [h for h in holder_ids if not 0 <= int(h) < self.spec.num_holders]
        if bad:
            raise InputError(f"holder ids {bad} are outside 0..{self.spec.num_holders - 1}")
