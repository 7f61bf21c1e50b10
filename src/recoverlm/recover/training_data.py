"""What a recovery trains on: the teacher's responses to the training prompts (with cached top-k
logits), plus the task prompts of an SFT-forgetting run, or the user's own pairs for sft-replay."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, RecoverConfig
from ..data import load_prompts
from ..errors import RecoverLMError
from ..teacher.response_set import ResponseSet, concat, distill_set, replay_set


def training_set(cfg: RecoverConfig, data_cfg: DataConfig, teacher_path: Path, student_path: Path, tokenizer,
                 teacher=None, log=print) -> ResponseSet:
    if cfg.method == "sft-replay" and cfg.replay_source == "data":
        rs = replay_set(tokenizer, data_cfg.replay_data, data_cfg)
    else:
        rs = distill_set(teacher_path, data_cfg, teacher=teacher, log=log)
        if data_cfg.task_prompts is not None:
            task = distill_set(data_cfg.task_teacher or student_path, data_cfg, log=log,
                               prompts=load_prompts(data_cfg.task_prompts))
            rs = concat([rs, task])
    if not len(rs):
        raise RecoverLMError("the training set is empty")
    return rs
