"""Thin, key-free helpers around concrete's runtime objects (used by every party).

Nothing here can generate, hold or use a secret key: the server and the holders import
this module, the owner's key handling lives in :mod:`speed.owner.keys`.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from speed.errors import CiphertextError


def digest(data: bytes, length: int = 16) -> str:
    """Short SHA-256 fingerprint, used as the id of a keyset or a compiled program."""
    return hashlib.sha256(data).hexdigest()[:length]


def load_server_program(program: bytes | Path):
    """``fhe.Server`` from the bytes (or path) of a saved server program."""
    from concrete import fhe

    if isinstance(program, Path):
        return fhe.Server.load(program)
    with tempfile.TemporaryDirectory() as tmp:  # a scratch copy for the loader, gone after it
        path = Path(tmp) / "server.zip"
        path.write_bytes(program)  # not through speed.fsutil: nothing durable, no reader but this call
        return fhe.Server.load(path)


def load_evaluation_keys(data: bytes):
    from concrete import fhe

    try:
        return fhe.EvaluationKeys.deserialize(data)
    except Exception as exc:  # concrete raises RuntimeError with a long message
        raise CiphertextError("evaluation keys could not be read (corrupted bytes?)") from exc


def load_value(data: bytes, what: str = "ciphertext"):
    """``fhe.Value`` from bytes; corrupted bytes give a one-line :class:`CiphertextError`."""
    from concrete import fhe

    if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
        raise CiphertextError(f"{what} is empty or not bytes")
    try:
        return fhe.Value.deserialize(bytes(data))
    except Exception as exc:
        raise CiphertextError(f"{what} could not be read (corrupted or truncated bytes)") from exc


class ClearArguments:
    """Prepares clear (unencrypted) arguments for a compiled function without any keyset.

    ``fhe.Client.encrypt`` would build a client program, and a client without keys would
    generate a keyset on the fly; a simulated client program prepares clear arguments
    byte-identically and touches no key.
    """

    def __init__(self, server, function_name: str):
        from concrete.compiler import ClientProgram

        program = ClientProgram.create_simulated(server.client_specs.program_info)
        self._circuit = program.get_client_circuit(function_name)

    def prepare(self, array: np.ndarray, position: int):
        from concrete import fhe
        from concrete.compiler import Value as RawValue

        raw = RawValue(np.ascontiguousarray(array, dtype=np.int64))
        return fhe.Value(self._circuit.simulate_prepare_input(raw, position))
