"""One copy of the weights where the teacher is the student's own base.

A LoRA recovery of a pruned or quantized student trains an adapter over frozen weights that are
the teacher's weights under the Constraint: (W + s·BA) ⊙ M for masks, a frozen grid Q(W) plus the
adapter for grids. When the degraded folder is exactly that projection of the teacher (magnitude
and Wanda pruning, RTN and NF4 are; GPTQ, which updates the kept weights, is not), the student can
hold the teacher's dense weights W itself: with the adapter on and the Constraint attached it is
the student, with both off it is the teacher. The teacher's second copy of the weights is never
loaded. Checked tensor by tensor before it is used; otherwise the two copies are kept.
"""

from __future__ import annotations

import contextlib

import torch

from .. import formats
from ..config import RecoverConfig
from ..constraints import NF4Constraint, QuantGridConstraint, SparsityConstraint
from ..constraints.base import lifted
from ..lm.modes import eval_mode


def why_not_shared(cfg: RecoverConfig, constraint, teacher: torch.nn.Module, student_path, task_prompts) -> str | None:
    """None where the student can be the teacher's weights under the Constraint, else the reason."""
    if cfg.share_teacher == "off":
        return "recover.share_teacher: off"
    if not cfg.lora:
        return "full fine-tuning changes the weights the teacher would be computed from"
    if not isinstance(constraint, (SparsityConstraint, QuantGridConstraint, NF4Constraint)):
        return f"the student's constraint is {constraint.kind}"
    if cfg.teacher_device is not None or cfg.teacher_offload:
        return "recover.teacher_device / teacher_offload place the teacher apart from the student"
    if cfg.teacher_mode != "base" or task_prompts is not None:
        return "another teacher (EMA or the fine-tuned model) is used as well"
    if formats.scheme_of(student_path) is not None:
        return "the student is a quantized checkpoint of another tool"
    if cfg.train_blocks != "all" and constraint.lora_masks():
        return "recover.train_blocks leaves blocks without an adapter, whose masks would act on the shared weights"
    uncovered = [n for n in constraint.lora_masks() if not _adapted(n, cfg.lora.target_modules)]
    if uncovered:  # there the mask would have to act on the shared weights themselves
        return f"{uncovered[0]} is masked but not adapted (lora.target_modules)"
    teacher_state = teacher.state_dict()
    for name, weight in formats.iter_tensors(student_path):
        ref = teacher_state.get(name)
        if ref is None or ref.shape != weight.shape:
            return f"the student's {name} has no counterpart of its shape in the teacher"
        if not torch.equal(constraint.projected(name, ref.detach().cpu().float()).to(weight.dtype), weight):
            return f"the student's {name} is not the teacher's under the constraint (a calibrated method such as GPTQ)"
    return None


def _adapted(weight_name: str, targets) -> bool:
    """Whether PEFT adapts the layer of `weight_name` under `targets` (names match as suffixes)."""
    if isinstance(targets, str):
        return targets == "all-linear"
    module = weight_name.removesuffix(".weight")
    return any(module == t or module.endswith(f".{t}") for t in targets)


class TeacherView(torch.nn.Module):
    """The teacher computed from the student's own modules: adapter off, Constraint lifted. Its
    `train`/`eval` leave the shared modules' mode alone (that is the student's)."""

    def __init__(self, student):
        super().__init__()
        self.module = student  # named like a DDP wrapper's, so lm.blocks.unwrapped finds the model

    def train(self, mode: bool = True):
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad(), self.teacher_mode():
            return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def teacher_mode(self):
        """Adapter off, Constraint lifted and eval mode (no dropout), as a separate teacher runs."""
        with self.module.disable_adapter(), lifted(self.module), eval_mode(self.module):
            yield


class LiftedView(TeacherView):
    """The teacher before an adapter exists: the shared model with its Constraint lifted (for the
    CKA that recover.train_blocks ranks blocks by, measured before the adapter is added)."""

    @contextlib.contextmanager
    def teacher_mode(self):
        with lifted(self.module), eval_mode(self.module):
            yield
