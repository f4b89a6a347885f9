"""The model owner's durable privacy ledger and budget guard.

One JSON line per answered query, appended and ``fsync``-ed BEFORE the caller releases the
label (call :meth:`PrivacyLedger.record`, and only when it returns, release).  A query that
was recorded but whose label was never released is over-counted, never under-counted.

Persistence (:mod:`speed.journal`, kept apart from the accounting below): the ledger is a
tamper-evident journal — one JSON line per record with ``seq``, ``prev`` (SHA-256 of the
previous record) and ``sha`` (SHA-256 of this one), plus a head file ``<ledger>.head``
(record count, last hash, size) replaced atomically after every append.  A record is
acknowledged once the journal's append returns.  Opening verifies every line, the chain and
the head, and refuses a ledger that lost, cut off, reordered or edited records with one
:class:`SpeedError` line (a silently shorter ledger would under-state ε).  Repairs are
reported with a :class:`speed.journal.JournalRepairWarning` (``repaired: ...``): a complete,
checksum-valid last record without its newline is kept; a torn fragment that the head never
counted (never acknowledged, so its label was never released) is truncated.  Legacy
(version 1, CRC-32 per line) ledgers are verified with their CRCs and upgraded once, loudly,
on a writable open.  An exclusive ``flock`` keeps two owners from appending to the same ledger.

**Publishable ε of a noise mechanism object** (``noise=Skellam(σ)`` and the other objects of
:mod:`speed.privacy.mechanisms`): every charge stores the mechanism, the τ its batch really had
and β; the running ε is the privacy-loss-distribution bound of
:class:`speed.privacy.publishable.PublishableAccountant`, and
``δ_total = δ + (1 + e^ε) Σβ`` (one rule everywhere, docs/privacy.md).  An optional *plan*
record (mechanism, planned queries, target ε, δ, τ) is written before the first charge; a
ledger written under another mechanism or plan is refused.  :meth:`PrivacyLedger.check_budget`
for a batch of n queries clears exactly those n charges, so a batch costs one ε evaluation.

**The paper's analysis** (``mechanism="gamma"``/``"lattice"`` with ``gamma``): the running
ε is the data-independent moments-accountant bound (publishable, SPEED's analysis): in a
deployment nobody sees vote counts.  Where counts are passed (clear-text simulation and
research runs) the data-dependent bound is also computed and labelled not publishable
without smooth-sensitivity sanitisation (PATE 2018).  Overflow/failure probabilities of
the encrypted argmax (β per query) are handled as in
:func:`speed.privacy.accountant.build_result`: for τ = 1 the per-query ε (2γ) holds for the
noisy histogram, so whatever the circuit outputs is post-processing and β only enlarges q;
for τ < 1 the ε needs the exact argmax, and the sum B of those β is folded into δ as
``δ_total = δ + (1 + e^ε) B`` (coupling: the real transcript equals the ideal one except
with probability ≤ B; docs/privacy.md).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from speed.errors import BudgetExhaustedError, InputError, SpeedError
from speed.journal import Journal
from speed.privacy import accountant as _acc
from speed.privacy.mechanisms import Mechanism, mechanism_from_dict
from speed.privacy.publishable import PublishableAccountant

__all__ = ["LEDGER_VERSION", "PrivacyAccountant", "PrivacyLedger"]

LEDGER_VERSION = 2  # 1: CRC-32 per line; 2: records of a speed.journal
_NOT_PUBLISHABLE = (
    "data-dependent ε uses the private vote counts: not publishable without "
    "smooth-sensitivity sanitisation (Papernot et al., PATE 2018)"
)


@functools.lru_cache(maxsize=1024)
def _query_epsilon(mechanism: str, gamma: float, tau: float, resolution: int | None) -> float:
    if mechanism == "gamma":
        return _acc.per_query_epsilon(gamma, tau)
    from speed.privacy.lattice import lattice_per_query_epsilon

    return lattice_per_query_epsilon(gamma, tau, resolution)


def _check_query(mechanism: str, gamma: Any, tau: Any, resolution: Any) -> tuple[str, float, float, int | None]:
    g, t = _acc.check_gamma(gamma), _acc.check_tau(tau)
    if mechanism == "lattice":
        resolution = _acc._require_resolution(resolution)
    else:
        _acc._check_mechanism(mechanism, resolution)
    return mechanism, g, t, resolution


class PrivacyAccountant:
    """In-memory accountant for heterogeneous queries (Opacus-style ``history`` / ``state_dict``).

    ``history`` is a list of ``[mechanism, gamma, tau, resolution, count]`` entries; consecutive
    identical queries are merged (as Opacus' RDP accountant does with steps).
    """

    def __init__(self, moments: int = _acc.DEFAULT_MOMENTS) -> None:
        self.moments = _acc.check_moments(moments)
        self.history: list[list[Any]] = []
        self.failure_probability = 0.0  # Σ β over all queries
        self.failure_probability_folded = 0.0  # Σ β over queries whose ε needs the exact argmax
        self._alpha = np.zeros(self.moments)
        self._basic = 0.0
        self._num = 0
        # data-dependent part: only while every query came with counts
        self._alpha_dd: np.ndarray | None = np.zeros(self.moments)

    # -- bookkeeping
    def _alpha_of(self, eps_q: float, count: int) -> np.ndarray:
        return count * _acc.moments_alpha([eps_q], None, self.moments)[0]

    def step(self, *, gamma: float, tau: float, mechanism: str = "gamma",
             resolution: int | None = None, counts: Any = None,
             failure_probability: float = 0.0, num_queries: int = 1) -> float:
        """Account for ``num_queries`` answered queries; returns their per-query ε."""
        mechanism, g, t, res = _check_query(mechanism, gamma, tau, resolution)
        n = int(num_queries)
        if n < 1:
            raise InputError(f"num_queries must be ≥ 1, got {num_queries!r}")
        fp = float(failure_probability)
        if not (0.0 <= fp <= 1.0):
            raise InputError(f"failure_probability must lie in [0, 1], got {failure_probability!r}")
        eps_q = _query_epsilon(mechanism, g, t, res)
        # τ = 1: ε_q = 2γ is a histogram-level bound, valid whatever the circuit outputs, so
        # β only enlarges q; otherwise ε_q needs the exact argmax and β is folded into δ
        histogram_level = t == 1.0
        dd = self._dd_alpha(counts, eps_q, mechanism, g, t, res, n, fp if histogram_level else 0.0)
        self._alpha = self._alpha + self._alpha_of(eps_q, n)
        self._basic += n * eps_q
        self._num += n
        self.failure_probability += n * fp
        if not histogram_level:
            self.failure_probability_folded += n * fp
        self._alpha_dd = None if (dd is None or self._alpha_dd is None) else self._alpha_dd + dd
        key = [mechanism, g, t, res]
        if self.history and self.history[-1][:4] == key:
            self.history[-1][4] += n
        else:
            self.history.append(key + [n])
        return eps_q

    def _dd_alpha(self, counts: Any, eps_q: float, mechanism: str, g: float, t: float,
                  res: int | None, n: int, q_extra: float) -> np.ndarray | None:
        if counts is None:
            return None
        arr = _acc.check_counts(counts)
        if arr.shape[0] != n:
            raise InputError(f"counts has {arr.shape[0]} rows for {n} queries")
        if mechanism == "gamma":
            k = arr.shape[1]
            log_q = np.minimum(_acc.log_q_bound_gamma(arr, g, t), math.log1p(-1.0 / k))
        else:
            from speed.privacy.lattice import _log_q_lattice

            log_q = np.minimum(_log_q_lattice(arr, g, t, res, eps_q, self.moments), 0.0)
        if q_extra > 0:
            log_q = np.minimum(np.logaddexp(log_q, math.log(q_extra)), 0.0)
        return _acc.moments_alpha(np.full(n, eps_q), log_q, self.moments).sum(axis=0)

    # -- queries
    @property
    def num_queries(self) -> int:
        return self._num

    def _eps(self, alpha: np.ndarray, basic: float, delta: float) -> tuple[float, int, str]:
        value, order = _acc.moments_accountant(alpha, delta)
        if basic <= value:
            return basic, order, "basic_composition"
        return value, order, "moments"

    def get_epsilon(self, delta: float) -> float:
        """Data-independent ε at δ (the publishable number)."""
        return self._eps(self._alpha, self._basic, _acc.check_delta(delta))[0]

    def projected_epsilon(self, delta: float, *, gamma: float, tau: float, mechanism: str = "gamma",
                          resolution: int | None = None, num_queries: int = 1) -> float:
        """Data-independent ε after ``num_queries`` more queries of the given kind (nothing recorded)."""
        mechanism, g, t, res = _check_query(mechanism, gamma, tau, resolution)
        eps_q = _query_epsilon(mechanism, g, t, res)
        alpha = self._alpha + self._alpha_of(eps_q, num_queries)
        return self._eps(alpha, self._basic + num_queries * eps_q, _acc.check_delta(delta))[0]

    def get_privacy_spent(self, delta: float) -> dict[str, Any]:
        d = _acc.check_delta(delta)
        eps, order, method = self._eps(self._alpha, self._basic, d)
        out: dict[str, Any] = {
            "epsilon": eps,
            "delta": d,
            "order": order,
            "method": method,
            "num_queries": self._num,
            "basic_composition": self._basic,
            "failure_probability": self.failure_probability,
            "failure_probability_folded": self.failure_probability_folded,
            "delta_total": _acc.delta_total(d, eps, self.failure_probability_folded),
            "publishable": True,
            "data_dependent": None,
            "data_dependent_note": _NOT_PUBLISHABLE,
        }
        if self._alpha_dd is not None and self._num > 0:
            dd, dd_order, dd_method = self._eps(self._alpha_dd, self._basic, d)
            out.update(
                data_dependent=dd,
                data_dependent_order=dd_order,
                data_dependent_method=dd_method,
                data_dependent_delta_total=_acc.delta_total(d, dd, self.failure_probability_folded),
            )
        return out

    # -- persistence of the in-memory state
    def state_dict(self, destination: dict | None = None) -> dict[str, Any]:
        dest = OrderedDict() if destination is None else destination
        dest["history"] = [list(h) for h in self.history]
        dest["moments"] = self.moments
        dest["failure_probability"] = self.failure_probability
        dest["failure_probability_folded"] = self.failure_probability_folded
        dest["data_dependent_alpha"] = None if self._alpha_dd is None else self._alpha_dd.tolist()
        dest["mechanism"] = "speed-moments"
        return dest

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        moments = _acc.check_moments(state_dict.get("moments", _acc.DEFAULT_MOMENTS))
        fresh = PrivacyAccountant(moments)
        for mechanism, g, t, res, n in state_dict["history"]:
            fresh.step(gamma=g, tau=t, mechanism=mechanism, resolution=res, num_queries=int(n))
        dd = state_dict.get("data_dependent_alpha")
        if dd is not None and len(dd) != moments:
            raise InputError("data_dependent_alpha does not match the number of moments")
        self.moments = fresh.moments
        self.history = fresh.history
        self._alpha, self._basic, self._num = fresh._alpha, fresh._basic, fresh._num
        self.failure_probability = float(state_dict.get("failure_probability", 0.0))
        self.failure_probability_folded = float(state_dict.get("failure_probability_folded", 0.0))
        self._alpha_dd = None if dd is None else np.asarray(dd, dtype=np.float64)


# ------------------------------------------------------------------------------- ledger
def _crc(obj: dict[str, Any]) -> int:
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return zlib.crc32(body.encode("ascii"))


def _legacy_v1_line(path: Path) -> Any:
    """Parser of version-1 ledger lines (JSON + CRC-32), for the journal's one-time upgrade."""

    def parse(raw: bytes, lineno: int) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        try:
            rec = json.loads(raw.decode("utf-8"))
            crc = rec.pop("crc")
        except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError):
            raise SpeedError(f"privacy ledger {path} is corrupted at line {lineno}") from None
        if _crc(rec) != crc:
            raise SpeedError(f"privacy ledger {path}: checksum mismatch at line {lineno}")
        return rec

    return parse


class PrivacyLedger:
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
        moments: int = _acc.DEFAULT_MOMENTS,
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
        self.delta = _acc.check_delta(delta)
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
            mechanism, g, t, res = self.noise.name, None, _acc.check_tau(q["tau"]), None
        elif q["gamma"] is None or q["tau"] is None:
            raise InputError("the ledger needs gamma and tau (as defaults or per query)")
        else:
            mechanism, g, t, res = _check_query(q["mechanism"], q["gamma"], q["tau"], q["resolution"])
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
            if delta is not None and _acc.check_delta(delta) != self.delta:
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
            "per_query_epsilon": _query_epsilon(q["mechanism"], q["gamma"], q["tau_effective"],
                                                q["resolution"]),
            "failure_probability": fp,
            "time": time.time(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if counts is not None:
            arr = _acc.check_counts(counts, allow_2d=False)[0]
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

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
