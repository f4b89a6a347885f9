"""Privacy-utility frontier from the teachers' vote matrix (issue 19 §6), in clear text.

    .venv/bin/python benchmarks/frontier.py [--votes benchmarks/results/frontier/votes-fashion-mnist-N250.npz] \
        [--epsilons 1 2 4 8] [--queries 100 500] [--tau 1 0.9 0.7] [--seeds 3] [--threads 2]

Input: the vote matrix written by ``benchmarks/teachers_scattering.py`` (every teacher's vote on every
public-pool point) and the scattering-feature cache (for the students).  No teacher is retrained and
nothing is encrypted: for every publishable ε, number of queries Q and collusion fraction τ, and for
Skellam and lattice (discrete) Laplace noise at resolution P = 1 side by side:

1. ``speed.privacy.calibrate.calibrate(name, ε, Q, δ, τ)`` gives the least noise whose publishable
   (data-independent, PLD-accounted) ε over Q noisy histograms is ≤ ε when only τN of the N shares
   stay secret;
2. for each of ``--seeds`` seeds and each of the Q queries (the first Q of ``select_queries``, as
   ``speed reproduce`` picks them), the N holders' shares are drawn with
   ``mechanism.sample_shares(N, K, rng)`` and summed onto the vote counts; the label is
   ``numpy.argmax`` of the noisy sums (ties to the lowest class, as the encrypted circuit);
3. label accuracy = agreement with the true labels of the queried pool points;
4. student: a linear softmax head on the same scattering features (public-pool standardisation),
   trained on the Q labelled points only (supervised; no unlabelled pool data), full-batch Adam,
   all students of one Q trained as one batched model; accuracy on the test split (never queried).

These are clear-text simulations of the noise law the encrypted pipeline adds: its decrypted labels
equal the clear noisy argmax of the same noisy sums exactly (tested elsewhere), so the same law gives
the same label distribution.  No point here went through encryption.

Writes ``benchmarks/results/frontier/frontier-<stamp>.json``, ``report.md`` (rewritten) and
``frontier-<stamp>.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "results" / "frontier"
MECHANISMS = {"skellam": "Skellam", "lattice": "discrete Laplace (lattice, P = 1)"}
#: The issue's evidence (issue 19 §6): Skellam on 250 teachers, 85.6 % plurality accuracy, Q = 500.
ISSUE_EVIDENCE = [
    {"mechanism": "skellam", "sigma": 34, "epsilon": 4, "queries": 500, "label_accuracy": 0.846},
    {"mechanism": "skellam", "sigma": 63, "epsilon": 2, "queries": 500, "label_accuracy": 0.793},
]


def lscpu() -> dict:
    out: dict = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
            out[key.strip()] = value.strip()
    return out


def noisy_labels(counts: np.ndarray, mechanism, num_holders: int, rng: np.random.Generator) -> np.ndarray:
    """argmax of (vote_step · counts + sum of N shares) per query; N shares drawn per query."""
    q, k = counts.shape
    labels = np.empty(q, dtype=np.int64)
    step = int(getattr(mechanism, "vote_step", 1))
    for i in range(q):
        shares = mechanism.sample_shares(num_holders, k, rng)  # (N, K) integer shares
        labels[i] = int(np.argmax(step * counts[i] + shares.sum(axis=0)))
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--votes", default=str(OUT_DIR / "votes-fashion-mnist-N250.npz"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--holders", type=int, default=250)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--queries", type=int, nargs="+", default=[100, 500])
    p.add_argument("--tau", type=float, nargs="+", default=[1.0, 0.9, 0.7])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=list(MECHANISMS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--student-lr", type=float, default=1e-2)
    p.add_argument("--student-weight-decay", type=float, default=1e-2)
    p.add_argument("--cache-dir", default=str(ROOT / ".speed-cache"))
    p.add_argument("--no-students", action="store_true")
    p.add_argument("--self-train-tau", type=float, nargs="*", default=[],
                   help="also self-train the students of these τ (one round of confident pseudo-labels on the "
                        "unqueried pool, warm start)")
    p.add_argument("--self-train-threshold", type=float, default=0.9)
    p.add_argument("--self-train-steps", type=int, default=100)
    p.add_argument("--calibrate-only", action="store_true",
                   help="only fill the calibration cache (CACHE/frontier/calibration.json) and exit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(OUT_DIR))
    args = p.parse_args(argv)

    import torch

    from speed.errors import SpeedError
    from speed.fsutil import atomic_write_json, atomic_write_text
    from speed.learning import load_dataset, make_splits, plurality, select_queries, vote_counts
    from speed.learning.batched import BatchedConfig, BatchedLinearTeachers
    from speed.learning.features import scattering_features
    from speed.machine import machine
    from speed.privacy.calibrate import calibrate
    from speed.privacy.mechanisms import mechanism_from_dict

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        # ------------------------------------------------------------ calibration
        calib: dict[tuple, dict] = {}
        t0 = time.perf_counter()
        cache_file = Path(args.cache_dir) / "frontier" / "calibration.json"
        cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        for mech in args.mechanisms:
            for q in args.queries:
                for tau in args.tau:
                    for eps in args.epsilons:
                        fixed = {"resolution": 1} if mech == "lattice" else {}
                        ckey = json.dumps([mech, eps, q, args.delta, tau, fixed])
                        if ckey in cached:
                            m = mechanism_from_dict(cached[ckey]["mechanism"])
                            achieved = cached[ckey]["epsilon"]
                        else:
                            t1 = time.perf_counter()
                            m, achieved = calibrate(mech, eps, q, args.delta, tau, **fixed)
                            cached[ckey] = {"mechanism": m.to_dict(), "epsilon": float(achieved),
                                            "seconds": round(time.perf_counter() - t1, 1)}
                            atomic_write_text(cache_file, json.dumps(cached, indent=1))
                        calib[(mech, q, tau, eps)] = {"mechanism": m, "epsilon": float(achieved),
                                                      "seconds": cached[ckey].get("seconds")}
                        print(f"calibrated {mech:8s} Q={q:4d} tau={tau:g} eps={eps:g}: {m.params()} "
                              f"(eps {achieved:.4f})", flush=True)
        calibrate_s = time.perf_counter() - t0
        if args.calibrate_only:
            return 0

        votes_path = Path(args.votes)
        if not votes_path.is_file():
            raise SpeedError(f"vote matrix {votes_path} does not exist; run benchmarks/teachers_scattering.py first")
        with np.load(votes_path) as z:
            pool_votes = z["pool_votes"].astype(np.int64)
            pool_indices = z["pool_indices"]
            test_votes, test_y = z["test_votes"].astype(np.int64), z["test_y"]
        ds = load_dataset(args.dataset)
        splits = make_splits(ds, args.holders, seed=args.split_seed)
        if not np.array_equal(splits.pool_indices, pool_indices) or pool_votes.shape[0] != args.holders:
            raise SpeedError(f"{votes_path} was made with another split or number of holders")
        k = ds.num_classes
        n = pool_votes.shape[0]
        q_max = max(args.queries)
        queries = select_queries(splits, q_max, seed=args.split_seed)
        counts_all = vote_counts(pool_votes[:, queries.positions], k)  # (Qmax, K)
        true_all = queries.true_labels
        plur_all = plurality(counts_all)

        # ------------------------------------------------------------ noisy labels
        t0 = time.perf_counter()
        rows = []
        for ci, ((mech, q, tau, eps), c) in enumerate(calib.items()):
            counts, true = counts_all[:q], true_all[:q]
            for seed in range(args.seeds):
                rng = np.random.default_rng(np.random.SeedSequence([seed, ci, 0xF207]))
                labels = noisy_labels(counts, c["mechanism"], n, rng)
                rows.append({
                    "mechanism": mech, "queries": q, "tau": tau, "target_epsilon": eps, "epsilon": c["epsilon"],
                    "noise": c["mechanism"].params(), "seed": seed, "labels": labels,
                    "label_accuracy": float(np.mean(labels == true)),
                    "agreement_with_plurality": float(np.mean(labels == plur_all[:q])),
                })
        labels_s = time.perf_counter() - t0

        # ------------------------------------------------------------ students
        student_s = 0.0
        references: dict[int, dict] = {}
        if not args.no_students:
            feats = scattering_features(ds, splits, cache_dir=args.cache_dir, require_cache=True, progress=False)
            x_pool = feats.pool(splits)
            x_test = feats.test_split(splits)
            if not np.array_equal(splits.test_y, test_y):
                raise SpeedError(f"{votes_path}: test labels differ from the split's")
            scfg = BatchedConfig(steps=args.student_steps, lr=args.student_lr,
                                 weight_decay=args.student_weight_decay, init_std=0.0)
            t0 = time.perf_counter()
            for q in args.queries:
                xq = x_pool[queries.positions[:q]]
                mine = [r for r in rows if r["queries"] == q]
                label_sets = [r["labels"] for r in mine] + [plur_all[:q], true_all[:q]]
                heads = BatchedLinearTeachers(len(label_sets), feats.dim, k, seed=0, init_std=0.0)
                heads.fit(xq, np.stack(label_sets), None, scfg)
                acc = heads.accuracies(x_test, test_y)
                for r, a in zip(mine, acc[:len(mine)]):
                    r["student_accuracy"] = float(a)
                references[q] = {"student_plurality_labels": float(acc[-2]), "student_true_labels": float(acc[-1])}
                print(f"students Q={q}: {len(label_sets)} heads in {heads.train_seconds:.0f} s", flush=True)
                if args.self_train_tau:
                    sel = [i for i, r in enumerate(mine) if r["tau"] in args.self_train_tau]
                    sel += [len(mine), len(mine) + 1]  # the two references
                    st_acc = self_train(heads, sel, xq, np.stack(label_sets), x_pool, queries.positions[:q],
                                        x_test, test_y, args, BatchedConfig, BatchedLinearTeachers)
                    for i, a in zip(sel[:-2], st_acc[:-2]):
                        mine[i]["student_self_trained_accuracy"] = float(a)
                    references[q].update(student_plurality_labels_self_trained=float(st_acc[-2]),
                                         student_true_labels_self_trained=float(st_acc[-1]))
            student_s = time.perf_counter() - t0
    except SpeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # ---------------------------------------------------------------- aggregate
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["mechanism"], r["queries"], r["tau"], r["target_epsilon"]), []).append(r)
    summary = []
    for (mech, q, tau, eps), rs in groups.items():
        la = np.array([r["label_accuracy"] for r in rs])
        entry = {
            "mechanism": mech, "queries": q, "tau": tau, "target_epsilon": eps, "epsilon": rs[0]["epsilon"],
            "noise": rs[0]["noise"], "seeds": len(rs),
            "label_accuracy_mean": float(la.mean()), "label_accuracy_sd": float(la.std(ddof=1)) if len(la) > 1 else 0.0,
            "agreement_with_plurality_mean": float(np.mean([r["agreement_with_plurality"] for r in rs])),
        }
        if "student_accuracy" in rs[0]:
            sa = np.array([r["student_accuracy"] for r in rs])
            entry["student_accuracy_mean"] = float(sa.mean())
            entry["student_accuracy_sd"] = float(sa.std(ddof=1)) if len(sa) > 1 else 0.0
        if "student_self_trained_accuracy" in rs[0]:
            sa = np.array([r["student_self_trained_accuracy"] for r in rs])
            entry["student_self_trained_accuracy_mean"] = float(sa.mean())
            entry["student_self_trained_accuracy_sd"] = float(sa.std(ddof=1)) if len(sa) > 1 else 0.0
        summary.append(entry)
    plur_ref = {q: float(np.mean(plur_all[:q] == true_all[:q])) for q in args.queries}
    teacher_test = (test_votes == test_y[None, :]).mean(axis=1)
    test_plur = float(np.mean(plurality(vote_counts(test_votes, k)) == test_y))

    stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "frontier",
        "simulation": "clear text: noise drawn with the mechanisms' share samplers and added to the clear vote "
                      "counts; nothing encrypted",
        "machine": machine(), "lscpu": lscpu(), "torch_threads": args.threads,
        "votes_file": str(votes_path), "dataset": args.dataset, "holders": n, "delta": args.delta,
        "teachers_test": {"mean": float(teacher_test.mean()), "plurality": test_plur, "test_points": len(test_y)},
        "noiseless_plurality_label_accuracy": {str(q): v for q, v in plur_ref.items()},
        "student_references": {str(q): v for q, v in references.items()},
        "student": None if args.no_students else {
            "model": "linear softmax head on scattering features (public-pool standardisation)",
            "data": "the Q labelled queries only (supervised; no unlabelled data)",
            "optimizer": "full-batch Adam", "steps": args.student_steps, "lr": args.student_lr,
            "weight_decay": args.student_weight_decay, "init": "zeros",
            "self_training": None if not args.self_train_tau else {
                "tau": args.self_train_tau, "threshold": args.self_train_threshold, "steps": args.self_train_steps,
                "rule": "one round: each supervised student pseudo-labels the unqueried pool points where its "
                        "softmax confidence >= threshold, then trains on its labelled + pseudo-labelled points "
                        "(warm start from its supervised weights, same lr and weight decay)",
            },
        },
        "label_rule": "numpy.argmax of the noisy sums (ties to the lowest class index)",
        "calibration_cache": str(Path(args.cache_dir) / "frontier" / "calibration.json"),
        "calibration_seconds_when_computed": {
            "recorded": round(sum(c["seconds"] for c in calib.values() if c["seconds"] is not None), 1),
            "entries_without_record": sum(c["seconds"] is None for c in calib.values()),
        },
        "seconds": {"calibration": round(calibrate_s, 1), "labels": round(labels_s, 1),
                    "students": round(student_s, 1), "total": round(time.perf_counter() - t_start, 1)},
        "issue_evidence": ISSUE_EVIDENCE,
        "summary": summary,
        "runs": [{k2: v for k2, v in r.items() if k2 != "labels"} for r in rows],
    }
    json_path = out / f"frontier-{stamp}.json"
    atomic_write_json(json_path, result, indent=2)
    png_path = out / f"frontier-{stamp}.png"
    plot(summary, plur_ref, references, png_path)
    atomic_write_text(out / "report.md", report(result, json_path.name, png_path.name))
    print(f"wrote {json_path}, {png_path}, {out / 'report.md'}")
    return 0


def self_train(heads, sel, xq, labels, x_pool, queried, x_test, test_y, args, BatchedConfig, BatchedLinearTeachers):
    """One round of self-training for students ``sel`` of ``heads``: each labels the unqueried pool
    points where its softmax confidence is >= the threshold, then continues training (warm start,
    ``--self-train-steps`` full-batch Adam steps) on its Q labelled points plus those pseudo-labels.
    Returns the students' test accuracies."""
    import torch

    unqueried = np.setdiff1d(np.arange(len(x_pool)), queried)
    xu = x_pool[unqueried]
    probs = heads.predict_proba(xu)[sel]  # (S, U, K)
    pseudo, conf = probs.argmax(axis=-1), probs.max(axis=-1)
    q = len(queried)
    x_all = np.concatenate([xq, xu])
    y_all = np.concatenate([labels[sel], pseudo], axis=1)
    mask = np.concatenate([np.ones((len(sel), q), dtype=bool), conf >= args.self_train_threshold], axis=1)
    st = BatchedLinearTeachers(len(sel), heads.dim, heads.num_classes, seed=0, init_std=0.0)
    with torch.no_grad():
        st.weight.copy_(heads.weight[sel])
        st.bias.copy_(heads.bias[sel])
    cfg = BatchedConfig(steps=args.self_train_steps, lr=args.student_lr, weight_decay=args.student_weight_decay,
                        init_std=0.0)
    st.fit(x_all, y_all, mask, cfg)
    print(f"self-training Q={q}: {len(sel)} students, {mask[:, q:].mean():.0%} of {len(xu)} unqueried points "
          f"pseudo-labelled on average, {st.train_seconds:.0f} s", flush=True)
    return st.accuracies(x_test, test_y)


def _noise_text(entry: dict) -> str:
    noise = entry["noise"]
    if entry["mechanism"] == "skellam":
        return f"σ = {noise['sigma']:.1f}"
    return f"λ = {1.0 / noise['gamma']:.1f} (γ = {noise['gamma']:.4f})"


def plot(summary: list[dict], plur_ref: dict, references: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speed.fsutil import atomic_path

    has_students = any("student_accuracy_mean" in e for e in summary)
    fig, axes = plt.subplots(1, 2 if has_students else 1, figsize=(13 if has_students else 7, 5), squeeze=False)
    keys = sorted({(e["mechanism"], e["queries"], e["tau"]) for e in summary})
    colours = {("skellam", 100): "tab:blue", ("skellam", 500): "tab:cyan",
               ("lattice", 100): "tab:red", ("lattice", 500): "tab:orange"}
    styles = {1.0: "-", 0.9: "--", 0.7: ":"}
    panels = [("label_accuracy_mean", "label accuracy (queried pool points)")]
    if has_students:
        panels.append(("student_accuracy_mean", "student accuracy (test split, never queried)"))
    for ax, (field, title) in zip(axes[0], panels):
        for mech, q, tau in keys:
            pts = sorted((e["target_epsilon"], e[field]) for e in summary
                         if (e["mechanism"], e["queries"], e["tau"]) == (mech, q, tau))
            ax.plot([a for a, _ in pts], [100 * b for _, b in pts], marker="o", ms=3,
                    color=colours.get((mech, q), None), linestyle=styles.get(tau, "-."),
                    label=f"{mech}, Q={q}, τ={tau:g}")
        for q, v in plur_ref.items():
            ref = v if field == "label_accuracy_mean" else references.get(q, {}).get("student_plurality_labels")
            if ref is not None:
                ax.axhline(100 * ref, color="grey", lw=0.8, linestyle=(0, (5, 2 if q == 100 else 6)))
                ax.text(1.0, 100 * ref, f" noiseless, Q={q}", fontsize=7, color="grey", va="bottom")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("publishable ε (δ = 1e-5)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle("Clear-text simulation of the noisy argmax from the teachers' votes (not encrypted runs)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _calibration_cost(result: dict) -> str:
    c = result["calibration_seconds_when_computed"]
    if c["entries_without_record"] == len(result["summary"]):
        return "their computation time was not recorded in the cache"
    text = f"recorded cost when computed {c['recorded']} s"
    return text + (f", {c['entries_without_record']} entries without a record" if c["entries_without_record"] else "")


def report(result: dict, json_name: str, png_name: str) -> str:
    m = result["machine"]
    cpu = result["lscpu"]
    t = result["teachers_test"]
    lines = [
        "# Privacy–utility frontier (issue 19 §6): clear-text simulation",
        "",
        "**Every point here is a clear-text simulation**: the noise of each mechanism is drawn with its",
        "share sampler (N shares per query, summed) and added to the teachers' clear vote counts; the",
        "label is `numpy.argmax` of the noisy sums (ties to the lowest class). The encrypted pipeline's",
        "decrypted labels equal the clear noisy argmax of the same noisy sums exactly (tested elsewhere),",
        "so these points have the label distribution of encrypted runs with the same noise law, but no",
        "point on this page was produced through encryption.",
        "",
        f"Results: `{json_name}`, plot `{png_name}`. Machine: {cpu.get('Model name', m.get('cpu_model'))}, "
        f"{cpu.get('CPU(s)', m.get('cpus'))} CPUs, torch threads {result['torch_threads']}; "
        f"date {m['date_utc']}; load average {m.get('load_average_1_5_15')} (shared machine).",
        "",
        f"Teachers: {result['holders']} linear heads on scattering features (`votes_file`: "
        f"`{Path(result['votes_file']).name}`), mean accuracy {100 * t['mean']:.1f} %, plurality "
        f"{100 * t['plurality']:.1f} % on {t['test_points']} test images.",
        "",
        "Reference, noiseless plurality on the same queries: "
        + ", ".join(f"Q = {q}: label accuracy {100 * v:.1f} %" for q, v in result["noiseless_plurality_label_accuracy"].items())
        + ".",
    ]
    if result["student"] is not None:
        s = result["student"]
        lines += [
            "",
            f"Student: {s['model']}, trained on {s['data']}, {s['optimizer']} {s['steps']} steps, lr {s['lr']}, "
            f"weight decay {s['weight_decay']}; accuracy on the test split (never queried). References: "
            + "; ".join(f"Q = {q}: noiseless plurality labels {100 * v['student_plurality_labels']:.1f} %, "
                        f"true labels {100 * v['student_true_labels']:.1f} %"
                        for q, v in result["student_references"].items()) + ".",
        ]
    lines += [
        "",
        f"Calibration: `speed.privacy.calibrate.calibrate(mechanism, ε, Q, δ = {result['delta']:g}, τ)`, the least "
        "noise whose publishable ε (PLD) is ≤ the target when only τN shares stay secret; ε column = the "
        "calibrated mechanism's ε. Means over "
        f"{result['summary'][0]['seeds'] if result['summary'] else 0} noise seeds (± sample sd).",
        "",
        "Skellam and discrete Laplace side by side at the same publishable ε; label acc. = agreement with the true",
        "labels of the Q queried pool points, = plur. = agreement with the noiseless plurality, student = accuracy on",
        "the test split.",
        "",
        "| Q | τ | ε | Skellam σ | label acc. | = plur. | student | Laplace λ (P = 1) | label acc. | = plur. | student |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(e["mechanism"], e["queries"], e["tau"], e["target_epsilon"]): e for e in result["summary"]}
    combos = sorted({(e["queries"], e["tau"], e["target_epsilon"]) for e in result["summary"]},
                    key=lambda c: (c[0], -c[1], c[2]))

    def cells(e: dict | None) -> str:
        if e is None:
            return " | | | "
        noise = (f"{e['noise']['sigma']:.1f}" if e["mechanism"] == "skellam" else f"{1.0 / e['noise']['gamma']:.1f}")
        student = (f"{100 * e['student_accuracy_mean']:.1f} ± {100 * e['student_accuracy_sd']:.1f} %"
                   if "student_accuracy_mean" in e else "")
        return (f"{noise} | {100 * e['label_accuracy_mean']:.1f} ± {100 * e['label_accuracy_sd']:.1f} % | "
                f"{100 * e['agreement_with_plurality_mean']:.1f} % | {student}")

    for q, tau, eps in combos:
        lines.append(f"| {q} | {tau:g} | {eps:g} | {cells(by_key.get(('skellam', q, tau, eps)))} | "
                     f"{cells(by_key.get(('lattice', q, tau, eps)))} |")
    pairs = [(by_key.get(("skellam",) + c), by_key.get(("lattice",) + c)) for c in combos]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if pairs:
        better = sum(a["label_accuracy_mean"] >= b["label_accuracy_mean"] for a, b in pairs)
        worst = max(pairs, key=lambda ab: ab[0]["label_accuracy_mean"] - ab[1]["label_accuracy_mean"])
        lines += ["", f"Skellam's label accuracy is at least the lattice Laplace's in {better} of {len(pairs)} cells; the "
                  f"largest gap is {100 * (worst[0]['label_accuracy_mean'] - worst[1]['label_accuracy_mean']):.1f} points "
                  f"(Q = {worst[0]['queries']}, τ = {worst[0]['tau']:g}, ε = {worst[0]['target_epsilon']:g}). At τ = 1 the "
                  "calibrated σ and λ are nearly equal, but the discrete Laplace's standard deviation is about √2 λ; "
                  "at τ < 1 the lattice's λ grows much faster than Skellam's σ (which grows as 1/√τ): the accountant sees τN "
                  "lattice shares, whose sum is a difference of negative binomials of shape τ, not a discrete Laplace."]
    st = (result["student"] or {}).get("self_training")
    if st:
        lines += ["", f"Self-training (τ ∈ {st['tau']}): {st['rule']}; threshold {st['threshold']}, {st['steps']} steps. "
                  "Student accuracy on the test split, supervised → self-trained:", "",
                  "| Q | τ | ε | Skellam supervised | Skellam self-trained | Laplace supervised | Laplace self-trained |",
                  "|---|---|---|---|---|---|---|"]

        def st_cells(e: dict | None) -> str:
            if e is None or "student_self_trained_accuracy_mean" not in e:
                return " | "
            return (f"{100 * e['student_accuracy_mean']:.1f} ± {100 * e['student_accuracy_sd']:.1f} % | "
                    f"{100 * e['student_self_trained_accuracy_mean']:.1f} ± "
                    f"{100 * e['student_self_trained_accuracy_sd']:.1f} %")

        for q, tau, eps in combos:
            if tau in st["tau"]:
                lines.append(f"| {q} | {tau:g} | {eps:g} | {st_cells(by_key.get(('skellam', q, tau, eps)))} | "
                             f"{st_cells(by_key.get(('lattice', q, tau, eps)))} |")
        lines += ["", "References, supervised → self-trained: " + "; ".join(
            f"Q = {q}: noiseless plurality labels {100 * v['student_plurality_labels']:.1f} → "
            f"{100 * v.get('student_plurality_labels_self_trained', float('nan')):.1f} %, true labels "
            f"{100 * v['student_true_labels']:.1f} → {100 * v.get('student_true_labels_self_trained', float('nan')):.1f} %"
            for q, v in result["student_references"].items()) + "."]
    achieved = [abs(e["epsilon"] - e["target_epsilon"]) / e["target_epsilon"] for e in result["summary"]]
    if achieved:
        lines += ["", f"Every calibrated ε is within {100 * max(achieved):.2f} % below its target (JSON: `summary[].epsilon`)."]
    here = [by_key.get(("skellam", 500, 1.0, ev["epsilon"])) for ev in result["issue_evidence"]]
    lines += [
        "",
        "The issue's evidence (issue 19 §6, other teachers: 250 teachers with 85.6 % plurality accuracy): "
        + "; ".join(f"Skellam σ = {ev['sigma']} (ε = {ev['epsilon']} for {ev['queries']} queries) kept "
                    f"{100 * ev['label_accuracy']:.1f} % label accuracy" for ev in result["issue_evidence"]) + ". "
        + "Here (these teachers, plurality "
        + f"{100 * result['noiseless_plurality_label_accuracy'].get('500', float('nan')):.1f} % on the 500 queries): "
        + "; ".join(f"σ = {e['noise']['sigma']:.1f} (ε = {e['target_epsilon']:g}) kept "
                    f"{100 * e['label_accuracy_mean']:.1f} ± {100 * e['label_accuracy_sd']:.1f} %"
                    for e in here if e is not None) + ".",
        "",
        f"Time: calibration {result['seconds']['calibration']} s in this run ({len(result['summary'])} calls; cached in "
        f"`.speed-cache/frontier/calibration.json`; {_calibration_cost(result)}), noisy labels {result['seconds']['labels']} s, "
        f"students {result['seconds']['students']} s, total {result['seconds']['total']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
