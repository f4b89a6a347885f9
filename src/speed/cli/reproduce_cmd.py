"""``speed reproduce``: the paper's experiments (docs/spec.md §6) with real encryption, and a report."""

from __future__ import annotations

import argparse
import sys

from speed.cli import options as opt
from speed.cli.report import dump_json, print_sections


def register(sub: argparse._SubParsersAction) -> None:
    from speed.reproduce.config import DATASET_DEFAULTS, REPRODUCE_DATASETS, STUDENT_METHODS

    defaults = "; ".join(
        f"{name}: N={d['holders']}, Q={' '.join(map(str, d['queries']))}, {d['teachers']} teachers, "
        f"target ε {d['target_epsilon']:g}" for name, d in DATASET_DEFAULTS.items()
    )
    p = sub.add_parser(
        "reproduce",
        help="reproduce the paper's experiments (teachers, encrypted labelling, students, ε) and write a report",
        description=(
            "Train (or reuse checkpointed) teachers, label the queries once through the real encrypted "
            "pipeline with distributed Skellam noise (publishable ε, PLD accounting) or the paper's lattice "
            "noise, compute ε for every (Q, τ), train students on exactly the queried points and a "
            "non-private baseline, and write OUTPUT/DATASET/report.md, results.json and PNG plots. A killed "
            "run resumes: features, teachers, votes, labels (and their privacy-ledger charges), the baseline "
            "and students are kept in --cache-dir, keyed by the settings they depend on. "
            f"Defaults per dataset: {defaults}; δ = 1e-5, τ = 1 0.9 0.7."
        ),
    )
    p.add_argument("--dataset", choices=REPRODUCE_DATASETS, default="digits",
                   help="digits (bundled), fashion-mnist (Debian dataset-fashion-mnist or --data-dir), "
                        "mnist and svhn (--data-dir)")
    p.add_argument("--data-dir", default=None, help="directory with the dataset files (mnist, svhn; "
                   "fashion-mnist defaults to /usr/share/datasets/fashion-mnist)")
    p.add_argument("--holders", type=opt.holders, default=None, help="number of data holders N (default per dataset)")
    p.add_argument("--queries", type=opt.positive_int, nargs="+", default=None, metavar="Q",
                   help="query counts reported in the table; the largest is labelled once, the others are its "
                        "prefixes (default per dataset)")
    opt.add_protocol_options(
        p, "tau", "mechanism", "target_epsilon", "sigma", "gamma", "delta", "resolution", "batch_size", "seed",
        tau=dict(nargs="+", default=[1.0, 0.9, 0.7], metavar="τ",
                 help="fractions of holders whose noise stays secret, for the accounting (default 1 0.9 0.7)"),
        mechanism=dict(help="noise: skellam (distributed Skellam shares, publishable ε by PLD accounting; default) "
                            "or lattice (the paper's discrete Laplace shares with --gamma, and its moments accountant)"),
        target_epsilon=dict(help="skellam: publishable ε planned for the largest --queries at the smallest --tau; σ "
                                 "is calibrated to it (default per dataset: 8 for digits, 4 otherwise)"),
        sigma=dict(help="skellam σ given directly (instead of --target-epsilon)"),
        gamma=dict(help="lattice: γ = 1/λ, inverse noise scale (default %(default)s, the paper's)"),
        seed=dict(help="seed of splits, teachers, queries and seeded noise"),
    )
    p.add_argument("--plaintext-check", action="store_true",
                   help="also compute the argmax in clear on the same noisy votes and report the agreement "
                        "with the decrypted labels (exit status 1 if it is not 100%%)")
    p.add_argument("--teachers", choices=["scattering", "cnn"], default=None,
                   help="scattering: linear heads on fixed scattering features, trained as one batched model "
                        "(default for fashion-mnist and mnist); cnn: one network per holder (default for digits, svhn)")
    p.add_argument("--features", default=None,
                   metavar="FILE", help="scattering: an existing feature cache file (error if missing or corrupt; "
                   "default: computed once and cached in CACHE_DIR/features/)")
    p.add_argument("--model", default=None,
                   help="network of the teachers, students and baseline (compact-cnn, digits-cnn, mlp, pate-mnist, "
                        "pate-svhn; default per dataset: pate-mnist for mnist, docs/spec.md §6; compact-cnn for "
                        "fashion-mnist; digits-cnn for digits; pate-svhn for svhn)")
    p.add_argument("--teacher-steps", type=opt.positive_int, default=None,
                   help="training steps per teacher (default per dataset: 5000 SGD steps for mnist, docs/spec.md §6; "
                        "600 Adam steps for fashion-mnist)")
    p.add_argument("--student-steps", type=opt.positive_int, default=None,
                   help="training steps of each student and of the baseline (default per dataset)")
    p.add_argument("--student-seeds", type=opt.positive_int, default=3,
                   help="students per (method, Q): mean and std (default 3)")
    p.add_argument("--students", nargs="+", choices=list(STUDENT_METHODS), default=None,
                   help="student methods: supervised, semi-supervised (CNN of --model), linear, "
                        "linear-self-training (linear heads on the scattering features; the latter self-trains on "
                        "the public pool); default: the linear ones with scattering teachers, the CNN ones with CNN teachers")
    p.add_argument("--curve-points", type=opt.nonnegative_int, default=None,
                   help="accuracy curve: also train students on Qmax/2, Qmax/4, ... (this many points in "
                        "all, including Qmax; 0 or 1: only --queries; default 4 for digits, 3 otherwise)")
    p.add_argument("--non-iid", type=opt.positive_float, default=None, metavar="ALPHA",
                   help="label-skewed holder shards, Dirichlet(ALPHA) per class (default: uniform shards)")
    p.add_argument("--no-extra", action="store_true",
                   help="svhn: do not add the 531k 'extra' images to the holders' data (docs/spec.md §6 uses them)")
    p.add_argument("--eval-points", type=opt.positive_int, default=None,
                   help="teacher and ensemble accuracy on this many test points (default: the whole test split)")
    opt.add_protocol_options(p, "production_noise", production_noise=dict(
        help="noise from the OS CSPRNG (default: seeded per-batch streams, for experiments)"))
    p.add_argument("--workers", type=opt.positive_int, default=None,
                   help="teacher training processes (default: one per CPU)")
    p.add_argument("--threads", type=opt.positive_int, default=1, help="torch threads in this process (default 1)")
    p.add_argument("--device", type=opt.torch_device, default=None, help="torch device for training, e.g. cuda (default cpu)")
    p.add_argument("--output", type=opt.output_dir, default="results", help="report directory; files go to OUTPUT/DATASET/")
    opt.add_cache_dir_option(p, "compiled circuits, teacher checkpoints, label store, ledger, finished stages")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speed.reproduce import ReproduceConfig, reproduce, summary_rows

    config = ReproduceConfig(
        dataset=args.dataset, data_dir=None if args.data_dir is None else str(args.data_dir), holders=args.holders,
        queries=tuple(args.queries or ()), taus=tuple(args.tau), mechanism=args.mechanism,
        target_epsilon=args.target_epsilon, sigma=args.sigma, gamma=args.gamma, delta=args.delta,
        teachers=args.teachers, features=None if args.features is None else str(args.features),
        resolution=args.resolution, batch_size=args.batch_size, seed=args.seed,
        model=args.model, teacher_steps=args.teacher_steps, student_steps=args.student_steps, student_seeds=args.student_seeds,
        curve_points=args.curve_points, methods=tuple(dict.fromkeys(args.students or ())),
        plaintext_check=args.plaintext_check, production_noise=args.production_noise, non_iid=args.non_iid,
        include_extra=False if args.no_extra else None, eval_points=args.eval_points, workers=args.workers,
        threads=args.threads, device=args.device, output=str(args.output), cache_dir=str(args.cache_dir),
    )
    result = reproduce(config, progress=not args.json)
    if args.json:
        print(dump_json(result))
    else:
        s = result["settings"]
        print_sections(
            f"SPEED reproduce — {s['dataset']}, N={s['holders']}, Q={' '.join(map(str, s['queries']))}",
            [("results", summary_rows(result))],
        )
        for name, path in result["files"].items():
            print(f"{name}: {path}")
    check = result["plaintext_check"]
    if check.get("requested") and check["he_vs_plaintext_noisy_argmax_agreement"] != 1.0:
        print(f"error: {check['disagreements']} decrypted labels differ from the clear noisy argmax",
              file=sys.stderr)
        return 1
    return 0
