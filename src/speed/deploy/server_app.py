"""The Flower ServerApp: the aggregation server of SPEED, and the router between parties.

It follows :func:`speed.protocol.label_queries` step by step, with messages instead of
function calls, and computes only with :class:`speed.server.AggregationServer`:

1. ``query.hello`` to every SuperNode: who is the owner, which node is holder i.
2. ``query.setup`` to the owner: circuit bundle, evaluation keys, the batches still to
   label (from its ledger: a rerun resumes), pads for the first batch.
3. ``query.setup`` to every holder: the circuit bundle (skipped when the holder already
   holds that keyset) — plus the evaluation keys only in ``encode`` pad mode: a seeded- or
   shared-pad holder never uses them — and the job's public query ids.
4. Per batch: ``query.vote`` to every holder (its pad + the public query ids) →
   encrypted votes; stand-ins from the owner (``query.fill``) for holders that did not
   answer, if at least ``min-holders`` did; ``AggregationServer.aggregate`` → encrypted
   labels; ``query.labels`` to the owner, which records the batch in its ledger, then
   decrypts, and returns an acknowledgement (counts and ε only: the server never sees
   a label) with the pads of the next batch.
5. ``query.finish``: the owner's summary; this app prints one JSON line ``[speed] SUMMARY`` (for an
   operator running ``flwr run`` by hand) and, when the run config names a ``summary-file``
   (``speed deploy local`` and ``simulate`` do), writes the summary there as JSON: that file,
   not the log stream, is what the launcher reads (:mod:`speed.deploy.launcher`).

Shared pads (the default): with the pads of every batch the owner sends the server that batch's
*shell* (the pad's seeds, bodies zeroed; :mod:`speed.crypto.shared`), and with stand-ins a new
shell that replaces it (``AggregationServer.receive_shell``).

Pads travel owner → SuperLink → ServerApp → holder, **sealed** to the holder's X25519
key (:mod:`speed.deploy.sealing`).  A pad is an FHE encryption of zero, but it must still
be hidden from the aggregation server: a vote is its pad with Δ·v added to the LWE
bodies, so pad and vote together reveal the vote.  The server forwards sealed bytes it
cannot open.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any, Callable

from speed import messages
from speed.crypto.seeded import KEYLESS_PAD_MODES
from speed.deploy import records
from speed.deploy.config import SUMMARY_FILE, DeployConfig, write_summary
from speed.errors import SpeedError

try:  # the ServerApp object only where Flower is importable (it always is with speed's deps)
    from flwr.app import Context, RecordDict
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
except ImportError:  # pragma: no cover
    app = None

PREFIX = "[speed]"


class DeployError(SpeedError):
    """The job cannot go on (too few holders, owner unreachable, refused ciphertexts...)."""


def _log(line: str) -> None:
    print(f"{PREFIX} {line}", flush=True)


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0..2, 5, 7..8"`` (readable with 250 holders)."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs) or "none"


class Link:
    """Request/reply over a Flower :class:`Grid`, with a deadline per request and byte counts per node."""

    def __init__(self, grid, poll_interval: float = 0.5, log: Callable[[str], None] = _log):
        self.grid = grid
        self.poll_interval = float(poll_interval)
        self.log = log
        self.sent: dict[int, int] = defaultdict(int)
        self.received: dict[int, int] = defaultdict(int)
        self.messages: dict[int, int] = defaultdict(int)
        self.compute_s: dict[int, float] = defaultdict(float)  # time the node's handlers reported

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def request(self, contents: dict[int, Any], message_type: str, timeout: float,
                group: str = "") -> tuple[dict[int, Any], dict[int, str]]:
        """Send ``contents[node]`` to each node; return (replies, errors) received before ``timeout``.

        Nodes in neither dict did not answer in time.  Late replies are never pulled.
        """
        from flwr.app import Message

        if not contents:
            return {}, {}
        ttl = max(60.0, float(timeout) + 60.0)
        outgoing = []
        for node, content in contents.items():
            self.sent[node] += records.content_bytes(content)
            self.messages[node] += 1
            outgoing.append(Message(content, dst_node_id=int(node), message_type=f"query.{message_type}",
                                    group_id=group, ttl=ttl))
        ids = list(self.grid.push_messages(outgoing))
        errors: dict[int, str] = {}
        pending: dict[str, int] = {}
        for node, mid in zip(contents, ids):
            if mid is None:
                errors[node] = "the SuperLink refused the message (too large or malformed)"
            else:
                pending[mid] = node
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + float(timeout)
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                node = pending.pop(mid, None)
                if node is None:
                    continue
                if reply.has_error():
                    errors[node] = f"Flower error {reply.error.code}: {reply.error.reason}"
                    continue
                content = reply.content
                self.received[node] += records.content_bytes(content)
                self.compute_s[node] += float(records.get_json(content, "timing", {}).get("handler_s", 0.0))
                err = records.get_json(content, "error", None)
                if err is not None:
                    errors[node] = err["error"]
                else:
                    replies[node] = content
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        return replies, errors


class Job:
    """One labelling job run by the aggregation server (``run`` returns the JSON summary)."""

    def __init__(self, grid, config: DeployConfig, session: str = "", log: Callable[[str], None] = _log):
        self.config, self.session, self.log = config, str(session), log
        self.link = Link(grid, config.poll_interval, log)
        self.owner_node: int | None = None
        self.holder_nodes: dict[int, int] = {}  # holder id -> node id
        self.keysets: dict[int, list[str]] = {}
        self.pad_keys: dict[int, str] = {}  # holder id -> X25519 public key (hex), forwarded to the owner
        self.alive: set[int] = set()
        self.dropped: dict[int, str] = {}  # holder id -> why
        self.batches: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.info: dict[str, Any] = {}
        self.owner_summary: dict[str, Any] = {}
        self.owner_reachable = True

    # -- parties ---------------------------------------------------------------------
    def party(self, node: int) -> str:
        if node == self.owner_node:
            return "owner"
        for h, n in self.holder_nodes.items():
            if n == node:
                return f"holder-{h}"
        return f"node-{node}"

    def _wait_for_nodes(self) -> list[int]:
        want = self.config.holders + 1
        deadline = time.monotonic() + self.config.node_wait
        nodes = self.link.node_ids()
        while len(nodes) < want and time.monotonic() < deadline:
            time.sleep(self.config.poll_interval)
            nodes = self.link.node_ids()
        self.log(f"{len(nodes)} SuperNode(s) online (want {want}: 1 owner + {self.config.holders} holders)")
        return nodes

    def _discover(self) -> None:
        nodes = self._wait_for_nodes()
        contents = {n: RecordDict() for n in nodes}
        replies, errors = self.link.request(contents, "hello", self.config.vote_timeout, group="hello")
        for node, err in errors.items():
            self.log(f"node {node} refused hello: {err}")
        for node, content in replies.items():
            info = records.get_json(content, "hello")
            if info["role"] == "owner":
                if self.owner_node is not None:
                    raise DeployError(f"two SuperNodes say role='owner' ({self.owner_node}, {node})")
                self.owner_node = node
            elif info["role"] == "holder":
                h = int(info["partition_id"])
                if not 0 <= h < self.config.holders:
                    self.log(f"node {node} is holder {h}, outside 0..{self.config.holders - 1}: ignored")
                    continue
                if h in self.holder_nodes:
                    raise DeployError(f"two SuperNodes say partition-id={h} ({self.holder_nodes[h]}, {node})")
                if not info.get("pad_key"):
                    self.log(f"holder {h} (node {node}) announced no pad key: ignored")
                    continue
                self.holder_nodes[h] = node
                self.keysets[h] = list(info.get("keysets", []))
                self.pad_keys[h] = str(info["pad_key"])
        if self.owner_node is None:
            raise DeployError("no SuperNode with role='owner' answered: the model owner must be connected")
        self.alive = set(self.holder_nodes)
        absent = sorted(set(range(self.config.holders)) - self.alive)
        for h in absent:
            self.dropped[h] = "not connected"
        self.log(f"owner = node {self.owner_node}; holders connected: {_ranges(sorted(self.alive))}"
                 + (f"; missing: {absent}" if absent else ""))
        self._check_quorum("at start")

    def _check_quorum(self, when: str) -> None:
        need = self.config.required_holders
        if len(self.alive) < need:
            missing = {h: why for h, why in sorted(self.dropped.items())}
            raise DeployError(
                f"{when}: {len(self.alive)} of {self.config.holders} holders available, min-holders is {need} "
                f"(missing: {missing}). Labels and ledger records so far are kept; rerun the same job to resume"
            )

    def _drop(self, holders: dict[int, str], batch: str) -> None:
        for h, why in holders.items():
            self.alive.discard(h)
            self.dropped[h] = f"{why} ({batch})"
            self.log(f"holder {h} dropped for the rest of this run: {why} ({batch})")

    def _ask_owner(self, message_type: str, content, timeout: float | None = None, group: str = ""):
        replies, errors = self.link.request({self.owner_node: content}, message_type,
                                            timeout or self.config.owner_timeout, group)
        if self.owner_node in errors:
            raise DeployError(f"the owner refused {message_type}: {errors[self.owner_node]}")
        if self.owner_node not in replies:
            self.owner_reachable = False
            raise DeployError(f"the owner did not answer {message_type} within {timeout or self.config.owner_timeout:g} s")
        return replies[self.owner_node]

    # -- the job ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        status, reason = "completed", None
        try:
            self._run()
        except (SpeedError, ValueError) as exc:
            status, reason = "stopped", str(exc)
            self.log(f"STOPPED: {reason}")
        except Exception as exc:  # a bug or a Flower failure: still report, with the trace in the log
            import traceback

            traceback.print_exc()
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
            self.log(f"FAILED: {reason}")
        if self.owner_node is not None and self.owner_reachable:
            try:
                content = self._ask_owner("finish", RecordDict(), min(self.config.owner_timeout, 120.0), "finish")
                self.owner_summary = records.get_json(content, "summary")
            except SpeedError as exc:
                self.log(f"owner summary unavailable: {exc}")
        self.timings["total_s"] = time.perf_counter() - start
        summary = self.summary(status, reason)
        self.log("SUMMARY " + json.dumps(summary, sort_keys=True))
        return summary

    def _run(self) -> None:
        from speed.server import AggregationServer

        c = self.config
        t0 = time.perf_counter()
        self._discover()
        self.log(f"owner setup (compile or load the circuit, keys, ledger) for job {c.effective_job_id}")
        args = RecordDict()
        records.put_json(args, "pad_keys", {str(h): self.pad_keys[h] for h in sorted(self.alive)})
        content = self._ask_owner("setup", args, c.setup_timeout, group="setup")
        bundle = records.get(content, "bundle", messages.CircuitBundle)
        keys = records.get(content, "keys", messages.EvaluationKeys)
        pads = {p.holder_id: p for p in records.get_many(content, "pads", messages.Pad)}
        self.info = records.get_json(content, "info")
        status = self.info["status"]
        self.log(f"owner ready: keyset {keys.keyset_id}, evaluation keys {len(keys.data) / 1e6:.1f} MB, pad mode "
                 f"{bundle.pad_mode}; ledger has {status['queries_charged']} queries charged, "
                 f"{status['labels_stored']} labels stored, ε = {status['epsilon']:.4g}")
        self.log(f"noise: {status.get('mechanism')}, τ = {status.get('tau')}, δ = {status.get('delta')}; "
                 f"{status.get('accounting')}")
        if self.info["recovered"]["batches_recovered"] or self.info["recovered"]["refused"]:
            self.log(f"owner recovery: {self.info['recovered']}")
        server = AggregationServer(bundle, keys)
        self._receive_shell(server, content)
        plan = self.info["plan"]
        todo_ids = sorted({q for b in plan for q in b["remaining"]})
        if not todo_ids:
            self.timings["setup_s"] = time.perf_counter() - t0
            self.log("nothing to label: every query of this job is already answered")
            return

        # holders: the program bundle (once per keyset, unless cached) and the job's queries.  Evaluation
        # keys only in encode pad mode: a seeded- or shared-pad holder adds Δ·v to its pad's bodies (or its
        # share of them) and never uses them.
        holder_needs_keys = bundle.pad_mode not in KEYLESS_PAD_MODES
        contents = {}
        for h in sorted(self.alive):
            out = RecordDict()
            records.put_json(out, "setup", {"keyset_id": keys.keyset_id, "query_ids": todo_ids})
            if keys.keyset_id not in self.keysets.get(h, []):
                records.put(out, "bundle", bundle)
                if holder_needs_keys:
                    records.put(out, "keys", keys)
            contents[self.holder_nodes[h]] = out
        sending = sum("bundle" in x.config_records for x in contents.values())
        what = "bundle + evaluation keys" if holder_needs_keys else f"bundle ({bundle.pad_mode} pads: no evaluation keys)"
        self.log(f"holder setup: sending the {what} to {sending} holder(s), {len(contents) - sending} have it")
        replies, errors = self.link.request(contents, "setup", c.setup_timeout, group="setup")
        node_to_holder = {n: h for h, n in self.holder_nodes.items()}
        failed = {node_to_holder[n]: f"setup failed: {e}" for n, e in errors.items()}
        failed.update({node_to_holder[n]: f"no setup reply within {c.setup_timeout:g} s"
                       for n in contents if n not in replies and n not in errors})
        self._drop(failed, "setup")
        self._check_quorum("after setup")
        self.timings["setup_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        burn: list[int] = []
        todo = [b for b in plan if b["remaining"]]
        for index, entry in enumerate(plan):
            if not entry["remaining"]:
                burn.append(len(entry["query_ids"]))
                continue
            batch = messages.QueryBatch(batch_id=int(entry["batch_id"]), query_ids=tuple(entry["remaining"]))
            following = next((b for b in plan[index + 1:] if b["remaining"]), None)
            pads = self._batch(server, batch, pads, burn, following, len(self.batches) + 1, len(todo))
            burn = []
        self.timings["labelling_s"] = time.perf_counter() - t1

    def _batch(self, server, batch: messages.QueryBatch, pads: dict[int, messages.Pad], burn: list[int],
               following: dict | None, number: int, total: int) -> dict[int, messages.Pad]:
        c = self.config
        start = time.perf_counter()
        group = f"batch-{batch.batch_id}"
        missing_pads = sorted(h for h in self.alive if h not in pads)
        if missing_pads:
            args = RecordDict()
            records.put_json(args, "pads", {"batch_id": batch.batch_id, "holder_ids": missing_pads,
                                            "pad_keys": {str(h): self.pad_keys[h] for h in missing_pads}})
            reply = self._ask_owner("pads", args, group=group)
            self._receive_shell(server, reply)
            pads.update({p.holder_id: p for p in records.get_many(reply, "pads", messages.Pad)})
        contents = {}
        for h in sorted(self.alive):
            out = RecordDict()
            records.put(out, "batch", batch)
            records.put(out, "pad", pads.pop(h))  # forwarded, not kept
            records.put_json(out, "burn", burn)
            contents[self.holder_nodes[h]] = out
        pads.clear()
        replies, errors = self.link.request(contents, "vote", c.vote_timeout, group=group)
        node_to_holder = {n: h for h, n in self.holder_nodes.items()}
        votes = [records.get(r, "vote", messages.EncryptedVote) for r in replies.values()]
        failed = {node_to_holder[n]: f"refused to vote: {e}" for n, e in errors.items()}
        failed.update({node_to_holder[n]: f"no vote within {c.vote_timeout:g} s"
                       for n in contents if n not in replies and n not in errors})
        self._drop(failed, f"batch {batch.batch_id}")
        answered = sorted(v.holder_id for v in votes)
        missing = sorted(set(range(c.holders)) - set(answered))
        if len(answered) < c.required_holders:
            raise DeployError(
                f"batch {batch.batch_id}: {len(answered)} of {c.holders} holders answered (missing {missing}), "
                f"min-holders is {c.required_holders}: stopping. Labels and ledger records so far are kept; "
                "rerun the same job to resume"
            )
        if missing:
            args = RecordDict()
            records.put(args, "batch", batch)
            records.put_json(args, "missing", missing)
            reply = self._ask_owner("fill", args, group=group)
            self._receive_shell(server, reply, replace=True)  # shared pads: the stand-ins' new shell
            stand_ins = records.get_many(reply, "votes", messages.EncryptedVote)
            self.log(f"batch {batch.batch_id}: holders {missing} missing; owner issued {len(stand_ins)} stand-in "
                     f"encryption(s) of zero; τ_eff = τ − {len(missing)}/{c.holders}")
            votes += stand_ins
        t_agg = time.perf_counter()
        encrypted = server.aggregate(batch, votes)
        aggregate_s = time.perf_counter() - t_agg
        args = RecordDict()
        records.put(args, "labels", encrypted)
        if following is not None:
            records.put_json(args, "next", {"batch_id": int(following["batch_id"]), "holder_ids": sorted(self.alive),
                                            "pad_keys": {str(h): self.pad_keys[h] for h in sorted(self.alive)}})
        content = self._ask_owner("labels", args, group=group)
        ack = records.get_json(content, "ack")
        if "stopped" in ack:
            raise DeployError(f"the owner stopped at batch {batch.batch_id}: {ack['stopped']}")
        entry = {"batch_id": batch.batch_id, "queries": len(batch.query_ids), "holders_answered": len(answered),
                 "missing": missing, "tau_effective": ack.get("tau_effective"), "aggregate_s": aggregate_s,
                 "wall_s": time.perf_counter() - start}
        self.batches.append(entry)
        self._receive_shell(server, content)  # shared pads: the next batch's shell
        st = ack["status"]
        self.log(f"batch {batch.batch_id} ({number}/{total}): {len(batch.query_ids)} queries, "
                 f"{len(answered)}/{c.holders} holders, aggregate {aggregate_s:.1f} s, batch {entry['wall_s']:.1f} s; "
                 f"owner: {st['labels_stored']} labels stored, ε = {st['epsilon']:.4g}")
        return {p.holder_id: p for p in records.get_many(content, "pads", messages.Pad)}

    @staticmethod
    def _receive_shell(server, content, replace: bool = False) -> None:
        """Shared pads: hand the owner's pad shell in ``content`` (if any) to the server."""
        if "shell" in content.config_records:
            server.receive_shell(records.get(content, "shell", messages.PadShell), replace=replace)

    # -- report ----------------------------------------------------------------------
    def summary(self, status: str, reason: str | None) -> dict[str, Any]:
        parties = {}
        for node in sorted(set(self.link.sent) | set(self.link.received)):
            parties[self.party(node)] = {"bytes_sent_to": self.link.sent[node],
                                         "bytes_received_from": self.link.received[node],
                                         "messages": self.link.messages[node],
                                         "handler_s": round(self.link.compute_s[node], 3)}
        total_sent = sum(p["bytes_sent_to"] for p in parties.values())
        total_received = sum(p["bytes_received_from"] for p in parties.values())
        parties["server"] = {"bytes_sent": total_sent, "bytes_received": total_received,
                             "aggregate_s": round(sum(b["aggregate_s"] for b in self.batches), 3)}
        return {
            "status": status, "reason": reason, "job_id": self.config.effective_job_id, "session": self.session,
            "holders": self.config.holders, "min_holders": self.config.required_holders,
            "holders_dropped": {str(h): why for h, why in sorted(self.dropped.items())},
            "batches": self.batches, "owner": self.owner_summary,
            "circuit": self.info.get("spec"), "pad_mode": self.info.get("pad_mode"),
            "bytes": parties, "timings": self.timings,
        }


def run_job(grid, config: DeployConfig, session: str = "", log: Callable[[str], None] = _log) -> dict[str, Any]:
    return Job(grid, config, session, log).run()


if app is not None:

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            config = DeployConfig.from_run_config(context.run_config)
        except (SpeedError, ValueError) as exc:
            _log(f"STOPPED: bad run config: {exc}")
            summary = {"status": "stopped", "reason": f"bad run config: {exc}"}
            _log("SUMMARY " + json.dumps(summary))
        else:
            summary = run_job(grid, config, session=str(context.run_id))
        # the launcher (speed deploy local / simulate) names this file in the run config and reads it
        if context.run_config.get(SUMMARY_FILE):
            write_summary(str(context.run_config[SUMMARY_FILE]), summary, _log)
