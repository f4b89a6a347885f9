"""``speed deploy``: run SPEED on Flower (SuperLink + one SuperNode per party).

Examples::

    speed deploy local --holders 5 --queries 10            # whole federation on loopback, TLS on
    speed deploy simulate --holders 250 --queries 5 --task table --classes 10 --teacher-table t.npy
                                                            # same app, Flower's simulation engine (ray)
    speed deploy app flower-app/ --holders 5 --queries 10  # the Flower App for `flwr run`
    speed deploy certs certs/ --host superlink.example.org # CA + SuperLink certificate
    speed deploy node-key keys/ hospital-3                  # SuperNode authentication key pair
    speed deploy pad-key --state-dir /srv/speed/holder-3    # a holder's pad key (for pinning)

See docs/deploy.md for multi-machine deployments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from speed.cli import options as opt
from speed.cli.report import dump_json


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("job (Flower run config)")
    g.add_argument("--task", choices=["digits", "table"], default="digits",
                   help="digits: simulated federation on sklearn digits, one CNN teacher per holder (default); "
                   "table: holders answer from a fixed prediction table (--teacher-table)")
    g.add_argument("--holders", type=opt.holders, default=5, help="number of data holders N (default 5)")
    g.add_argument("--classes", type=opt.int_range(0, opt.MAX_CLASSES), default=0,
                   help="classes K (task table only; digits has 10)")
    g.add_argument("--queries", type=opt.positive_int, default=10, help="public queries to label Q (default 10)")
    opt.add_protocol_options(
        g, "batch_size", "mechanism", "target_epsilon", "sigma", "gamma", "tau", "delta", "seed", "production_noise",
        "pad_mode",
        target_epsilon=dict(help="publishable ε for the --queries planned: the noise is calibrated to it once, by "
                                 "the launcher (default 10 with skellam, as speed demo)"),
        gamma=dict(help="γ = 1/λ with --mechanism lattice (default %(default)s)"),
        tau=dict(help="assumed fraction of honest holders' noise (default 1)"),
        seed=dict(help="splits, queries and seeded noise streams (default 0)"),
        production_noise=dict(help="holders draw noise from the OS CSPRNG"),
        pad_mode=dict(help="how holders encrypt: shared (an 8-byte share per value of one pad per batch, summed by "
                           "the server; default), seeded (one seeded pad each), encode (encode with the evaluation keys)"),
    )
    g.add_argument("--min-holders", type=opt.nonnegative_int, default=0,
                   help="go on with a batch if at least this many holders answered; missing ones get the owner's "
                   "stand-in encryption of zero and the ledger uses the reduced τ (default 0 = all N required)")
    g.add_argument("--max-epsilon", type=opt.nonnegative_float, default=0.0, help="owner's budget on ε (default 0 = none)")
    g.add_argument("--vote-timeout", type=opt.positive_float, default=120.0, help="seconds a holder has per batch (default 120)")
    g.add_argument("--setup-timeout", type=opt.positive_float, default=600.0, help="seconds for setup replies (default 600)")
    g.add_argument("--job-id", type=opt.job_id, default="",
                   help="ledger run id (default: derived from the settings; a rerun resumes it)")


def _config(args: argparse.Namespace):
    from speed.deploy.config import DeployConfig

    return DeployConfig(
        task=args.task, holders=args.holders, classes=args.classes, queries=args.queries, batch_size=args.batch_size,
        mechanism=args.mechanism, target_epsilon=args.target_epsilon or 0.0, sigma=args.sigma or 0.0,
        gamma=args.gamma, tau=args.tau, delta=args.delta, seed=args.seed, production_noise=args.production_noise,
        pad_mode=args.pad_mode, min_holders=args.min_holders, max_epsilon=args.max_epsilon,
        vote_timeout=args.vote_timeout, setup_timeout=args.setup_timeout, job_id=args.job_id,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="run SPEED on Flower: SuperLink, one SuperNode per holder and one for the model owner",
        description=(
            "Run the SPEED protocol as separate processes on Flower 1.42: the ServerApp is the aggregation "
            "server, SuperNodes run the ClientApp as the model owner (secret key, ledger) or as data holders. "
            "`local` runs a whole federation on loopback; the other commands prepare a multi-machine one "
            "(docs/deploy.md)."
        ),
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="ACTION")
    dsub.required = True

    loc = dsub.add_parser(
        "local", help="a whole federation on loopback (TLS, SuperNode auth), print a JSON summary",
        description=(
            "Start flower-superlink (TLS with a certificate made for the run, SuperNode authentication) and one "
            "flower-supernode per party on 127.0.0.1, submit the job with `flwr run`, relay progress on stderr, "
            "print a JSON summary on stdout (labels received, ε, wall time, bytes per party) and stop every "
            "process, also on Ctrl-C or failure. Owner and holder state stays in --workdir, so rerunning the "
            "same command resumes the job from the owner's ledger."
        ),
    )
    _config_args(loc)
    g = loc.add_argument_group("local federation")
    g.add_argument("--workdir", type=opt.output_dir, default=None,
                   help="parties' state and per-run files (default CACHE_DIR/deploy)")
    g.add_argument("--cache-dir", type=opt.output_dir, default=None,
                   help="compiled circuits and teacher checkpoints (default $SPEED_CACHE_DIR or .speed-cache)")
    g.add_argument("--teacher-table", type=opt.existing_file, default=None, help="task table: (rows, N) .npy of teacher labels")
    g.add_argument("--no-node-auth", action="store_true", help="do not authenticate SuperNodes (TLS stays on)")
    g.add_argument("--start-holders", type=opt.nonnegative_int, nargs="*", default=None,
                   help="start only these holders (default all): the others are missing from the start")
    g.add_argument("--kill-holder", type=opt.nonnegative_int, default=None,
                   help="fault injection: SIGKILL this holder's SuperNode ...")
    g.add_argument("--kill-after", type=opt.nonnegative_int, default=1,
                   help="... after this many batches (0: after setup; default 1)")
    g.add_argument("--timeout", type=opt.positive_float, default=1800.0, help="give up after this many seconds (default 1800)")
    g.add_argument("--json-only", action="store_true", help="no progress lines on stderr")
    loc.set_defaults(func=run_local_cmd)

    sim = dsub.add_parser(
        "simulate", help="the same Flower App on Flower's simulation engine: N virtual holders + the owner on one "
        "machine (needs ray: pip install 'speed[simulation]')",
        description=(
            "Run the same ServerApp and ClientApp as `deploy local` on Flower's simulation engine: "
            "flower-superlink --simulation (TLS on loopback) and `flwr run` with a federation of N + 1 virtual "
            "SuperNodes (partition i < N is holder i, partition N the model owner), executed by a small pool of ray "
            "workers instead of one process per party. Progress on stderr, the same JSON summary as `deploy local` "
            "on stdout, plus the peak memory of all processes; every process is stopped at the end. Rerunning the "
            "same command resumes the job from the owner's ledger. Here --vote-timeout defaults to 900 s and "
            "--setup-timeout to 3600 s (many holders share a few workers)."
        ),
    )
    _config_args(sim)
    sim.set_defaults(vote_timeout=900.0, setup_timeout=3600.0)
    g = sim.add_argument_group("simulated federation")
    g.add_argument("--workdir", type=opt.output_dir, default=None,
                   help="parties' state and per-run files (default CACHE_DIR/deploy/simulation)")
    g.add_argument("--cache-dir", type=opt.output_dir, default=None,
                   help="compiled circuits and teacher checkpoints (default $SPEED_CACHE_DIR or .speed-cache)")
    g.add_argument("--teacher-table", type=opt.existing_file, default=None, help="task table: (rows, N) .npy of teacher labels")
    g.add_argument("--cpus-per-node", type=opt.positive_int, default=1,
                   help="CPUs ray reserves per ClientApp worker; workers = cores / this (default 1)")
    g.add_argument("--timeout", type=opt.positive_float, default=7200.0, help="give up after this many seconds (default 7200)")
    g.add_argument("--json-only", action="store_true", help="no progress lines on stderr")
    sim.set_defaults(func=run_simulate_cmd)

    app = dsub.add_parser("app", help="write the Flower App project (pyproject.toml) for `flwr run`",
                          description="Write DIR/pyproject.toml: the Flower App whose ServerApp and ClientApp are "
                          "in the installed speed package, with the job settings as run-config defaults.")
    app.add_argument("directory", type=opt.output_dir)
    _config_args(app)
    app.set_defaults(func=run_app_cmd)

    certs = dsub.add_parser("certs", help="a CA and a SuperLink TLS certificate (cryptography, no openssl needed)")
    certs.add_argument("directory", type=opt.output_dir)
    certs.add_argument("--host", action="append", default=None,
                       help="DNS name or IP address of the SuperLink (repeat); localhost, 127.0.0.1 and ::1 are "
                       "always included (the SuperLink's own ServerApp connects to 127.0.0.1)")
    certs.add_argument("--days", type=opt.days, default=365, help=f"validity in days, 1..{opt.MAX_DAYS} (default 365)")
    certs.set_defaults(func=run_certs_cmd)

    key = dsub.add_parser("node-key", help="a SuperNode authentication key pair (ECDSA P-384, OpenSSH format)")
    key.add_argument("directory", type=opt.output_dir)
    key.add_argument("name", type=opt.file_name, help="the node's name: NAME.key and NAME.pub in DIRECTORY")
    key.set_defaults(func=run_node_key_cmd)

    pad = dsub.add_parser("pad-key", help="print a holder's pad public key (created in --state-dir if absent)")
    pad.add_argument("--state-dir", type=opt.output_dir, required=True, help="the holder SuperNode's state-dir")
    pad.set_defaults(func=run_pad_key_cmd)


def _dirs(args: argparse.Namespace, sub: str = "") -> tuple[Path, Path]:
    """--cache-dir (default $SPEED_CACHE_DIR or .speed-cache) and --workdir (default under the cache dir)."""
    from speed.deploy.config import default_cache_dir

    cache = args.cache_dir if args.cache_dir is not None else default_cache_dir()
    work = args.workdir if args.workdir is not None else cache / "deploy" / sub
    return opt.check_output_dir(work, "--workdir"), cache


def run_local_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.local import LocalOptions, run_local

    workdir, cache_dir = _dirs(args)
    options = LocalOptions(
        config=_config(args), workdir=workdir, cache_dir=cache_dir, teacher_table=args.teacher_table,
        node_auth=not args.no_node_auth, start_holders=args.start_holders, kill_holder=args.kill_holder,
        kill_after=args.kill_after, timeout=args.timeout,
    )
    if args.json_only:
        options.on_line = lambda line: None
    return _report(run_local(options))


def _report(result: dict) -> int:
    """Print a run's JSON summary; exit status 0 (completed), 130 (interrupted) or 1 (with the reason)."""
    print(dump_json(result))
    if result["status"] == "completed":
        return 0
    print(f"{result['status']}: {result['reason']}", file=sys.stderr)
    return 130 if result["status"] == "interrupted" else 1


def run_simulate_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.simulation import SimulationOptions, run_simulation

    workdir, cache_dir = _dirs(args, "simulation")
    options = SimulationOptions(config=_config(args), workdir=workdir, cache_dir=cache_dir,
                                teacher_table=args.teacher_table, cpus_per_node=args.cpus_per_node,
                                timeout=args.timeout)
    if args.json_only:
        options.on_line = lambda line: None
    return _report(run_simulation(options))


def run_app_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.config import write_app_dir

    path = write_app_dir(args.directory, _config(args).resolved())  # the noise calibrated once, here
    print(f"wrote {path / 'pyproject.toml'}; submit with: flwr run {path} <superlink-connection> --stream")
    return 0


def run_certs_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.tls import make_certificates

    c = make_certificates(args.directory, args.host, days=args.days)
    print(json.dumps({"ca_cert": str(c.ca_cert), "server_cert": str(c.server_cert), "server_key": str(c.server_key)},
                     indent=2))
    return 0


def run_node_key_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.tls import make_node_key

    k = make_node_key(args.directory, args.name)
    print(json.dumps({"private_key": str(k.private_key), "public_key": str(k.public_key)}, indent=2))
    return 0


def run_pad_key_cmd(args: argparse.Namespace) -> int:
    from speed.deploy.sealing import HolderPadKey

    print(HolderPadKey(args.state_dir).public_hex())
    return 0
