"""What a degraded model must keep while it is being recovered.

A Constraint is handed out by a degradation method and honoured by the trainer:
`attach` before training, `enforce` after every optimizer step, `finalize` before export,
`verify` to prove (exactly) that the exported weights still obey it. Each kind also says what it
permits (training options, how a LoRA adapter meets it) and describes itself, so no other module
needs to ask which kind it holds.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import RecoverLMError
from ..io import write_json_atomic
from ..runs import side_dir

CONSTRAINT_FILE = "constraint.json"


def find_param(model, name: str) -> torch.nn.Parameter:
    """The parameter `name`, also where PEFT or a parametrization renamed it (matched on the suffix)."""
    params = dict(model.named_parameters())
    if name in params:
        return params[name]
    hits = [p for n, p in params.items() if n.endswith(name) or n.replace(".base_layer", "").endswith(name)]
    if len(hits) != 1:
        raise RecoverLMError(f"constraint names parameter {name!r}, which the model does not have")
    return hits[0]


def placed_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` on `ref`'s device and, when `ref` is a DTensor (a parameter sharded by FSDP2), sharded
    the same way, so that elementwise updates of the parameter see matching shards."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(t.to(ref.device), ref.device_mesh, ref.placements)
    return t.to(ref.device)


def modules_of(model, weight_names, label: str):
    """(weight name, owning module) for each name, or one clear error naming the missing module;
    under a LoRA adapter, the layer the adapter wraps."""
    named = dict(model.named_modules())
    for name in weight_names:
        module_name = name.rsplit(".", 1)[0]
        if module_name not in named:
            raise RecoverLMError(f"{label} names {module_name!r}, which the model does not have")
        module = named[module_name]
        yield name, getattr(module, "base_layer", module)


@contextlib.contextmanager
def lifted(model):
    """Within the block, every attached Constraint passes its weights through unchanged: the model
    computes with its latent weights, which are the teacher's where the student holds the
    teacher's weights under the Constraint (recover's one-copy teacher)."""
    marks = [m for m in model.modules() if hasattr(m, "lifted")]
    for m in marks:
        m.lifted = True
    try:
        yield
    finally:
        for m in marks:
            m.lifted = False


class Constraint:
    """No constraint: every weight may change (SFT forgetting, structured pruning)."""

    kind = "none"
    # Recover options beyond the defaults that this kind of constraint supports.
    training_options: frozenset[str] = frozenset()
    # Whether a LoRA adapter is merged into the exported weights (the constraint attached beneath
    # it); False keeps the base frozen as it is and ships the adapter beside it.
    lora_merges = True

    def attach(self, model) -> None:
        """Prepare the model for training under the constraint."""

    def enforce(self, model) -> None:
        """Restore the constraint after an optimizer step."""

    def mask_gradients(self, model) -> None:
        """Zero, in place, the gradients the constraint will throw away (a pruned weight's), before
        clipping: the clipped norm is then that of the update the weights really get."""

    def guard_gradients(self, model) -> None:
        """`mask_gradients` as backward hooks, for DeepSpeed, whose engine holds the gradients and
        clips them itself; under ZeRO-3, where no process holds a whole weight after a step, they
        also keep the constraint instead of `enforce`. Nothing to do for a constraint that the
        forward pass computes (a grid's parametrization)."""

    def finalize(self, model) -> None:
        """Bake the constraint into plain weights before export."""

    def verify(self, model) -> dict:
        """Check the constraint exactly; raise RecoverLMError if it is broken, else return a summary
        whose "description" is one line for reports."""
        return {"kind": self.kind, "description": "none"}

    def lora_masks(self) -> dict[str, torch.Tensor]:
        """Masks a LoRA adapter must train under, by weight name: (W + s*B@A) * M."""
        return {}

    def projected(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (of matrix `name`) as the Constraint makes it: masked, or on its grid."""
        return weight

    def codes(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        """The integer grid code of every weight of matrix `name`, where the constraint has a grid."""
        return None

    def save(self, model_dir: Path) -> None:
        """Write the constraint into the model folder's side folder (runs.SIDE_DIR)."""
        write_json_atomic(side_dir(model_dir, create=True) / CONSTRAINT_FILE, {"kind": self.kind})

    @classmethod
    def load(cls, files: Path, meta: dict) -> "Constraint":
        """Read back what `save` wrote; `files` is the folder holding constraint.json."""
        return cls()


class Float32State(torch.nn.Module):
    """A parametrization whose own tensors (scales, zero points, absmax) keep their dtype, float32,
    through module-wide casts such as DeepSpeed's bf16 `module.bfloat16()`: rounded to bf16, the
    grid the student trains on would not be the one it is exported on. Device moves still apply."""

    def _apply(self, fn, recurse=True):
        def keep_dtype(t):
            moved = fn(t)
            return t.to(device=moved.device) if t.is_floating_point() and moved.dtype != t.dtype else moved

        return super()._apply(keep_dtype, recurse)
