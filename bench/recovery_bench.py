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
    python bench/recovery_bench.py --steps 480,120 # twice the budget: where the ratio goes with more tokens
    python bench/recovery_bench.py --render        # rewrite docs/benchmarks.md from the JSONL only
    python bench/recovery_bench.py --step-cost     # KD against SFT steps on the same batches; an on-policy step's parts
    python bench/recovery_bench.py --jobs 12 --threads 1   # every run in its own process (a GPU box)

With --jobs, the degraded models and the teacher's response sets are built once, then each
(degradation, method, seed) run is a child process; the parent alone writes the results file. Stopped
early (Ctrl-C, or the SIGTERM of a time limit), it records each unfinished run's last validation
evaluation as a "cut short" row. docs/benchmarks.md is rewritten only from bench/results/recovery.jsonl;
with another --results the table is printed instead.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
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
from recoverlm.errors import RecoverLMError  # noqa: E402
from recoverlm.evaluate.compare import evaluate_models, evaluate_task_suites  # noqa: E402
from recoverlm.io import write_text_atomic  # noqa: E402
from recoverlm.models import compute_device  # noqa: E402
from recoverlm.recover.response_set import distill_set, heldout_set, validation_set  # noqa: E402
from recoverlm.recover.trainer import Recovery, batch_order, recover  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recovery.jsonl"
DEGRADATIONS = {
    "wanda-50%": ("prune.wanda", {"sparsity": 0.5}),
    "magnitude-50%": ("prune.magnitude", {"sparsity": 0.5}),
    "rtn-int4-g32": ("quant.rtn", {"bits": 4, "group_size": 32}),
}
BUDGETS = {"full": (240, 60), "quick": (40, 10)}  # (off-policy, on-policy) steps of `distill`


def method_config(label: str, offpolicy: int, onpolicy: int, seed: int, bf16: bool, threads: int | None,
                  lr: float, grid_scales: str = "fixed", hidden_weight: float = 0.0,
                  grid_latents: str = "grid", grid_scale_lr: float | None = None) -> RecoverConfig:
    """`distill` splits the steps between the stages; `sft-replay` spends all of them on cross-entropy.
    Both train the same parameters from the same start (with learned grid scales, or latents from
    the teacher, the control gets them too)."""
    common = dict(seed=seed, cka_every_eval=False, eval_every=50, bf16=bf16, threads=threads, lr=lr,
                  grid_scales=grid_scales, grid_latents=grid_latents,
                  grid_scale_lr=grid_scale_lr or DEFAULT_SCALE_LR)
    if label == "distill":
        return RecoverConfig(offpolicy_steps=offpolicy, onpolicy_steps=onpolicy, hidden_weight=hidden_weight, **common)
    return RecoverConfig(method="sft-replay", offpolicy_steps=offpolicy + onpolicy, **common)


def step_cost(teacher: str, student: Path, work: Path, data: DataConfig, steps: int, bf16: bool,
              hidden_weight: float = 0.0) -> dict:
    """Seconds per optimizer step of off-policy KD and of plain SFT on the same batch plan; with a
    hidden weight, also KD with the hidden-state term, whose teacher runs every off-policy step."""
    out = {}
    arms = [("distill", 0.0), ("sft-replay", 0.0)] + ([("distill", hidden_weight)] if hidden_weight else [])
    for method, weight in arms:
        name = "distill_hidden" if weight else method
        cfg = RecoverConfig(method=method, offpolicy_steps=steps, eval_every=0, cka_every_eval=False,
                            select_best=False, bf16=bf16, hidden_weight=weight)
        run = Recovery(teacher, student, work / f"cost-{name}", cfg, data, progress=False)
        plan = batch_order(len(run.train_set), cfg.batch_size, steps + 1, cfg.seed)
        run.train_step(1, plan[0], False)  # warm-up
        start = time.perf_counter()
        for i in range(2, steps + 2):
            run.train_step(i, plan[i - 1], False)
        out[name] = (time.perf_counter() - start) / steps
        if method == "distill":
            out["onpolicy_hidden" if weight else "onpolicy"] = onpolicy_cost(run, plan, steps)
    if hidden_weight:
        out["hidden_weight"] = hidden_weight
    return out


def onpolicy_cost(run: Recovery, plan: list[list[int]], steps: int) -> dict:
    """Seconds per on-policy step, split into the student's sampling, the teacher's scoring and the
    rest (student forward, backward, optimizer): generation should dominate, the teacher run once."""
    spent = {"sample": 0.0, "teacher": 0.0, "teacher_calls": 0, "new_tokens": 0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            if name == "sample":
                spent["new_tokens"] += sum(len(r) for r in out)
            else:
                spent["teacher_calls"] += 1
            return out
        return wrapper

    run._sample, run._teacher_outputs = timed("sample", run._sample), timed("teacher", run._teacher_outputs)
    start = time.perf_counter()
    for i in range(steps):
        run.train_step(steps + 2 + i, plan[i % len(plan)], True)
    total = time.perf_counter() - start
    return {"step": total / steps, "sample": spent["sample"] / steps, "teacher": spent["teacher"] / steps,
            "teacher_calls_per_step": spent["teacher_calls"] / steps,
            "new_tokens_per_s": spent["new_tokens"] / max(spent["sample"], 1e-9)}


def device_label() -> str:
    import torch

    device = compute_device()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def load_rows(path: Path = RESULTS) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def write_rows(rows: list[dict], path: Path = RESULTS) -> None:
    """Rewrite the whole file atomically, so a crash never leaves half a line."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_row(row: dict, path: Path = RESULTS) -> None:
    write_rows(load_rows(path) + [row], path)


DEFAULT_SCALE_LR = RecoverConfig().grid_scale_lr
DEFAULT_LR = RecoverConfig().lr


def _knowledge(runs: list[dict]) -> str:
    """Mean knowledge accuracy of teacher / degraded / recovered over the runs that measured it."""
    scored = [r["suites"]["knowledge"] for r in runs if "knowledge" in r.get("suites", {})]
    if not scored:
        return "—"
    return " / ".join(f"{statistics.mean(s[m]['acc'] for s in scored):.3f}" for m in ("teacher", "degraded", "recovered"))


def render(rows: list[dict]) -> str:
    lines = ["## Recovery at equal budget (`bench/recovery_bench.py`)", "",
             "Embedded model. `distill`: off-policy forward KL on cached teacher top-64, then on-policy reverse KL "
             "on student samples; `sft-replay`: the same number of steps (8 sequences each) of cross-entropy on "
             "the teacher's text. Recovery ratio on held-out mean teacher KL (48 prompts; 1 = the teacher). "
             "Rows accumulate in `bench/results/recovery.jsonl`. Runs marked \"N at once\" shared the machine "
             "(one GPU, or the 2 CPU cores at one thread each) with N - 1 others, so their time is not a single "
             "run's. The teacher writes the held-out responses on the run's own device, so the degraded KL differs a little between CPU and GPU rows. \"best on\": the "
             "prompts that chose the exported checkpoint (validation prompts set aside from training, or, in older "
             "rows, the held-out prompts themselves). Knowledge: accuracy on the knowledge suite (341 items) of "
             "the teacher, the degraded and the recovered model, when the run measured it. Best step: the "
             "evaluation (every 50 steps) whose checkpoint was exported; 0 means training never beat the "
             "degraded model on those prompts, so the degraded model itself was kept.", "",
             "| degradation | method | steps (off + on) | teacher text per prompt | peak lr | best on | device | "
             "precision | seeds | recovery ratio (mean ± std) | recovered KL | degraded KL | knowledge T / D / R | "
             "best step per seed | trained tokens | time per run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind", "run") == "run":
            key = (r["degradation"], r["offpolicy"], r["onpolicy"], r["method"], r.get("lr", DEFAULT_LR),
                   r.get("device", "cpu"), r["bf16"], r.get("selection", "heldout"), r.get("teacher_samples", 1),
                   r.get("teacher_temperature", 0.0), _grid(r), r.get("teacher_prompts", 0),
                   r.get("hidden_weight", 0.0))
            groups.setdefault(key, []).append(r)
    means = {}
    for key, sel in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], *kv[0][3:])):
        name, off, on, label, lr, device, bf16, selection, samples, temp, grid, written, hidden = key
        sel = sorted(sel, key=lambda r: r["seed"])
        ratios = [r["ratio"] for r in sel]
        means[key] = statistics.mean(ratios)
        std = statistics.stdev(ratios) if len(ratios) > 1 else None
        spread = "(one seed: no spread)" if std is None else f"± {std:.3f}" if std >= 0.001 else f"± {std:.4f}"
        steps = f"{off} + {on}" if label == "distill" else f"{off + on} + 0"
        jobs = max(r.get("concurrent", 1) for r in sel)
        device_cell = device + (f" ({jobs} runs at once)" if jobs > 1 else "")
        text = f"{samples} × " + ("greedy" if temp == 0 else f"sampled at T={temp:g}")
        text += f"; + {written} prompts written by the teacher" if written else ""
        method = label + _variant(grid, hidden)
        lines.append(f"| {name} | {method} | {steps} | {text} | {lr:g} | {selection} | {device_cell} | "
                     f"{'bf16 autocast' if bf16 else 'fp32'} | {','.join(str(r['seed']) for r in sel)} | "
                     f"{means[key]:.3f} {spread} | {statistics.mean(r['kl'] for r in sel):.4f} | "
                     f"{sel[0]['kl_degraded']:.4f} | {_knowledge(sel)} | {','.join(str(r.get('best_step', '—')) for r in sel)} | "
                     f"{statistics.mean(r['tokens'] for r in sel):,.0f} | "
                     f"{statistics.mean(r['seconds'] for r in sel):.0f} |")
    cut: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("kind") == "partial":
            cut.setdefault((r["degradation"], r["method"], r["offpolicy"], r["onpolicy"], r["device"],
                            _grid(r), r["prompts"], r["why"], r.get("teacher_samples", 1),
                            r.get("teacher_temperature", 0.0), r.get("lr", DEFAULT_LR), r.get("hidden_weight", 0.0),
                            r.get("teacher_prompts", 0)),
                           []).append(r)
    for (name, label, off, on, device, grid, prompts, why, samples, temp, lr, hidden, written), sel in cut.items():
        sel = sorted(sel, key=lambda r: r["seed"])
        ratios = [1 - r["kl_at_stop"] / r["kl_start"] for r in sel]  # the teacher's KL is 0
        spread = f" ± {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""
        text = f", {samples} teacher responses per prompt sampled at T={temp:g}" if samples > 1 else ""
        text += f", peak lr {lr:g}" if lr != DEFAULT_LR else ""
        text += f", + {written} prompts written by the teacher" if written else ""
        lines += ["", f"Cut short: {name} `{label}`{_variant(grid, hidden)}, "
                  f"{off} + {on} steps{text}, {device}, seeds {','.join(str(r['seed']) for r in sel)}, was {why}. At the "
                  f"last evaluations (steps {', '.join(str(r['step']) for r in sel)}) {prompts} KL was "
                  f"{', '.join(format(r['kl_at_stop'], '.4f') for r in sel)} against "
                  f"{', '.join(format(r['kl_start'], '.4f') for r in sel)} at the start: ratio on the "
                  f"{prompts} prompts {statistics.mean(ratios):.3f}{spread}."]
    verdicts = []
    for key, mean in means.items():
        name, off, on, label, *setting = key
        if label != "distill" or off + on != sum(BUDGETS["full"]):  # the targets are set at the full budget
            continue
        lr, device = setting[0], setting[1]
        plain = (*setting[:-1], 0.0)  # the control has no hidden-state term
        control, where = means.get((name, off, on, "sft-replay", *plain)), ""
        if control is None:  # the same setting measured on another device still controls for the budget
            elsewhere = [(k[5], m) for k, m in means.items()
                         if k[:4] == (name, off, on, "sft-replay") and k[4] == lr and k[6:] == (*key[6:-1], 0.0)]
            if elsewhere:
                other_device, control = elsewhere[0]
                where = f", on {other_device}"
        beats = "no control run" if control is None else (f"{'beats' if mean > control else 'does not beat'} "
                                                          f"sft-replay ({control:.3f}{where})")
        written = f", + {setting[7]} teacher-written prompts" if setting[7] else ""
        verdicts.append(f"- {name}{_variant(setting[6], setting[8])}, peak lr {lr:g}, {setting[4]} teacher response(s) per prompt{written}, {device}: "
                        f"{mean:.3f}; the 0.8 target is "
                        f"{'met' if mean >= 0.8 else 'not met'}; {beats}.")
    if verdicts:
        lines += ["", "Full budget against the targets (recovery ratio of at least 0.8, and above `sft-replay`):", ""] + verdicts
    for c in [r for r in rows if r.get("kind") == "step_cost"][-1:]:
        lines += ["", f"Step cost on the same batches (batch 8, {'bf16 autocast' if c['bf16'] else 'fp32'}): off-policy "
                  f"KD with cached top-64 {c['distill']:.2f} s, plain SFT {c['sft-replay']:.2f} s, ratio "
                  f"{c['distill'] / c['sft-replay']:.2f} (target at most 1.4)."]
        if "onpolicy" in c:
            o = c["onpolicy"]
            lines[-1] += (f" An on-policy step (8 prompts, up to 64 sampled tokens each) takes {o['step']:.2f} s: the "
                          f"student's KV-cached sampling {o['sample']:.2f} s ({o['new_tokens_per_s']:.0f} new tokens/s), "
                          f"the teacher's scoring {o['teacher']:.2f} s in {o['teacher_calls_per_step']:g} forward per "
                          f"step, and the student's forward, backward and update the remaining "
                          f"{o['step'] - o['sample'] - o['teacher']:.2f} s.")
        if "distill_hidden" in c:
            o = c["onpolicy_hidden"]
            lines[-1] += (f" With the hidden-state term (weight {c['hidden_weight']:g}) the teacher runs on every "
                          f"off-policy batch for its hidden states: an off-policy step takes {c['distill_hidden']:.2f} s "
                          f"({c['distill_hidden'] / c['sft-replay']:.2f} times SFT) and an on-policy step "
                          f"{o['step']:.2f} s, still in {o['teacher_calls_per_step']:g} teacher forward per step.")
    return "\n".join(lines)


def _grid(row: dict) -> tuple[str, str, float | None]:
    """How a quantized student trains its grid: (group scales, where the latent weights start, the
    scales' peak lr when they train)."""
    scales = row.get("grid_scales", "fixed")
    return scales, row.get("grid_latents", "grid"), row.get("grid_scale_lr", DEFAULT_SCALE_LR) if scales == "learned" else None


def _variant(grid: tuple[str, str], hidden_weight: float) -> str:
    """What a method label leaves out: learned grid scales, latents from the teacher, a hidden-state term."""
    scale_lr = "" if grid[2] in (None, DEFAULT_SCALE_LR) else f" at peak lr {grid[2]:g}"
    parts = ([f"learned grid scales{scale_lr}"] if grid[0] == "learned" else []) + \
        (["latents from the teacher"] if grid[1] == "teacher" else []) + \
        ([f"+ hidden states × {hidden_weight:g}"] if hidden_weight else [])
    return f" ({'; '.join(parts)})" if parts else ""


def run_key(name: str, label: str, seed: int, offpolicy: int, onpolicy: int, bf16: bool, lr: float,
            samples: int, temperature: float, grid_scales: str = "fixed", written: int = 0,
            hidden_weight: float = 0.0, grid_latents: str = "grid", grid_scale_lr: float | None = None) -> dict:
    key = dict(degradation=name, method=label, seed=seed, offpolicy=offpolicy, onpolicy=onpolicy, bf16=bf16,
               device=device_label(), lr=lr, selection="validation", teacher_samples=samples,
               teacher_temperature=temperature, grid_scales=grid_scales, grid_latents=grid_latents,
               teacher_prompts=written)
    if grid_scales == "learned":
        key["grid_scale_lr"] = grid_scale_lr or DEFAULT_SCALE_LR
    if label == "distill":  # the control has no hidden-state term
        key["hidden_weight"] = hidden_weight
    return key


def is_done(key: dict, rows: list[dict]) -> bool:
    """Rows written before a field existed hold its old value (cpu; the default peak lr; the best
    checkpoint chosen on the held-out set itself)."""
    implied = {"device": "cpu", "lr": DEFAULT_LR, "selection": "heldout", "teacher_samples": 1, "teacher_temperature": 0.0,
               "grid_scales": "fixed", "grid_latents": "grid", "teacher_prompts": 0, "hidden_weight": 0.0,
               "grid_scale_lr": DEFAULT_SCALE_LR}
    return any(all(r.get(k, implied.get(k)) == v for k, v in key.items()) for r in rows)


def run_dir(work: Path, row: dict) -> Path:
    lr, samples = row.get("lr", DEFAULT_LR), row.get("teacher_samples", 1)
    tag = ("" if lr == DEFAULT_LR else f"-lr{lr:g}") + ("" if samples == 1 else f"-x{samples}t{row['teacher_temperature']:g}")
    tag += "-learned-scales" if row.get("grid_scales") == "learned" else ""
    tag += f"-scale-lr{row['grid_scale_lr']:g}" if row.get("grid_scale_lr", DEFAULT_SCALE_LR) != DEFAULT_SCALE_LR else ""
    tag += "-teacher-latents" if row.get("grid_latents") == "teacher" else ""
    tag += f"-written{row['teacher_prompts']}" if row.get("teacher_prompts") else ""
    tag += f"-hidden{row['hidden_weight']:g}" if row.get("hidden_weight") else ""
    return work / row["degradation"] / f"{row['method']}-{row['offpolicy']}-{row['onpolicy']}{tag}-seed{row['seed']}"


def suite_scores(model: str, degraded: Path, recovered: Path, suites: str) -> dict:
    """General ability, not only fidelity: does the recovered model net-recover it?"""
    report = evaluate_task_suites(model, {"degraded": degraded, "recovered": recovered}, suites.split(","),
                                  log=lambda *a: None)
    return {suite: {name: {m: v for m, v in res[suite].items() if isinstance(v, float) and m != "seconds"}
                    for name, res in report["results"].items()} for suite in report["suites"]}


def backfill_suites(args) -> None:
    """Score the suites for finished runs recorded without them, where their models are still on disk."""
    rows = load_rows(args.results)
    for row in rows:
        out = run_dir(args.work, row) if row.get("kind", "run") == "run" else None
        if out is None or row.get("suites") or not out.exists():
            continue
        print(f"scoring {', '.join(args.suites.split(','))} for {out}", flush=True)
        row["suites"] = suite_scores(args.model, args.work / row["degradation"] / "degraded", out, args.suites)
        write_rows(rows, args.results)


def run_one(args, key: dict, degraded: Path, data: DataConfig) -> dict:
    """Train one method on one degraded model and score it on the held-out prompts."""
    out = run_dir(args.work, key)
    cfg = method_config(key["method"], key["offpolicy"], key["onpolicy"], key["seed"], key["bf16"], args.threads,
                        key["lr"], key["grid_scales"], key.get("hidden_weight", 0.0), key.get("grid_latents", "grid"),
                        key.get("grid_scale_lr"))
    result = recover(args.model, degraded, out, cfg, data, progress=args.jobs == 0)
    report = evaluate_models(args.model, {"degraded": degraded, "recovered": out}, data, progress=False,
                             generation=False)
    row = {**key, "kind": "run", "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
           "ratio": report["recovery_ratio"]["kl"], "kl": report["metrics"]["recovered"]["kl"],
           "kl_degraded": report["metrics"]["degraded"]["kl"], "concurrent": max(args.jobs, 1),
           "best_step": result["best_step"]}
    if args.suites:
        row["suites"] = suite_scores(args.model, degraded, out, args.suites)
    return row


def partial_row(key: dict, work: Path, why: str) -> dict | None:
    """What a run stopped before its end had shown: its last evaluation on the validation prompts,
    read from the trainer's metrics.jsonl (None before the first evaluation after the start)."""
    out = run_dir(work, key)
    trained = out / "metrics.jsonl"  # training had finished; the run was being scored
    try:
        evals = load_rows(trained if trained.exists() else out.with_name(out.name + ".work") / "metrics.jsonl")
    except RecoverLMError:  # a line cut off by the stop
        return None
    if len(evals) < 2:
        return None
    return {**key, "kind": "partial", "why": why, "step": evals[-1]["step"], "kl_at_stop": evals[-1]["kl"],
            "kl_start": evals[0]["kl"], "prompts": "validation"}


def run_parallel(args, todo: list[dict], results: Path) -> None:
    """Each run in a child process, at most `args.jobs` at once; rows are appended as runs finish.
    Interrupted (Ctrl-C, or SIGTERM from a time limit), it stops the children and records how far
    each one got, so a cut benchmark still leaves its evidence in the results file."""
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple] = []
    try:
        _run_children(args, list(todo), running, logs, results)
    except KeyboardInterrupt:
        for proc, tag, _, log, key in running:
            proc.terminate()
            proc.wait()
            log.close()
            row = partial_row(key, args.work, "interrupted")
            if row:
                append_row(row, results)
            print(f"{tag} interrupted" + (f" after step {row['step']}" if row else " before its first evaluation"),
                  flush=True)
        raise


def _run_children(args, pending: list[dict], running: list[tuple], logs: Path, results: Path) -> None:
    while pending or running:
        while pending and len(running) < args.jobs:
            key = pending.pop(0)
            tag = f"{key['degradation']}-{run_dir(args.work, key).name}"
            part = logs / f"{tag}.jsonl"
            part.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--model", args.model, "--work", str(args.work), "--child",
                   "--degradations", key["degradation"], "--methods", key["method"], "--seeds", str(key["seed"]),
                   "--results", str(part), "--jobs", str(args.jobs)]
            cmd += ["--steps", f"{key['offpolicy']},{key['onpolicy']}"]
            cmd += ["--quick"] * args.quick + ["--fp32"] * args.fp32 + ["--lr", str(key["lr"]), "--suites", args.suites,
                    "--teacher-samples", str(args.teacher_samples), "--teacher-temperature", str(args.teacher_temperature),
                    "--grid-scales", args.grid_scales, "--grid-latents", args.grid_latents,
                    "--grid-scale-lr", str(args.grid_scale_lr),
                    "--teacher-prompts", str(args.teacher_prompts),
                    "--hidden-weight", str(args.hidden_weight)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            log = open(logs / f"{tag}.log", "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), tag, part, log, key))
            print(f"started {tag}", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, tag, part, log, _ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode == 0 and part.exists():
                for row in load_rows(part):
                    append_row(row, results)
                    print(row, flush=True)
            else:
                tail = (logs / f"{tag}.log").read_text(errors="replace").splitlines()[-15:]
                print(f"{tag} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail), flush=True)


def publish(results: Path) -> None:
    """docs/benchmarks.md is rendered from the project's own results file only; rows kept elsewhere
    (a scratch run, a GPU machine's output) print their table instead."""
    table = render(load_rows(results))
    print(update_section("recovery", table) if results.resolve() == RESULTS.resolve() else table)


def _budget(text: str) -> tuple[int, int]:
    try:
        off, on = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OFF,ON step counts such as 240,60, got {text!r}") from None
    if off < 0 or on < 0 or off + on == 0:
        raise argparse.ArgumentTypeError(f"step counts must be non-negative and not both zero, got {text!r}")
    return off, on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--quick", action="store_true", help="1 seed, 40 + 10 steps")
    ap.add_argument("--degradations", default="wanda-50%,rtn-int4-g32")
    ap.add_argument("--methods", default="distill,sft-replay")
    ap.add_argument("--steps", type=_budget, default=None, metavar="OFF,ON",
                    help=f"off-policy and on-policy steps of distill (sft-replay spends their sum); "
                         f"default {','.join(map(str, BUDGETS['full']))}, the budget the targets are set at")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; 0 with --quick)")
    ap.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR, help="peak learning rate of every method")
    ap.add_argument("--teacher-samples", type=int, default=1,
                    help="teacher responses per training prompt (more unique text for the same budget)")
    ap.add_argument("--teacher-temperature", type=float, default=0.0,
                    help="sampling temperature of those responses (0 = greedy; needed above 0 for several samples)")
    ap.add_argument("--teacher-prompts", type=int, default=0,
                    help="extra training prompts the teacher writes itself (both methods train on them)")
    ap.add_argument("--grid-scales", choices=["fixed", "learned"], default="fixed",
                    help="quantized degradations: also train the group scales (both methods); pruning ignores it")
    ap.add_argument("--grid-latents", choices=["grid", "teacher"], default="grid",
                    help="quantized degradations: where the latent weights start (both methods); pruning ignores it")
    ap.add_argument("--grid-scale-lr", type=float, default=DEFAULT_SCALE_LR,
                    help="with --grid-scales learned: the scales' own peak learning rate")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="distill also matches every layer's hidden states to the teacher's at this weight")
    ap.add_argument("--suites", default="knowledge",
                    help="task suites scored on teacher, degraded and recovered model ('' for none)")
    ap.add_argument("--jobs", type=int, default=0, help="run this many runs at once, each in its own process")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSONL the rows are appended to")
    ap.add_argument("--backfill-suites", action="store_true",
                    help="only score --suites for recorded runs whose models are still in --work, then render")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from the JSONL")
    ap.add_argument("--step-cost", action="store_true",
                    help="time KD against SFT steps, split an on-policy step into its parts, and stop "
                         "(with --hidden-weight, KD with the hidden-state term too)")
    args = ap.parse_args()

    if args.backfill_suites:
        if not args.suites:
            ap.error("--backfill-suites needs --suites")
        backfill_suites(args)
    if args.render or args.backfill_suites:
        publish(args.results)
        return
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    offpolicy, onpolicy = args.steps or BUDGETS["quick" if args.quick else "full"]
    bf16 = not args.fp32
    if args.teacher_samples > 1 and args.teacher_temperature == 0:
        ap.error("--teacher-samples above 1 needs --teacher-temperature above 0 (greedy answers would repeat)")
    data = DataConfig(responses_per_prompt=args.teacher_samples, temperature=args.teacher_temperature,
                      teacher_prompts=args.teacher_prompts)
    todo, degraded_of = [], {}
    for name in args.degradations.split(","):
        method, params = DEGRADATIONS[name]
        if method not in METHODS:
            print(f"skipping {name}: {method} is not available")
            continue
        degraded = degraded_of[name] = args.work / name / "degraded"
        if not degraded.exists():
            degrade(args.model, method, params, degraded)
        if args.step_cost:
            costs = step_cost(args.model, degraded, args.work / name, data, steps=3 if args.quick else 10, bf16=bf16,
                              hidden_weight=args.hidden_weight)
            append_row({"kind": "step_cost", "degradation": name, "bf16": bf16, **costs}, args.results)
            break
        for seed in seeds:
            for label in args.methods.split(","):
                key = run_key(name, label, seed, offpolicy, onpolicy, bf16, args.lr, args.teacher_samples,
                              args.teacher_temperature, args.grid_scales if method.startswith("quant.") else "fixed",
                              args.teacher_prompts, args.hidden_weight,
                              args.grid_latents if method.startswith("quant.") else "grid", args.grid_scale_lr)
                if is_done(key, load_rows(args.results)):
                    print(f"done already: {key}")
                else:
                    todo.append(key)
    if args.jobs and not args.child and todo:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a time limit's SIGTERM interrupts like Ctrl-C
        for build in (distill_set, validation_set, heldout_set):  # built once: the children load them from the cache
            build(args.model, data)
        run_parallel(args, todo, args.results)
    else:
        for key in todo:
            row = run_one(args, key, degraded_of[key["degradation"]], data)
            append_row(row, args.results)
            print(row, flush=True)
    if not args.child:
        publish(args.results)


if __name__ == "__main__":
    main()
