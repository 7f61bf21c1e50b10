"""Recovery quality at equal token budget, and the cost of a distillation step.

For each degradation (50% magnitude or Wanda pruning, int4 group-32 RTN) and each seed, the same
number of optimizer steps (so the same trained-token budget) is spent on:
  distill     two-stage self-distillation (off-policy forward KL on cached top-k, then on-policy)
  sft-replay  cross-entropy on the teacher's text: the budget control without teacher logits
and the held-out recovery ratio on teacher KL is reported as mean ± std over seeds.
The step-cost section times an off-policy KD step against a plain SFT step on the same batches.

    python bench/recovery_bench.py                 # 3 seeds, ~150k trained tokens per run (hours on 2 cores)
    python bench/recovery_bench.py --quick         # 1 seed, short runs: a smoke test of the numbers
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402

from recoverlm.config import DataConfig, RecoverConfig  # noqa: E402
from recoverlm.degrade import METHODS, degrade  # noqa: E402
from recoverlm.evaluate.compare import evaluate_models  # noqa: E402
from recoverlm.recover.trainer import Recovery, batch_order, recover  # noqa: E402

DEGRADATIONS = {
    "wanda-50%": ("prune.wanda", {"sparsity": 0.5}),
    "magnitude-50%": ("prune.magnitude", {"sparsity": 0.5}),
    "rtn-int4-g32": ("quant.rtn", {"bits": 4, "group_size": 32}),
}


def step_cost(teacher: str, student: Path, work: Path, data: DataConfig, steps: int) -> dict:
    """Seconds per optimizer step of off-policy KD and of plain SFT on the same batch plan."""
    out = {}
    for method in ("distill", "sft-replay"):
        cfg = RecoverConfig(method=method, offpolicy_steps=steps, eval_every=0, cka_every_eval=False, select_best=False)
        run = Recovery(teacher, student, work / f"cost-{method}", cfg, data, progress=False)
        plan = batch_order(len(run.train_set), cfg.batch_size, steps + 1, cfg.seed)
        run.train_step(1, plan[0], False)  # warm-up
        start = time.perf_counter()
        for i in range(2, steps + 2):
            run.train_step(i, plan[i - 1], False)
        out[method] = (time.perf_counter() - start) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--degradations", default="wanda-50%,rtn-int4-g32")
    args = ap.parse_args()

    seeds = [0] if args.quick else [0, 1, 2]
    offpolicy, onpolicy = (40, 10) if args.quick else (240, 60)
    data = DataConfig()
    rows, costs = [], None
    for name in args.degradations.split(","):
        method, params = DEGRADATIONS[name]
        if method not in METHODS:
            print(f"skipping {name}: {method} is not available")
            continue
        degraded = args.work / name / "degraded"
        if not degraded.exists():
            degrade(args.model, method, params, degraded)
        if costs is None:
            costs = step_cost(args.model, degraded, args.work / name, data, steps=3 if args.quick else 10)
        for seed in seeds:
            for label, cfg in {
                "distill": RecoverConfig(offpolicy_steps=offpolicy, onpolicy_steps=onpolicy, seed=seed,
                                         cka_every_eval=False, eval_every=50),
                "sft-replay": RecoverConfig(method="sft-replay", offpolicy_steps=offpolicy + onpolicy, seed=seed,
                                            cka_every_eval=False, eval_every=50),
            }.items():
                out = args.work / name / f"{label}-seed{seed}"
                result = recover(args.model, degraded, out, cfg, data, progress=True)
                report = evaluate_models(args.model, {"degraded": degraded, "recovered": out}, data, progress=False,
                                         generation=False)
                rows.append({"degradation": name, "method": label, "seed": seed, "tokens": result["tokens"],
                             "seconds": result["seconds"], "ratio": report["recovery_ratio"]["kl"],
                             "kl": report["metrics"]["recovered"]["kl"], "kl_degraded": report["metrics"]["degraded"]["kl"]})
                print(rows[-1], flush=True)

    lines = ["## Recovery at equal budget (`bench/recovery_bench.py`)", "",
             f"Embedded model{', quick run' if args.quick else ''}, {len(seeds)} seed(s), {offpolicy} off-policy + {onpolicy} on-policy steps of 8 sequences "
             "for `distill`, the same number of steps of cross-entropy on the teacher's text for `sft-replay`. "
             "Recovery ratio on held-out mean teacher KL (1 = the teacher).", "",
             "| degradation | method | recovery ratio (mean ± std) | recovered KL | degraded KL | trained tokens | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["degradation"] for r in rows):
        for label in ("distill", "sft-replay"):
            sel = [r for r in rows if r["degradation"] == name and r["method"] == label]
            if not sel:
                continue
            ratios = [r["ratio"] for r in sel]
            spread = f"± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else "(1 seed, no spread)"
            lines.append(f"| {name} | {label} | {statistics.mean(ratios):.3f} {spread} | "
                         f"{statistics.mean(r['kl'] for r in sel):.4f} | {sel[0]['kl_degraded']:.4f} | "
                         f"{statistics.mean(r['tokens'] for r in sel):,.0f} | {statistics.mean(r['seconds'] for r in sel):.0f} |")
    if costs:
        lines += ["", f"Step cost on the same batches (batch 8): off-policy KD with cached top-64 "
                  f"{costs['distill']:.2f} s, plain SFT {costs['sft-replay']:.2f} s, ratio "
                  f"{costs['distill'] / costs['sft-replay']:.2f} (target at most 1.4)."]
    print(update_section("recovery", "\n".join(lines)))


if __name__ == "__main__":
    main()
