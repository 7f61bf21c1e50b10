"""NF4 (Dettmers et al. 2023, QLoRA): 16 fixed levels, the quantiles of a normal distribution,
times one absmax scale per block of `blocksize` consecutive weights of a row.

The model is exported as plain float weights that lie exactly on that codebook grid, so it loads
anywhere. Recovery keeps it there with NF4Constraint: during training the forward pass sees the
weights projected on the grid (straight-through gradient, as QuantGridConstraint does for integer
grids), and `finalize` bakes the projection in. The per-block absmax values are fixed at
degradation time and saved beside the model; QLoRA's double quantization of those scales (to
8 bits) is left out, it saves memory but changes nothing that recovery has to respect.
torchao's NF4 tensor is not needed (nor installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import RecoverLMError
from ..formats.bnb_nf4 import NF4_CODE
from ..io import write_json_atomic
from ..runs import side_dir
from .base import CONSTRAINT_FILE, Constraint, Float32State, find_param, modules_of

NF4_FILE = "nf4_absmax.safetensors"

_MIDPOINTS = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2


def nf4_absmax(weight: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Per-(row, block) absmax in float32, shape (out, in // blocksize)."""
    out_features, in_features = weight.shape
    amax = weight.detach().float().reshape(out_features, in_features // blocksize, blocksize).abs().amax(-1)
    return amax.clamp(min=1e-8)  # an all-zero block maps to code 0.0 either way


def nf4_codes(weight: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Index (0..15) of the nearest NF4 level of every weight, shape (out, blocks, blocksize)."""
    out_features, in_features = weight.shape
    w = weight.float().reshape(out_features, absmax.shape[1], -1) / absmax.unsqueeze(-1).to(weight.device)
    return torch.bucketize(w, _MIDPOINTS.to(weight.device))


def nf4_project(weight: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Nearest point of the grid code[q] * absmax, in float32. Idempotent: the levels are at least
    0.08 apart, so a grid value divided by its absmax never rounds to a neighbour."""
    codes = nf4_codes(weight, absmax)
    values = NF4_CODE.to(weight.device)[codes] * absmax.unsqueeze(-1).to(weight.device)
    return values.reshape(weight.shape)


class _NF4STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, absmax):
        return nf4_project(weight, absmax).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _NF4Parametrization(Float32State):
    def __init__(self, absmax: torch.Tensor):
        super().__init__()
        self.register_buffer("absmax", absmax, persistent=False)
        self.lifted = False  # constraints.base.lifted

    def forward(self, weight):
        if self.lifted:
            return weight
        return _NF4STE.apply(weight, self.absmax)


@dataclass
class NF4Constraint(Constraint):
    """Weights live on the NF4 grid code[q] * absmax with fixed per-block absmax."""

    absmax: dict[str, torch.Tensor]
    blocksize: int
    kind: str = field(default="nf4", init=False)
    # Under LoRA the NF4 base stays frozen and the adapter ships beside it, as in QLoRA: merged,
    # the adapter's update would be projected back onto the grid, and most of it would round away.
    lora_merges = False

    def _modules(self, model):
        return modules_of(model, self.absmax, "NF4 grid")

    def attach(self, model) -> None:
        from torch.nn.utils import parametrize

        for name, module in self._modules(model):
            if not parametrize.is_parametrized(module, "weight"):
                absmax = self.absmax[name].to(module.weight.device)
                parametrize.register_parametrization(module, "weight", _NF4Parametrization(absmax))

    def finalize(self, model) -> None:
        from torch.nn.utils import parametrize

        for _, module in self._modules(model):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    @torch.no_grad()
    def enforce(self, model) -> None:
        """Project weights that are not attached (nothing to do for attached ones: the forward
        pass only ever sees grid values)."""
        from torch.nn.utils import parametrize

        for name, module in self._modules(model):
            if not parametrize.is_parametrized(module, "weight"):
                w = find_param(model, name)
                w.copy_(nf4_project(w, self.absmax[name]).to(w.dtype))

    @torch.no_grad()
    def projected(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return nf4_project(weight, self.absmax[name]).to(weight.dtype) if name in self.absmax else weight

    @torch.no_grad()
    def verify(self, model) -> dict:
        for name, module in self._modules(model):
            w = module.weight.float()
            off = (nf4_project(w, self.absmax[name]) != w).sum().item()
            if off:
                raise RecoverLMError(f"NF4 grid broken: {off} weights of {name} are off the grid")
        return {"kind": self.kind, "bits": 4, "blocksize": self.blocksize, "matrices": len(self.absmax),
                "description": f"NF4 grid (block {self.blocksize}), {len(self.absmax)} matrices on grid (verified exactly)"}

    def codes(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        return nf4_codes(weight, self.absmax[name]) if name in self.absmax else None

    def save(self, model_dir: Path) -> None:
        folder = side_dir(model_dir, create=True)
        save_file({k: v.contiguous() for k, v in self.absmax.items()}, str(folder / NF4_FILE))
        write_json_atomic(folder / CONSTRAINT_FILE, {"kind": self.kind, "file": NF4_FILE, "blocksize": self.blocksize})

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "NF4Constraint":
        return cls(load_file(str(Path(folder) / meta["file"])), blocksize=int(meta["blocksize"]))
