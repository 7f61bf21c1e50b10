"""The results page's answer to "does alignment cause recovery?", from a study's cells.

Two tests, both at equal budget. The intervention: cells trained with the CKA term
(recover.cka_weight > 0) against the cells that differ from them only in that term (same model,
damage, recipe and seed): did raising CKA raise recovery? The converse control: across every
trained cell, does held-out CKA predict the recovered model's knowledge once its held-out teacher
KL is known? If KL explains knowledge and CKA adds nothing, alignment is a symptom of fitting the
teacher, not a separate cause.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from ..config import result_identity

# Two-sided 95% Student-t quantiles by degrees of freedom (paired differences over few seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
CKA_KEYS = ("cka_weight", "cka_layers")  # what the intervention changes in a recipe


def t95(dof: int) -> float:
    """The 95% quantile for `dof` degrees of freedom (the nearest tabulated one below, 1.96 beyond 30)."""
    if dof > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= dof)]


def mean_ci(values: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The mean and its 95% t-interval (None with a single value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, None
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, (mean - half, mean + half)


def recipe(record: dict, varied: tuple[str, ...] = CKA_KEYS) -> dict:
    """Everything that defines a cell's training and measurement but the recover settings `varied`
    (by default the CKA term): the whole run config (data, evaluation and the damage included) and
    the damaged copy it started from. Where and how it ran is left out, so twins run on different
    machines still pair."""
    config = result_identity(record.get("config", {}))
    recover = {k: v for k, v in config.get("recover", {}).items() if k not in varied}
    return {**config, "recover": recover, "degraded_hash": record.get("degraded_hash")}


def _uses_cka(record: dict) -> bool:
    return bool(record.get("config", {}).get("recover", {}).get("cka_weight"))


def _knowledge(record: dict) -> float | None:
    res = record.get("suites", {}).get("recovered", {}).get("knowledge", {})
    return res.get("acc", res.get("exact_match"))


def paired_cells(records: list[dict]) -> list[tuple[dict, dict]]:
    """(with the CKA term, without it) for every cell whose twin, equal in all else, has finished."""
    plain = defaultdict(list)
    for r in records:
        if not _uses_cka(r) and r.get("config"):
            plain[(r["model"], r["degradation"], r["seed"])].append(r)
    pairs = []
    for r in records:
        if _uses_cka(r):
            twins = [p for p in plain[(r["model"], r["degradation"], r["seed"])] if recipe(p) == recipe(r)]
            if len(twins) == 1:  # two equal twins would be two names for one recipe: neither is taken
                pairs.append((r, twins[0]))
    return pairs


def _fmt_ci(mean: float, ci) -> str:
    return f"{mean:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " (1 seed)")


def intervention(records: list[dict]) -> tuple[list[str], list[str]]:
    """Table lines and verdict sentences for the CKA-term arms against their twins."""
    groups = defaultdict(list)
    for with_term, without in paired_cells(records):
        groups[(with_term["model"], with_term["degradation"], with_term["method"], without["method"])].append(
            (with_term, without))
    if not groups:
        return [], []
    lines = ["| model | degradation | arm (vs twin) | seeds | held-out CKA change | teacher-KL ratio change | "
             "knowledge change |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for (model, deg, arm, twin), pairs in groups.items():
        # CKA and ratio changes from the same seeds, so that the verdict sets like against like
        both = [(a, b) for a, b in pairs if a.get("cka") and b.get("cka") and a["ratio"] is not None
                and b["ratio"] is not None]
        d_cka = [a["cka"]["recovered"] - b["cka"]["recovered"] for a, b in both]
        d_ratio = [a["ratio"] - b["ratio"] for a, b in both]
        d_know = [_knowledge(a) - _knowledge(b) for a, b in both
                  if _knowledge(a) is not None and _knowledge(b) is not None]
        cells = [_fmt_ci(*mean_ci(v)) if v else "—" for v in (d_cka, d_ratio, d_know)]
        lines.append(f"| {model} | {deg} | `{arm}` (vs `{twin}`) | {len(both)} | " + " | ".join(cells) + " |")
        verdicts.append(_verdict(deg, arm, d_cka, d_ratio))
    return lines, verdicts


def _verdict(deg: str, arm: str, d_cka: list[float], d_ratio: list[float]) -> str:
    if not d_cka or not d_ratio:
        return f"{deg}, `{arm}`: not enough finished pairs to say."
    (c, c_ci), (k, k_ci) = mean_ci(d_cka), mean_ci(d_ratio)
    if c_ci is None:
        return (f"{deg}, `{arm}`: one seed so far (CKA {c:+.3f}, ratio {k:+.3f}); more seeds are needed before "
                "this says anything.")
    if c_ci[0] <= 0:
        return f"{deg}, `{arm}`: the term did not reliably raise held-out CKA, so this arm cannot test the claim."
    if k_ci[0] > 0:
        return f"{deg}, `{arm}`: raising CKA directly raised recovery ({k:+.3f} in ratio): consistent with a cause."
    if k_ci[1] < 0:
        return f"{deg}, `{arm}`: raising CKA directly lowered recovery ({k:+.3f} in ratio): alignment is not its cause."
    return (f"{deg}, `{arm}`: CKA rose ({c:+.3f}) but recovery did not move beyond noise ({k:+.3f}): "
            "no evidence that alignment causes recovery.")


def converse(records: list[dict]) -> list[str]:
    """Across trained cells: does held-out CKA predict knowledge once held-out KL is known?
    Partial correlation with the degradation removed, interval from resampling cells."""
    from ..ops.correlate import cluster_bootstrap_ci, partial_correlation_of

    rows = [r for r in records if r["method"] != "none" and r.get("cka") and r["ratio"] is not None
            and _knowledge(r) is not None]
    if len(rows) < 6:
        return [f"{len(rows)} trained cells with held-out CKA and knowledge: too few to test whether CKA predicts "
                "knowledge beyond KL (6 needed)."]
    cka = [r["cka"]["recovered"] for r in rows]
    know = [_knowledge(r) for r in rows]
    kl = [r["kl"]["recovered"] for r in rows]
    groups = [f"{r['model']}/{r['degradation']}" for r in rows]
    import numpy as np

    stat = partial_correlation_of(cka, know, kl, groups)
    r_value = stat(np.arange(len(rows)))
    ci = cluster_bootstrap_ci([r["name"] for r in rows], stat, n_boot=1000)
    if r_value is None:
        return [f"{len(rows)} cells: the partial correlation is undefined (too few cells per degradation)."]
    text = (f"Across {len(rows)} trained cells, held-out mean CKA against knowledge with held-out KL and the "
            f"degradation removed: partial r = {r_value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    if ci and ci[0] > 0:
        return [text + ": CKA predicts knowledge beyond what KL explains."]
    if ci and ci[1] < 0:
        return [text + ": beyond KL, higher CKA went with lower knowledge."]
    return [text + ": no evidence that CKA predicts knowledge beyond what KL already explains."]


def alignment_section(records: list[dict]) -> str:
    lines, verdicts = intervention(records)
    parts = ["The intervention: arms trained with the CKA term (`recover.cka_weight`), each against the cell that "
             "differs only in that term. Changes are with minus without, mean over seeds with a 95% t-interval."]
    parts += ["", *lines] if lines else ["", "No arm with the CKA term has a finished twin yet."]
    parts += ["", "The converse control:", "", *converse(records)]
    if verdicts:
        parts += ["", "The answer so far:", "", *[f"- {v}" for v in verdicts]]
    return "\n".join(parts)
