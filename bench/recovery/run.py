"""Runs of the recovery benchmark: train a setting, score it on the held-out prompts, append its
row. With `jobs`, each run is a child process and the parent alone writes the results file; stopped
(Ctrl-C, or the SIGTERM of a time limit), the parent records each unfinished run's last validation
evaluation as a "partial" row, so a cut benchmark still leaves its evidence."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.evaluate.compare import evaluate_models, evaluate_task_suites
from recoverlm.models import compute_device
from recoverlm.recover.trainer import recover
from recoverlm.runs import METRICS_FILE, read_history, side_file, work_dir
from recoverlm.teacher.response_set import distill_set, heldout_set, validation_set

from .results import append_row, load_rows, write_rows
from .setting import Setting, degraded_dir, run_dir

ENTRY = Path(__file__).resolve().parents[1] / "recovery_bench.py"  # what a child process runs
EVAL_EVERY = 50  # steps between validation evaluations, each a candidate for the exported checkpoint


def device_label() -> str:
    device = compute_device()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def recover_config(s: Setting, threads: int | None) -> RecoverConfig:
    """`distill` splits the steps between its stages; `sft-replay` spends all of them on cross-entropy.
    Both train the same parameters from the same start (learned grid scales and latents from the
    teacher included), so the control differs from distillation in its loss alone."""
    common = dict(seed=s.seed, cka_every_eval=False, eval_every=EVAL_EVERY, bf16=s.bf16, threads=threads, lr=s.lr,
                  grid_scales=s.grid_scales, grid_latents=s.grid_latents, grid_scale_lr=s.grid_scale_lr)
    if s.method == "distill":
        return RecoverConfig(offpolicy_steps=s.offpolicy, onpolicy_steps=s.onpolicy, hidden_weight=s.hidden_weight,
                             **common)
    return RecoverConfig(method="sft-replay", offpolicy_steps=s.offpolicy + s.onpolicy, **common)


def data_config(s: Setting) -> DataConfig:
    return DataConfig(responses_per_prompt=s.teacher_samples, temperature=s.teacher_temperature,
                      teacher_prompts=s.teacher_prompts)


def suite_scores(model: str, degraded: Path, recovered: Path, suites: str) -> dict:
    """General ability, not only fidelity: does the recovered model net-recover it?"""
    report = evaluate_task_suites(model, {"degraded": degraded, "recovered": recovered}, suites.split(","),
                                  log=lambda *a: None)
    return {suite: {name: {m: v for m, v in res[suite].items() if isinstance(v, float) and m != "seconds"}
                    for name, res in report["results"].items()} for suite in report["suites"]}


@dataclass(frozen=True)
class Bench:
    model: str  # the teacher, and the model every degradation starts from
    work: Path  # degraded models and run folders
    results: Path  # the JSONL rows are appended to
    threads: int | None = None
    jobs: int = 0  # runs at once, each in its own process; 0 = one after another in this one
    suites: str = "knowledge"  # task suites scored on teacher, degraded and recovered model ("" for none)

    def run_one(self, s: Setting) -> dict:
        """Train one setting on its degraded model and score it on the held-out prompts."""
        degraded, out = degraded_dir(self.work, s.degradation), run_dir(self.work, s)
        data = data_config(s)
        result = recover(self.model, degraded, out, recover_config(s, self.threads), data, progress=self.jobs == 0)
        report = evaluate_models(self.model, {"degraded": degraded, "recovered": out}, data, progress=False,
                                 generation=False)
        row = {**s.to_row(), "kind": "run", "tokens": result["tokens"], "seconds": round(result["seconds"], 1),
               "ratio": report["recovery_ratio"]["kl"], "kl": report["metrics"]["recovered"]["kl"],
               "kl_degraded": report["metrics"]["degraded"]["kl"], "concurrent": max(self.jobs, 1),
               "best_step": result["best_step"]}
        if self.suites:
            row["suites"] = suite_scores(self.model, degraded, out, self.suites)
        return row

    def run_all(self, todo: list[Setting]) -> None:
        if self.jobs and todo:
            self.run_parallel(todo)
            return
        for s in todo:
            row = self.run_one(s)
            append_row(row, self.results)
            print(row, flush=True)

    def partial_row(self, s: Setting, why: str) -> dict | None:
        """What a run stopped before its end had shown: its last evaluation on the validation prompts,
        from the trainer's metrics (None before the first evaluation after the start)."""
        out = run_dir(self.work, s)
        finished = side_file(out, METRICS_FILE)  # training had finished; the run was being scored
        metrics = finished if finished.exists() else work_dir(out) / METRICS_FILE
        evals = read_history(metrics) if metrics.exists() else []
        if len(evals) < 2:
            return None
        return {**s.to_row(), "kind": "partial", "why": why, "step": evals[-1]["step"], "kl_at_stop": evals[-1]["kl"],
                "kl_start": evals[0]["kl"], "prompts": "validation"}

    def run_parallel(self, todo: list[Setting]) -> None:
        """Each run in a child process, at most `jobs` at once; rows are appended as runs finish."""
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a time limit's SIGTERM stops like Ctrl-C
        for s in {(s.teacher_samples, s.teacher_temperature, s.teacher_prompts): s for s in todo}.values():
            for build in (distill_set, validation_set, heldout_set):  # built once: the children load the cache
                build(self.model, data_config(s))
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        running: list[tuple] = []
        try:
            self._run_children(list(todo), running, logs)
        except KeyboardInterrupt:
            for proc, *_ in running:
                proc.terminate()
            for proc, tag, _, log, s in running:
                proc.wait()
                log.close()
                row = self.partial_row(s, "interrupted")
                if row:
                    append_row(row, self.results)
                print(f"{tag} interrupted" + (f" after step {row['step']}" if row else " before its first evaluation"),
                      flush=True)
            raise

    def _child_command(self, s: Setting, part: Path) -> list[str]:
        cmd = [sys.executable, str(ENTRY), "--child", json.dumps(s.to_row()), "--model", self.model,
               "--work", str(self.work), "--results", str(part), "--jobs", str(self.jobs), "--suites", self.suites]
        return cmd + (["--threads", str(self.threads)] if self.threads else [])

    def _run_children(self, pending: list[Setting], running: list[tuple], logs: Path) -> None:
        while pending or running:
            while pending and len(running) < self.jobs:
                s = pending.pop(0)
                tag = f"{s.degradation}-{s.run_name()}"
                part = logs / f"{tag}.jsonl"
                part.unlink(missing_ok=True)
                log = open(logs / f"{tag}.log", "w")
                proc = subprocess.Popen(self._child_command(s, part), stdout=log, stderr=subprocess.STDOUT)
                running.append((proc, tag, part, log, s))
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
                        append_row(row, self.results)
                        print(row, flush=True)
                else:
                    tail = (logs / f"{tag}.log").read_text(errors="replace").splitlines()[-15:]
                    print(f"{tag} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail), flush=True)

    def backfill_suites(self) -> None:
        """Score the suites for finished runs recorded without them, where their models are still on disk."""
        rows = load_rows(self.results)
        for row in rows:
            if row.get("kind", "run") != "run" or row.get("suites"):
                continue
            s = Setting.from_row(row)
            out = run_dir(self.work, s)
            if not out.exists():
                continue
            print(f"scoring {', '.join(self.suites.split(','))} for {out}", flush=True)
            row["suites"] = suite_scores(self.model, degraded_dir(self.work, s.degradation), out, self.suites)
            write_rows(rows, self.results)
