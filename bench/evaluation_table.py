"""docs/evaluation.md: what the shipped suites measure on the embedded teacher and on damaged copies.

Damages the embedded model seven ways (50% magnitude and 50% Wanda pruning, int4 group-32 RTN, and
SFT forgetting on each built-in task at two learning rates), then scores the teacher and every damaged model on teacher
fidelity and on each shipped task suite, with the time each suite took. It checks the claims the
suites rest on: the teacher's knowledge accuracy is at least chance + 15 points, and 50% magnitude
pruning costs at least 10 points of it. It also runs the plain `lm_eval` CLI on the knowledge suite
for the teacher and compares it with the in-memory run.

    python bench/evaluation_table.py              # resumable
    python bench/evaluation_table.py --render     # rewrite the Markdown from docs/evaluation.json

Damaged models live in runs/eval-models/; suite results are cached by model hash, so a rerun after
an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recoverlm import models  # noqa: E402
from recoverlm.config import DataConfig  # noqa: E402
from recoverlm.runs import DEGRADATION_FILE, side_file  # noqa: E402
from recoverlm.degrade import degrade  # noqa: E402
from recoverlm.evaluate.compare import evaluate_models, evaluate_task_suites  # noqa: E402
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, TASK_PREFIX, available_suites  # noqa: E402
from recoverlm.io import write_json_atomic, write_text_atomic  # noqa: E402

DAMAGES = {
    "magnitude-50%": ("prune.magnitude", {"sparsity": 0.5}),
    "wanda-50%": ("prune.wanda", {"sparsity": 0.5}),
    "rtn-int4-g32": ("quant.rtn", {"bits": 4, "group_size": 32}),
    "sft-extraction": ("sft", {"task": "extraction", "steps": 150, "lr": 1e-4}),
    "sft-rewriting": ("sft", {"task": "rewriting", "steps": 150, "lr": 1e-4}),
    "sft-extraction-lr5e-4": ("sft", {"task": "extraction", "steps": 150, "lr": 5e-4}),
    "sft-rewriting-lr5e-4": ("sft", {"task": "rewriting", "steps": 150, "lr": 5e-4}),
}
SFT_TASKS = {"sft-extraction": "extraction", "sft-rewriting": "rewriting", "sft-extraction-lr5e-4": "extraction",
             "sft-rewriting-lr5e-4": "rewriting"}
# Items per suite (None = all); the generative suites are capped to keep a CPU run in hours.
LIMITS = {"knowledge": None, "instructions": None, "arithmetic": 100, "extraction": 50, "rewriting": 50, "gsm8k": 25}
HEADLINE = {"knowledge": "acc", "instructions": "prompt_level_strict_acc", "arithmetic": "exact_match",
            "extraction": "acc", "rewriting": "acc", "gsm8k": "exact_match"}
CHANCE = 0.25  # four choices per knowledge item


def damaged_models(model: str, work: Path) -> dict[str, Path]:
    out = {}
    for name, (method, params) in DAMAGES.items():
        path = work / name
        if not path.exists():
            print(f"degrading: {name}", flush=True)
            degrade(model, method, params, path)
        out[name] = path
    return out


def lm_eval_cli_knowledge(model_dir: Path, batch_size: int = 8) -> float:
    """Knowledge accuracy from the plain `lm_eval` command line, for comparison with the in-memory run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={model_dir},dtype=float32", "--tasks", TASK_PREFIX + "knowledge", "--include_path",
               str(SUITES_DIR), "--batch_size", str(batch_size), "--output_path", tmp]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        result = json.loads(next(Path(tmp).rglob("results_*.json")).read_text())
    return float(result["results"][TASK_PREFIX + "knowledge"]["acc,none"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "eval-models")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation.md")
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    saved_path = args.out.with_suffix(".json")
    if args.render:
        write_text_atomic(args.out, render(json.loads(saved_path.read_text())))
        print(f"wrote {args.out}")
        return

    teacher = models.resolve_model(args.model)
    students = damaged_models(args.model, args.work)
    records = {name: json.loads(side_file(path, DEGRADATION_FILE).read_text()) for name, path in students.items()}
    saved = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "limits": {}, "suites": {},
             "sft": {name: records[name].get("sft", {}) for name in SFT_TASKS}}

    start = time.perf_counter()
    fid = evaluate_models(teacher, students, DataConfig(), progress=True, generation=False)
    saved["fidelity"] = {"seconds": time.perf_counter() - start, "heldout": fid["heldout"],
                         "metrics": {n: m for n, m in fid["metrics"].items()}}
    for suite in [s for s in LIMITS if s in available_suites()]:
        limit = LIMITS[suite]
        report = evaluate_task_suites(teacher, students, [suite], limit=limit)
        saved["limits"][suite] = limit
        saved["suites"][suite] = {name: {k: v for k, v in res[suite].items() if k not in ("items", "by_category")}
                                  for name, res in report["results"].items()}
        write_json_atomic(saved_path, saved)  # progress survives an interruption
        write_text_atomic(args.out, render(saved))
    start = time.perf_counter()
    saved["lm_eval_cli"] = {"acc": lm_eval_cli_knowledge(teacher), "seconds": time.perf_counter() - start}
    write_json_atomic(saved_path, saved)
    write_text_atomic(args.out, render(saved))
    print(f"wrote {args.out}")


def _cell(res: dict | None, metric: str) -> str:
    if not res or res.get(metric) is None:
        return "—"
    se = (res.get("stderr") or {}).get(metric)
    return f"{res[metric]:.3f}" + (f" ± {se:.3f}" if se else "")


def render(saved: dict) -> str:
    suites, names = saved["suites"], ["teacher", *DAMAGES]
    lines = ["# Evaluation suites on the embedded model", "",
             f"Model `{saved['model']}`, float32 on a 2-core CPU, written by `bench/evaluation_table.py` on "
             f"{saved['date']}. Damaged copies: " + ", ".join(f"`{n}` ({m} {p})" for n, (m, p) in DAMAGES.items()) + ".",
             "Scores are the headline metric of each suite with its standard error (lm-eval's); "
             "items per suite in the header.", "",
             "| model | teacher KL | " + " | ".join(f"{s} ({HEADLINE[s]}, n={_n(suites[s])})" for s in suites) + " |",
             "|---|---|" + "---|" * len(suites)]
    fid = saved.get("fidelity", {}).get("metrics", {})
    for name in names:
        kl = fid.get(name, {}).get("kl")
        lines.append(f"| {name} | {'—' if kl is None else f'{kl:.3f}'} | "
                     + " | ".join(_cell(suites[s].get(name), HEADLINE[s]) for s in suites) + " |")
    lines += ["", "## Checks", ""]
    know = suites.get("knowledge", {})
    if know:
        t, m = know["teacher"]["acc"], know.get("magnitude-50%", {}).get("acc")
        lines.append(f"- Teacher knowledge accuracy {t:.3f} against chance {CHANCE:.2f}: "
                     f"{'clears' if t >= CHANCE + 0.15 else 'does NOT clear'} the chance + 15 points bar ({CHANCE + 0.15:.2f}).")
        if m is not None:
            lines.append(f"- 50% magnitude pruning: knowledge {t:.3f} → {m:.3f}, a drop of {100 * (t - m):.1f} points "
                         f"({'at least' if t - m >= 0.10 else 'LESS than'} the 10 points the suite must resolve).")
    inst = suites.get("instructions", {})
    if inst:
        lines.append("- Instruction following (prompt-level strict / loose): " + "; ".join(
            f"{n} {inst[n]['prompt_level_strict_acc']:.3f} / {inst[n]['prompt_level_loose_acc']:.3f}"
            for n in names if n in inst) + ".")
    for name, task in SFT_TASKS.items():
        sft = (saved.get("sft") or {}).get(name)
        if not sft or task not in suites or name not in suites[task] or name not in know or name not in inst:
            continue
        lr = DAMAGES[name][1].get("lr")
        lines.append(f"- SFT forgetting: {sft.get('steps')} steps of full fine-tuning on `{task}` at lr {lr:.0e} take its task accuracy "
                     f"{suites[task]['teacher']['acc']:.3f} → {suites[task][name]['acc']:.3f}, while knowledge goes "
                     f"{know['teacher']['acc']:.3f} → {know[name]['acc']:.3f} "
                     f"({'a drop' if know[name]['acc'] < know['teacher']['acc'] else 'NOT a drop: a rise'} of "
                     f"{100 * abs(know['teacher']['acc'] - know[name]['acc']):.1f} points), instruction following (strict) "
                     f"{inst['teacher']['prompt_level_strict_acc']:.3f} → {inst[name]['prompt_level_strict_acc']:.3f} "
                     f"and teacher KL 0 → {fid.get(name, {}).get('kl', float('nan')):.3f}.")
    cli = saved.get("lm_eval_cli")
    if cli and know:
        same = abs(cli["acc"] - know["teacher"]["acc"]) < 1e-9
        lines.append(f"- The plain `lm_eval --include_path` CLI gives knowledge accuracy {cli['acc']:.4f} for the "
                     f"teacher, against {know['teacher']['acc']:.4f} in memory: {'identical' if same else 'DIFFERENT'}.")
    lines += ["", "## Time per suite (seconds, per model)", "",
              "| suite | items | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    if "fidelity" in saved:
        n = saved["fidelity"]["heldout"]["sequences"]
        lines.append(f"| fidelity (all models at once) | {n} | {saved['fidelity']['seconds']:.0f} |" + " |" * (len(names) - 1))
    for s, res in suites.items():
        lines.append(f"| {s} | {_n(res)} | " + " | ".join(
            f"{res[n]['seconds']:.0f}" if n in res and res[n].get("seconds") is not None else "—" for n in names) + " |")
    lines += ["", "Times come from a shared machine and show the order of magnitude; a suite result served from "
              "the cache shows the time of the run that filled it."]
    return "\n".join(lines) + "\n"


def _n(res: dict) -> int | str:
    return res.get("teacher", {}).get("n", "—")


if __name__ == "__main__":
    main()
