"""The Flower ClientApp run by every SuperNode: the model owner's or a data holder's side.

``flower-supernode --node-config "role='holder' partition-id=3 state-dir='...'"`` makes a
node holder 3; ``role='owner'`` makes it the model owner (see
:class:`speed.deploy.config.NodeConfig`).  On Flower's simulation engine a virtual node
has no role, only a partition id: ``NodeConfig.from_context`` maps it (``speed deploy
simulate``, :mod:`speed.deploy.simulation`).  Message types (all in Flower's ``query``
category; contents are ``speed.messages`` dataclasses, see :mod:`speed.deploy.records`):

==================  =========  ============================================================
``query.hello``     both       role, partition id, cached keysets, holder's pad key
``query.setup``     owner      holders' pad keys → CircuitBundle, EvaluationKeys, plan, pads (+ PadShell)
``query.setup``     holder     CircuitBundle (unless cached; + EvaluationKeys in encode mode), query ids
``query.vote``      holder     QueryBatch + sealed Pad → EncryptedVote
``query.pads``      owner      batch id, holder ids, pad keys → sealed Pads (+ PadShell)
``query.fill``      owner      QueryBatch, missing holder ids → stand-in EncryptedVotes (+ new PadShell)
``query.labels``    owner      EncryptedLabels (+ next batch) → ack (counts, ε) + sealed Pads (+ PadShell)
``query.finish``    owner      → job summary (counts, ε; never a label)
==================  =========  ============================================================

Flower starts a fresh process for every message, so everything a node must remember
lives on its disk (``state-dir``) or, for one run, in ``context.state``.  One Flower mod
(:func:`speed_mod`, ``ClientApp(mods=[...])``) wraps every handler: it adds the handler's
time to the reply and turns an exception into an ``error`` record (one line), which the
ServerApp reports and acts on.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from speed import messages
from speed.deploy import records
from speed.deploy.config import DeployConfig, NodeConfig

STATE = "speed.state"


def speed_mod(message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower mod around every handler of this app: the handler's time goes into the reply's ``timing``
    record (the ServerApp sums it per party), and any exception becomes a one-line ``error`` record,
    which the ServerApp reports and acts on (the node's log keeps the trace)."""
    start = time.perf_counter()
    try:
        reply = call_next(message, context)
        records.put_json(reply.content, "timing", {"handler_s": time.perf_counter() - start})
        return reply
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        content = RecordDict()
        records.put_json(content, "error", {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__,
                                            "pid": os.getpid()})
        return Message(content, reply_to=message)


app = ClientApp(mods=[speed_mod])


def _state(context: Context) -> dict[str, Any]:
    return dict(records.get_json(context.state, STATE, {}))


def _save_state(context: Context, state: dict[str, Any]) -> None:
    records.put_json(context.state, STATE, state)


def _parties(context: Context) -> tuple[DeployConfig, NodeConfig]:
    """The job (run config) and this node's role (node config, or its partition in a simulation)."""
    config = DeployConfig.from_run_config(context.run_config)
    return config, NodeConfig.from_context(context.node_config, context.run_config, context.node_id)


def _owner(config: DeployConfig, node: NodeConfig, context: Context, at_setup: bool = False):
    from speed.deploy.owner_node import OwnerNode

    keyset = "" if at_setup else _state(context).get("keyset_id", "")
    return OwnerNode(config, node, session=str(context.run_id), expected_keyset=keyset)


def _holder(config: DeployConfig, node: NodeConfig):
    from speed.deploy.holder_node import HolderNode

    return HolderNode(config, node)


@app.query("hello")
def hello(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    out = RecordDict()
    info = {"role": node.role, "partition_id": node.partition_id, "pid": os.getpid(), "keysets": []}
    if node.role == "holder" and 0 <= node.partition_id < config.holders:
        holder = _holder(config, node)
        info["keysets"] = holder.cached_keysets()
        info["pad_key"] = holder.pad_key.public_hex()
    records.put_json(out, "hello", info)
    return Message(out, reply_to=message)


@app.query("setup")
def setup(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    out = RecordDict()
    if node.role == "owner":
        result = _owner(config, node, context, at_setup=True).setup(records.get_json(message.content, "pad_keys"))
        _save_state(context, {"keyset_id": result["keys"].keyset_id})  # later messages must use these keys
        records.put(out, "bundle", result["bundle"])
        records.put(out, "keys", result["keys"])
        records.put_many(out, "pads", result["pads"])
        if result["shell"] is not None:  # shared pads: the first batch's shell, for the server
            records.put(out, "shell", result["shell"])
        records.put_json(out, "info", result["info"])
        return Message(out, reply_to=message)
    args = records.get_json(message.content, "setup")
    bundle = keys = None
    if "bundle" in message.content.config_records:
        bundle = records.get(message.content, "bundle", messages.CircuitBundle)
    if "keys" in message.content.config_records:  # encode pad mode only: seeded pads need no evaluation keys
        keys = records.get(message.content, "keys", messages.EvaluationKeys)
    state = _state(context)
    ack = _holder(config, node).setup(state, args["keyset_id"], args["query_ids"], bundle, keys)
    _save_state(context, state)
    records.put_json(out, "ack", ack)
    return Message(out, reply_to=message)


@app.query("vote")
def vote(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    batch = records.get(message.content, "batch", messages.QueryBatch)
    pad = records.get(message.content, "pad", messages.Pad)
    burn = records.get_json(message.content, "burn", [])
    state = _state(context)
    result = _holder(config, node).vote(state, batch, pad, burn)
    _save_state(context, state)
    out = RecordDict()
    records.put(out, "vote", result)
    return Message(out, reply_to=message)


@app.query("pads")
def pads(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    args = records.get_json(message.content, "pads")
    out = RecordDict()
    sealed, shell = _owner(config, node, context).pads(args["batch_id"], args["holder_ids"], args["pad_keys"])
    records.put_many(out, "pads", sealed)
    if shell is not None:
        records.put(out, "shell", shell)
    return Message(out, reply_to=message)


@app.query("fill")
def fill(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    batch = records.get(message.content, "batch", messages.QueryBatch)
    holder_ids = records.get_json(message.content, "missing")
    out = RecordDict()
    votes, shell = _owner(config, node, context).fill(batch, holder_ids)
    records.put_many(out, "votes", votes)
    if shell is not None:  # shared pads: the batch's new shell, replacing the first one
        records.put(out, "shell", shell)
    return Message(out, reply_to=message)


@app.query("labels")
def labels(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    owner = _owner(config, node, context)
    encrypted = records.get(message.content, "labels", messages.EncryptedLabels)
    out = RecordDict()
    try:
        ack = owner.labels(encrypted)
    except Exception as exc:
        from speed.errors import BudgetExhaustedError

        if not isinstance(exc, BudgetExhaustedError):
            raise
        ack = {"batch_id": encrypted.batch_id, "stopped": str(exc)}
    following = records.get_json(message.content, "next", None)
    if following and "stopped" not in ack:
        sealed, shell = owner.pads(following["batch_id"], following["holder_ids"], following["pad_keys"])
        records.put_many(out, "pads", sealed)
        if shell is not None:
            records.put(out, "shell", shell)
    records.put_json(out, "ack", ack)
    return Message(out, reply_to=message)


@app.query("finish")
def finish(message: Message, context: Context) -> Message:
    config, node = _parties(context)
    out = RecordDict()
    records.put_json(out, "summary", _owner(config, node, context).finish())
    return Message(out, reply_to=message)

