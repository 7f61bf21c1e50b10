"""Recovery quality at equal token budget, and the cost of a distillation step.

For each degradation (50% Wanda or magnitude pruning, int4 group-32 RTN) and each seed, the same
number of optimizer steps (so the same trained-token budget) is spent on:
  distill     two-stage self-distillation (off-policy forward KL on cached top-k, then on-policy)
  sft-replay  cross-entropy on the teacher's text: the budget control without teacher logits
and the held-out recovery ratio on teacher KL is reported as mean ± std over seeds.

Every finished run is appended to bench/results/recovery.jsonl and skipped when asked for again, so a
long benchmark can be run a piece at a time (a CPU run of the full budget takes about an hour):

    python bench/recovery_bench.py --degradations wanda-50% --seeds 0 --methods distill
    python bench/recovery_bench.py                 # everything: 2 degradations x 2 methods x 3 seeds
    python bench/recovery_bench.py --quick         # 1 seed, 50 steps: a smoke test of the numbers
    python bench/recovery_bench.py --render        # rewrite docs/benchmarks.md from the JSONL only
    python bench/recovery_bench.py --step-cost     # time a KD step against an SFT step on the same batches
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402

from recoverlm.config import DataConfig, RecoverConfig  # noqa: E402
from recoverlm.data import read_jsonl  # noqa: E402
from recoverlm.degrade import METHODS, degrade  # noqa: E402
from recoverlm.evaluate.compare import evaluate_models  # noqa: E402
from recoverlm.io import write_text_atomic  # noqa: E402
from recoverlm.recover.trainer import Recovery, batch_order, recover  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recovery.jsonl"
DEGRADATIONS = {
    "wanda-50%": ("prune.wanda", {"sparsity": 0.5}),
    "magnitude-50%": ("prune.magnitude", {"sparsity": 0.5}),
    "rtn-int4-g32": ("quant.rtn", {"bits": 4, "group_size": 32}),
}
BUDGETS = {"full": (240, 60), "quick": (40, 10)}  # (off-policy, on-policy) steps of `distill`


def method_config(label: str, offpolicy: int, onpolicy: int, seed: int, bf16: bool, threads: int | None) -> RecoverConfig:
    """`distill` splits the steps between the stages; `sft-replay` spends all of them on cross-entropy."""
    common = dict(seed=seed, cka_every_eval=False, eval_every=50, bf16=bf16, threads=threads)
    if label == "distill":
        return RecoverConfig(offpolicy_steps=offpolicy, onpolicy_steps=onpolicy, **common)
    return RecoverConfig(method="sft-replay", offpolicy_steps=offpolicy + onpolicy, **common)


def step_cost(teacher: str, student: Path, work: Path, data: DataConfig, steps: int, bf16: bool) -> dict:
    """Seconds per optimizer step of off-policy KD and of plain SFT on the same batch plan."""
    out = {}
    for method in ("distill", "sft-replay"):
        cfg = RecoverConfig(method=method, offpolicy_steps=steps, eval_every=0, cka_every_eval=False,
                            select_best=False, bf16=bf16)
        run = Recovery(teacher, student, work / f"cost-{method}", cfg, data, progress=False)
        plan = batch_order(len(run.train_set), cfg.batch_size, steps + 1, cfg.seed)
        run.train_step(1, plan[0], False)  # warm-up
        start = time.perf_counter()
        for i in range(2, steps + 2):
            run.train_step(i, plan[i - 1], False)
        out[method] = (time.perf_counter() - start) / steps
    return out


def load_rows(path: Path = RESULTS) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def append_row(row: dict, path: Path = RESULTS) -> None:
    """Rewrite the whole file atomically, so a crash never leaves half a line."""
    rows = load_rows(path) + [row]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def render(rows: list[dict]) -> str:
    lines = ["## Recovery at equal budget (`bench/recovery_bench.py`)", "",
             "Embedded model. `distill`: off-policy forward KL on cached teacher top-64, then on-policy reverse KL "
             "on student samples; `sft-replay`: the same number of steps (8 sequences each) of cross-entropy on "
             "the teacher's text. Recovery ratio on held-out mean teacher KL (48 prompts; 1 = the teacher). "
             "Rows accumulate in `bench/results/recovery.jsonl`.", "",
             "| degradation | method | steps (off + on) | precision | seeds | recovery ratio (mean ± std) | recovered KL | "
             "degraded KL | trained tokens | time per run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cost = [r for r in rows if r.get("kind") == "step_cost"]
    runs = [r for r in rows if r.get("kind", "run") == "run"]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["degradation"], r["offpolicy"], r["onpolicy"], r["method"], r["bf16"]), []).append(r)
    for (name, off, on, label, bf16), sel in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][3], kv[0][4])):
        ratios = [r["ratio"] for r in sel]
        spread = f"± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else "(one seed: no spread)"
        steps = f"{off} + {on}" if label == "distill" else f"{off + on} + 0"
        lines.append(f"| {name} | {label} | {steps} | {'bf16 autocast' if bf16 else 'fp32'} | {','.join(str(r['seed']) for r in sel)} | "
                     f"{statistics.mean(ratios):.3f} {spread} | {statistics.mean(r['kl'] for r in sel):.4f} | "
                     f"{sel[0]['kl_degraded']:.4f} | {statistics.mean(r['tokens'] for r in sel):,.0f} | "
                     f"{statistics.mean(r['seconds'] for r in sel):.0f} |")
    for c in cost[-1:]:
        lines += ["", f"Step cost on the same batches (batch 8, {'bf16 autocast' if c['bf16'] else 'fp32'}): off-policy "
                  f"KD with cached top-64 {c['distill']:.2f} s, plain SFT {c['sft-replay']:.2f} s, ratio "
                  f"{c['distill'] / c['sft-replay']:.2f} (target at most 1.4)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--quick", action="store_true", help="1 seed, 40 + 10 steps")
    ap.add_argument("--degradations", default="wanda-50%,rtn-int4-g32")
    ap.add_argument("--methods", default="distill,sft-replay")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; 0 with --quick)")
    ap.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from the JSONL")
    ap.add_argument("--step-cost", action="store_true", help="time KD against SFT steps and stop")
    args = ap.parse_args()

    if args.render:
        print(update_section("recovery", render(load_rows())))
        return
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    offpolicy, onpolicy = BUDGETS["quick" if args.quick else "full"]
    bf16 = not args.fp32
    data = DataConfig()
    for name in args.degradations.split(","):
        method, params = DEGRADATIONS[name]
        if method not in METHODS:
            print(f"skipping {name}: {method} is not available")
            continue
        degraded = args.work / name / "degraded"
        if not degraded.exists():
            degrade(args.model, method, params, degraded)
        if args.step_cost:
            costs = step_cost(args.model, degraded, args.work / name, data, steps=3 if args.quick else 10, bf16=bf16)
            append_row({"kind": "step_cost", "degradation": name, "bf16": bf16, **costs})
            break
        for seed in seeds:
            for label in args.methods.split(","):
                key = dict(degradation=name, method=label, seed=seed, offpolicy=offpolicy, onpolicy=onpolicy, bf16=bf16)
                if any(all(r.get(k) == v for k, v in key.items()) for r in load_rows()):
                    print(f"done already: {key}")
                    continue
                out = args.work / name / f"{label}-{offpolicy}-{onpolicy}-seed{seed}"
                cfg = method_config(label, offpolicy, onpolicy, seed, bf16, args.threads)
                result = recover(args.model, degraded, out, cfg, data, progress=True)
                report = evaluate_models(args.model, {"degraded": degraded, "recovered": out}, data, progress=False,
                                         generation=False)
                row = {**key, "kind": "run", "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
                       "ratio": report["recovery_ratio"]["kl"], "kl": report["metrics"]["recovered"]["kl"],
                       "kl_degraded": report["metrics"]["degraded"]["kl"]}
                append_row(row)
                print(row, flush=True)
    print(update_section("recovery", render(load_rows())))


if __name__ == "__main__":
    main()
