"""The cost of a distillation step: seconds per optimizer step of off-policy KD and of plain SFT on
the same batch plan, and an on-policy step split into the student's sampling, the teacher's scoring
and the rest, as the trainer's PhaseTimer counts them. Writes a "step_cost" row's fields."""

import time
from pathlib import Path

from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.recover.schedule import batch_order
from recoverlm.recover.timing import PhaseTimer
from recoverlm.recover.trainer import Recovery


def step_cost(teacher: str, student: Path, work: Path, data: DataConfig, steps: int, bf16: bool,
              hidden_weight: float = 0.0) -> dict:
    """Off-policy KD against SFT; with a hidden weight, also KD with the hidden-state term, whose
    teacher runs on every off-policy batch."""
    out = {}
    arms = [("distill", 0.0), ("sft-replay", 0.0)] + ([("distill", hidden_weight)] if hidden_weight else [])
    for method, weight in arms:
        name = "distill_hidden" if weight else method
        cfg = RecoverConfig(method=method, offpolicy_steps=steps, eval_every=0, cka_every_eval=False,
                            select_best=False, bf16=bf16, hidden_weight=weight)
        timer = PhaseTimer()
        run = Recovery(teacher, student, work / f"cost-{name}", cfg, data, progress=False, timer=timer)
        plan = batch_order(len(run.train_set), cfg.batch_size, steps + 1, cfg.seed)
        run.train_step(1, plan[0], False)  # warm-up: first-call allocations stay out of the timing
        start = time.perf_counter()
        for step in range(2, steps + 2):
            run.train_step(step, plan[step - 1], False)
        out[name] = (time.perf_counter() - start) / steps
        if method == "distill":
            out["onpolicy_hidden" if weight else "onpolicy"] = onpolicy_cost(run, timer, plan, steps)
    if hidden_weight:
        out["hidden_weight"] = hidden_weight
    return out


def onpolicy_cost(run: Recovery, timer: PhaseTimer, plan: list[list[int]], steps: int) -> dict:
    """Seconds per on-policy step, and the part of it spent sampling and in teacher forwards: the
    step numbers continue after the off-policy ones, so the samplers' seeds are new."""
    timer.reset()  # the off-policy steps' teacher forwards (hidden-state term) are not counted
    first = steps + 2
    start = time.perf_counter()
    for i in range(steps):
        run.train_step(first + i, plan[i % len(plan)], True)
    total = time.perf_counter() - start
    sample = timer.seconds["sample"]
    return {"step": total / steps, "sample": sample / steps, "teacher": timer.seconds["teacher"] / steps,
            "teacher_calls_per_step": timer.calls["teacher"] / steps,
            "new_tokens_per_s": timer.tokens["sample"] / max(sample, 1e-9)}
