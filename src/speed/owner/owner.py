"""The model owner (docs/spec.md §2 steps 5–6): compiles the circuit, holds the keys, issues pads,
decrypts one label per query."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from speed import messages
from speed.crypto.circuit import server_program_path
from speed.crypto.runtime import digest, load_server_program
from speed.crypto.seeded import pad_mode_for
from speed.crypto.spec import CircuitSpec
from speed.owner.keys import OwnerKeys
from speed.params import default_cache_dir


class ModelOwner:
    """Owner of the secret key.  ``timings`` records compile and keygen seconds."""

    def __init__(
        self,
        spec: CircuitSpec,
        cache_dir: Path | None = None,
        key_path: Path | None = None,
        pad_mode: str | None = None,
    ):
        self.spec = spec
        self.timings: dict[str, float] = {}
        start = time.perf_counter()
        path = server_program_path(spec, cache_dir or default_cache_dir())
        self._program_bytes = path.read_bytes()
        server_program = self._server_program = load_server_program(path)
        self.timings["compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        self.keys = OwnerKeys(server_program, spec, key_path, pad_mode or pad_mode_for(spec))
        self.timings["keygen_s"] = time.perf_counter() - start
        self.pads_issued: dict[str, tuple[int, int]] = {}
        self._shells: dict[int, messages.PadShell] = {}

    def circuit_bundle(self) -> messages.CircuitBundle:
        return messages.CircuitBundle(
            spec=self.spec.to_dict(), program=self._program_bytes, program_id=digest(self._program_bytes),
            pad_mode=self.keys.pad_mode, pad_layout=self.keys.bundle_layout(),
        )

    def evaluation_keys(self) -> messages.EvaluationKeys:
        return self.keys.evaluation_keys()

    def issue_pads(self, batch_id: int, holder_ids: range | list[int]) -> list[messages.Pad]:
        """One fresh pad per holder for ``batch_id`` (shared pads: one share per holder of the
        batch's pad, whose shell :meth:`pad_shell` hands to the server)."""
        if self.keys.pad_mode == "shared":
            shell, pads = self.keys.new_shared_pads(list(holder_ids), batch_id)
            self._shells[batch_id] = shell
        else:
            pads = [self.keys.new_pad(h, batch_id) for h in holder_ids]
        for pad in pads:
            self.pads_issued[pad.pad_id] = (pad.holder_id, batch_id)
        return pads

    def pad_shell(self, batch_id: int) -> messages.PadShell | None:
        """The server's part of ``batch_id``'s shared pad (None in the other pad modes); once."""
        return self._shells.pop(batch_id, None)

    def decrypt(self, labels: messages.EncryptedLabels) -> np.ndarray:
        return self.keys.decrypt_labels(labels)

    def pbs_count(self) -> int:
        """Programmable bootstraps of one ``aggregate`` call (all queries of a batch)."""
        return int(self._server_program.programmable_bootstrap_count("aggregate"))

    def p_error(self) -> float:
        """concrete's error probability of one PBS (its reported ``p_error``)."""
        return float(self._server_program.p_error)

    def query_p_error(self) -> float:
        """Probability that a PBS behind one query's label is wrong, from the compiled call's
        ``global_p_error`` (``CircuitSpec.per_query_p_error``); at most ``spec.global_p_error``."""
        return self.spec.per_query_p_error(float(self._server_program.global_p_error))
