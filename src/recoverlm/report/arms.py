"""Results-page sections for arms that change what trains: re-chosen masks against the fixed one,
and targeted blocks (CKA-chosen, random, most aligned) by what they cost, in wall time and in
trained parameters, at equal steps."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict

from .alignment import recipe


def _knowledge(record: dict) -> float | None:
    res = record.get("suites", {}).get("recovered", {}).get("knowledge", {})
    return res.get("acc", res.get("exact_match"))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _cell(values, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return _plain(values[0], digits)
    return f"{_plain(statistics.mean(values), digits)} ± {statistics.stdev(values):.{digits}f}"


def _plain(v: float, digits: int) -> str:
    """v rounded, without the sign of a negative zero."""
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _by(records: list[dict], key) -> dict:
    groups = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return groups


def rule(train_blocks: dict) -> str:
    """How a cell chose its blocks: all, list, least_aligned, most_aligned or random."""
    choice = train_blocks.get("choice", "all")
    if isinstance(choice, dict):
        return next((k for k in ("least_aligned", "most_aligned", "random") if k in choice), "list")
    return "all" if choice == "all" else "list"


def mask_section(records: list[dict]) -> str | None:
    """Per pruned degradation: the fixed-mask arms beside the re-chosen-mask ones."""
    moved = [r for r in records if "mask_update" in r.get("recovery", {})]
    if not moved:
        return None
    sparse = {(r["model"], r["degradation"]) for r in moved}
    lines = ["| model | degradation | method | mask | seeds | teacher-KL ratio | knowledge | updates | weights swapped "
             "in training | kept weights swapped in the export |", "|---|---|---|---|---|---|---|---|---|---|"]
    trained = [r for r in records if (r["model"], r["degradation"]) in sparse and r["method"] != "none"]
    for (model, deg, method), rows in sorted(_by(trained, lambda r: (r["model"], r["degradation"], r["method"])).items()):
        updates = [r["recovery"].get("mask_update") for r in rows]
        kind = "re-chosen" if any(updates) else "fixed"
        moved = [u for u in updates if u]
        changed = _cell([u["changed"] for u in moved]) if moved else "0"
        counts = (_cell([u["updates"] for u in moved], 0), _cell([u["swapped"] for u in moved], 0)) if moved else ("0", "0")
        lines.append(f"| {model} | {deg} | `{method}` | {kind} | {len(rows)} | {_cell([r['ratio'] for r in rows])} | "
                     f"{_cell([_knowledge(r) for r in rows])} | {counts[0]} | {counts[1]} | {changed} |")
    return "\n".join(lines)


def targeted_section(records: list[dict]) -> str | None:
    """Arms that train chosen blocks, with the all-blocks arms of the same degradations: quality
    per unit of compute, and whether CKA's choice beats chance at equal K."""
    chosen = [r for r in records if rule(r.get("recovery", {}).get("train_blocks", {})) != "all"]
    if not chosen:
        return None
    degs = {(r["model"], r["degradation"]) for r in chosen}
    rows_of = _by([r for r in records if (r["model"], r["degradation"]) in degs and r["method"] != "none"
                   and "train_blocks" in r.get("recovery", {})], lambda r: (r["model"], r["degradation"], r["method"]))
    lines = ["| model | degradation | method | blocks trained | seeds | trained parameters | training time (s) | "
             "teacher-KL ratio | ratio per trained 10M parameters |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, deg, method), rows in sorted(rows_of.items()):
        tb = [r["recovery"]["train_blocks"] for r in rows]
        blocks = sorted({tuple(t["blocks"]) for t in tb})
        shown = "all" if rule(tb[0]) == "all" else "; ".join(str(list(b)) for b in blocks)
        params = _mean(t.get("trained_parameters") for t in tb)
        ratio = _mean(r["ratio"] for r in rows)
        per = f"{ratio / (params / 1e7):.3f}" if ratio is not None and params else "—"
        lines.append(f"| {model} | {deg} | `{method}` | {shown} | {len(rows)} | "
                     f"{'—' if params is None else f'{params / 1e6:.1f}M'} | {_cell([r.get('stages', {}).get('recover') for r in rows], 0)} | "
                     f"{_cell([r['ratio'] for r in rows])} | {per} |")
    return "\n".join(lines + ["", *_chance_sentences(chosen)])


def _chance_sentences(chosen: list[dict]) -> list[str]:
    """Least-aligned against random blocks at each K: wins over (degradation, seed) pairs of cells
    equal in all but the choice of blocks. Arms that rank the blocks by different scores are
    compared with chance each on its own."""
    out = []
    keyed, repeated = {}, set()
    for r in chosen:
        tb = r["recovery"]["train_blocks"]
        score = tb.get("score") if rule(tb) == "least_aligned" else None
        same = json.dumps(recipe(r, varied=("train_blocks",)), sort_keys=True, default=str)
        key = (r["model"], r["degradation"], r["seed"], same, rule(tb), len(tb["blocks"]), score)
        if key in keyed:
            repeated.add(key)  # two names for one recipe: neither is taken
        keyed[key] = r["ratio"]
    keyed = {k: v for k, v in keyed.items() if k not in repeated}
    ranked = sorted({(key[5], key[6] or "") for key in keyed if key[4] == "least_aligned"})
    for k, score in ranked:
        pairs = [(v, keyed.get((*key[:4], "random", k, None))) for key, v in keyed.items()
                 if key[4] == "least_aligned" and key[5] == k and (key[6] or "") == score]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            wins = sum(a > b for a, b in pairs)
            several = sum(1 for kk, _ in ranked if kk == k) > 1
            out.append(f"- K = {k}{f' (score {score})' if several else ''}: the least-aligned blocks beat random "
                       f"blocks in {wins} of {len(pairs)} (degradation, seed) pairs (mean ratio "
                       f"{_mean(a for a, _ in pairs):.3f} against {_mean(b for _, b in pairs):.3f}).")
    return out
