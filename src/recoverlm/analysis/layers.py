"""Layer-by-layer CKA of students against their teacher on the held-out set."""

from __future__ import annotations

import torch

from .. import models
from ..config import DataConfig
from ..evaluate.compare import load_students
from ..recover.response_set import heldout_set
from .capture import layer_cka


def cka_models(teacher_ref, students: dict, data_cfg: DataConfig | None = None, batch_size: int = 8,
               progress: bool = True, log=print) -> dict:
    """Per-layer linear CKA (teacher layer l vs student layer l) for each student."""
    data_cfg = data_cfg or DataConfig()
    teacher_path = models.resolve_model(teacher_ref)
    tokenizer = models.load_tokenizer(teacher_path)
    eval_set = heldout_set(teacher_path, data_cfg, log=log)
    teacher = models.load_model(teacher_path, dtype=torch.float32)
    loaded = load_students(teacher_path, students)
    result = layer_cka(teacher, loaded, eval_set, tokenizer.pad_token_id, batch_size, progress)
    return {"teacher": str(teacher_path), "students": {k: str(v) for k, v in students.items()},
            "pooling": "token", "estimator": "linear (streaming, float64)", "cka": result}
