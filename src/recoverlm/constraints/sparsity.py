"""Binary masks: pruned weights stay exactly zero through recovery."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import RecoverLMError
from ..io import write_json_atomic
from ..runs import side_dir
from .base import CONSTRAINT_FILE, Constraint, find_param, placed_like

MASKS_FILE = "masks.safetensors"


@dataclass
class SparsityConstraint(Constraint):
    """Binary masks by weight name (True = kept)."""

    masks: dict[str, torch.Tensor]
    kind: str = field(default="sparsity", init=False)
    _placed: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    training_options = frozenset({"mask_update"})

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """A re-chosen mask for matrix `name` (recover.mask_update), enforced from the next step."""
        self.masks[name] = mask.detach().bool().cpu()
        self._placed.pop(name, None)

    def _placed_mask(self, name: str, ref: torch.Tensor) -> torch.Tensor:
        """Mask `name` placed (and sharded) like `ref`: made once, not on every step."""
        placed = self._placed.get(name)
        if placed is None or placed.device != ref.device or type(placed) is not type(ref):
            placed = self._placed[name] = placed_like(self.masks[name], ref)
        return placed

    @torch.no_grad()
    def enforce(self, model) -> None:
        for name in self.masks:
            weight = find_param(model, name)
            weight.mul_(self._placed_mask(name, weight.data))

    def attach(self, model) -> None:
        self.enforce(model)

    @torch.no_grad()
    def mask_gradients(self, model) -> None:
        for name in self.masks:
            weight = find_param(model, name)
            if weight.grad is not None:
                weight.grad.mul_(self._placed_mask(name, weight.grad))

    def guard_gradients(self, model) -> None:
        """Pruned weights get a zero gradient. Starting at zero, AdamW never moves them: its
        moments stay zero, so its update is zero, and its decay only scales."""
        for name, mask in self.masks.items():
            weight = find_param(model, name)
            if not weight.requires_grad:  # frozen (a LoRA base, a block that does not train)
                continue
            keep = mask.to(weight.device, weight.dtype)
            weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype))

    @torch.no_grad()
    def verify(self, model) -> dict:
        per_matrix = {}
        for name, mask in self.masks.items():
            weight = find_param(model, name)
            leaked = (weight[~mask.to(weight.device)] != 0).sum().item()
            if leaked:
                raise RecoverLMError(f"sparsity broken: {leaked} pruned weights of {name} are non-zero")
            per_matrix[name] = 1.0 - mask.float().mean().item()
        total = sum(m.numel() for m in self.masks.values())
        zeros = sum((~m).sum().item() for m in self.masks.values())
        sparsity = zeros / max(total, 1)
        return {"kind": self.kind, "sparsity": sparsity, "per_matrix": per_matrix,
                "description": f"sparsity {sparsity:.4f} (verified exactly)"}

    def projected(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.masks[name].to(weight.device) if name in self.masks else weight

    def lora_masks(self) -> dict[str, torch.Tensor]:
        return self.masks

    def save(self, model_dir: Path) -> None:
        folder = side_dir(model_dir, create=True)
        save_file({k: v.to(torch.uint8).contiguous() for k, v in self.masks.items()}, str(folder / MASKS_FILE))
        write_json_atomic(folder / CONSTRAINT_FILE, {"kind": self.kind, "file": MASKS_FILE})

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "SparsityConstraint":
        return cls({k: v.bool() for k, v in load_file(str(Path(folder) / meta["file"])).items()})
