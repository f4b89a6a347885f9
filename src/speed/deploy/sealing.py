"""Pads sealed end to end from the model owner to one holder (HPKE, RFC 9180).

Why.  A holder's encrypted vote is its pad with the vote added: in both pad modes only
the LWE *bodies* change (seeded: b + Δ·v on the seeded form; encode: ``zero + vote``
adds a clear value, which also only moves the body).  Whoever holds the pad *and* the
vote reads ``Δ·v`` off their difference.  In a Flower deployment everything flows
through the SuperLink and the ServerApp, i.e. the aggregation server, which sees every
vote.  So the pads must not be readable by the router: the owner seals each pad to its
holder's X25519 public key and the server forwards opaque bytes.

Scheme: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from
``cryptography`` (no primitive is implemented here).  The HPKE ``info`` binds the sealed
bytes to (pad id, keyset id, holder id, batch id), so a sealed pad moved to another
holder, batch or keyset fails to open.

Keys.  Each holder keeps its private key in ``state-dir/pad-key.pem`` (0600, created on
first use) and announces the public key in ``query.hello``.  The owner checks it against
a pinned copy (node-config ``holder-keys='<dir>'`` with ``holder-<i>.pub`` files:
exchanged out of band, what a real federation should do) or, without pins, trusts the
first key it sees for a holder and refuses a different one later (kept in
``state-dir/holder-keys.json``).  An honest-but-curious server forwards keys unchanged;
pinning also stops a server that would substitute its own key.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from speed import messages
from speed.errors import CiphertextError, InputError
from speed.fsutil import atomic_create_bytes, atomic_write_text

__all__ = ["HolderPadKey", "PinnedHolderKeys", "open_pad", "seal_pad"]


def _suite():
    from cryptography.hazmat.primitives import hpke

    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def _info(pad: messages.Pad) -> bytes:
    return f"speed-pad-v1|{pad.pad_id}|{pad.keyset_id}|{pad.holder_id}|{pad.batch_id}".encode()


def seal_pad(pad: messages.Pad, holder_public_key: str) -> messages.Pad:
    """The same Pad with ``data`` sealed to the holder's public key (hex of 32 raw bytes)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        public = X25519PublicKey.from_public_bytes(bytes.fromhex(holder_public_key))
    except ValueError as exc:
        raise InputError(f"holder {pad.holder_id}'s pad key is not an X25519 public key") from exc
    return replace(pad, data=_suite().encrypt(pad.data, public, info=_info(pad)))


def open_pad(sealed: messages.Pad, private_key) -> messages.Pad:
    try:
        return replace(sealed, data=_suite().decrypt(sealed.data, private_key, info=_info(sealed)))
    except Exception as exc:
        raise CiphertextError(
            f"pad {sealed.pad_id} could not be opened with holder {sealed.holder_id}'s key "
            "(sealed to another holder, batch or keyset, or altered on the way)"
        ) from exc


class HolderPadKey:
    """A holder's X25519 key pair for receiving pads, kept in its state directory."""

    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / "pad-key.pem"

    def private_key(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not self.path.is_file():
            key = X25519PrivateKey.generate()
            atomic_create_bytes(self.path, key.private_bytes(  # first writer wins if two processes race
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
        return serialization.load_pem_private_key(self.path.read_bytes(), password=None)

    def public_hex(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.private_key().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


class PinnedHolderKeys:
    """The owner's view of holders' pad keys: pinned files, else trust on first use."""

    def __init__(self, state_dir: str | os.PathLike, pinned_dir: str | os.PathLike | None = None):
        self.tofu_path = Path(state_dir) / "holder-keys.json"
        self.pinned_dir = Path(pinned_dir).expanduser() if pinned_dir else None

    def check(self, keys: dict[int, str]) -> dict[int, str]:
        """``keys`` if every one matches its pin (or first sighting); raises otherwise."""
        known = json.loads(self.tofu_path.read_text()) if self.tofu_path.is_file() else {}
        changed = False
        for holder, key in keys.items():
            key = str(key).strip().lower()
            if self.pinned_dir is not None:
                pin = self.pinned_dir / f"holder-{int(holder)}.pub"
                if not pin.is_file():
                    raise InputError(f"no pinned pad key for holder {holder} in {self.pinned_dir}")
                if pin.read_text().strip().lower() != key:
                    raise InputError(f"holder {holder}'s pad key differs from the pinned one: refusing to send it pads")
                continue
            seen = known.get(str(int(holder)))
            if seen is None:
                known[str(int(holder))] = key
                changed = True
            elif seen != key:
                raise InputError(
                    f"holder {holder}'s pad key changed since it was first seen ({self.tofu_path}): refusing to "
                    "send it pads (remove that entry if the holder really rotated its key)"
                )
        if changed:
            atomic_write_text(self.tofu_path, json.dumps(known, indent=1, sort_keys=True))
        return {int(h): str(k).strip().lower() for h, k in keys.items()}
