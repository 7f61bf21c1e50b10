"""What a recovery trains on: the teacher's responses to the training prompts (with cached top-k
logits), plus the task prompts of an SFT-forgetting run, or the user's own pairs for sft-replay."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, RecoverConfig
from ..data import load_prompts, scored_prompts
from ..errors import RecoverLMError
from ..teacher.response_set import ResponseSet, concat, distill_set, replay_set
from ..teacher.written_prompts import normalized


def task_prompts(data_cfg: DataConfig) -> list[str]:
    """The new task's prompts: a JSONL of prompts, or drawn from a built-in SFT task (its
    training distribution, with a seed of its own, so not the very items the SFT trained on)."""
    from ..tasks import RECOVERY_SEED, TASKS, load_task_data

    name = str(data_cfg.task_prompts)
    if name in TASKS:
        return [p["prompt"] for p in load_task_data(name, n=data_cfg.n_task_prompts, seed=RECOVERY_SEED)]
    return load_prompts(data_cfg.task_prompts)


def scored_texts(data_cfg: DataConfig) -> set[str]:
    """The validation and held-out prompts of the run, normalized: what no training row may be."""
    return {normalized(p) for p in scored_prompts(load_prompts(data_cfg.prompts), data_cfg.n_heldout,
                                                  data_cfg.n_validation, data_cfg.split_seed)}


def unscored(prompts: list[str], scored: set[str], what: str, log=print) -> list[str]:
    """`prompts` without those the run scores; the count left out is said."""
    kept = [p for p in prompts if normalized(p) not in scored]
    if prompts and not kept:
        raise RecoverLMError(f"{what}: every prompt is a validation or held-out prompt of this run, so none may be "
                             "trained on")
    if len(kept) < len(prompts):
        log(f"{what}: left out {len(prompts) - len(kept)} of {len(prompts)} prompts that are validation or "
            "held-out prompts of this run")
    return kept


def check_inputs(data_cfg: DataConfig) -> None:
    """The prompt files and their split, read before any model loads: a bad file is then one line
    at once, not after minutes of teacher responses."""
    scored = scored_texts(data_cfg)
    if data_cfg.task_prompts is not None:
        unscored(task_prompts(data_cfg), scored, "task_prompts", log=lambda _: None)
    if data_cfg.task_teacher is not None:
        from .. import models

        models.resolve_model(data_cfg.task_teacher)


def training_set(cfg: RecoverConfig, data_cfg: DataConfig, teacher_path: Path, student_path: Path, tokenizer,
                 teacher=None, log=print) -> ResponseSet:
    if cfg.method == "sft-replay" and cfg.replay_source == "data":
        rs = replay_set(tokenizer, data_cfg.replay_data, data_cfg,
                        keep=lambda prompts: unscored(prompts, scored_texts(data_cfg), "replay_data", log))
    else:
        # The cached top-k feeds only distillation, at its temperature; sft-replay reads the text.
        tempered = cfg.temperature if cfg.method == "distill" else 1.0
        rs = distill_set(teacher_path, data_cfg, teacher=teacher, log=log, topk_temperature=tempered)
        if data_cfg.task_prompts is not None:
            task = distill_set(data_cfg.task_teacher or student_path, data_cfg, log=log,
                               prompts=unscored(task_prompts(data_cfg), scored_texts(data_cfg), "task_prompts", log),
                               topk_temperature=tempered)
            rs = concat([rs, task])
    return rs
