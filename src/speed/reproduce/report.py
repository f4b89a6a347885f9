"""The files of a reproduction: ``report.md``, ``results.json`` and two PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speed.fsutil import atomic_path, atomic_write_text
from speed.jsonable import dump_json

ACCURACY_PNG = "accuracy_vs_queries.png"
EPSILON_PNG = "epsilon_vs_tau.png"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100.0 * float(x):.1f} %"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    x = float(x)
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.2e}"


def _delta(x: Any) -> str:
    return "≥ 1 (vacuous)" if x is not None and float(x) >= 1 else _num(x, 3)


def _delta_phrase(x: Any) -> str:
    """``≥ 1 (vacuous)`` or ``= 1.00e-05``: a δ_total that follows its name in a sentence."""
    d = _delta(x)
    return d if d.startswith("≥") else f"= {d}"


def _secs(x: Any) -> str:
    if x is None:
        return "–"
    x = float(x)
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    if x >= 60:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s"


def write_report(result: dict[str, Any], out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report": str(out_dir / "report.md"),
        "results": str(out_dir / "results.json"),
        "accuracy_plot": str(out_dir / ACCURACY_PNG),
        "epsilon_plot": str(out_dir / EPSILON_PNG),
    }
    plot_accuracy(result, out_dir / ACCURACY_PNG)
    plot_epsilon(result, out_dir / EPSILON_PNG)
    atomic_write_text(out_dir / "results.json", dump_json({**result, "files": files}) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(result))
    return files


# ----------------------------------------------------------------------------- plots


def plot_accuracy(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, curve = result["settings"], result["accuracy_curve"]
    qs = [r["queries"] for r in curve]
    fig, ax = plt.subplots(figsize=(8.6, 4.2), dpi=130)
    styles = {"supervised": ("o-", "C0"), "semi-supervised": ("s-", "C1")}
    styles.update({"linear": ("D-", "C5"), "linear-self-training": ("v-", "C6")})
    for m in s["methods"]:
        mean = [100 * r[m]["mean"] for r in curve]
        std = [100 * r[m]["std"] for r in curve]
        fmt, color = styles.get(m, ("x-", "C7"))
        ax.errorbar(qs, mean, yerr=std if s["student_seeds"] > 1 else None, fmt=fmt, color=color, capsize=3,
                    label=f"student, {m}")
    ax.plot(qs, [100 * r["label_accuracy"] for r in curve], "^:", color="C2", label="HE label accuracy (queries)")
    ax.axhline(100 * result["baseline"]["accuracy"], ls="--", color="k", lw=1, label="non-private baseline")
    ax.axhline(100 * result["teachers"]["ensemble_plurality"], ls="-.", color="C3", lw=1,
               label="teacher ensemble (plurality)")
    ax.axhline(100 * result["teachers"]["teacher_mean"], ls=":", color="C4", lw=1, label="teacher mean")
    if len(qs) > 2 and qs[-1] / max(qs[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(qs)
    ax.set_xticklabels([str(q) for q in qs])
    ax.set_ylim(top=101)
    ax.set_xlabel("number of labelled queries (students train on exactly these points)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{s['dataset']}: N = {s['holders']} holders, noise {noise_text(s['noise'])}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def noise_text(noise: dict[str, Any]) -> str:
    if noise.get("mechanism") == "skellam":
        return f"Skellam σ = {noise['sigma']:.4g}"
    return f"lattice Laplace γ = {noise.get('gamma', 0):g}, P = {noise.get('resolution', 1)}"


def plot_epsilon(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, pts = result["settings"], result["privacy"]["epsilon_vs_tau"]
    lattice = s["mechanism"] == "lattice"
    keys = [("epsilon_publishable", "publishable ε")]
    if lattice:
        keys.append(("epsilon_data_dependent", "data-dependent ε (not publishable)"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), dpi=130, squeeze=False)
    studied = set(s["taus"])
    for i, q in enumerate(sorted({p["queries"] for p in pts})):
        rows = sorted((p for p in pts if p["queries"] == q), key=lambda p: p["tau"])
        taus = [p["tau"] for p in rows]
        for ax, (key, _) in zip(axes[0], keys):
            ax.plot(taus, [p[key] for p in rows], "-", color=f"C{i}", label=f"Q = {q}")
            marked = [p for p in rows if p["tau"] in studied]
            ax.plot([p["tau"] for p in marked], [p[key] for p in marked], "o", color=f"C{i}")
    for ax, (_, title) in zip(axes[0], keys):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("τ (fraction of holders whose noise stays secret)")
        ax.set_ylabel(f"ε at δ = {s['delta']:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s['dataset']}: N = {s['holders']}, {noise_text(s['noise'])}; dots: the τ of the table",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ---------------------------------------------------------------------------- markdown


def _baseline_gap(r: dict[str, Any]) -> str:
    """One sentence per student method: its distance to the non-private baseline at the largest Q."""
    curve = r["accuracy_curve"]
    if not curve:
        return ""
    last, base = curve[-1], r["baseline"]["accuracy"]

    def gap(x: float) -> str:
        d = 100 * (base - x)
        return f"{d:.1f} points below" if d >= 0 else f"{-d:.1f} points above"

    parts = [f"{m} {_pct(last[m]['mean'])} ({gap(last[m]['mean'])})" for m in r["settings"]["methods"]]
    return (f"**Students against the non-private baseline** ({_pct(base)}, one model trained on all "
            f"{r['baseline']['training_images']} training images: {r['baseline']['model']}, "
            f"{r['baseline']['config']['steps']} steps) "
            f"at Q = {last['queries']}: " + "; ".join(parts) + ".\n")


def markdown(r: dict[str, Any]) -> str:
    s, t, m = r["settings"], r["teachers"], r["machine"]
    lab, chk, times = r["labelling"], r["plaintext_check"], r["times"]
    methods = s["methods"]
    out: list[str] = []
    w = out.append
    w(f"# SPEED reproduction: {s['dataset']}, N = {s['holders']}\n")
    w(f"Command: `{r['command']}`  ")
    where = m.get("cpu_model") or m.get("processor")
    w(f"Machine: {m['platform']}, {where}, {m['cpus']} CPUs (load average at start "
      f"{m.get('load_average_1_5_15')}, at the end {m.get('load_average_1_5_15_end')}), "
      f"Python {m['python']}, torch {m['torch']}, "
      f"concrete-python {m.get('concrete_python', '?')}, git {m.get('git_commit', '?')}  ")
    w(f"Date (UTC): {m['date_utc']}\n")

    w("## Results\n")
    lattice = s["mechanism"] == "lattice"
    primary = s["student_primary"]
    head = ["dataset", "N", "Q", "τ", "noise", "ε publishable", "δ_total", "label acc.",
            f"student ({primary}) ± std", "teacher mean acc.", "ensemble acc.", "non-private baseline"]
    if lattice:
        head.append("ε data-dep. (research, not publishable)")
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for row in r["table"]:
        cells = [row["dataset"], str(row["holders"]), str(row["queries"]), f"{row['tau']:g}",
                 noise_text(row["mechanism"]), _num(row["epsilon_publishable"]), _delta(row["delta_total"]),
                 _pct(row["label_accuracy"]),
                 f"{_pct(row['student_accuracy'])} ± {100 * row['student_accuracy_std']:.1f}",
                 _pct(row["teacher_mean_accuracy"]), _pct(row["ensemble_accuracy"]), _pct(row["baseline_accuracy"])]
        if lattice:
            cells.append(_num(row["epsilon_data_dependent"]))
        w("| " + " | ".join(cells) + " |")
    w("")
    pv = r["privacy"]
    w(f"ε publishable: {pv['accounting']}, at δ = {s['delta']:g}; it does not look at the votes. δ_total adds "
      f"(1 + e^ε)·Q·β for the circuit failures the accountant does not cover "
      f"({pv['failure_probability_charged_per_query']:.2e} per query charged; all failures together "
      f"{pv['failure_probability_per_query']:.2e}). {pv['note']}. Accuracies are on the test split, which is "
      f"never queried ({r['data']['test']} images; teacher and ensemble accuracy on {t['test_points']} of them). "
      f"Students: mean ± std over {s['student_seeds']} seed(s).\n")
    if lattice:
        w("Research configuration (the paper's lattice Laplace noise, γ = 1/λ): the data-dependent ε uses the "
          "private vote counts and is **not publishable** (PATE 2018's smooth-sensitivity release would be "
          "needed); it is driven by the few queries with a small vote gap (next table).\n")

    w(_baseline_gap(r))

    w("## Accuracy vs number of queries\n")
    w(f"![accuracy vs queries]({ACCURACY_PNG})\n")
    head = ["Q", "HE label acc.", "noise-free plurality label acc.", "vote gap: median / min", "queries with gap ≤ 3",
            *[f"student {x}" for x in methods]]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for row in r["accuracy_curve"]:
        cells = [str(row["queries"]), _pct(row["label_accuracy"]), _pct(row["plurality_label_accuracy"]),
                 f"{row['vote_gap_median']:g} / {row['vote_gap_min']}", str(row["queries_with_vote_gap_le_3"])]
        for x in methods:
            v = row[x]
            cells.append(_pct(v["mean"]) + (f" ± {100 * v['std']:.1f}" if s["student_seeds"] > 1 else ""))
        w("| " + " | ".join(cells) + " |")
    w("")
    w("All students are trained on a prefix of one labelling run: query selection is prefix-stable, so the "
      "first q labels are those a q-query run would get. Semi-supervised = FixMatch-lite on the "
      "unqueried pool (the paper used improved-GAN feature matching; see `speed.learning.student`). linear = a "
      "linear head on the teachers' scattering features; linear-self-training = the same, then one round of "
      "self-training on the unqueried public pool (`speed.reproduce.students`).\n")

    w("## ε vs τ\n")
    w(f"![epsilon vs tau]({EPSILON_PNG})\n")

    w("## Wall time per stage\n")
    w("| stage | wall time, this invocation | compute time recorded when the stage ran |")
    w("|---|---|---|")
    rec = r.get("recorded_compute_s", {})
    names = {
        "noise_calibration_s": "noise calibration", "load_data_s": "load data, splits",
        "features_s": "scattering features (compute or load the cache)",
        "teacher_training_s": "teachers (train or load checkpoints)",
        "teacher_votes_s": "teachers' votes on pool and test (saved)",
        "teacher_evaluation_s": "teacher evaluation (cached across runs)", "encrypted_labelling_s": "encrypted labelling",
        "privacy_accounting_s": "privacy accounting", "baseline_s": "non-private baseline (cached across runs)",
        "students_s": "students (each cached across runs)", "total_s": "total",
    }
    for k, v in times.items():
        w(f"| {names.get(k, k)} | {_secs(v)} | {_secs(rec.get(k)) if k in rec else ''} |")
    w("")
    w("A resumed run reuses finished stages, so its wall times are short; the last column is what each "
      "stage cost when it was computed (teachers: sum over teachers, whatever the number of worker "
      "processes; labelling: all batches in the label store).\n")
    sec = lab["seconds_all_batches"]
    tc = t["config"]
    how = (f"batch {tc['batch_size']}, {tc['optimizer']}" if "batch_size" in tc
           else f"full-batch Adam, weight decay {tc.get('weight_decay', 0):g}")
    w(f"Teachers: {t['model']}, {tc['steps']} steps ({how}, lr {tc['lr']:g}) on shards of "
      f"~{t['shard_size_mean']:.0f} images; "
      f"{t['trained_now']} trained now, {t['loaded_from_checkpoints']} loaded from checkpoints; "
      f"training time as recorded in the checkpoints: {_secs(t['train_seconds_total'])} in total, "
      f"{t['train_seconds_mean']:.2f} s per teacher, {1000 * t['seconds_per_step']:.1f} ms per step. "
      f"Non-private baseline: {r['baseline']['model']}, {r['baseline']['config']['steps']} steps on "
      f"{r['baseline']['training_images']} images, trained in {_secs(r['baseline']['train_seconds'])}.\n")
    w(f"Encrypted labelling: {lab['queries']} queries, {lab['labelled_now']} labelled now, "
      f"{lab['reused_from_store']} reused from the label store ({lab['batches_in_store']} batches of "
      f"{lab['circuit']['batch_size']}); all batches together: {_secs(sec.get('wall_s'))} wall, server "
      f"{lab['server_s_per_query']:.2f} s/query, holder encryption "
      f"{1000 * lab['holder_encrypt_s_per_query_per_holder']:.2f} ms/query/holder, decryption "
      f"{1000 * lab['decrypt_s_per_query']:.1f} ms/query"
      + (f"; compile (cached after the first run) {_secs(lab['compile_s'])}, keygen {_secs(lab['keygen_s'])}"
         if lab["compile_s"] is not None else "") + ".\n")

    w("## Encrypted labelling\n")
    c = lab["circuit"]
    w(f"- noise: {noise_text(s['noise'])}, drawn by every holder as its share of the total")
    w(f"- circuit: K = {c['num_classes']}, N = {c['num_holders']}, noise bound A = {c['noise_bound']} lattice "
      f"steps, P = {c['resolution']}, batch {c['batch_size']}, difference width {c['difference_width_bits']} "
      f"bits, {c['security_bits']}-bit security, PBS failure probability per query ≤ {c['global_p_error']:g}")
    b = lab.get("bytes") or {}
    if b:
        w(f"- bytes: holder → server {b.get('holder_to_server_bytes_per_query', 0):.0f} B/query/holder, "
          f"owner → holder pads {b.get('owner_to_holder_pad_bytes_per_query', 0):.0f} B/query/holder, "
          f"owner → server pad shells {b.get('owner_to_server_shell_bytes_per_query', 0):.0f} B/query, "
          f"server → owner {b.get('server_to_owner_bytes_per_query', 0):.0f} B/query, evaluation keys "
          f"{b.get('evaluation_key_bytes', 0) / 2**20:.1f} MiB (sent once to the server; holders receive them "
          "only in `encode` pad mode)")
    if chk.get("requested"):
        w(f"- plaintext check: HE labels = clear noisy argmax of the same noisy votes for "
          f"{_pct(chk['he_vs_plaintext_noisy_argmax_agreement'])} of the queries "
          f"({chk['disagreements']} disagreements); largest total noise {chk['max_abs_total_noise_steps']} "
          f"lattice steps (compiled bound A = {chk['noise_bound_A']}); the noise changed "
          f"{chk['noise_changed_label_vs_plurality']} labels with respect to the noise-free plurality")
    else:
        w("- plaintext check: not requested (`--plaintext-check`)")
    led = r["privacy"].get("ledger") or {}
    if led:
        how = ("publishable PLD ε, plan written before the first charge" if not lattice else
               "the paper's data-independent ε with the exact-argmax bound; the table above reports, per row, "
               "the smaller ε among the two bounds that keep δ_total at δ")
        w(f"- privacy ledger `{led['path']}`: {led['charged_queries']} charged queries at τ = "
          f"{r['privacy']['ledger_tau']:g} (the most pessimistic τ studied), running publishable "
          f"ε = {_num(led.get('epsilon'))} with δ_total {_delta_phrase(led.get('delta_total'))} ({how})")
    if lab["charged_again_after_crash"]:
        w(f"- {lab['charged_again_after_crash']} queries were asked and charged again after a run was killed "
          "between charging and storing their labels")
    w("")

    w("## Reference\n")
    w("PATE 2017 (central trusted aggregator), docs/spec.md §6: MNIST 100 queries ε = 2.04, student 98.0 %; "
      "SVHN 500 queries ε = 5.04, student 82.7 %.\n")
    return "\n".join(out) + "\n"
