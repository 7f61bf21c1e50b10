"""Recovery-benchmark rows -> Markdown: the headline that opens docs/benchmarks.md and the recovery
section. Pure (rows in, text out), so rendering needs neither torch nor the model."""

import re
import statistics
from dataclasses import replace

from .setting import BUDGETS, SELECTION, Setting, default

TARGET = 0.8  # the recovery ratio the full budget is meant to reach, above sft-replay
STEP_COST_TARGET = 1.4  # an off-policy KD step should cost at most this many SFT steps
FULL = sum(BUDGETS["full"])

Group = tuple[Setting, list[dict]]  # a setting (of its first seed) and its rows, by seed


# -- grouping ----------------------------------------------------------------------------------
def order(s: Setting) -> tuple:
    """Table order: degradation, the longer budget first, distill before sft-replay, then the rest."""
    return (s.degradation, -s.offpolicy, s.method, s.lr, s.device, s.bf16, s.selection, s.teacher_samples,
            s.teacher_temperature, s.grid_scales, s.grid_latents, s.grid_scale_lr, s.teacher_prompts, s.hidden_weight)


def groups(rows: list[dict], kind: str = "run", by_why: bool = False) -> list[Group]:
    """Rows of one kind grouped by setting without the seed (and, for cut-short rows, by why they stopped)."""
    found: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind", "run") == kind:
            found.setdefault((Setting.from_row(r).group, r["why"] if by_why else None), []).append(r)
    out = [(Setting.from_row(sel[0]), sorted(sel, key=lambda r: r["seed"])) for sel in found.values()]
    return sorted(out, key=lambda g: order(g[0]))


def control_of(s: Setting, runs: list[Group]) -> Group | None:
    """The sft-replay group of the same setting; failing that, the same setting on another device,
    which still controls for the budget."""
    target = replace(s, method="sft-replay").group
    same = [g for g in runs if g[0].group == target]
    elsewhere = [g for g in runs if replace(g[0], device=s.device).group == target]
    return (same or elsewhere or [None])[0]


def is_full(s: Setting) -> bool:
    return s.offpolicy + s.onpolicy == FULL


# -- cells -------------------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    """Mean ± sample standard deviation, to the precision that shows the spread."""
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    std = statistics.stdev(values)
    return f"{mean:.3f} ± {std:.3f}" if std >= 0.001 else f"{mean:.3f} ± {std:.4f}"


def ratios(sel: list[dict]) -> list[float]:
    return [r["ratio"] for r in sel]


def seeds(sel: list[dict]) -> str:
    return ",".join(str(r["seed"]) for r in sel)


def seed_count(sel: list[dict]) -> str:
    return f"{len(sel)} seed{'s' if len(sel) > 1 else ''}"


def knowledge(sel: list[dict]) -> dict[str, float] | None:
    """Mean knowledge accuracy of teacher, degraded and recovered model over the runs that measured it."""
    scored = [r["suites"]["knowledge"] for r in sel if "knowledge" in r.get("suites", {})]
    if not scored:
        return None
    return {m: statistics.mean(s[m]["acc"] for s in scored) for m in ("teacher", "degraded", "recovered")}


def knowledge_cell(sel: list[dict], models=("teacher", "degraded", "recovered")) -> str:
    k = knowledge(sel)
    return "—" if k is None else " / ".join(f"{k[m]:.3f}" for m in models)


def variant(s: Setting) -> str:
    """What the method's name leaves out: learned grid scales, latents from the teacher, a hidden-state term."""
    scale_lr = "" if s.grid_scale_lr == default("grid_scale_lr") else f" at peak lr {s.grid_scale_lr:g}"
    parts = ([f"learned grid scales{scale_lr}"] if s.grid_scales == "learned" else []) + \
        (["latents from the teacher"] if s.grid_latents == "teacher" else []) + \
        ([f"+ hidden states × {s.hidden_weight:g}"] if s.hidden_weight else [])
    return f" ({'; '.join(parts)})" if parts else ""


def describe(s: Setting) -> str:
    """The method and every way the setting differs from a default run, budget and device aside."""
    parts = [f"{s.method}{variant(s)}"]
    if s.lr != default("lr"):
        parts.append(f"peak lr {s.lr:g}")
    if (s.teacher_samples, s.teacher_temperature) != (default("teacher_samples"), default("teacher_temperature")):
        plural = "s" if s.teacher_samples > 1 else ""
        parts.append(f"{s.teacher_samples} teacher response{plural} per prompt at T={s.teacher_temperature:g}")
    if s.teacher_prompts:
        parts.append(f"+ {s.teacher_prompts} teacher-written prompts")
    if not s.bf16:
        parts.append("fp32")
    if s.selection != SELECTION:
        parts.append("best on held-out")
    return ", ".join(parts)


def teacher_text(s: Setting) -> str:
    how = "greedy" if s.teacher_temperature == 0 else f"sampled at T={s.teacher_temperature:g}"
    text = f"{s.teacher_samples} × {how}"
    return text + (f"; + {s.teacher_prompts} prompts written by the teacher" if s.teacher_prompts else "")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def heading(degradation: str) -> str:
    return f"Recovery: {degradation}"


# -- the headline ------------------------------------------------------------------------------
def headline(rows: list[dict]) -> str:
    """Per degradation, the best finished distill setting at the full budget whose checkpoint was
    chosen on validation prompts, against its sft-replay control."""
    runs = groups(rows)
    best: dict[str, Group] = {}
    for s, sel in runs:
        if s.method == "distill" and is_full(s) and s.selection == SELECTION:
            top = best.get(s.degradation)
            if top is None or statistics.mean(ratios(sel)) > statistics.mean(ratios(top[1])):
                best[s.degradation] = (s, sel)
    body = []
    for name, (s, sel) in sorted(best.items()):
        control = control_of(s, runs)
        if control is None:
            vs, control_know = "no control run", "—"
        else:
            c, csel = control
            where = "" if c.device == s.device else f", on {c.device}"
            kept = "; the degraded model kept" if all(r.get("best_step") == 0 for r in csel) else ""
            vs = f"{spread(ratios(csel))} ({seed_count(csel)}{where}{kept})"
            control_know = knowledge_cell(csel, ("recovered",))
        body.append([name, describe(s) + ("" if s.device == "cpu" else f", on {s.device}"),
                     f"{spread(ratios(sel))} ({seed_count(sel)})", vs,
                     knowledge_cell(sel, ("teacher", "degraded")), f"{knowledge_cell(sel, ('recovered',))} / {control_know}",
                     f"[table](#{slug(heading(name))})"])
    off, on = BUDGETS["full"]
    return "\n".join([
        "## Headline: recovery at the full budget (`bench/recovery_bench.py`)", "",
        f"Per degradation, the best `distill` setting at the full budget ({off} + {on} steps, checkpoint chosen on "
        "validation prompts) against `sft-replay` at the same budget and setting. Recovery ratio: 1 − recovered / "
        "degraded held-out teacher KL (1 = the teacher), mean ± std over seeds. Knowledge: accuracy on the knowledge "
        "suite.", "",
        *table(["degradation", "best setting", "recovery ratio", "`sft-replay` control", "knowledge: teacher / degraded",
                "knowledge: best / control", "details"], body)])


# -- the recovery section ----------------------------------------------------------------------
def render(rows: list[dict]) -> str:
    runs = groups(rows)
    lines = ["## Recovery at equal budget (`bench/recovery_bench.py`)", "",
             "Embedded model, one line per setting (mean over seeds). `distill`: off-policy forward KL on cached "
             "teacher top-64, then on-policy reverse KL on student samples; `sft-replay`: the same steps of "
             "cross-entropy on the teacher's text. Rows: `bench/results/recovery.jsonl`; arms: `configs/bench/`."]
    for name in sorted({s.degradation for s, _ in runs}):
        lines += ["", f"### {heading(name)}", "", *table(
            ["setting", "steps (off + on)", "device", "seeds", "recovery ratio", "KL: recovered / degraded",
             "knowledge T / D / R", "best step per seed"],
            [[describe(s), s.steps, s.device, seeds(sel), spread(ratios(sel)),
              f"{statistics.mean(r['kl'] for r in sel):.4f} / {sel[0]['kl_degraded']:.4f}", knowledge_cell(sel),
              ",".join(str(r.get("best_step", "—")) for r in sel)] for s, sel in runs if s.degradation == name])]
    lines += ["", *columns(), *verdicts(runs), *cut_short(rows), *step_cost(rows), *appendix(runs)]
    return "\n".join(lines)


def columns() -> list[str]:
    return [
        "Columns:", "",
        f"- setting: the method and how the run differs from a default one (bf16 autocast, peak lr {default('lr'):g}, "
        "one greedy teacher response per curated prompt, checkpoint chosen on validation prompts set aside from "
        "training). \"best on held-out\": an early run whose checkpoint was chosen on the held-out prompts themselves.",
        "- steps: off-policy + on-policy optimizer steps of 8 sequences; `sft-replay` spends their sum on cross-entropy.",
        "- recovery ratio: 1 − recovered / degraded mean teacher KL on the 48 held-out prompts (1 = the teacher), "
        "± the standard deviation over seeds.",
        "- KL: that held-out KL. The teacher writes the held-out responses on the run's own device, so the degraded "
        "KL differs a little between CPU and GPU rows.",
        "- knowledge: accuracy on the knowledge suite (341 items) of the teacher, the degraded and the recovered "
        "model, where the run measured it.",
        "- best step: the evaluation (every 50 steps) whose checkpoint was exported; 0: training never beat the "
        "degraded model on those prompts, so the degraded model was kept; —: not recorded."]


def verdicts(runs: list[Group]) -> list[str]:
    lines = []
    for s, sel in runs:
        if s.method != "distill" or not is_full(s):
            continue
        mean = statistics.mean(ratios(sel))
        control = control_of(s, runs)
        if control is None:
            vs = "no control run"
        else:
            c_mean = statistics.mean(ratios(control[1]))
            where = "" if control[0].device == s.device else f", {control[0].device}"
            vs = f"{'beats' if mean > c_mean else 'does not beat'} `sft-replay` ({c_mean:.3f}{where})"
        lines.append(f"- {s.degradation}, {describe(s)}, {s.device}: {mean:.3f}, "
                     f"{'meets' if mean >= TARGET else 'below'} {TARGET:g}; {vs}.")
    if not lines:
        return []
    return ["", "### Full budget against the targets", "",
            f"Targets: a recovery ratio of at least {TARGET:g}, above `sft-replay` at the same budget.", "", *lines]


def cut_short(rows: list[dict]) -> list[str]:
    """Runs stopped before their end, at their last evaluation: the KL there against that at step 0."""
    body = []
    for s, sel in groups(rows, "partial", by_why=True):
        starts = sorted({format(r["kl_start"], ".4f") for r in sel})
        prompts = sel[0]["prompts"]
        body.append([f"{s.degradation}, {describe(s)}, {s.steps} steps, {s.device}", seeds(sel),
                     ", ".join(str(r["step"]) for r in sel),
                     f"{', '.join(format(r['kl_at_stop'], '.4f') for r in sel)} / {', '.join(starts)}",
                     spread([1 - r["kl_at_stop"] / r["kl_start"] for r in sel])  # the teacher's own KL is 0
                     + ("" if prompts == "validation" else f" ({prompts})"),
                     sel[0]["why"].removeprefix("stopped ")])
    if not body:
        return []
    return ["", "### Cut short", "",
            "Runs stopped before the end of their budget, at their last evaluation: KL on the validation prompts "
            "(held-out where marked) at that step and at the start, and the recovery ratio it implies.", "",
            *table(["setting", "seeds", "step reached", "KL at stop / at start", "ratio so far", "why stopped"], body)]


def step_cost(rows: list[dict]) -> list[str]:
    """The latest step-cost measurement: KD against SFT on the same batches, an on-policy step's parts."""
    costs = [r for r in rows if r.get("kind") == "step_cost"]
    if not costs:
        return []
    c = costs[-1]
    sft = c["sft-replay"]
    body = [["plain SFT (`sft-replay`)", f"{sft:.2f}", "1.00"],
            ["off-policy KD on cached top-64", f"{c['distill']:.2f}", f"{c['distill'] / sft:.2f}"]]
    if "distill_hidden" in c:
        body.append([f"off-policy KD + hidden states × {c['hidden_weight']:g} (the teacher runs every step)",
                     f"{c['distill_hidden']:.2f}", f"{c['distill_hidden'] / sft:.2f}"])
    if "onpolicy" in c:
        o = c["onpolicy"]
        rest = o["step"] - o["sample"] - o["teacher"]
        body += [["on-policy (8 prompts, up to 64 sampled tokens each)", f"{o['step']:.2f}", ""],
                 [f"· the student's KV-cached sampling ({o['new_tokens_per_s']:.0f} new tokens/s)",
                  f"{o['sample']:.2f}", ""],
                 [f"· the teacher's scoring ({o['teacher_calls_per_step']:g} forward per step)",
                  f"{o['teacher']:.2f}", ""],
                 ["· the student's forward, backward and update", f"{rest:.2f}", ""]]
    if "onpolicy_hidden" in c:
        o = c["onpolicy_hidden"]
        body.append([f"on-policy + hidden states × {c['hidden_weight']:g} "
                     f"({o['teacher_calls_per_step']:g} teacher forward per step)", f"{o['step']:.2f}", ""])
    return ["", "### Step cost", "",
            f"Seconds per optimizer step on the same batches ({c['degradation']}, batch 8, "
            f"{'bf16 autocast' if c['bf16'] else 'fp32'}; `--step-cost`"
            + (f", mean of {c['steps']} steps after a warm-up, {c['date']}, {c['cpu']}" if "steps" in c else "")
            + "). Target: off-policy KD at most "
            f"{STEP_COST_TARGET:g} times SFT.", "", *table(["step", "seconds", "times SFT"], body)]


def appendix(runs: list[Group]) -> list[str]:
    """Every column of every setting."""
    body = []
    for s, sel in runs:
        jobs = max(r.get("concurrent", 1) for r in sel)
        body.append([s.degradation, f"{s.method}{variant(s)}", s.steps, teacher_text(s), f"{s.lr:g}", s.selection,
                     s.device + (f" ({jobs} runs at once)" if jobs > 1 else ""), "bf16 autocast" if s.bf16 else "fp32",
                     seeds(sel), spread(ratios(sel)), f"{statistics.mean(r['kl'] for r in sel):.4f}",
                     f"{sel[0]['kl_degraded']:.4f}", knowledge_cell(sel),
                     ",".join(str(r.get("best_step", "—")) for r in sel),
                     f"{statistics.mean(r['tokens'] for r in sel):,.0f}",
                     f"{statistics.mean(r['seconds'] for r in sel):.0f}"])
    return ["", "### All columns", "",
            "Every setting above with all it records. \"best on\": the prompts that chose the exported checkpoint. "
            "Runs marked \"N runs at once\" shared the machine (one GPU, or the 2 CPU cores at one thread each) with "
            "N − 1 others, so their time is not a single run's.", "",
            *table(["degradation", "method", "steps (off + on)", "teacher text per prompt", "peak lr", "best on", "device",
                    "precision", "seeds", "recovery ratio", "recovered KL", "degraded KL", "knowledge T / D / R",
                    "best step per seed", "trained tokens", "time per run (s)"], body)]
