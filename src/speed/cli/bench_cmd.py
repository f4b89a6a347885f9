"""``speed bench he``: the encrypted aggregation engine benchmark."""

from __future__ import annotations

import argparse

from speed.cli import options as opt
from speed.cli.report import dump_json, print_sections


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (encrypted aggregation engine)",
                       description="Benchmarks whose numbers the docs quote.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH")
    bsub.required = True
    he = bsub.add_parser(
        "he", help="server time, bytes, exactness of the homomorphic argmax",
        description="Compile (or load from cache) the circuit for K classes and N holders, label Q "
        "random queries through real TFHE, and compare every decrypted label with numpy's argmax of "
        "the same noisy votes.",
    )
    he.add_argument("--classes", type=opt.classes, default=10, help="classes K (default 10)")
    he.add_argument("--holders", type=opt.int_range(1, opt.MAX_HOLDERS), default=250, help="holders N (default 250)")
    he.add_argument("--queries", type=opt.int_range(1, opt.MAX_BENCH_QUERIES), default=5,
                    help=f"queries Q, at most {opt.MAX_BENCH_QUERIES:,} (default 5)")
    opt.add_protocol_options(
        he, "batch_size", "gamma", "resolution", "pad_mode",
        batch_size=dict(default=1, help="queries per circuit call"),
        gamma=dict(help="γ = 1/λ of the noise"),
        resolution=dict(help="lattice steps P per vote"),
        pad_mode=dict(help="shared (default): one pad per batch, its bodies split among the holders and summed by "
                           "the server before the circuit; seeded: one seeded pad per holder, summed in the circuit; "
                           "encode: holders run encode"),
    )
    he.add_argument("--argmax", choices=["tournament", "all-pairs"], default="tournament",
                    help="homomorphic argmax layout (docs/he-engine.md)")
    he.add_argument("--chunk-bits", type=opt.int_range(1, 6), default=3,
                    help="tournament: bits per table lookup when selecting the larger sum")
    he.add_argument("--server-workers", type=opt.positive_int, default=None,
                    help="batches the server computes side by side, each on CPUs/workers threads (default: one per CPU)")
    opt.add_protocol_options(he, "seed", seed=dict(help=None))
    opt.add_cache_dir_option(he, "compiled circuits and keys")
    he.add_argument("--json", action="store_true", help="print JSON instead of a table")
    he.set_defaults(func=run_he)


def run_he(args: argparse.Namespace) -> int:
    from speed.bench.he import run

    r = run(
        num_classes=args.classes, num_holders=args.holders, num_queries=args.queries, batch_size=args.batch_size,
        gamma=args.gamma, resolution=args.resolution, pad_mode=args.pad_mode, argmax=args.argmax,
        chunk_bits=args.chunk_bits, seed=args.seed,
        cache_dir=str(args.cache_dir), progress=not args.json, server_workers=args.server_workers,
    )
    if args.json:
        print(dump_json(r))
        return 0
    print_sections(
        f"HE engine — K={r['classes']}, N={r['holders']}, {r['queries']} queries, batch {r['batch_size']}, "
        f"{r['argmax']} argmax",
        [
            ("server", [(f"median s / query (calls after the first: {r['server_calls_in_medians']})",
                         r["median_server_s_per_query"]),
                        ("median latency s (one call)", r["median_query_latency_s"]),
                        ("first call s (queries)", f"{r['first_server_call_s']:.2f} ({r['first_server_call_queries']})"),
                        ("batches side by side × threads each", f"{r['server_workers']} × {r['server_threads_per_batch']}"),
                        ("throughput queries / s", r["throughput_queries_per_s"]),
                        ("exact / queries", f"{r['exact']} / {r['queries']}"),
                        ("PBS / query", r["pbs_per_query"]), ("p_error per PBS", r["p_error"]),
                        ("global p_error per call / per query",
                         f"{r['global_p_error']:.3g} / {r['global_p_error_per_query']:.3g}")]),
            ("bytes", [("holder → server / holder / query", int(r["bytes_per_holder_per_query"])),
                       ("owner → holder pads / holder / query", int(r["pad_bytes_per_holder_per_query"])),
                       ("server → owner / query", int(r["label_bytes_per_query"])),
                       ("evaluation keys (compressed)", r["evaluation_key_bytes"])]),
            ("setup", [("compile s" + (" (cached)" if r["compile_cached"] else ""), r["compile_s"]),
                       ("keygen s", r["keygen_s"]),
                       ("holder encryption s / holder / query", r["holder_encrypt_s_per_query"])]),
        ],
    )
    return 0
