"""The model owner's durable privacy ledger and budget guard (docs/privacy.md §6, §10).

One JSON line per answered query, appended and ``fsync``-ed BEFORE the caller releases the
label (:meth:`PrivacyLedger.charge_batch`, and only when it returns, release): a query
recorded but never released is over-counted, never under-counted.

Persistence is a tamper-evident :mod:`speed.journal` (sequence numbers, a SHA-256 chain and a
head file replaced atomically after every append): a ledger that lost, cut off, reordered or
edited records is refused in one :class:`SpeedError` line, repairs are announced
(``repaired: ...``), version-1 CRC ledgers are upgraded once, loudly, and an exclusive
``flock`` keeps a second owner out.

Accounting. With a noise mechanism object (``noise=Skellam(σ)``, :mod:`speed.privacy.mechanisms`)
each charge stores the mechanism, the τ its batch really had and β; the running ε is the
privacy-loss-distribution bound of :class:`speed.privacy.publishable.PublishableAccountant`; a
*plan* record (mechanism, planned queries, target ε, δ, τ) comes first, and a ledger written
under another mechanism or plan is refused. With the paper's noise (``mechanism="gamma"`` or
``"lattice"`` with ``gamma``) the running ε is the paper's data-independent moments bound
(:class:`speed.privacy.moments.PrivacyAccountant`), plus the data-dependent research ε where
counts are passed (not publishable). Circuit failures reach δ by one rule,
``δ_total = δ + (1 + e^ε) Σβ`` (docs/privacy.md, "Circuit failures and δ").
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


from speed.errors import BudgetExhaustedError, InputError, SpeedError
from speed.fsutil import Closeable
from speed.journal import Journal
from speed.privacy.checks import check_counts, check_delta, check_tau
from speed.privacy.composition import DEFAULT_MOMENTS
from speed.privacy.mechanisms import Mechanism, mechanism_from_dict
from speed.privacy.ledger_v1 import legacy_v1_line as _legacy_v1_line
from speed.privacy.moments import PrivacyAccountant, check_query, query_epsilon
from speed.privacy.publishable import PublishableAccountant

__all__ = ["LEDGER_VERSION", "PrivacyAccountant", "PrivacyLedger"]

LEDGER_VERSION = 2  # 1: CRC-32 per line; 2: records of a speed.journal
# ------------------------------------------------------------------------------- ledger
class PrivacyLedger(Closeable):
    """Append-only, fsync-ed JSON-lines ledger of answered queries, with a budget guard.

    Defaults for the query parameters (``gamma``, ``tau``, ``mechanism``, ``resolution``,
    ``num_holders``, ``expected_holders``) may be given once here and overridden per
    :meth:`record`.  ``max_epsilon`` (data-independent ε at the ledger's ``delta``) is the
    default budget for :meth:`record` and :meth:`check_budget`.  ``read_only=True`` opens
    an existing ledger for inspection without locking or repairing it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        run_id: str | None = None,
        delta: float = 1e-5,
        moments: int = DEFAULT_MOMENTS,
        max_epsilon: float | None = None,
        gamma: float | None = None,
        tau: float | None = None,
        mechanism: str = "gamma",
        resolution: int | None = None,
        num_holders: int | None = None,
        expected_holders: int | None = None,
        read_only: bool = False,
        noise: Mechanism | None = None,
        plan: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if noise is not None and not isinstance(noise, Mechanism):
            raise InputError(f"noise must be a mechanism object of speed.privacy.mechanisms, got {noise!r}")
        self.noise: Mechanism | None = noise
        self.publishable: PublishableAccountant | None = (
            None if noise is None else PublishableAccountant(noise, delta))
        self.plan: dict[str, Any] | None = None
        self._allowance: tuple[int, float] | None = None  # (queries, τ_eff) cleared by check_budget
        self.delta = check_delta(delta)
        self.max_epsilon = None if max_epsilon is None else self._check_max(max_epsilon)
        self.run_id = str(run_id) if run_id is not None else time.strftime("run-%Y%m%dT%H%M%SZ", time.gmtime())
        self.defaults = {
            "gamma": gamma, "tau": tau, "mechanism": mechanism, "resolution": resolution,
            "num_holders": num_holders, "expected_holders": expected_holders,
        }
        self.read_only = bool(read_only)
        self.accountant = PrivacyAccountant(moments)
        self.records: list[dict[str, Any]] = []
        self.repaired_bytes = 0
        self._fd: int | None = None
        self._journal: Journal | None = None
        self._seen: set[tuple[str, str]] = set()
        if noise is not None:
            self.defaults["mechanism"] = noise.name
        self._open()
        if plan is not None:
            self.write_plan(plan)

    # -- persistence (speed.journal): opening, verifying, repairing
    def _open(self) -> None:
        self._journal = Journal(
            self.path, what="privacy ledger", read_only=self.read_only, lock=not self.read_only,
            legacy=_legacy_v1_line(self.path), consequence="refusing to under-state ε",
        )
        self._fd = None if self.read_only else self._journal._fd
        self.repaired_bytes = self._journal.repaired_bytes
        try:
            self._load(self._journal.records)
        except BaseException:
            self.close()
            raise

    def _load(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            self._apply(dict(rec))

    def _write(self, rec: dict[str, Any]) -> None:
        """Durable (fsync) and acknowledged (journal head updated) when this returns."""
        self._journal.append(rec)

    def _apply(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "plan":
            self._apply_plan(rec)
            return
        if "noise" in rec:
            self._apply_noise_charge(rec)
            return
        if self.publishable is not None:
            raise SpeedError(f"privacy ledger {self.path} mixes the paper's accounting with "
                             f"{self.noise.name} charges: refusing it")
        self.accountant.step(
            gamma=rec["gamma"], tau=rec["tau_effective"], mechanism=rec["mechanism"],
            resolution=rec["resolution"], counts=rec.get("counts"),
            failure_probability=rec["failure_probability"],
        )
        self.records.append(rec)
        self._seen.add((str(rec["run_id"]), json.dumps(rec["query_id"])))

    def _apply_plan(self, rec: dict[str, Any]) -> None:
        if self.plan is not None or self.records:
            raise SpeedError(f"privacy ledger {self.path}: a plan record must come first, and only once")
        plan_noise = mechanism_from_dict(rec["noise"])
        self._adopt_noise(plan_noise)
        self.plan = {k: v for k, v in rec.items() if k != "kind"}

    def _adopt_noise(self, noise: Mechanism) -> None:
        if self.noise is None and self.defaults.get("gamma") is not None:
            raise SpeedError(
                f"privacy ledger {self.path} was written under {noise.to_dict()}, this run uses the "
                f"paper's {self.defaults['mechanism']} accounting: use another ledger")
        if self.noise is None:
            self.noise = noise
            self.publishable = PublishableAccountant(noise, self.delta)
            self.defaults["mechanism"] = noise.name
        elif noise != self.noise:
            raise SpeedError(
                f"privacy ledger {self.path} was written under {noise.to_dict()}, this run uses "
                f"{self.noise.to_dict()}: use another ledger"
            )

    def _apply_noise_charge(self, rec: dict[str, Any]) -> None:
        if self.accountant.num_queries:
            raise SpeedError(f"privacy ledger {self.path} mixes the paper's accounting with "
                             f"{rec['noise'].get('mechanism')} charges: refusing it")
        self._adopt_noise(mechanism_from_dict(rec["noise"]))
        assert self.publishable is not None
        self.publishable.step(rec["tau_effective"], rec["failure_probability"])
        self.records.append(rec)
        self._seen.add((str(rec["run_id"]), json.dumps(rec["query_id"])))

    def write_plan(self, plan: dict[str, Any]) -> None:
        """Write the run's plan before the first charge, or check it against the one on disk.

        ``plan``: ``planned_queries`` and optionally ``target_epsilon``, ``tau``; the mechanism
        and δ are the ledger's.  Another mechanism, δ or plan on disk → one-line SpeedError.
        """
        if self.noise is None:
            raise InputError("a plan needs the ledger's noise mechanism (noise=...)")
        wanted = {"noise": self.noise.to_dict(), "delta": self.delta,
                  **{k: plan[k] for k in ("planned_queries", "target_epsilon", "tau") if plan.get(k) is not None}}
        if self.plan is not None:
            if {k: self.plan.get(k) for k in wanted} != wanted:
                raise SpeedError(
                    f"privacy ledger {self.path} was written under another plan "
                    f"({ {k: self.plan.get(k) for k in wanted} }); this run plans {wanted}: use another ledger"
                )
            return
        if self.records:
            raise SpeedError(f"privacy ledger {self.path} already holds charges without a plan: use another ledger")
        if self.read_only or self._fd is None:
            raise SpeedError("this privacy ledger is open read-only (or closed)")
        rec = {"v": LEDGER_VERSION, "kind": "plan", **wanted,
               "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write(rec)
        self._apply(rec)

    # -- query parameters
    @staticmethod
    def _check_max(max_epsilon: Any) -> float:
        m = float(max_epsilon)
        if not (m > 0 and math.isfinite(m)):
            raise InputError(f"max_epsilon must be a positive number, got {max_epsilon!r}")
        return m

    def _resolve(self, overrides: dict[str, Any]) -> dict[str, Any]:
        q = dict(self.defaults)
        q.update({k: v for k, v in overrides.items() if v is not None})
        if self.noise is not None:
            if q["tau"] is None:
                raise InputError("the ledger needs tau (as a default or per query)")
            mechanism, g, t, res = self.noise.name, None, check_tau(q["tau"]), None
        elif q["gamma"] is None or q["tau"] is None:
            raise InputError("the ledger needs gamma and tau (as defaults or per query)")
        else:
            mechanism, g, t, res = check_query(q["mechanism"], q["gamma"], q["tau"], q["resolution"])
        n, e = q["num_holders"], q["expected_holders"]
        if n is not None and (int(n) != n or n < 1):
            raise InputError(f"num_holders must be a positive integer, got {n!r}")
        if e is not None and (int(e) != e or e < 1):
            raise InputError(f"expected_holders must be a positive integer, got {e!r}")
        t_eff = t
        if n is not None and e is not None:
            if n > e:
                raise InputError(f"{n} holders answered but only {e} were expected")
            # worst case: every missing holder was one of the honest ones
            t_eff = t - (e - n) / e
            if t_eff <= 1e-12:
                raise InputError(
                    f"with {e - n} of {e} holders missing, no secret noise is guaranteed "
                    f"(τ = {t} assumed): refusing to account this query"
                )
        return {"mechanism": mechanism, "gamma": g, "tau": t, "tau_effective": t_eff,
                "resolution": res, "num_holders": None if n is None else int(n),
                "expected_holders": None if e is None else int(e)}

    # -- API
    def epsilon(self, delta: float | None = None) -> dict[str, Any]:
        """Running privacy spent (publishable; the paper's analysis adds the data-dependent ε if counts were given)."""
        if self.publishable is not None:
            if delta is not None and check_delta(delta) != self.delta:
                raise InputError(f"this ledger accounts at δ = {self.delta:g}")
            return {**self.publishable.get_privacy_spent(), "method": "pld",
                    "data_dependent": None, "plan": self.plan}
        return self.accountant.get_privacy_spent(self.delta if delta is None else delta)

    @property
    def num_queries(self) -> int:
        if self.publishable is not None:
            return self.publishable.num_queries
        return self.accountant.num_queries

    @property
    def history(self) -> list[list[Any]]:
        return self.accountant.history

    def answered_query_ids(self, run_id: str | None = None) -> set[Any]:
        """Query ids already charged in ``run_id`` (default: this ledger's run) — skip them on resume."""
        rid = self.run_id if run_id is None else str(run_id)
        return {r["query_id"] for r in self.records if str(r["run_id"]) == rid}

    def check_budget(self, max_epsilon: float | None = None, *, num_queries: int = 1,
                     query_id: Any = None, **query: Any) -> float:
        """Raise :class:`BudgetExhaustedError` if ``num_queries`` more queries would exceed the budget.

        Returns the projected data-independent ε.  Query parameters default to the ledger's.
        """
        limit = self.max_epsilon if max_epsilon is None else self._check_max(max_epsilon)
        q = self._resolve(query)
        if self.publishable is not None:
            return self._check_noise_budget(limit, q["tau_effective"], int(num_queries), query_id)
        projected = self.accountant.projected_epsilon(
            self.delta, gamma=q["gamma"], tau=q["tau_effective"], mechanism=q["mechanism"],
            resolution=q["resolution"], num_queries=num_queries,
        )
        if limit is not None and projected > limit:
            current = self.accountant.get_epsilon(self.delta)
            what = f"query {query_id!r}" if query_id is not None else (
                "one more query" if num_queries == 1 else f"{num_queries} more queries")
            raise BudgetExhaustedError(
                f"answering {what} would raise ε from {current:.4f} to {projected:.4f} "
                f"> max {limit:g} (δ = {self.delta:g}, data-independent)"
            )
        return projected

    def _check_noise_budget(self, limit: float | None, tau_eff: float, num_queries: int,
                            query_id: Any) -> float:
        assert self.publishable is not None
        if self._allowance is not None and self._allowance[1] == tau_eff and self._allowance[0] >= num_queries \
                and limit == self.max_epsilon and query_id is not None:
            # a record() inside a batch that check_budget already cleared as a whole
            self._allowance = (self._allowance[0] - num_queries, tau_eff)
            return math.nan
        projected = self.publishable.projected_epsilon(tau_eff, num_queries)
        if limit is not None and projected > limit:
            current = self.publishable.epsilon()
            what = f"query {query_id!r}" if query_id is not None else (
                "one more query" if num_queries == 1 else f"{num_queries} more queries")
            self._allowance = None
            raise BudgetExhaustedError(
                f"answering {what} would raise the publishable ε from {current:.4f} to {projected:.4f} "
                f"> max {limit:g} (δ = {self.delta:g}, {self.noise.name}, PLD)"
            )
        self._allowance = (num_queries, tau_eff) if query_id is None else None
        return projected

    def record(
        self,
        query_id: str | int,
        *,
        gamma: float | None = None,
        tau: float | None = None,
        num_holders: int | None = None,
        expected_holders: int | None = None,
        mechanism: str | None = None,
        resolution: int | None = None,
        failure_probability: float = 0.0,
        counts: Any = None,
        max_epsilon: float | None = None,
    ) -> dict[str, Any]:
        """Charge one answered query; durable (fsync-ed) when this returns. Release the label after.

        Raises :class:`BudgetExhaustedError` (nothing written) if the budget would be exceeded,
        and :class:`InputError` if ``query_id`` was already charged in this run.
        """
        if self.read_only or self._fd is None:
            raise SpeedError("this privacy ledger is open read-only (or closed)")
        if isinstance(query_id, bool) or not isinstance(query_id, (str, int)):
            raise InputError(f"query_id must be a string or an integer, got {query_id!r}")
        if (self.run_id, json.dumps(query_id)) in self._seen:
            raise InputError(
                f"query {query_id!r} was already answered and charged in run {self.run_id!r}; "
                "skip it when resuming (answered_query_ids())"
            )
        fp = float(failure_probability)
        if not (0.0 <= fp <= 1.0):
            raise InputError(f"failure_probability must lie in [0, 1], got {failure_probability!r}")
        q = self._resolve({"gamma": gamma, "tau": tau, "num_holders": num_holders,
                           "expected_holders": expected_holders, "mechanism": mechanism,
                           "resolution": resolution})
        self.check_budget(max_epsilon, query_id=query_id, gamma=q["gamma"], tau=q["tau"],
                          mechanism=q["mechanism"], resolution=q["resolution"],
                          num_holders=q["num_holders"], expected_holders=q["expected_holders"])
        if self.publishable is not None:
            return self._record_noise(query_id, q, fp)
        rec: dict[str, Any] = {
            "v": LEDGER_VERSION,
            "run_id": self.run_id,
            "query_id": query_id,
            **q,
            "per_query_epsilon": query_epsilon(q["mechanism"], q["gamma"], q["tau_effective"],
                                                q["resolution"]),
            "failure_probability": fp,
            "time": time.time(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if counts is not None:
            arr = check_counts(counts, allow_2d=False)[0]
            rec["counts"] = [int(c) if float(c).is_integer() else float(c) for c in arr]
            rec["simulation"] = True
        # validate against the accountant first (cannot fail after the write)
        probe = PrivacyAccountant(self.accountant.moments)
        probe.step(gamma=rec["gamma"], tau=rec["tau_effective"], mechanism=rec["mechanism"],
                   resolution=rec["resolution"], counts=rec.get("counts"), failure_probability=fp)
        self._write(rec)
        self._apply(rec)
        return rec

    def charge_batch(self, query_ids: Any, *, failure_probability: float = 0.0, counts: Any = None,
                     num_holders: int | None = None, expected_holders: int | None = None) -> list[dict[str, Any]]:
        """Charge a batch of answered queries before any of its labels is released.

        The one "charge, then release" step of every path (demo, reproduce, Flower owner,
        :func:`speed.label`): the budget is checked for the whole batch first (nothing is
        written if it would be exceeded), then each query is recorded and fsync-ed; release
        the batch's labels only when this returns. ``counts`` (simulation only): one row per
        query, for the paper's data-dependent research ε.
        """
        ids = list(query_ids)
        self.check_budget(num_queries=len(ids), num_holders=num_holders, expected_holders=expected_holders)
        return [self.record(q, failure_probability=failure_probability, num_holders=num_holders,
                            expected_holders=expected_holders, counts=None if counts is None else counts[i])
                for i, q in enumerate(ids)]

    def _record_noise(self, query_id: str | int, q: dict[str, Any], fp: float) -> dict[str, Any]:
        assert self.noise is not None
        rec: dict[str, Any] = {
            "v": LEDGER_VERSION, "kind": "charge", "run_id": self.run_id, "query_id": query_id,
            "noise": self.noise.to_dict(), "mechanism": self.noise.name, "tau": q["tau"],
            "tau_effective": q["tau_effective"], "num_holders": q["num_holders"],
            "expected_holders": q["expected_holders"], "failure_probability": fp,
            "time": time.time(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write(rec)
        self._apply(rec)
        return rec

    # -- Opacus-style state
    def state_dict(self, destination: dict | None = None) -> dict[str, Any]:
        if self.publishable is not None:
            dest = self.publishable.state_dict(destination)
        else:
            dest = self.accountant.state_dict(destination)
        dest["path"] = str(self.path)
        dest["run_id"] = self.run_id
        dest["delta"] = self.delta
        dest["num_records"] = len(self.records)
        return dest

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that ``state_dict`` agrees with the ledger on disk (the file is the source of truth)."""
        if self.publishable is not None:
            if "taus" not in state_dict or list(state_dict["taus"]) != self.publishable.taus \
                    or state_dict.get("mechanism") != self.publishable.mechanism.to_dict():
                raise SpeedError("state_dict disagrees with the privacy ledger on disk; the ledger file is "
                                 "authoritative")
            return
        other = PrivacyAccountant(state_dict.get("moments", self.accountant.moments))
        other.load_state_dict(state_dict)
        if other.history != self.accountant.history:
            raise SpeedError(
                "state_dict disagrees with the privacy ledger on disk; the ledger file is "
                "authoritative"
            )

    # -- lifetime
    def close(self) -> None:
        self._fd = None
        if self._journal is not None:
            self._journal.close()  # releases the flock

