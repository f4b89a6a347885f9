"""The owner's privacy ledger, and the one "charge, then release" step of every labelling path.

The demo (:mod:`speed.pipeline`), :func:`speed.label`, ``speed reproduce``
(:mod:`speed.reproduce.labelling`) and the Flower owner (:mod:`speed.deploy.owner_node`) open
their ledger with :func:`open_ledger` and release labels only through :func:`charge_then_release`:
the whole batch is charged (:meth:`speed.privacy.ledger.PrivacyLedger.charge_batch`: the budget
checked for the batch, then one fsync-ed record per query) before any of its labels is
decrypted or handed out (docs/privacy.md §6).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from speed.params import ProtocolParams
    from speed.privacy.ledger import PrivacyLedger
    from speed.privacy.mechanisms import Mechanism

__all__ = ["charge_then_release", "open_ledger"]

T = TypeVar("T")


def open_ledger(path: str | os.PathLike, params: ProtocolParams, noise: Mechanism, *, num_holders: int,
                planned_queries: int, run_id: str | None = None, max_epsilon: float | None = None) -> PrivacyLedger:
    """The owner's ledger at ``path``, opened for charging a run of ``num_holders`` holders.

    Skellam noise: the publishable (PLD) ε, with the plan (``planned_queries``, the target ε of
    ``params``, τ) written before the first charge and checked on a resumed ledger.  Lattice noise:
    the paper's moments accountant of γ and P.  Either charges at ``params.tau`` and ``params.delta``
    and refuses a batch beyond ``max_epsilon``; ``run_id`` None: a new run id from the clock.
    """
    from speed.privacy.ledger import PrivacyLedger
    from speed.privacy.mechanisms import Skellam

    common: dict[str, Any] = dict(run_id=run_id, delta=params.delta, max_epsilon=max_epsilon, tau=params.tau,
                                  num_holders=int(num_holders), expected_holders=int(num_holders))
    if isinstance(noise, Skellam):
        return PrivacyLedger(path, noise=noise, plan={
            "planned_queries": int(planned_queries), "target_epsilon": params.planned_target_epsilon,
            "tau": params.tau}, **common)
    return PrivacyLedger(path, gamma=noise.gamma, mechanism="lattice", resolution=noise.resolution, **common)


def charge_then_release(ledger: PrivacyLedger, query_ids: list[Any], decrypt: Callable[[], T] | None = None, *,
                        failure_probability: float, counts: Any = None, num_holders: int | None = None,
                        expected_holders: int | None = None) -> tuple[T | None, list[dict[str, Any]]]:
    """Charge ``query_ids`` in ``ledger``, then release: return ``(decrypt(), the ledger records)``.

    Nothing is decrypted unless every query was charged: a budget the batch would exceed raises
    :class:`speed.errors.BudgetExhaustedError` with nothing written and nothing released.
    ``failure_probability``: β per query folded into δ (docs/privacy.md "Circuit failures and
    δ"); ``counts`` (simulations of the paper's noise only): one vote-count row per query;
    ``num_holders`` of ``expected_holders`` answered: the ledger charges the reduced τ.
    ``query_ids`` may be a subset of the batch (a resumed owner charges only what its ledger does
    not hold yet; none: nothing is charged).  ``decrypt`` None: the caller releases the labels as
    soon as this returns (the ``before_release`` hook of :func:`speed.protocol.label_queries`,
    which decrypts right after it).
    """
    ids = list(query_ids)
    records = ledger.charge_batch(ids, failure_probability=failure_probability, counts=counts,
                                  num_holders=num_holders, expected_holders=expected_holders) if ids else []
    return (None if decrypt is None else decrypt()), records
