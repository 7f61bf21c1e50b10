"""What a recovery trains on: the teacher's responses to the training prompts (with cached top-k
logits), plus the task prompts of an SFT-forgetting run, or the user's own pairs for sft-replay."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, RecoverConfig
from ..data import load_prompts
from ..teacher.response_set import ResponseSet, concat, distill_set, replay_set



def task_prompts(data_cfg: DataConfig) -> list[str]:
    """The new task's prompts: a JSONL of prompts, or drawn from a built-in SFT task (its
    training distribution, with a seed of its own, so not the very items the SFT trained on)."""
    from ..tasks import RECOVERY_SEED, TASKS, load_task_data

    name = str(data_cfg.task_prompts)
    if name in TASKS:
        return [p["prompt"] for p in load_task_data(name, n=data_cfg.n_task_prompts, seed=RECOVERY_SEED)]
    return load_prompts(data_cfg.task_prompts)


def training_set(cfg: RecoverConfig, data_cfg: DataConfig, teacher_path: Path, student_path: Path, tokenizer,
                 teacher=None, log=print) -> ResponseSet:
    if cfg.method == "sft-replay" and cfg.replay_source == "data":
        rs = replay_set(tokenizer, data_cfg.replay_data, data_cfg)
    else:
        # The cached top-k feeds only distillation, at its temperature; sft-replay reads the text.
        tempered = cfg.temperature if cfg.method == "distill" else 1.0
        rs = distill_set(teacher_path, data_cfg, teacher=teacher, log=log, topk_temperature=tempered)
        if data_cfg.task_prompts is not None:
            task = distill_set(data_cfg.task_teacher or student_path, data_cfg, log=log,
                               prompts=task_prompts(data_cfg), topk_temperature=tempered)
            rs = concat([rs, task])
    return rs
