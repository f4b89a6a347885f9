"""Certificates and SuperNode authentication keys for a deployment, made with ``cryptography``.

* :func:`make_certificates`: a throw-away certificate authority and one server certificate
  for the SuperLink (SubjectAltNames: the given host names / IP addresses).  SuperNodes and
  the ``flwr`` CLI trust the CA file; the SuperLink serves the certificate and key.
* :func:`make_node_key`: an ECDSA P-384 key pair in OpenSSH format, the form that
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.

Private keys are written with mode 0600, certificates and public keys with 0644 (atomically,
:mod:`speed.fsutil`).  For a real federation the CA should be the organisation's (or a public
one); these helpers exist so that a local run, or a test federation, never needs ``openssl``
or a pre-made certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from speed.fsutil import atomic_write_bytes

__all__ = ["Certificates", "NodeKey", "make_certificates", "make_node_key"]


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    private_key: Path
    public_key: Path


def _san(names: list[str]):
    from cryptography import x509

    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_certificates(directory: str | os.PathLike, hosts: list[str] | None = None,
                      days: int = 2) -> Certificates:
    """CA + SuperLink server certificate valid for ``hosts`` and always for loopback.

    Loopback (localhost, 127.0.0.1, ::1) is always included: the SuperLink's own SuperExec
    and ServerApp reach its Runtime API at 127.0.0.1 (flwr 1.42 rewrites a 0.0.0.0 bind
    address to 127.0.0.1) and verify the same certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = list(dict.fromkeys(list(hosts or []) + ["localhost", "127.0.0.1", "::1"]))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "speed deployment CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    atomic_write_bytes(out.ca_cert, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write_bytes(out.server_cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write_bytes(out.server_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    return out


def make_node_key(directory: str | os.PathLike, name: str) -> NodeKey:
    """ECDSA P-384 key pair (OpenSSH format) authenticating one SuperNode to the SuperLink."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(directory / f"{name}.key", directory / f"{name}.pub")
    atomic_write_bytes(out.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), mode=0o600)
    atomic_write_bytes(out.public_key, key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" speed-{name}\n".encode(), mode=0o644)
    return out
