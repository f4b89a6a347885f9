"""Typed messages between the parties.  Every payload is ``bytes`` or plain data, so the
in-process simulation and the Flower deployment carry exactly the same objects.

Flow per run:   owner → server, holders : :class:`CircuitBundle`, :class:`EvaluationKeys`
Flow per batch: owner → holder i       : :class:`Pad` (one-time encryption of zero, or its share)
                owner → server         : :class:`PadShell` (``pad_mode="shared"`` only)
                owner → holders        : :class:`QueryBatch` (public query ids)
                holder i → server      : :class:`EncryptedVote`
                server → owner         : :class:`EncryptedLabels`

Nothing here can carry a secret key: the only key material type is
:class:`EvaluationKeys` (bootstrapping and key-switching keys, public by design).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from speed.errors import InputError


@dataclass(frozen=True)
class Message:
    """Base class: conversion to and from a flat dict of bytes/str/int (Flower records)."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        missing = names - optional - set(data)
        if missing:
            raise InputError(f"{cls.__name__} message lacks fields {sorted(missing)}")
        kwargs = {n: data[n] for n in names if n in data}
        for f in dataclasses.fields(cls):
            if isinstance(kwargs.get(f.name), list):
                kwargs[f.name] = tuple(kwargs[f.name])
        return cls(**kwargs)

    @property
    def payload_bytes(self) -> int:
        """Size of the bytes fields (what dominates the wire size)."""
        return sum(len(v) for v in dataclasses.astuple(self) if isinstance(v, (bytes, bytearray)))


@dataclass(frozen=True)
class CircuitBundle(Message):
    """The compiled server program (public), the spec it was compiled for, and how holders
    encrypt: ``pad_mode`` "seeded" (add Δ·v to a seeded pad's bodies, ``pad_layout``),
    "encode" (run the program's ``encode`` on the pad with evaluation keys) or "shared" (add Δ·v
    to a share of one pad's bodies; the server sums the shares into the pad's shell)."""

    spec: dict
    program: bytes
    program_id: str
    pad_mode: str = "seeded"
    pad_layout: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationKeys(Message):
    """Evaluation keys (public: they let anyone compute, never decrypt)."""

    keyset_id: str
    data: bytes


@dataclass(frozen=True)
class QueryBatch(Message):
    """Public query ids (indices into the public pool) answered together in one circuit call."""

    batch_id: int
    query_ids: tuple[int, ...]


@dataclass(frozen=True)
class Pad(Message):
    """One-time encryption of zero (shape (batch, K)) issued by the owner to one holder."""

    pad_id: str
    keyset_id: str
    holder_id: int
    batch_id: int
    data: bytes


@dataclass(frozen=True)
class PadShell(Message):
    """``pad_mode="shared"``: the batch's one encryption of zero with its bodies zeroed (seeds
    only, public), owner → server; the holders hold the bodies' additive shares."""

    shell_id: str
    keyset_id: str
    batch_id: int
    data: bytes


@dataclass(frozen=True)
class EncryptedVote(Message):
    """A holder's encrypted noisy votes for one batch: encode(pad, P·e + η)."""

    batch_id: int
    holder_id: int
    pad_id: str
    keyset_id: str
    data: bytes


@dataclass(frozen=True)
class EncryptedLabels(Message):
    """The server's encrypted argmax (one label index per query of the batch) and, when the circuit
    has a range check (``CircuitSpec.range_check``), its encrypted result in ``check``."""

    batch_id: int
    query_ids: tuple[int, ...]
    holder_ids: tuple[int, ...]
    keyset_id: str
    data: bytes
    check: bytes = b""
