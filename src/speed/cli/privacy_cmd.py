"""``speed privacy``: publishable ε of a plan, noise calibration, per-query ε of the paper's
analysis, total ε of a set of answered queries, or a ledger's running ε.

Examples::

    speed privacy --mechanism skellam --sigma 40 --queries 500 --tau 1 0.9 0.7 --delta 1e-5
    speed privacy calibrate --target-epsilon 4 --queries 500 --delta 1e-5 --tau 1 --json
    speed privacy --mechanism laplace --gamma 3.3 --queries 500     # the paper's noise, publishable ε

    speed privacy --gamma 3.3 --tau 1 0.9 0.7
    speed privacy --counts votes.npy --gamma 3.3 --tau 0.9 --delta 1e-5
    speed privacy --counts votes.npy --gamma 3.3 --tau 0.9 --mechanism lattice --resolution 1000 --json
    speed privacy --ledger owner/privacy-ledger.jsonl --delta 1e-5
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from speed.cli import options as opt
from speed.errors import InputError

PUBLISH_LINE = (
    "Publish only the data-independent ε. The data-dependent ε depends on the private votes; "
    "releasing it needs smooth-sensitivity sanitisation (PATE 2018)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "privacy",
        help="privacy accounting: per-query ε, total ε of answered queries, ledger status",
        description=(
            "SPEED's collusion-aware privacy accountant (docs/spec.md §4). Without --counts, prints the "
            "per-query ε for each τ; with --counts (a (Q, K) .npy array of vote counts), prints "
            "the data-independent (publishable) and data-dependent (not publishable) ε; with "
            "--ledger, the running ε of an owner's privacy ledger."
        ),
    )
    p.add_argument("action", nargs="?", choices=("calibrate",),
                   help="calibrate: the least noise whose publishable ε meets --target-epsilon "
                   "for --queries queries")
    p.add_argument("--sigma", type=opt.sigma, help="σ of the Skellam noise (per class, all N shares)")
    p.add_argument("--queries", type=opt.int_range(1, 1_000_000),
                   help="number of answered queries: prints the publishable ε (PLD accounting)")
    p.add_argument("--target-epsilon", type=opt.target_epsilon,
                   help="with `calibrate`: the publishable ε to meet at --delta")
    p.add_argument("--gamma", type=opt.gamma, help="γ = 1/λ, inverse Laplace scale of the full noise")
    p.add_argument("--tau", type=opt.fraction, nargs="+", default=[1.0],
                   help="fraction(s) of holders whose noise stays secret, in (0, 1] (default 1)")
    p.add_argument("--counts", type=opt.existing_file, help="(Q, K) .npy array of vote counts of the answered queries")
    p.add_argument("--delta", type=opt.probability, default=1e-5, help="target δ (default 1e-5)")
    p.add_argument("--moments", type=opt.moments, default=25,
                   help=f"highest moment order L, 1..{opt.MAX_MOMENTS} (default 25)")
    p.add_argument("--mechanism", choices=opt.MECHANISMS, default=None,
                   help="skellam: distributed Skellam shares (default with --sigma and calibrate); "
                   "lattice: discrete Laplace shares of the encrypted pipeline; gamma (alias laplace): "
                   "the paper's continuous Gamma shares (default with --gamma)")
    p.add_argument("--resolution", type=opt.resolution, help="lattice steps per vote P (with --mechanism lattice)")
    p.add_argument("--ledger", type=opt.existing_file, help="print the running ε of this privacy ledger (read-only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _load_counts(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"counts file {path} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {path} as a .npy array of vote counts ({exc})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: counts must be a (Q, K) array, got shape {arr.shape}")
    return arr


def _check_finite(value: Any, what: str, args: argparse.Namespace, tau: float, allow_inf: bool = False) -> None:
    """Never print nan (or an infinite ε where a number is due): refuse the inputs in one line."""
    if value is None:
        return
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise InputError(
            f"{what} is not a finite number at γ = {args.gamma:g}, τ = {tau:g}"
            + (f", P = {args.resolution}" if args.resolution else "")
            + ": these values are outside what the accountant computes reliably"
        )


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.4f}"
    return str(x)


def _print_table(title: str, columns: list[str], rows: list[list[Any]], footer: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c not in ("mechanism", "publishable") else "left")
    for r in rows:
        table.add_row(*[_fmt(v) for v in r])
    console.print(table)
    if footer:
        console.print(footer)


def _per_query(args: argparse.Namespace) -> int:
    from speed.privacy import lattice_per_query_epsilon, per_query_epsilon, per_query_epsilon_parts

    rows, out = [], []
    for tau in args.tau:
        if args.mechanism == "lattice":
            eps = lattice_per_query_epsilon(args.gamma, tau, args.resolution)
            hist = lattice_per_query_epsilon(args.gamma, tau, args.resolution, bound="histogram")
            _check_finite(eps, "the per-query ε", args, tau)
            _check_finite(hist, "the histogram ε", args, tau)
            out.append({"gamma": args.gamma, "tau": tau, "mechanism": "lattice",
                        "resolution": args.resolution, "per_query_epsilon": eps,
                        "histogram_epsilon": hist})
            rows.append([f"{tau:g}", eps, hist])
        else:
            parts = per_query_epsilon_parts(args.gamma, tau)
            eps = per_query_epsilon(args.gamma, tau)
            _check_finite(eps, "the per-query ε", args, tau)
            _check_finite(parts["eps1"], "ε₁", args, tau, allow_inf=True)
            _check_finite(parts["eps2"], "ε₂", args, tau, allow_inf=True)  # inf: the bound does not apply
            out.append({"gamma": args.gamma, "tau": tau, "mechanism": "gamma",
                        "per_query_epsilon": eps, "eps1": parts["eps1"],
                        "eps2": None if math.isinf(parts["eps2"]) else parts["eps2"]})
            rows.append([f"{tau:g}", eps, parts["eps1"], None if math.isinf(parts["eps2"]) else parts["eps2"]])
    if args.json:
        print(json.dumps(out, indent=2))
    elif args.mechanism == "lattice":
        _print_table(f"per-query ε, lattice mechanism, γ = {args.gamma:g}, P = {args.resolution}",
                     ["τ", "ε (argmax bound)", "ε (histogram bound)"], rows, None)
    else:
        _print_table(f"per-query ε (docs/spec.md §4), γ = {args.gamma:g}",
                     ["τ", "ε_q", "ε₁", "ε₂"], rows, None)
    return 0


def _total(args: argparse.Namespace) -> int:
    from speed.privacy import epsilon

    counts = _load_counts(args.counts)
    results = [
        epsilon(counts, args.gamma, tau, args.delta, moments=args.moments,
                mechanism=args.mechanism, resolution=args.resolution)
        for tau in args.tau
    ]
    for tau, r in zip(args.tau, results):
        _check_finite(r["per_query_epsilon"], "the per-query ε", args, tau)
        _check_finite(r["data_independent"], "the data-independent ε", args, tau, allow_inf=True)
        _check_finite(r["data_dependent"], "the data-dependent ε", args, tau, allow_inf=True)
    if args.json:
        print(json.dumps([{"tau": tau, **r} for tau, r in zip(args.tau, results)], indent=2))
        return 0
    rows = []
    for tau, r in zip(args.tau, results):
        rows.append([f"{tau:g}", r["per_query_epsilon"], r["data_independent"], r["order_data_independent"],
                     r["data_dependent"], r["order"]])
    mech = args.mechanism + (f", P = {args.resolution}" if args.resolution else "")
    _print_table(
        f"ε after {results[0]['num_queries']} queries, γ = {args.gamma:g}, δ = {args.delta:g} ({mech})",
        ["τ", "ε per query", "data-independent ε (publishable)", "order",
         "data-dependent ε (NOT publishable)", "order"],
        rows,
        PUBLISH_LINE,
    )
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from speed.privacy import PrivacyLedger

    ledger = PrivacyLedger(args.ledger, delta=args.delta, moments=args.moments, read_only=True)
    spent = ledger.epsilon()
    info = {"ledger": str(args.ledger), "runs": sorted({str(r["run_id"]) for r in ledger.records}),
            "torn_bytes_ignored": ledger.repaired_bytes, **spent}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if isinstance(spent.get("mechanism"), dict):  # a ledger of a noise mechanism object: PLD accounting
        noise = spent["mechanism"]
        params = ", ".join(f"{k} = {v:g}" for k, v in noise.items() if k != "mechanism")
        _print_table(
            f"ledger {args.ledger}: {spent['num_queries']} queries, {noise['mechanism']} ({params}), "
            f"δ = {spent['delta']:g}, δ_total = {spent['delta_total']:.3g}",
            ["quantity", "value", "publishable"], [["ε (PLD)", spent["epsilon"], "yes"]],
            None if not spent.get("plan") else f"plan: {spent['plan']}",
        )
        return 0
    rows = [["data-independent ε", spent["epsilon"], "yes"]]
    if spent.get("data_dependent") is not None:
        rows.append(["data-dependent ε (simulation)", spent["data_dependent"], "no"])
    _print_table(
        f"ledger {args.ledger}: {spent['num_queries']} queries, δ = {args.delta:g}, "
        f"δ_total = {spent['delta_total']:.3g}",
        ["quantity", "value", "publishable"], rows, PUBLISH_LINE,
    )
    return 0


def _noise_of(args: argparse.Namespace, mechanism: str) -> Any:
    """The mechanism object the options describe (σ for Skellam, γ and P for the Laplace ones)."""
    from speed.privacy.mechanisms import mechanism_from_name

    if mechanism == "skellam":
        if args.sigma is None:
            raise InputError("--mechanism skellam needs --sigma σ")
        if args.gamma is not None or args.resolution is not None:
            raise InputError("--gamma and --resolution do not apply to --mechanism skellam (give --sigma)")
        return mechanism_from_name("skellam", sigma=args.sigma)
    if args.sigma is not None:
        raise InputError(f"--sigma applies to --mechanism skellam, not {mechanism}")
    if args.gamma is None:
        raise InputError(f"--mechanism {mechanism} needs --gamma γ (= 1/λ)")
    if mechanism == "lattice":
        return mechanism_from_name("lattice", gamma=args.gamma, resolution=args.resolution or 1)
    if args.resolution is not None:
        raise InputError("--resolution only applies with --mechanism lattice")
    return mechanism_from_name("gamma", gamma=args.gamma)


def _publishable(args: argparse.Namespace, mechanism: str) -> int:
    """Publishable ε of ``--queries`` answered queries per τ (PLD accounting, docs/privacy.md)."""
    from speed.privacy.pld import publishable_epsilon, rdp_epsilon

    noise = _noise_of(args, mechanism)
    out = []
    for tau in args.tau:
        eps = publishable_epsilon(noise, args.queries, args.delta, tau)
        if math.isnan(eps):
            raise InputError(f"the publishable ε is not a number for {noise.to_dict()} at τ = {tau:g}")
        rdp = rdp_epsilon(noise, args.queries, args.delta, tau) if mechanism != "gamma" else None
        out.append({"epsilon": eps, "delta": args.delta, "mechanism": noise.to_dict(), "tau": tau,
                    "queries": args.queries, "accounting": "PLD (dp_accounting, pessimistic)",
                    "rdp_epsilon_cross_check": rdp, "publishable": True})
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
        return 0
    params = ", ".join(f"{k} = {v:g}" for k, v in noise.params().items())
    _print_table(f"publishable ε of {args.queries} queries, {noise.name} ({params}), δ = {args.delta:g}",
                 ["τ", "publishable ε (PLD)", "RDP cross-check (looser)"],
                 [[f"{r['tau']:g}", r["epsilon"], r["rdp_epsilon_cross_check"]] for r in out],
                 "τ: fraction of holders whose noise share stayed secret (collusion-aware).")
    return 0


def _calibrate(args: argparse.Namespace, mechanism: str) -> int:
    """Least noise whose publishable ε is at most ``--target-epsilon`` (like Opacus' noise search)."""
    from speed.privacy.calibrate import calibrate

    if args.target_epsilon is None or args.queries is None:
        raise InputError("calibrate needs --target-epsilon E and --queries Q")
    if args.sigma is not None or args.gamma is not None:
        raise InputError("calibrate finds the noise: give --target-epsilon, not --sigma or --gamma")
    if mechanism != "lattice" and args.resolution is not None:
        raise InputError("--resolution only applies with --mechanism lattice")
    fixed = {"resolution": args.resolution or 1} if mechanism == "lattice" else {}
    out = []
    for tau in args.tau:
        noise, eps = calibrate(mechanism, args.target_epsilon, args.queries, args.delta, tau, **fixed)
        out.append({**noise.params(), "epsilon": eps, "target_epsilon": args.target_epsilon,
                    "delta": args.delta, "mechanism": noise.to_dict(), "tau": tau, "queries": args.queries})
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
        return 0
    knob = "sigma" if mechanism == "skellam" else "gamma"
    _print_table(f"least noise for publishable ε ≤ {args.target_epsilon:g} over {args.queries} queries, "
                 f"δ = {args.delta:g} ({mechanism})",
                 ["τ", "σ" if knob == "sigma" else "γ (= 1/λ)", "publishable ε"],
                 [[f"{r['tau']:g}", float(r[knob]), r["epsilon"]] for r in out], None)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "calibrate":
        return _calibrate(args, args.mechanism or "skellam")
    if args.target_epsilon is not None:
        raise InputError("--target-epsilon applies to `speed privacy calibrate`")
    if args.ledger is not None:
        return _ledger(args)
    if args.queries is not None:
        return _publishable(args, args.mechanism or ("skellam" if args.sigma is not None else "gamma"))
    if args.sigma is not None or args.mechanism == "skellam":
        raise InputError("Skellam noise is accounted over --queries Q (give --queries)")
    args.mechanism = "gamma" if args.mechanism in (None, "laplace") else args.mechanism
    if args.gamma is None:
        raise InputError("--gamma is required (γ = 1/λ), unless --ledger is given")
    if args.mechanism == "lattice" and args.resolution is None:
        raise InputError("--mechanism lattice needs --resolution P (lattice steps per vote)")
    if args.mechanism == "gamma" and args.resolution is not None:
        raise InputError("--resolution only applies with --mechanism lattice")
    if args.counts is None:
        return _per_query(args)
    return _total(args)
