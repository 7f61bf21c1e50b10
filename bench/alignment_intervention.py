"""Does re-aligning the activation trajectory cause recovery? An intervention, not a correlation.

The recovery benchmark's `--hidden-weight` adds a term that pulls every layer's hidden states
towards the teacher's. Runs that differ only in that weight (same degradation, budget, seed and
data) are the treatment arms: if alignment drives fidelity, a term that raises alignment more should
lower held-out teacher KL more. Each recovered model, the degraded one and the teacher are measured
on the 48 held-out prompts: teacher KL, the relative hidden-state error the term trains, and the
per-layer linear CKA the analysis reports. Writes the "alignment" section of docs/benchmarks.md.

    python bench/recovery_bench.py --quick --degradations wanda-50% --methods distill --seeds 1 --hidden-weight 5
    python bench/alignment_intervention.py --degradation wanda-50% --budget quick --seed 1
    python bench/alignment_intervention.py --render ...   # from bench/results/alignment-*.json only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402
from recovery.results import RESULTS, load_rows  # noqa: E402
from recovery.setting import BUDGETS, SELECTION, Setting, degraded_dir, run_dir  # noqa: E402

from recoverlm import models  # noqa: E402
from recoverlm.analysis.hidden_error import relative_hidden_error  # noqa: E402
from recoverlm.analysis.layer_cka import DEFAULT_MASSIVE_RATIO, layer_cka  # noqa: E402
from recoverlm.config import DataConfig  # noqa: E402
from recoverlm.errors import RecoverLMError  # noqa: E402
from recoverlm.evaluate.fidelity import fidelity  # noqa: E402
from recoverlm.io import write_text_atomic  # noqa: E402
from recoverlm.teacher.response_set import heldout_set  # noqa: E402


def arms(rows: list[dict], degradation: str, budget: str, seed: int, work: Path,
         grid_scales: str = "fixed") -> dict[float, dict]:
    """The recorded CPU `distill` runs of a default setting but for hidden_weight (and the grid
    scales asked for), whose models are still in `work`."""
    off, on = BUDGETS[budget]
    base = Setting(degradation=degradation, method="distill", offpolicy=off, onpolicy=on, seed=seed,
                   selection=SELECTION, grid_scales=grid_scales)
    found = {}
    for r in rows:
        if r.get("kind", "run") != "run":
            continue
        s = Setting.from_row(r)
        if replace(s, hidden_weight=0.0) == base and run_dir(work, s).exists():
            found[s.hidden_weight] = r
    return dict(sorted(found.items()))


def measure(teacher_ref: str, paths: dict[str, Path]) -> dict[str, dict]:
    """Held-out teacher KL, per-layer relative hidden error and per-layer linear CKA of each model."""
    data = DataConfig()
    teacher_path = models.resolve_model(teacher_ref)
    pad = models.load_tokenizer(teacher_path).pad_token_id
    eval_set = heldout_set(teacher_path, data)
    teacher = models.load_for_inference(teacher_path)
    loaded = {name: models.load_for_inference(path) for name, path in paths.items()}
    kl = fidelity(teacher, loaded, eval_set, pad, progress=False)
    cka = layer_cka(teacher, loaded, eval_set, pad, progress=False, massive_ratio=DEFAULT_MASSIVE_RATIO)
    return {name: {"kl": kl[name]["kl"], "hidden": relative_hidden_error(teacher, model, eval_set, pad),
                   "cka": cka[name]["linear"]} for name, model in loaded.items()}


HEADER = ("## Does alignment cause recovery? (`bench/alignment_intervention.py`)\n\n"
          "Each table: `distill` runs on CPU identical (degradation, budget, seed, data) but for `hidden_weight`, the "
          "weight of a term that pulls every layer's hidden states towards the teacher's (relative squared error "
          "per position). Measured on the 48 held-out prompts: teacher KL and its recovery ratio, the relative "
          "hidden error that term trains (mean over layers, and after the final norm), and linear CKA with the "
          "teacher (mean over the embeddings and blocks, and after the last block; tokens above "
          f"{DEFAULT_MASSIVE_RATIO:g}x the median norm left out). Knowledge: the recovered model's accuracy on the "
          "knowledge suite (341 items; teacher 0.730).")


def render(degradation: str, budget: str, seed: int, found: dict[float, dict], measured: dict[str, dict]) -> str:
    off, on = BUDGETS[budget]
    deg = measured["degraded"]
    scales = ", learned grid scales" if next(iter(found.values())).get("grid_scales") == "learned" else ""
    lines = [f"**{degradation}{scales}, {off} + {on} steps, seed {seed}**", "",
             "| hidden weight | held-out KL | recovery ratio | hidden error: mean | hidden error: final | CKA: mean | "
             "CKA: last block | knowledge |", "|---|---|---|---|---|---|---|---|"]

    def row(label: str, m: dict, knowledge: str) -> str:
        ratio = 1 - m["kl"] / deg["kl"] if label != "degraded" else 0.0
        return (f"| {label} | {m['kl']:.4f} | {ratio:.3f} | {statistics.mean(m['hidden']):.4f} | {m['hidden'][-1]:.4f} | "
                f"{statistics.mean(m['cka']):.4f} | {m['cka'][-1]:.4f} | {knowledge} |")

    lines.append(row("degraded", deg, "—"))
    for weight, r in found.items():
        know = r.get("suites", {}).get("knowledge", {}).get("recovered", {}).get("acc")
        lines.append(row(f"{weight:g}", measured[f"{weight:g}"], "—" if know is None else f"{know:.3f}"))
    weights = list(found)
    base, top = measured[f"{weights[0]:g}"], measured[f"{weights[-1]:g}"]
    lines += ["", f"Reading: {rates_sentence(deg, base, 'distillation alone (weight ' + format(weights[0], 'g') + ')')} "
              f"{rates_sentence(base, top, 'The hidden term at weight ' + format(weights[-1], 'g') + ', on top of it,')}"]
    return "\n".join(lines)


def rates(before: dict, after: dict) -> dict:
    """Alignment gained between two models, and held-out KL lost per unit of it (the exchange rate)."""
    gained = {"hidden": statistics.mean(before["hidden"]) - statistics.mean(after["hidden"]),
              "cka": statistics.mean(after["cka"]) - statistics.mean(before["cka"])}
    kl = before["kl"] - after["kl"]
    return {"kl": kl, **gained, **{f"kl_per_{k}": kl / v if v else float("nan") for k, v in gained.items()}}


def rates_sentence(before: dict, after: dict, who: str) -> str:
    r = rates(before, after)
    return (f"{who} cut the mean hidden error by {r['hidden']:.4f} and raised mean CKA by "
            f"{r['cka']:.4f} while held-out KL fell by {r['kl']:.4f}: {r['kl_per_hidden']:.1f} nats of KL per unit of "
            f"hidden error, {r['kl_per_cka']:.1f} per unit of CKA.")


def late_training(records: list[dict]) -> str:
    """The exchange rate late in plain distillation (quick budget -> full budget, weight 0), against
    that of the hidden term at the full budget: a like-for-like stretch of diminishing returns."""
    plain = {(r["degradation"], r["budget"]): r for r in records if 0.0 in r["found"]}
    out = []
    for (name, budget), full in plain.items():
        quick = plain.get((name, "quick"))
        if budget != "full" or quick is None or len(full["found"]) < 2:
            continue
        late = rates(quick["measured"]["0"], full["measured"]["0"])
        top = max(full["found"])
        term = rates(full["measured"]["0"], full["measured"][f"{top:g}"])
        out.append(f"Late in plain distillation of {name} (weight 0, from {sum(BUDGETS['quick'])} to "
                   f"{sum(BUDGETS['full'])} steps; seeds {quick['seed']} and {full['seed']}) KL fell "
                   f"{late['kl_per_hidden']:.1f} per unit of hidden error and {late['kl_per_cka']:.1f} per unit of CKA; "
                   f"the alignment the hidden term added at weight {top:g} bought {term['kl_per_hidden']:.1f} and "
                   f"{term['kl_per_cka']:.1f}. Alignment forced directly buys a fraction of the fidelity that the same "
                   "alignment brings when it arises from distillation: the term helps, so alignment is partly a lever, "
                   "but most of what CKA tracks during recovery moves with fidelity rather than driving it.")
    return "\n\n".join(out)


def results_path(degradation: str, budget: str, seed: int, grid_scales: str) -> Path:
    scales = "-learned-scales" if grid_scales == "learned" else ""
    return RESULTS.parent / f"alignment-{degradation.replace('%', '')}{scales}-{budget}-seed{seed}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--degradation", default="wanda-50%")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grid-scales", choices=["fixed", "learned"], default="fixed",
                    help="quantized degradations: the arms' grid scales (as in the recovery benchmark)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the section from the saved measurements (bench/results/alignment-*.json)")
    args = ap.parse_args()
    if not args.render:
        found = arms(load_rows(RESULTS), args.degradation, args.budget, args.seed, args.work, args.grid_scales)
        if len(found) < 2 or 0.0 not in found:
            sys.exit(f"error: need recorded runs with hidden weight 0 and at least one other for {args.degradation} "
                     f"({args.budget}, seed {args.seed}) with their models in {args.work}; found weights {list(found)}")
        paths = {"degraded": degraded_dir(args.work, args.degradation),
                 **{f"{w:g}": run_dir(args.work, Setting.from_row(r)) for w, r in found.items()}}
        try:
            measured = measure(args.model, paths)
        except RecoverLMError as exc:
            sys.exit(f"error: {exc}")
        record = {"runs": {str(w): r for w, r in found.items()}, "measured": measured}
        saved = results_path(args.degradation, args.budget, args.seed, args.grid_scales)
        write_text_atomic(saved, json.dumps(record, indent=1) + "\n")
    records = []
    for path in sorted(RESULTS.parent.glob("alignment-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        found = {float(w): r for w, r in record["runs"].items()}
        first = next(iter(found.values()))
        budget = next(b for b, steps in BUDGETS.items() if steps == (first["offpolicy"], first["onpolicy"]))
        records.append({"degradation": first["degradation"], "budget": budget, "seed": first["seed"], "found": found,
                        "measured": record["measured"]})
    tables = [render(r["degradation"], r["budget"], r["seed"], r["found"], r["measured"]) for r in records]
    print(update_section("alignment", "\n\n".join([HEADER, *tables, late_training(records)])))


if __name__ == "__main__":
    main()
