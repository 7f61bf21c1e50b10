"""The run's headline numbers as a Markdown table: what `run` prints and writes to summary.md."""

from __future__ import annotations

import string
from pathlib import Path

from ..errors import RecoverLMError
from ..io import read_json
from ..runs import (
    CONFIG_FILE,
    DEGRADATION_FILE,
    METRICS_FILE,
    RECOVERY_FILE,
    RUN_FILE,
    read_history,
    side_file,
)

LABELS = {
    "kl": "teacher KL (nats/token) ↓",
    "reverse_kl": "reverse KL (nats/token) ↓",
    "nll": "NLL of teacher responses ↓",
    "top1_agreement": "top-1 agreement ↑",
    "exact_match": "greedy response = teacher's ↑",
    "length_ratio": "response length / teacher's",
}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _ratio_cell(ratio, ci: dict | None) -> str:
    if ci and not ci.get("meaningful"):
        return f"{_fmt(ratio)} (gap too small to read)"
    if ci and ci.get("low") is not None:
        return f"{_fmt(ratio)} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return _fmt(ratio)


def metrics_table(metrics: dict) -> str:
    m, ratios, cis = metrics["metrics"], metrics.get("recovery_ratio", {}), metrics.get("recovery_ratio_ci", {})
    lines = ["| metric | teacher | degraded | recovered | recovery ratio [95% CI] |", "|---|---|---|---|---|"]
    for key, label in LABELS.items():
        if key not in m["teacher"]:
            continue
        lines.append(f"| {label} | {_fmt(m['teacher'][key])} | {_fmt(m['degraded'][key])} | "
                     f"{_fmt(m['recovered'][key])} | {_ratio_cell(ratios.get(key), cis.get(key))} |")
    return "\n".join(lines)


def tasks_table(tasks: dict) -> str:
    res, cis = tasks["results"], tasks.get("recovery_ratio_ci", {})
    lines = ["| suite / metric | teacher | degraded | recovered | recovery ratio [95% CI] | items |", "|---|---|---|---|---|---|"]
    for suite in tasks["suites"]:
        scores = res["teacher"][suite]
        for metric in scores.get("items", {}):
            key = f"{suite}/{metric}"
            ci = cis.get(key)
            cells = [_fmt(res[name][suite].get(metric)) for name in ("teacher", "degraded", "recovered")]
            lines.append(f"| {key} | {' | '.join(cells)} | {_ratio_cell(ci['ratio'] if ci else None, ci)} | "
                         f"{scores.get('n', '?')} |")
        # metrics lm-eval aggregates without one score per item (IFEval's instruction-level ones): no interval
        for metric in sorted(k for k, v in scores.items() if isinstance(v, float) and k not in scores.get("items", {})
                             and k not in ("n", "seconds")):
            cells = [_fmt(res[name][suite].get(metric)) for name in ("teacher", "degraded", "recovered")]
            lines.append(f"| {suite}/{metric} | {' | '.join(cells)} | — | — |")
    return "\n".join(lines)


def correlation_text(metrics_jsonl: Path) -> str:
    """CKA (layer mean, last layer) against validation teacher KL across the run's evaluations,
    raw and with training step partialled out: both grow with training, so only the partial
    correlation says anything beyond "more steps"."""
    from ..ops.correlate import correlate_recovery

    res = correlate_recovery(read_history(metrics_jsonl), metric="kl", cka_keys=("mean", "last"), n_boot=1000, n_perm=2000)
    if res["n"] < 4:
        return (f"Only {res['n']} evaluations with CKA in this run: too few for a correlation. Set "
                "`recover.eval_every` lower, or pool runs with `recoverlm.ops.correlate.correlate_recovery`.")
    lines = [f"Across {res['n']} evaluations (teacher KL is lower-is-better, so alignment that helps shows as a "
             "negative r).", "", "| CKA feature | Pearson r [95% CI], p | Spearman rho, p | partial r (step removed) [95% CI], p |",
             "|---|---|---|---|"]
    for name, f in res["features"].items():
        lines.append(f"| {name} | {_corr(f['pearson'])} | {_corr(f['spearman'], ci=False)} | {_corr(f['partial'])} |")
    return "\n".join(lines)


def _corr(c: dict, ci: bool = True) -> str:
    if c.get("r") is None:
        return f"n/a ({c.get('reason')})"
    interval = f" [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]" if ci and c.get("ci") else ""
    return f"{c['r']:.2f}{interval}, p={c['p']:.3f}"


def cell_text(text: str) -> str:
    """Any text as the literal content of one Markdown table cell: every ASCII punctuation mark
    backslash-escaped (so neither Markdown nor HTML in a model's output is interpreted), line breaks
    as <br>."""
    escaped = "".join("\\" + c if c in string.punctuation else c for c in text)
    return "<br>".join(line for line in escaped.splitlines()) or "(empty)"


def samples_table(samples: list[dict]) -> str:
    names = [k for k in samples[0] if k != "prompt"]
    lines = ["| prompt | " + " | ".join(names) + " |", "|" + ":---|" * (len(names) + 1)]
    for s in samples:
        lines.append("| " + " | ".join(cell_text(s[k]) for k in ("prompt", *names)) + " |")
    return "\n".join(lines)


def environment_text(run_dir: Path, recovery: dict) -> str:
    """Where the numbers come from: machine, precision, package versions and each stage's time."""
    record = read_json(run_dir / RUN_FILE)
    lines = []
    for env in record["environment"]:
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        lines += [f"- device: {env['device']}, bf16 {'native' if env['native_bf16'] else 'emulated'}; "
                  f"Python {env['python']} on {env['platform']}", f"- versions: {versions}"]
    lines.append(f"- precision: student trained in {recovery.get('training_precision', 'float32')}; teacher responses generated in "
                 f"{recovery.get('teacher_generation_dtype', '?')}")
    stages = record.get("stages", {})
    if stages:
        lines += ["", "| stage | wall time |", "|---|---|"]
        lines += [f"| {name} | {_duration(sec)} |" for name, sec in stages.items()]
        lines.append(f"| **total** | **{_duration(sum(stages.values()))}** |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def cka_table(cka: dict) -> str:
    deg, rec = cka["cka"]["degraded"], cka["cka"]["recovered"]
    lines = ["| layer | CKA degraded | CKA recovered |", "|---|---|---|"]
    for layer, a, b in zip(deg["layers"], deg["linear"], rec["linear"]):
        name = "embeddings" if layer == 0 else f"block {layer - 1}"  # blocks count from 0, as train_blocks does
        lines.append(f"| {name} | {a:.4f} | {b:.4f} |")
    mean_d = sum(deg["linear"]) / len(deg["linear"])
    mean_r = sum(rec["linear"]) / len(rec["linear"])
    lines.append(f"| **mean** | **{mean_d:.4f}** | **{mean_r:.4f}** |")
    ratio = deg.get("massive_ratio")
    if ratio:
        lines += ["", f"Over {deg['tokens'] - deg.get('excluded_tokens', 0)} held-out tokens; "
                  f"{deg.get('excluded_tokens', 0)} attention-sink tokens (teacher hidden-state norm above {ratio:g}x "
                  "the median) are left out, because a few such rows would otherwise dominate linear CKA."]
    else:
        lines += ["", f"Over all {deg['tokens']} held-out tokens, attention-sink tokens included."]
    return "\n".join(lines)


def summary_markdown(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    degradation = read_json(side_file(run_dir / "degraded", DEGRADATION_FILE))
    recovery = read_json(side_file(run_dir / "recovered", RECOVERY_FILE))
    params = ", ".join(f"{k}={v}" for k, v in degradation["params"].items())
    held = metrics["heldout"]
    parts = [
        f"# recoverlm run: {cell_text(run_dir.name)}",  # a folder's name is the user's text, like a model's
        "",
        f"- teacher: `{metrics['teacher']}`",
        f"- degradation: `{degradation['method']}` ({params}); constraint after recovery: {_constraint(recovery['constraint'])}",
        f"- recovery ({recovery['recover']['method']}): {recovery['recover']['offpolicy_steps']} off-policy "
        f"({recovery['recover']['divergence']}) + {recovery['recover']['onpolicy_steps']} on-policy "
        f"({recovery['recover']['onpolicy_divergence']}) steps on "
        f"{recovery.get('train_sequences', '?')} teacher responses ({recovery.get('tokens', 0)} trained tokens, "
        f"{recovery.get('seconds', 0):.0f} s); best checkpoint at step {recovery.get('best_step', '?')}",
        f"- held-out set: {held['sequences']} prompts never used in training, {held['tokens']} teacher response tokens",
        "",
        "## Teacher fidelity",
        "",
        metrics_table(metrics),
        "",
        "Recovery ratio = (recovered - degraded) / (teacher - degraded); 1 is full recovery. The interval is a "
        "paired bootstrap over held-out prompts (2000 resamples).",
    ]
    if "tasks" in metrics:  # general ability next to fidelity: did knowledge come back, not only KL
        parts += ["", "## Task suites", "", tasks_table(metrics["tasks"])]
    if metrics.get("samples"):
        parts += ["", "## Sample generations", "", "Greedy responses to the first held-out prompts.", "",
                  samples_table(metrics["samples"])]
    if (run_dir / "cka.json").exists():
        parts += ["", "## Linear CKA with the teacher, layer by layer", ""]
        if (run_dir / "cka_layers.png").exists():
            parts += ["![CKA by layer](cka_layers.png)", ""]
        parts += [cka_table(read_json(run_dir / "cka.json"))]
        for png in sorted(run_dir.glob("cka_cross_*.png")):
            parts += ["", f"![cross-layer CKA]({png.name})"]
    if (run_dir / "recovery_curve.png").exists():
        parts += ["", "## During recovery", "", "![validation teacher KL and mean CKA by step](recovery_curve.png)"]
    curve = side_file(run_dir / "recovered", METRICS_FILE)
    if curve.exists():
        parts += ["", "## Does CKA track recovery?", "", correlation_text(curve)]
        if (run_dir / "cka_vs_kl.png").exists():
            parts += ["", "![mean CKA against validation teacher KL](cka_vs_kl.png)"]
    if (run_dir / RUN_FILE).exists():
        parts += ["", "## Where it ran", "", environment_text(run_dir, recovery)]
    if (run_dir / CONFIG_FILE).exists():
        config = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
        fence = "`" * max(4, _longest_run(config, "`") + 1)  # longer than any run of backticks inside
        parts += ["", "## Config", "", "<details><summary>config.yaml</summary>", "", f"{fence}yaml", config.rstrip(),
                  fence, "", "</details>"]
    return "\n".join(parts) + "\n"


def _longest_run(text: str, char: str) -> int:
    longest = current = 0
    for c in text:
        current = current + 1 if c == char else 0
        longest = max(longest, current)
    return longest


def _constraint(check: dict) -> str:
    """The constraint's own one-line description (older records carry only its kind)."""
    return check.get("description") or check.get("kind", "none")


def write_report(run_dir: Path) -> str:
    """summary.md and the self-contained report.html for a finished run folder."""
    from ..io import write_text_atomic
    from .html import markdown_to_html

    run_dir = Path(run_dir)
    try:
        text = summary_markdown(run_dir)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # a folder copied in part, a file cut short
        raise RecoverLMError(f"{run_dir} is not a complete run folder ({type(exc).__name__}: {exc})".splitlines()[0]
                             ) from exc
    curve = side_file(run_dir / "recovered", METRICS_FILE)
    if curve.exists():
        from .curves import plot_cka_scatter, plot_recovery_curve

        plot_recovery_curve(curve, run_dir / "recovery_curve.png")
        plot_cka_scatter(curve, run_dir / "cka_vs_kl.png")
    write_text_atomic(run_dir / "summary.md", text)
    write_text_atomic(run_dir / "report.html", markdown_to_html(text, run_dir, f"recoverlm: {run_dir.name}"))
    return text
