"""Which teacher scores which row: the fixed teacher, an EMA of the student for on-policy rows
(`teacher_mode: ema`), and for SFT forgetting the fine-tuned model itself on the task's prompts."""

from __future__ import annotations

import copy

import torch

from .. import models
from ..data import collate
from ..lm.forward import completion_head_inputs, completion_outputs, head_of
from ..ops.chunked import head_logits
from .timing import PhaseTimer, phase


class Teachers:
    """The teachers of one run and the one forward per teacher and micro-batch they cost."""

    def __init__(self, teacher, task_teacher=None, ema=None, ema_rate: float = 0.99, timer: PhaseTimer | None = None,
                 out_device: torch.device | None = None):
        self.teacher, self.task_teacher, self.ema, self.ema_rate, self.timer = teacher, task_teacher, ema, ema_rate, timer
        self.head = None  # the LM head of the rows `outputs` last returned as head inputs
        self.out_device = out_device  # the student's: a teacher on its own device hands its outputs over

    @staticmethod
    def task_teacher(cfg, data_cfg, student_path, device):
        """SFT forgetting: task prompts are scored by the fine-tuned model itself (frozen), so the
        new skill is kept while general ability comes back from the pre-SFT teacher. It runs live
        for on-policy rows and for hidden-state targets (hidden_weight, cka_weight); off-policy logits
        come from its cached top-k."""
        if data_cfg.task_prompts is None or (cfg.onpolicy_steps == 0 and not (cfg.hidden_weight or cfg.cka_weight)):
            return None
        return models.load_model(data_cfg.task_teacher or student_path, dtype=torch.float32).to(device).requires_grad_(False)

    @staticmethod
    def ema_of(student, cfg, device):
        """The EMA teacher of `teacher_mode: ema`, starting as a frozen copy of the prepared student."""
        return copy.deepcopy(student).eval().requires_grad_(False).to(device) if cfg.teacher_mode == "ema" else None

    @torch.no_grad()
    def outputs(self, mb, pad_id: int, logits: bool = True, hidden: bool = False, head_inputs: bool = False):
        """Full-vocabulary logits (on-policy) and hidden states (with `hidden_weight`) for a
        micro-batch. Off-policy rows are scored by the fixed teacher, whose top-k logits are
        cached; on-policy rows by the stage-2 teacher (fixed or EMA). With `head_inputs`, one
        teacher's rows come as what its LM head would take, and `logits_of` makes their logits a
        chunk at a time; rows of two teachers still come as logits."""
        main = self.ema if self.ema is not None and mb.on_policy else self.teacher
        self.head = None
        with phase(self.timer, "teacher"):
            if set(mb.sources) == {0} or self.task_teacher is None:
                if head_inputs and logits and self._beside(main):
                    self.head = head_of(main)
                    return completion_head_inputs(main, mb.batch, hidden)
                return self._handed_over(completion_outputs(main, mb.batch, logits, hidden))
            return self._handed_over(self._by_source({0: main, 1: self.task_teacher}, mb, pad_id, logits, hidden))

    def _beside(self, model) -> bool:
        """Whether `model` computes on the student's device (its head may then make logits chunk by chunk)."""
        return self.out_device is None or next(model.parameters()).device == self.out_device

    def _handed_over(self, parts: tuple) -> tuple:
        if self.out_device is None:
            return parts
        return tuple(None if p is None else p.to(self.out_device) for p in parts)

    @torch.no_grad()
    def logits_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for rows `outputs` returned (already logits, or its head's inputs)."""
        if self.head is None:
            return rows
        return head_logits(rows, self.head.weight, self.head.bias, self.head.softcap)

    def _by_source(self, teachers: dict, mb, pad_id: int, logits: bool, hidden: bool):
        """Each row from its own teacher: one forward per teacher over its rows, merged in row order."""
        rows = torch.repeat_interleave(torch.tensor(mb.sources), torch.tensor(mb.response_lengths))
        merged: list = [None, None]
        for source in sorted(set(mb.sources)):
            pick = [i for i, s in enumerate(mb.sources) if s == source]
            real = [mb.batch.input_ids[i][mb.batch.attention_mask[i].bool()] for i in pick]
            sub = collate([r[:-mb.response_lengths[i]].tolist() for r, i in zip(real, pick)],
                          [r[-mb.response_lengths[i]:].tolist() for r, i in zip(real, pick)], pad_id)
            for j, part in enumerate(completion_outputs(teachers[source], sub, logits, hidden)):
                if part is None:
                    continue
                if merged[j] is None:  # rows are the second-last dimension of both outputs
                    merged[j] = part.new_empty((*part.shape[:-2], len(rows), part.shape[-1]))
                merged[j][..., rows.to(part.device) == source, :] = part
        return tuple(merged)

    @torch.no_grad()
    def update_ema(self, student) -> None:
        if self.ema is None:
            return
        for e, s in zip(self.ema.parameters(), student.parameters()):
            e.mul_(self.ema_rate).add_(s.detach(), alpha=1 - self.ema_rate)
