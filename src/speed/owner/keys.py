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
from speed.crypto.runtime import digest, load_value
from speed.crypto.spec import CircuitSpec
from speed.errors import CiphertextError


class OwnerKeys:
    """Secret and evaluation keys for one compiled SPEED module."""

    def __init__(self, server_program, spec: CircuitSpec, key_path: Path | None = None):
        from concrete import fhe
        from concrete.compiler import ClientProgram

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
        self._zeros = np.zeros((spec.batch_size, spec.num_classes), dtype=np.int64)

    def evaluation_keys(self) -> messages.EvaluationKeys:
        return messages.EvaluationKeys(keyset_id=self.keyset_id, data=self._evaluation)

    def new_pad(self, holder_id: int, batch_id: int) -> messages.Pad:
        """A fresh encryption of zero for ``holder_id``'s votes on ``batch_id`` (single use)."""
        from concrete import fhe
        from concrete.compiler import Value as RawValue

        value = fhe.Value(self._encode_client.prepare_input(RawValue(self._zeros), 0))
        return messages.Pad(
            pad_id=secrets.token_hex(12),
            keyset_id=self.keyset_id,
            holder_id=holder_id,
            batch_id=batch_id,
            data=value.serialize(),
        )

    def decrypt_labels(self, labels: messages.EncryptedLabels) -> np.ndarray:
        """Label index per query; refuses ciphertexts of another keyset or out-of-range labels."""
        if labels.keyset_id != self.keyset_id:
            raise CiphertextError(
                f"labels of batch {labels.batch_id} were computed under keyset {labels.keyset_id}, "
                f"not this owner's {self.keyset_id}"
            )
        value = load_value(labels.data, f"encrypted labels of batch {labels.batch_id}")
        try:
            decrypted = self._client.decrypt(value, function_name="aggregate")
        except Exception as exc:
            raise CiphertextError(f"labels of batch {labels.batch_id} could not be decrypted") from exc
        out = np.atleast_1d(np.asarray(decrypted, dtype=np.int64))
        if out.shape != (self.spec.batch_size,) or out.min() < 0 or out.max() >= self.spec.num_classes:
            raise CiphertextError(
                f"labels of batch {labels.batch_id} decrypt to values outside [0, {self.spec.num_classes})"
                " (foreign keyset or corrupted ciphertext)"
            )
        return out[: len(labels.query_ids)]
