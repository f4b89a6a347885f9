"""``speed.messages`` dataclasses in and out of Flower records.

One message ``m`` stored under name ``n`` in a :class:`flwr.app.RecordDict` becomes

* ``n`` → ConfigRecord: ``type`` (the class name) and ``fields`` (JSON of every non-bytes
  field, from ``m.to_dict()``);
* ``n.bytes`` → ArrayRecord: one :class:`flwr.app.Array` (``stype="raw-bytes"``, dtype
  ``uint8``) per bytes field: ciphertexts, evaluation keys, the compiled program.

Why an ArrayRecord for the bytes: Flower 1.42 splits every Array into ``ArrayChunk``
objects of at most 5 MiB (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``) that are pushed and pulled
one by one, so evaluation keys of 20–55 MB never travel as one oversized HTTP body; a
ConfigRecord value is sent as one object.  ``tests/test_deploy.py`` moves the real keys
through a SuperLink.

Plain values that are not messages (settings, counters, error text) go in a ConfigRecord
named by the caller; :func:`put_json` / :func:`get_json` store one JSON document.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, TypeVar

from speed import messages
from speed.errors import InputError

__all__ = ["content_bytes", "get", "get_json", "get_many", "put", "put_json", "put_many"]

M = TypeVar("M", bound=messages.Message)
_TYPES = {cls.__name__: cls for cls in (
    messages.CircuitBundle, messages.EvaluationKeys, messages.QueryBatch, messages.Pad,
    messages.EncryptedVote, messages.EncryptedLabels, messages.PadShell,
)}
STYPE = "raw-bytes"


def put(content, name: str, message: messages.Message) -> None:
    """Store ``message`` in ``content`` (a RecordDict) under ``name``."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    if type(message).__name__ not in _TYPES:
        raise InputError(f"{type(message).__name__} is not a speed message")
    plain, blobs = {}, {}
    for key, value in message.to_dict().items():
        if isinstance(value, (bytes, bytearray)):
            blobs[key] = Array(dtype="uint8", shape=(len(value),), stype=STYPE, data=bytes(value))
        else:
            plain[key] = value
    content[name] = ConfigRecord({"type": type(message).__name__, "fields": json.dumps(plain, sort_keys=True)})
    content[f"{name}.bytes"] = ArrayRecord(blobs)


def get(content, name: str, cls: type[M]) -> M:
    """The message stored under ``name``; refuses a missing record or another message type."""
    records = content.config_records
    if name not in records:
        raise InputError(f"message lacks the {cls.__name__} record {name!r}")
    meta = records[name]
    if meta.get("type") != cls.__name__:
        raise InputError(f"record {name!r} holds a {meta.get('type')}, expected {cls.__name__}")
    data: dict[str, Any] = json.loads(str(meta["fields"]))
    arrays = content.array_records.get(f"{name}.bytes")
    if arrays is not None:
        for key, array in arrays.items():
            if array.stype != STYPE:
                raise InputError(f"record {name!r}: field {key!r} is not raw bytes")
            data[key] = bytes(array.data)
    return cls.from_dict(data)


def put_many(content, prefix: str, items: Iterable[messages.Message]) -> int:
    items = list(items)
    for i, item in enumerate(items):
        put(content, f"{prefix}.{i}", item)
    put_json(content, f"{prefix}.count", len(items))
    return len(items)


def get_many(content, prefix: str, cls: type[M]) -> list[M]:
    count = int(get_json(content, f"{prefix}.count", 0))
    return [get(content, f"{prefix}.{i}", cls) for i in range(count)]


def put_json(content, name: str, value: Any) -> None:
    from flwr.app import ConfigRecord

    content[name] = ConfigRecord({"json": json.dumps(value, sort_keys=True)})


def get_json(content, name: str, default: Any = ...) -> Any:
    records = content.config_records
    if name not in records:
        if default is ...:
            raise InputError(f"message lacks the record {name!r}")
        return default
    return json.loads(str(records[name]["json"]))


def content_bytes(content) -> int:
    """Payload size of a RecordDict: bytes of every Array plus the text of every ConfigRecord."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(a.data) for a in record.values())
    for record in content.config_records.values():
        for value in record.values():
            total += len(value) if isinstance(value, (str, bytes)) else 8
    return total
