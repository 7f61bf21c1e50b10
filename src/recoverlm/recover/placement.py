"""Where the frozen teachers live during recovery (recover.teacher_device, recover.teacher_offload).

A teacher on its own device (a second GPU) leaves the training device to the student, its
gradients and optimizer state. Offloading parks the teachers in CPU memory while training does
not need them: the off-policy stage on cached top-k logits never runs the teacher, only the
evaluations between its steps do, so a 7B fp32 teacher's 28 GB are free for most of stage 1.
"""

from __future__ import annotations

import torch

from ..errors import RecoverLMError

PARK = torch.device("cpu")


def teacher_device(setting: str | None, training_device: torch.device, processes: int) -> torch.device:
    """The device `recover.teacher_device` names (None: the training device), checked."""
    if setting is None:
        return training_device
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise RecoverLMError(f"recover.teacher_device {setting!r} is not a device ({exc})") from exc
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise RecoverLMError(f"recover.teacher_device {setting!r}: this machine has "
                             f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA devices")
    if processes > 1 and device.type != "cpu":
        raise RecoverLMError("recover.teacher_device names one device, which every process would share; "
                             "with several processes only 'cpu' is supported")
    return device


class TeacherPlacement:
    """Moves the teachers between their device and CPU memory as the steps need them; with
    offload off (or both places the same device) it never moves anything."""

    def __init__(self, models: list, home: torch.device, offload: bool, log=print):
        self.models, self.home, self.log = [m for m in models if m is not None], home, log
        self.offload = offload and home != PARK
        self.where = home
        self.moves = 0

    def need(self, needed: bool) -> None:
        """Before a step or an evaluation: the teachers on their device if it runs them, else parked."""
        if not self.offload:
            return
        target = self.home if needed else PARK
        if target == self.where:
            return
        for model in self.models:
            model.to(target)
        if self.moves == 0:
            self.log(f"recover.teacher_offload: the teacher waits in CPU memory while steps do not run it, and moves "
                     f"to {self.home} for those that do and for evaluations")
        self.where, self.moves = target, self.moves + 1
        if target == PARK and torch.cuda.is_available():
            torch.cuda.empty_cache()
