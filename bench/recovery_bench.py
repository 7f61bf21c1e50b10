"""Recovery quality at equal token budget, and the cost of a distillation step.

For each degradation (50% Wanda or magnitude pruning, int4 group-32 RTN) and each seed, the same
number of optimizer steps (so the same trained-token budget) is spent on:
  distill     two-stage self-distillation (off-policy forward KL on cached top-k, then on-policy)
  sft-replay  cross-entropy on the teacher's text: the budget control without teacher logits
and the held-out recovery ratio on teacher KL is reported as mean ± std over seeds.

What to run is an arm, a YAML file under configs/bench/ (degradations, methods, seeds, budget and
the setting they share); the flags below override its fields. Every run is appended to
bench/results/recovery.jsonl, and a setting and seed recorded there (finished or cut short) is not
run again, so a long benchmark can be run a piece at a time:

    python bench/recovery_bench.py                 # configs/bench/recovery-full.yaml
    python bench/recovery_bench.py --arm configs/bench/recovery-learned-scales.yaml
    python bench/recovery_bench.py --degradations wanda-50% --seeds 0 --methods distill
    python bench/recovery_bench.py --quick         # the budget and seeds of recovery-quick.yaml
    python bench/recovery_bench.py --steps 480,120 # twice the budget: where the ratio goes with more tokens
    python bench/recovery_bench.py --render        # rewrite docs/benchmarks.md from the JSONL only
    python bench/recovery_bench.py --step-cost     # KD against SFT steps on the same batches; an on-policy step's parts
    python bench/recovery_bench.py --jobs 12 --threads 1   # every run in its own process (a GPU box)

With --jobs, the teacher's response sets are built once, then each run is a child process and the
parent alone writes the results file; stopped early (Ctrl-C, or the SIGTERM of a time limit), it
records each unfinished run's last validation evaluation as a "cut short" row. docs/benchmarks.md
(its headline and recovery sections) is rewritten only from bench/results/recovery.jsonl; with
another --results the Markdown is printed instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from recovery.arm import ARMS, SHARED, Arm, budget, load_arm  # noqa: E402
from recovery.results import RESULTS, append_row, load_rows  # noqa: E402
from recovery.setting import DEGRADATIONS, Setting, degraded_dir, done  # noqa: E402


def publish(results: Path) -> None:
    """docs/benchmarks.md is rendered from the project's own results file only; rows kept elsewhere
    (a scratch run, a GPU machine's output) print their Markdown instead."""
    from mdsection import update_section
    from recovery.render import headline, render

    rows = load_rows(results)
    if results.resolve() == RESULTS.resolve():
        update_section("headline", headline(rows), first=True)
        print(update_section("recovery", render(rows)))
    else:
        print(headline(rows) + "\n\n" + render(rows))


def _budget(text: str) -> tuple[int, int]:
    try:
        return budget([int(x) for x in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OFF,ON non-negative step counts such as 240,60, got {text!r}") from None


def arm_from(args) -> Arm:
    """The arm named by --arm (or recovery-full), with the fields given on the command line."""
    arm = load_arm(args.arm)
    changes = {}
    if args.quick:
        quick = load_arm(ARMS / "recovery-quick.yaml")
        changes.update(budget=quick.budget, seeds=quick.seeds)
    if args.degradations:
        changes["degradations"] = tuple(args.degradations.split(","))
    if args.methods:
        changes["methods"] = tuple(args.methods.split(","))
    if args.seeds:
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        changes["budget"] = args.steps
    setting = {name: getattr(args, name) for name in SHARED if getattr(args, name, None) is not None}
    if args.fp32:
        setting["bf16"] = False
    return arm.override(setting, **changes)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", type=Path, default=ARMS / "recovery-full.yaml", help="the YAML arm to run")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--quick", action="store_true",
                    help="the budget and seeds of recovery-quick.yaml (with --step-cost: 3 steps, not 10)")
    ap.add_argument("--degradations", help="comma-separated, of " + ", ".join(DEGRADATIONS).replace("%", "%%"))
    ap.add_argument("--methods", help="comma-separated: distill, sft-replay")
    ap.add_argument("--seeds", help="comma-separated")
    ap.add_argument("--steps", type=_budget, metavar="OFF,ON",
                    help="off-policy and on-policy steps of distill (sft-replay spends their sum)")
    ap.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--lr", type=float, help="peak learning rate of every method")
    ap.add_argument("--teacher-samples", type=int,
                    help="teacher responses per training prompt (more unique text for the same budget)")
    ap.add_argument("--teacher-temperature", type=float,
                    help="sampling temperature of those responses (0 = greedy; needed above 0 for several samples)")
    ap.add_argument("--teacher-prompts", type=int,
                    help="extra training prompts the teacher writes itself (both methods train on them)")
    ap.add_argument("--grid-scales", choices=["fixed", "learned"],
                    help="quantized degradations: also train the group scales (both methods); pruning ignores it")
    ap.add_argument("--grid-latents", choices=["grid", "teacher"],
                    help="quantized degradations: where the latent weights start (both methods); pruning ignores it")
    ap.add_argument("--grid-scale-lr", type=float, help="with learned grid scales: the scales' own peak learning rate")
    ap.add_argument("--hidden-weight", type=float,
                    help="distill also matches every layer's hidden states to the teacher's at this weight")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--suites", default="knowledge",
                    help="task suites scored on teacher, degraded and recovered model ('' for none)")
    ap.add_argument("--jobs", type=int, default=0, help="run this many runs at once, each in its own process")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSONL the rows are appended to")
    ap.add_argument("--backfill-suites", action="store_true",
                    help="only score --suites for recorded runs whose models are still in --work, then render")
    ap.add_argument("--child", metavar="SETTING", help=argparse.SUPPRESS)  # one run, as JSON; from --jobs
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from the JSONL")
    ap.add_argument("--step-cost", action="store_true",
                    help="time KD against SFT steps, split an on-policy step into its parts, and stop "
                         "(with --hidden-weight, KD with the hidden-state term too)")
    return ap


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    if args.render:  # rendering needs no model stack: the rest is imported only to run
        publish(args.results)
        return

    from recovery.run import Bench, data_config, device_label
    from recoverlm.degrade import METHODS, degrade

    bench = Bench(args.model, args.work, args.results, args.threads, args.jobs, args.suites)
    if args.child:
        append_row(bench.run_one(Setting.from_row(json.loads(args.child))), args.results)
        return
    if args.backfill_suites:
        if not args.suites:
            ap.error("--backfill-suites needs --suites")
        bench.backfill_suites()
        publish(args.results)
        return
    try:
        arm = arm_from(args)
        settings = arm.settings(device_label())
    except (TypeError, ValueError) as exc:
        ap.error(str(exc))
    available = []
    for name in arm.degradations:
        method, params = DEGRADATIONS[name]
        if method not in METHODS:
            print(f"skipping {name}: {method} is not available")
            continue
        if not degraded_dir(args.work, name).exists():
            degrade(args.model, method, params, degraded_dir(args.work, name))
        available.append(name)
    if not available:
        sys.exit("error: none of the arm's degradations is available")
    if args.step_cost:
        from recovery.step_cost import step_cost

        name = available[0]
        steps = 3 if args.quick else 10
        s = Setting(degradation=name, method="distill", offpolicy=steps, onpolicy=0, seed=0, **arm.setting)
        costs = step_cost(args.model, degraded_dir(args.work, name), args.work / name, data_config(s), steps, s.bf16,
                          s.hidden_weight)
        append_row({"kind": "step_cost", "degradation": name, "bf16": s.bf16, "steps": steps,
                    "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), **costs}, args.results)
    else:
        rows = load_rows(args.results)
        todo = []
        for s in settings:
            if s.degradation not in available:
                continue
            if done(s, rows):
                print(f"done already: {s}")
            else:
                todo.append(s)
        bench.run_all(todo)
    publish(args.results)


if __name__ == "__main__":
    main()


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16, which decides bf16 step costs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    return f"{model}, {'native' if 'avx512_bf16' in info or 'amx_bf16' in info else 'no native'} bf16"
