"""A data holder's SuperNode: the :class:`speed.holder.DataHolder` protocol code, with its
state kept where Flower's one-process-per-message ClientApps can find it again.

Durable, under the node's ``state-dir``:

* ``keysets/<keyset id>/``: the circuit bundle received at setup, and — only for
  ``pad_mode="encode"`` — the evaluation keys (checked against their ids by
  ``DataHolder.connect``), so a rerun with the same owner keys does not move them again.
  In the seeded and shared pad modes a holder only adds Δ·v to the 8-byte LWE bodies of its
  pad, or to its share of the batch's pad (:mod:`speed.crypto.seeded`, :mod:`speed.crypto.shared`):
  it never uses evaluation keys, and the ServerApp does not send them (≈ 49–308 MB per holder
  saved, see ``docs/deploy.md``);
* ``jobs/<job id>/predictions.json``: this holder's teacher's answers to the job's
  public queries, computed once at setup (:mod:`speed.deploy.task`).

Per Flower run (a JSON dict the ClientApp keeps in ``context.state``): the seeded noise
stream's position (experiments only; ``production-noise`` draws from the OS CSPRNG and
keeps nothing) and the ids of the pads already used.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from speed import messages
from speed.crypto.seeded import KEYLESS_PAD_MODES
from speed.deploy.config import DeployConfig, NodeConfig
from speed.deploy.sealing import HolderPadKey, open_pad
from speed.deploy.task import teacher_predictions
from speed.errors import InputError
from speed.fsutil import atomic_write_bytes
from speed.holder import DataHolder
from speed.privacy.noise import holder_generators

__all__ = ["HolderNode"]


def connect_holder(holder: DataHolder, bundle: messages.CircuitBundle, keys: messages.EvaluationKeys | None,
                   keyset_id: str) -> None:
    """``holder.connect`` with the evaluation keys, or without them for a seeded- or shared-pad
    bundle (such a holder only adds Δ·v to its pad's bodies or share; every pad must carry ``keyset_id``)."""
    holder.connect(bundle, keys, keyset_id=keyset_id)


class HolderNode:
    def __init__(self, config: DeployConfig, node: NodeConfig):
        if node.role != "holder":
            raise InputError(f"this SuperNode is the {node.role}, not a holder")
        if not 0 <= node.partition_id < config.holders:
            raise InputError(f"partition-id {node.partition_id} is outside 0..{config.holders - 1} for this job")
        self.config, self.node = config, node
        self.holder_id = node.partition_id
        self.job_dir = node.state_dir / "jobs" / config.effective_job_id
        self.pad_key = HolderPadKey(node.state_dir)
        # the job's public noise mechanism (from the run config): this holder samples its shares from it
        self.noise = config.noise_mechanism()

    # -- keysets -------------------------------------------------------------------
    def cached_keysets(self) -> list[str]:
        """Keysets this holder can vote with in this job's pad mode without receiving anything.

        Seeded mode: the bundle, for that pad mode; encode mode: the bundle and the evaluation keys.
        """
        root = self.node.state_dir / "keysets"
        if not root.is_dir():
            return []
        out = []
        for directory in sorted(root.iterdir()):
            try:
                mode = json.loads((directory / "bundle.json").read_text()).get("pad_mode")
            except (OSError, ValueError):
                continue
            if mode == self.config.pad_mode and (mode in KEYLESS_PAD_MODES or (directory / "evaluation.keys").is_file()):
                out.append(directory.name)
        return out

    def _store(self, keyset_id: str, bundle: messages.CircuitBundle, keys: messages.EvaluationKeys | None) -> None:
        directory = self.node.state_dir / "keysets" / keyset_id
        meta = bundle.to_dict()
        program = meta.pop("program")
        if keys is not None:
            atomic_write_bytes(directory / "evaluation.keys", keys.data)
        atomic_write_bytes(directory / "program.bin", program)
        atomic_write_bytes(directory / "bundle.json", json.dumps(meta, sort_keys=True).encode())  # last: marks it usable

    def _load(self, keyset_id: str) -> tuple[messages.CircuitBundle, messages.EvaluationKeys | None]:
        """The stored bundle, and the evaluation keys if this holder has them (``None`` for seeded or shared pads)."""
        directory = self.node.state_dir / "keysets" / keyset_id
        if not (directory / "bundle.json").is_file():
            raise InputError(f"holder {self.holder_id} has no circuit bundle for keyset {keyset_id}: resend it")
        meta = json.loads((directory / "bundle.json").read_text())
        meta["program"] = (directory / "program.bin").read_bytes()
        bundle = messages.CircuitBundle.from_dict(meta)
        keys = None
        if bundle.pad_mode not in KEYLESS_PAD_MODES:  # seeded or shared pads never need the keys: do not read them
            if not (directory / "evaluation.keys").is_file():
                raise InputError(f"holder {self.holder_id} has no evaluation keys for keyset {keyset_id}: resend them")
            keys = messages.EvaluationKeys(keyset_id=keyset_id, data=(directory / "evaluation.keys").read_bytes())
        return bundle, keys

    # -- protocol ------------------------------------------------------------------
    def _holder(self, state: dict[str, Any], keyset_id: str) -> DataHolder:
        rng = None
        if not self.config.production_noise:
            rng = holder_generators(self.config.seed, self.config.holders)[self.holder_id]
            if state.get("rng") is not None:
                rng.bit_generator.state = state["rng"]
        predictions = self._predictions()

        def predict(query_ids: np.ndarray) -> np.ndarray:
            try:
                return np.asarray([predictions[int(q)] for q in np.asarray(query_ids).reshape(-1)], dtype=np.int64)
            except KeyError as exc:
                raise InputError(f"query {exc.args[0]} is not one of this job's queries (setup)") from None

        holder = DataHolder(self.holder_id, predict, rng=rng, noise=self.noise)
        connect_holder(holder, *self._load(keyset_id), keyset_id)
        holder.used_pad_ids = set(state.get("used_pads", []))
        return holder

    def _predictions(self) -> dict[int, int]:
        path = self.job_dir / "predictions.json"
        if not path.is_file():
            raise InputError(f"holder {self.holder_id} was not set up for job {self.config.effective_job_id}")
        return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}

    def setup(self, state: dict[str, Any], keyset_id: str, query_ids: list[int],
              bundle: messages.CircuitBundle | None = None,
              keys: messages.EvaluationKeys | None = None) -> dict[str, Any]:
        """Receive (or reuse) the program bundle (+ evaluation keys in encode mode), answer the job's queries."""
        if keys is not None and bundle is None:
            raise InputError("setup carries evaluation keys without their circuit bundle")
        if bundle is not None:
            if bundle.pad_mode != self.config.pad_mode:
                raise InputError(f"circuit bundle is for pad mode {bundle.pad_mode!r}, this job uses "
                                 f"{self.config.pad_mode!r}")
            probe = DataHolder(self.holder_id, lambda x: x, noise=self.noise)
            connect_holder(probe, bundle, keys, keyset_id)  # checks them against their ids before storing
            self._store(keyset_id, bundle, keys)
        bundle, keys = self._load(keyset_id)
        spec = bundle.spec
        if spec["num_holders"] != self.config.holders:
            raise InputError(f"circuit is for {spec['num_holders']} holders, job says {self.config.holders}")
        ids = sorted({int(q) for q in query_ids})
        existing = {}
        path = self.job_dir / "predictions.json"
        if path.is_file():
            existing = {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
        missing = [q for q in ids if q not in existing]
        if missing:
            labels = teacher_predictions(self.config, self.node, np.asarray(missing, dtype=np.int64))
            existing.update({q: int(v) for q, v in zip(missing, labels)})
            # the teacher's own answers, before any noise: readable by this holder only
            atomic_write_bytes(path, json.dumps({str(k): v for k, v in sorted(existing.items())}).encode(), mode=0o600)
        state.clear()
        state.update({"keyset_id": keyset_id, "rng": None, "used_pads": []})
        return {"holder_id": self.holder_id, "keyset_id": keyset_id, "queries": len(ids),
                "pad_mode": bundle.pad_mode, "production_noise": self.config.production_noise}

    def vote(self, state: dict[str, Any], batch: messages.QueryBatch, pad: messages.Pad,
             burn_rows: list[int]) -> messages.EncryptedVote:
        """One batch (``pad`` sealed to this holder, :mod:`speed.deploy.sealing`): teacher vote + noise share,
        encrypted on the owner's pad (``DataHolder.answer``).

        ``burn_rows``: sizes of the batches of this job answered in an earlier run (resume);
        in seeded-noise mode their noise is drawn and discarded first so that every batch
        gets the noise it would have had in one uninterrupted run.
        """
        if "keyset_id" not in state:
            raise InputError(f"holder {self.holder_id} was not set up in this run")
        holder = self._holder(state, state["keyset_id"])
        if holder.rng is not None:
            k = holder.spec.num_classes
            for rows in burn_rows:
                holder.noisy_votes(np.eye(k, dtype=np.int64)[np.zeros(int(rows), dtype=np.int64)])
        holder.receive_pad(open_pad(pad, self.pad_key.private_key()))  # sealed by the owner to this holder
        vote, _ = holder.answer(batch, np.asarray(batch.query_ids, dtype=np.int64))
        if holder.rng is not None:
            state["rng"] = holder.rng.bit_generator.state
        state["used_pads"] = sorted(holder.used_pad_ids)
        return vote
