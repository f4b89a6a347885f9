"""The owner's keyset: the only place in ``speed`` where a secret key exists.

concrete-python has no public-key encryption, so the owner stands in for it: it
issues each holder *pads*, fresh encryptions of zero, and a holder adds its clear
noisy vote to a pad homomorphically (``encode``).  A pad is single-use: two votes on
the same pad would reveal their difference to the server.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np

from speed import messages
from speed.crypto import shared
from speed.crypto.circuit import aggregate_arity
from speed.crypto.runtime import ClearArguments, digest, load_value
from speed.crypto.seeded import (
    KEYLESS_PAD_MODES,
    PAD_MODES,
    SeededLayout,
    check_pad_mode,
    discover_layout,
)
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError, InputError


class OwnerKeys:
    """Secret and evaluation keys for one compiled SPEED module."""

    def __init__(
        self, server_program, spec: CircuitSpec, key_path: Path | None = None, pad_mode: str = "seeded"
    ):
        from concrete import fhe
        from concrete.compiler import ClientProgram

        if pad_mode not in PAD_MODES:
            raise InputError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        check_pad_mode(spec, pad_mode)
        self.spec = spec
        self._client = fhe.Client(server_program.client_specs)
        if key_path is not None and Path(key_path).exists():
            self._client.keys.load(key_path)
        else:
            self._client.keygen(force=True)
            if key_path is not None:
                Path(key_path).parent.mkdir(parents=True, exist_ok=True)
                self._client.keys.save(key_path)
                Path(key_path).chmod(0o600)  # secret: owner-only
        self._evaluation = self._client.evaluation_keys.serialize()
        self.keyset_id = digest(self._evaluation)
        # One client program for all pads: Client.encrypt rebuilds it on every call (~165 ms).
        program = ClientProgram.create_encrypted(
            server_program.client_specs.program_info, self._client.keys._keyset  # noqa: SLF001
        )
        self._encode_client = program.get_client_circuit("encode")
        self._aggregate_client = program.get_client_circuit("aggregate")
        self._zeros = np.zeros((spec.batch_size, spec.num_classes), dtype=np.int64)
        self.pad_mode = pad_mode
        self.layout = self._verify_seeded_layout(server_program) if pad_mode in KEYLESS_PAD_MODES else None
        self.encode_sizes = self._encode_sizes(server_program) if pad_mode == "encode" else None

    def bundle_layout(self) -> dict:
        """What holders and the server need to read pads and votes, as the bundle carries it: the
        seeded layout (keyless modes) or the exact byte sizes of a pad and a vote (``encode``)."""
        if self.layout is not None:
            return self.layout.to_dict()
        return dict(self.encode_sizes or {})

    def _encode_sizes(self, server_program) -> dict:
        """``encode`` mode: the exact serialized sizes of a pad and of an encoded vote (one run of
        ``encode`` on a pad; concrete's sizes depend only on the compiled program), so that holders
        and the server refuse any other length (trailing or missing bytes)."""
        pad = self.new_pad(0, -1).data
        clear = ClearArguments(server_program, "encode")
        vote = server_program.run(load_value(pad), clear.prepare(self._zeros, 1),
                                  evaluation_keys=self._client.evaluation_keys, function_name="encode")
        return {"pad_bytes": len(pad), "vote_bytes": len(vote.serialize())}

    def _verify_seeded_layout(self, server_program) -> SeededLayout:
        """Find and check the seeded pad layout and Δ against concrete (see speed.crypto.seeded)."""
        from concrete import fhe
        from concrete.compiler import Value as RawValue

        evaluation = self._client.evaluation_keys
        clear = ClearArguments(server_program, "encode")

        def make_pad() -> bytes:
            return fhe.Value(self._encode_client.prepare_input(RawValue(self._zeros), 0)).serialize()

        def decrypt_after_add(data: bytes) -> np.ndarray:
            out = server_program.run(
                fhe.Value.deserialize(data), clear.prepare(self._zeros, 1),
                evaluation_keys=evaluation, function_name="encode",
            )
            return self._client.decrypt(out, function_name="encode")

        info = server_program.client_specs.program_info
        keyids = {info.input_keyid_at(i, "aggregate") for i in range(aggregate_arity(self.spec))}
        if keyids != {info.input_keyid_at(0, "encode")}:
            raise CiphertextError("aggregate inputs and encode's pad use different keys: use pad_mode='encode'")
        return discover_layout(make_pad, self._zeros.size, decrypt_after_add, max_abs=self.spec.share_bound)

    def evaluation_keys(self) -> messages.EvaluationKeys:
        return messages.EvaluationKeys(keyset_id=self.keyset_id, data=self._evaluation)

    def new_pad(self, holder_id: int, batch_id: int) -> messages.Pad:
        """A fresh encryption of zero for ``holder_id``'s votes on ``batch_id`` (single use)."""
        from concrete import fhe
        from concrete.compiler import Value as RawValue

        if self.pad_mode == "shared":
            raise InputError("shared pads are issued for a whole batch at once: use new_shared_pads")
        if self.pad_mode == "seeded":  # holder's own input slot of aggregate, seeded form
            value = fhe.Value(self._aggregate_client.prepare_input(RawValue(self._zeros), holder_id))
        else:  # encode's first argument; the holder runs encode
            value = fhe.Value(self._encode_client.prepare_input(RawValue(self._zeros), 0))
        return messages.Pad(
            pad_id=secrets.token_hex(12),
            keyset_id=self.keyset_id,
            holder_id=holder_id,
            batch_id=batch_id,
            data=value.serialize(),
        )

    def new_shared_pads(self, holder_ids: list[int], batch_id: int) -> tuple[messages.PadShell, list[messages.Pad]]:
        """``pad_mode="shared"``: one fresh seeded encryption of zero of ``aggregate``'s class-sum
        input for ``batch_id``, split into the server's shell and one body share per holder
        (:mod:`speed.crypto.shared`; every share single use)."""
        if self.pad_mode != "shared":
            raise InputError(f"shared pads need pad_mode 'shared', this owner uses {self.pad_mode!r}")
        holder_ids = [int(h) for h in holder_ids]
        if sorted(holder_ids) != list(range(self.spec.num_holders)):
            raise InputError(f"a shared pad is split among all {self.spec.num_holders} holders, got {len(holder_ids)}")
        shell, shares = shared.split_pad(self.layout, self._fresh_sum_pad(), len(holder_ids))
        return self._shell_and_pads(batch_id, shell, holder_ids, shares)

    def stand_in_shared_pads(self, batch_id: int, missing_ids: list[int],
                             answered_sum: np.ndarray) -> tuple[messages.PadShell, list[messages.Pad]]:
        """``pad_mode="shared"``, holders ``missing_ids`` did not answer ``batch_id``: a new shell
        (a second fresh encryption of zero) and one stand-in share per missing slot, summing with
        ``answered_sum`` (the answering holders' shares of the first pad) to its bodies
        (:func:`speed.crypto.shared.stand_in_shares`; no missing holder's own share is revealed)."""
        if self.pad_mode != "shared":
            raise InputError(f"stand-in shares need pad_mode 'shared', this owner uses {self.pad_mode!r}")
        missing_ids = [int(h) for h in missing_ids]
        if not missing_ids or len(set(missing_ids)) != len(missing_ids) or not all(
                0 <= h < self.spec.num_holders for h in missing_ids):
            raise InputError(f"missing holders must be distinct ids in [0, {self.spec.num_holders}), got {missing_ids}")
        shell, shares = shared.stand_in_shares(self.layout, self._fresh_sum_pad(), answered_sum, len(missing_ids))
        return self._shell_and_pads(batch_id, shell, missing_ids, shares)

    def _fresh_sum_pad(self) -> bytes:
        """A fresh seeded encryption of zero of ``aggregate``'s class-sum input (concrete's encryption)."""
        from concrete import fhe
        from concrete.compiler import Value as RawValue

        return fhe.Value(self._aggregate_client.prepare_input(RawValue(self._zeros), 0)).serialize()

    def _shell_and_pads(self, batch_id: int, shell: bytes, holder_ids: list[int],
                        shares: list[np.ndarray]) -> tuple[messages.PadShell, list[messages.Pad]]:
        pads = [
            messages.Pad(pad_id=secrets.token_hex(12), keyset_id=self.keyset_id, holder_id=h, batch_id=batch_id,
                         data=share.tobytes())
            for h, share in zip(holder_ids, shares)
        ]
        return messages.PadShell(shell_id=secrets.token_hex(12), keyset_id=self.keyset_id, batch_id=batch_id,
                                 data=shell), pads

    def decrypt_labels(self, labels: messages.EncryptedLabels) -> np.ndarray:
        """Label index per query; refuses ciphertexts of another keyset or out-of-range labels, and,
        with a range check (``CircuitSpec.range_check``), a batch in which a query's check failed
        (:class:`LabelsRefusedError`; the caller has already charged the batch)."""
        if labels.keyset_id != self.keyset_id:
            raise CiphertextError(
                f"labels of batch {labels.batch_id} were computed under keyset {labels.keyset_id}, "
                f"not this owner's {self.keyset_id}"
            )
        checked = self.spec.range_check != "off"
        if checked != bool(labels.check):
            raise CiphertextError(f"labels of batch {labels.batch_id} {'lack' if checked else 'carry'} a range check "
                                  f"(this circuit's range check: {self.spec.range_check!r})")
        values = [load_value(labels.data, f"encrypted labels of batch {labels.batch_id}")]
        if checked:
            values.append(load_value(labels.check, f"encrypted range check of batch {labels.batch_id}"))
        try:
            decrypted = self._client.decrypt(*values, function_name="aggregate")
        except Exception as exc:
            raise CiphertextError(f"labels of batch {labels.batch_id} could not be decrypted") from exc
        label, check = decrypted if checked else (decrypted, None)
        out = np.atleast_1d(np.asarray(label, dtype=np.int64))
        real = len(labels.query_ids)
        if check is not None:
            passed = np.atleast_1d(np.asarray(check, dtype=np.int64))
            failed = [int(q) for q, ok in zip(labels.query_ids, passed[:real] == self.spec.range_check_passed) if not ok]
            if passed.shape != (self.spec.batch_size,) or failed:
                raise LabelsRefusedError(
                    f"batch {labels.batch_id} refused: class sums outside the compiled range for queries "
                    f"{failed[:5]}{'...' if len(failed) > 5 else ''} (corrupted or dishonest message; the batch is charged)"
                )
        if out.shape != (self.spec.batch_size,) or out.min() < 0 or out.max() >= self.spec.num_classes:
            raise CiphertextError(
                f"labels of batch {labels.batch_id} decrypt to values outside [0, {self.spec.num_classes})"
                " (foreign keyset or corrupted ciphertext)"
            )
        return out[:real]


class LabelsRefusedError(CiphertextError):
    """The circuit's encrypted range check failed for a query of the batch: a class sum left the
    compiled range, so its label may be wrong; the owner releases none of the batch's labels."""
