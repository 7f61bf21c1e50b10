"""docs/results.md from a study's cell records, never typed: the headline table (degradations x
methods), SFT forgetting, recovery against training steps, CKA against recovery over every
checkpoint of every cell, and what held, as sentences computed from the numbers."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..io import write_text_atomic
from .alignment import alignment_section
from .arms import mask_section, targeted_section

# The budget controls every method is compared with, beside stage 1 alone ("offpolicy").
BASELINES = ("none", "sft-replay")


def _cells(n: int) -> str:
    return f"{n} finished cell" + ("" if n == 1 else "s")


def _order(values, preferred: list[str] | None) -> list[str]:
    seen = list(dict.fromkeys(values))
    head = [v for v in (preferred or []) if v in seen]
    return head + [v for v in seen if v not in head]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{_fmt(values[0])} (1 seed)"
    return f"{_fmt(statistics.mean(values))} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def _score(suites: dict, model: str, suite: str) -> float | None:
    res = suites.get(model, {}).get(suite, {})
    return res.get("acc", res.get("exact_match"))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v + 0.0:.3f}".replace("-0.000", "0.000")


def headline(records: list[dict], methods: list[str] | None = None, degradations: list[str] | None = None,
             titled: bool = True) -> str:
    """Per model: degradations as rows, methods as columns; each cell the held-out teacher-KL
    recovery ratio (mean ± std over seeds) and the recovered model's knowledge accuracy."""
    parts = []
    for model in _order((_model(r) for r in records), None):
        mine = [r for r in records if _model(r) == model]
        cols = _order((r["method"] for r in mine), methods)
        lines = ([f"### {model}", ""] if titled else []) + [
                 "| degradation | degraded KL | knowledge: teacher / degraded | " + " | ".join(cols) + " |",
                 "|---|---|---|" + "---|" * len(cols)]
        for deg in _order((r["degradation"] for r in mine), degradations):
            rows = [r for r in mine if r["degradation"] == deg]
            know_t = _mean(_score(r["suites"], "teacher", "knowledge") for r in rows)
            know_d = _mean(_score(r["suites"], "degraded", "knowledge") for r in rows)
            cells = []
            for method in cols:
                sel = [r for r in rows if r["method"] == method]
                ratio = _mean_sd([r["ratio"] for r in sel if r["ratio"] is not None])
                know = _mean(_score(r["suites"], "recovered", "knowledge") for r in sel)
                cells.append(ratio + ("" if know is None else f" · {know:.3f}"))
            lines.append(f"| {deg} | {_fmt(_mean(r['kl']['degraded'] for r in rows))} | {_fmt(know_t)} / {_fmt(know_d)} | "
                         + " | ".join(cells) + " |")
        parts.append("\n".join(lines + _mixed_starts(mine)))
    return "\n\n".join(parts)


def _mixed_starts(records: list[dict]) -> list[str]:
    """A note for each degradation whose cells started from different damaged copies (made again
    on another machine, where a training-based damage such as SFT comes out differently): each
    ratio is against its own copy, and the degraded columns average the copies."""
    notes = []
    for deg in _order((r["degradation"] for r in records), None):
        copies = {r["degraded_hash"] for r in records if r["degradation"] == deg and r.get("degraded_hash")}
        if len(copies) > 1:
            notes.append(f"{deg}: its cells started from {len(copies)} different degraded models (made on different "
                         "machines); each ratio is against its own, the degraded columns are their mean.")
    return ["", *(f"*{n}*" for n in notes)] if notes else []


def _model(record: dict) -> str:
    """The model's folder name in the study, as the cell's name starts."""
    return record["name"].split("/")[0]


def sft_forgetting(records: list[dict]) -> str | None:
    """For SFT-forgetting cells: the new task's accuracy beside general ability, per method."""
    sft = [r for r in records if r.get("degrade", {}).get("method") == "sft"]
    if not sft:
        return None
    lines = ["| model | degradation | method | task accuracy T / D / R | knowledge T / D / R | teacher-KL ratio |",
             "|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in sft:
        groups[(_model(r), r["degradation"], r["method"])].append(r)
    for (model, deg, method), rows in groups.items():
        task = str(rows[0]["degrade"].get("params", {}).get("task", ""))
        acc = [_fmt(_mean(_score(r["suites"], who, task) for r in rows)) for who in ("teacher", "degraded", "recovered")]
        know = [_fmt(_mean(_score(r["suites"], who, "knowledge") for r in rows)) for who in ("teacher", "degraded", "recovered")]
        lines.append(f"| {model} | {deg} | {method} | {' / '.join(acc)} | {' / '.join(know)} | "
                     f"{_mean_sd([r['ratio'] for r in rows if r['ratio'] is not None])} |")
    return "\n".join(lines)


def curves(records: list[dict], methods: list[str] | None = None, plot_dir: Path | None = None) -> str:
    """Validation teacher KL at each evaluation of training, mean over seeds, per (model, degradation),
    as a table and, with `plot_dir`, a plot of the curves beside the document."""
    parts = []
    for key in _order(((_model(r), r["degradation"]) for r in records), None):
        rows = [r for r in records if (_model(r), r["degradation"]) == key and r["history"]]
        if not rows:
            continue
        steps = sorted({h["step"] for r in rows for h in r["history"]})
        lines = [f"**{key[0]} / {key[1]}**", "", "| method | trained tokens | " + " | ".join(f"step {s}" for s in steps) + " |",
                 "|---|---|" + "---|" * len(steps)]
        series = {}
        for method in _order((r["method"] for r in rows), methods):
            sel = [r for r in rows if r["method"] == method]
            at = {s: _mean(h["kl"] for r in sel for h in r["history"] if h["step"] == s) for s in steps}
            lines.append(f"| {method} | {_mean(r['tokens'] for r in sel):,.0f} | " + " | ".join(_fmt(at[s]) for s in steps) + " |")
            points = [(s, v) for s, v in at.items() if v is not None]
            if len(points) > 1:
                series[method] = ([s for s, _ in points], [v for _, v in points])
        if plot_dir is not None and series:
            from ..analysis.plots import plot_curves

            png = plot_dir / f"{key[0]}-{key[1]}-curves.png"
            plot_curves(series, png, f"{key[0]} / {key[1]}: validation teacher KL during recovery")
            lines += ["", f"![recovery curves, {key[1]}]({png.relative_to(plot_dir.parent).as_posix()})"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "No cell has recorded a training curve yet."


def evaluations(records: list[dict]) -> list[dict]:
    """Every evaluation with CKA of every trained cell, labelled with its run and degradation. Each
    run keeps its own step-0 evaluation, the damaged model it started from: the within-run
    correlation is about how a run moved from there, and the intervals resample whole runs, so the
    repeated start counts once per resampled run. Cells that trained nothing (`none`) have no
    trajectory and are left out, which also makes the rows independent of the records' order."""
    rows = []
    for r in records:
        if not any(h["step"] > 0 for h in r["history"]):
            continue
        degradation = f"{_model(r)}/{r['degradation']}"
        rows += [{**h, "run": r["name"], "degradation": degradation} for h in r["history"] if h.get("cka")]
    return rows


def cka_section(records: list[dict], plot: Path | None = None) -> tuple[str, dict | None]:
    """CKA against validation teacher KL over every checkpoint of every cell: Pearson and Spearman,
    and the partial correlation with each evaluation step and each run removed (what is left once
    "both move with training, every run alike" and "runs differ" are accounted for); every interval
    resamples whole runs."""
    from ..ops.correlate import (
        cka_features,
        cluster_bootstrap_ci,
        correlate_recovery,
        correlation_of,
        partial_correlation_of,
        usable_rows,
    )

    rows = usable_rows(evaluations(records))
    runs = {r["run"] for r in rows}
    if len(rows) < 4 or len(runs) < 3:
        return (f"{len(rows)} checkpoints with CKA in {len(runs)} runs: too few to correlate yet.", None)
    # No permutation p: it takes a run's checkpoints as independent, and printed beside the run-level
    # interval it read as significant where the interval spans 0.
    # Pearson and Spearman only: the partial correlation, with the step as levels, is computed below.
    res = correlate_recovery(rows, metric="kl", cka_keys=("mean", "last", "layers"), control=(),
                             n_boot=0, n_perm=0)
    lines = [f"{res['n']} checkpoints of {len(runs)} trained runs, each from its damaged start. "
             "Teacher KL is lower-is-better, so alignment that goes with recovery shows as a negative r. "
             "Intervals: 95%, from 1000 resamples of whole runs. layer_0 is the embeddings, layer_i the output of block i - 1 (blocks from 0); "
             "\"mean\" averages them all.", "",
             "| CKA feature | Pearson r [95% CI] | Spearman rho [95% CI] | partial r, each step and run removed [95% CI] |",
             "|---|---|---|---|"]
    groups, kl = [r["run"] for r in rows], [r["kl"] for r in rows]
    # The step as a level of its own, not a line: recovery curves bend (most of the change comes in
    # the first steps), and a linear step term would leave that common bend in both CKA and KL,
    # where it would read as CKA tracking KL. With one level per evaluation step and one per run,
    # what is left is how a run's CKA and KL differ from every run's at that step.
    levels = sorted({r["step"] for r in rows})
    steps = [[float(r["step"] == s) for s in levels[1:]] for r in rows]
    for name, values in cka_features(rows, "cka", ("mean", "last", "layers")).items():
        keep = [i for i, v in enumerate(values) if v is not None]  # as correlate_recovery: a layer some rows lack
        x, y, g, c = ([seq[i] for i in keep] for seq in (values, kl, groups, steps))
        f = res["features"][name]
        partial = partial_correlation_of(x, y, c, g)
        ci = {label: cluster_bootstrap_ci(g, stat, n_boot=1000) for label, stat in
              (("pearson", correlation_of(x, y)), ("spearman", correlation_of(x, y, rank=True)), ("partial", partial))}
        f["partial"] = {"r": partial(np.arange(len(keep))), "ci": ci["partial"]}  # run-level interval
        lines.append(f"| {name} | {_r(f['pearson']['r'], ci['pearson'])} | {_r(f['spearman']['r'], ci['spearman'])} | "
                     f"{_r(f['partial']['r'], ci['partial'])} |")
    if plot is not None:
        from ..analysis.plots import plot_cka_vs_recovery

        plot_cka_vs_recovery(cka_features(rows, "cka", ("mean",))["mean"], kl, plot,
                             title="Mean CKA vs validation KL, every checkpoint", ylabel="validation teacher KL",
                             groups=[r["degradation"] for r in rows])
    return "\n".join(lines), res


def _r(r, ci) -> str:
    if r is None:
        return "n/a"
    return f"{r:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def findings(records: list[dict], cka: dict | None, methods: list[str] | None = None) -> list[str]:
    """What held and what did not, one sentence per comparison. Two methods are compared on the
    seeds both have finished, so a study half run does not set one method's seed 0 against
    another's mean over three seeds."""
    by_seed = defaultdict(lambda: defaultdict(dict))  # (model, degradation) -> method -> seed -> ratio
    for r in records:
        if r["ratio"] is not None:
            by_seed[(_model(r), r["degradation"])][r["method"]][r["seed"]] = r["ratio"]
    out = []
    ordered = _order((m for v in by_seed.values() for m in v), methods)
    for method in [m for m in ordered if m not in BASELINES]:
        for baseline in [b for b in (*BASELINES, "offpolicy") if b != method]:
            pairs, unequal = [], False
            for v in by_seed.values():
                if method in v and baseline in v:
                    shared = sorted(set(v[method]) & set(v[baseline]))
                    unequal |= set(v[method]) != set(v[baseline])
                    if shared:
                        pairs.append((statistics.mean(v[method][s] for s in shared),
                                      statistics.mean(v[baseline][s] for s in shared)))
            if pairs:
                wins = sum(a > b for a, b in pairs)
                basis = "the seeds both have finished" if unequal else "the mean over seeds"
                out.append(f"`{method}` beat `{baseline}` on held-out teacher KL in {wins} of {len(pairs)} "
                           f"(model, degradation) pairs (by {basis}).")
    if cka and "mean" in cka.get("features", {}):
        f = cka["features"]["mean"]
        raw, partial = f["pearson"]["r"], f["partial"]
        if raw is not None and partial.get("r") is not None:
            ci = partial.get("ci")
            if ci and ci[1] < 0:
                verdict = "CKA tracks recovery beyond what training time and the run explain."
            elif ci and ci[0] > 0:
                verdict = ("within runs, higher CKA went with worse KL: alignment, as mean CKA measures it, "
                           "does not track recovery here.")
            elif ci:
                verdict = "its interval includes 0: no evidence that CKA tracks recovery beyond training time."
            else:
                verdict = "no run-level interval could be computed (too few runs), so this says nothing yet."
            out.append(f"Mean CKA and validation KL correlate at r = {raw:.2f} over {cka['n']} checkpoints; with the "
                       f"training step and the run removed (each as its own level), partial r = {partial['r']:.2f}"
                       + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f"; {verdict}")
    return out


def results_markdown(records: list[dict], doc: Path, source: Path, methods: list[str] | None = None,
                     degradations: list[str] | None = None) -> str:
    """The document from the cells' records (report.records); `source` is where they were read."""
    if not records:
        return "# Study results\n\nNo cell of this study has finished yet.\n"
    figures = doc.parent / f"{doc.stem}-figures"
    plot = figures / "cka-vs-kl.png"
    cka_text, cka = cka_section(records, plot)
    devices = sorted({r.get("device", "?") for r in records})
    parts = ["# Study results", "",
             f"Generated by `recoverlm study --render` from the records of {_cells(len(records))} in "
             f"`{Path(os.path.relpath(source, doc.parent)).as_posix()}` (devices: {', '.join(devices)}). Recovery ratio: held-out teacher KL, "
             "(recovered - degraded) / (teacher - degraded), mean ± std over seeds; after the dot, the recovered "
             "model's knowledge accuracy.", "", "## Recovery by degradation and method", "",
             headline(records, methods, degradations)]
    sft = sft_forgetting(records)
    if sft:
        parts += ["", "## SFT forgetting: the new task against general ability", "", sft]
    parts += ["", "## Recovery against training steps", "", "Validation teacher KL (the prompts that choose the "
              "checkpoint), mean over seeds.", "", curves(records, methods, figures),
              "", "## Does CKA track recovery?", "", cka_text]
    if plot.exists() and cka is not None:
        parts += ["", f"![mean CKA against validation KL]({plot.relative_to(doc.parent).as_posix()})"]
    masks = mask_section(records)
    if masks:
        parts += ["", "## Re-chosen masks against the fixed mask", "", masks]
    targeted = targeted_section(records)
    if targeted:
        parts += ["", "## Targeted blocks: quality per unit of compute", "", targeted]
    parts += ["", "## Does alignment cause recovery?", "", alignment_section(records)]
    sentences = findings(records, cka, methods)
    if sentences:
        parts += ["", "## What held", ""] + [f"- {s}" for s in sentences]
    return "\n".join(parts) + "\n"


def write_results(records: list[dict], doc: Path, source: Path, methods: list[str] | None = None,
                  degradations: list[str] | None = None, readme: Path | None = None) -> tuple[str, bool]:
    """The results document, and whether its headline table was quoted into `readme`, which it is
    where that file marks a place for it (<!-- results:STEM --> ... <!-- /results:STEM -->, STEM
    the document's name)."""
    text = results_markdown(records, Path(doc), Path(source), methods, degradations)
    write_text_atomic(Path(doc), text)
    quoted = readme is not None and Path(readme).is_file() and quote_headline(
        Path(readme), Path(doc), records, methods, degradations)
    return text, quoted


def quote_headline(readme: Path, doc: Path, records: list[dict], methods: list[str] | None = None,
                   degradations: list[str] | None = None) -> bool:
    """Replace the marked block of `readme` with the headline table; False where it has no marks."""
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- results:{doc.stem} -->", f"<!-- /results:{doc.stem} -->"
    if start not in text or end not in text.split(start, 1)[1]:
        return False
    table = headline(records, methods, degradations, titled=False) if records else "No cell has finished yet."
    link = os.path.relpath(doc, readme.parent).replace(os.sep, "/")
    body = (f"{start}\nFrom [{link}]({link}), generated from {_cells(len(records))}: held-out teacher-KL "
            f"recovery ratio · knowledge accuracy.\n\n{table}\n{end}")
    head, rest = text.split(start, 1)
    write_text_atomic(readme, head + body + rest.split(end, 1)[1])
    return True
