"""Weights on a fixed integer grid (RTN, GPTQ), kept there during recovery by fake quantization."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from ..errors import RecoverLMError
from ..io import write_json_atomic
from ..runs import side_dir
from .base import CONSTRAINT_FILE, Constraint, Float32State, modules_of
from .grid_math import (
    FakeQuant,
    fake_quantize,
    grid_codes,
    latent_within_cell,
    learned_scale_fake_quantize,
    qrange,
)

GRID_FILE = "quant_grid.safetensors"


class _GridParametrization(Float32State):
    def __init__(self, scale, zero, qmin, qmax):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("zero", zero, persistent=False)
        self.qmin, self.qmax = qmin, qmax
        self.lifted = False  # constraints.base.lifted

    def current_scale(self) -> torch.Tensor:
        return self.scale

    def forward(self, weight):
        if self.lifted:
            return weight
        return FakeQuant.apply(weight, self.scale, self.zero, self.qmin, self.qmax)


class _LearnedScaleGridParametrization(Float32State):
    """A grid whose group scales train with the weights. Each trains as the logarithm of a gain on
    the degraded model's scale: an Adam step then changes every scale by about the same fraction,
    whatever its size, and a scale no step moved is its old value exactly (exp(0) is 1; exp(log s)
    is s only to an ulp)."""

    def __init__(self, scale, zero, qmin, qmax):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.log_gain = torch.nn.Parameter(torch.zeros_like(scale, dtype=torch.float32))
        self.register_buffer("zero", zero, persistent=False)
        self.qmin, self.qmax = qmin, qmax
        self.lifted = False

    def current_scale(self) -> torch.Tensor:
        return self.scale.float() * self.log_gain.exp()

    def forward(self, weight):
        if self.lifted:
            return weight
        return learned_scale_fake_quantize(weight, self.current_scale(), self.zero, self.qmin, self.qmax)


@dataclass
class QuantGridConstraint(Constraint):
    """Weights live on a fixed integer grid: w = (q - zero) * scale with q in [qmin, qmax].

    Training uses fake quantization with a straight-through estimator over latent float weights
    (QAT); `finalize` rounds the latent weights onto the grid, so the export is exactly on it.
    With `learn_scales` the group scales train too (the zero points and the bit width stay): the
    export is still one integer grid per group, only with the scales recovery found, and they are
    what `save` writes. Under LoRA the base stays frozen on its grid (QLoRA-style).
    """

    scales: dict[str, torch.Tensor]
    zeros: dict[str, torch.Tensor]
    bits: int
    symmetric: bool
    learn_scales: bool = False
    kind: str = field(default="quant_grid", init=False)
    training_options = frozenset({"grid_scales", "grid_latents"})
    lora_merges = False

    @property
    def qrange(self) -> tuple[int, int]:
        return qrange(self.bits, self.symmetric)

    def _modules(self, model):
        return modules_of(model, self.scales, "quantization grid")

    def attach(self, model) -> None:
        qmin, qmax = self.qrange
        grid = _LearnedScaleGridParametrization if self.learn_scales else _GridParametrization
        for name, module in self._modules(model):
            if not parametrize.is_parametrized(module, "weight"):
                w = module.weight
                parametrize.register_parametrization(
                    module, "weight", grid(self.scales[name].to(w.device), self.zeros[name].to(w.device), qmin, qmax))

    @torch.no_grad()
    def seed_latents(self, model, reference) -> dict:
        """Move the attached model's latent weights inside their grid cells towards `reference`'s
        weights (`latent_within_cell`); the forward pass does not change."""
        qmin, qmax = self.qrange
        named_ref = dict(reference.named_parameters())
        moved, total, offset = 0, 0, 0.0
        for name, module in self._modules(model):
            if not parametrize.is_parametrized(module, "weight"):
                raise RecoverLMError(f"grid latents need the grid attached to {name}")
            latent = module.parametrizations.weight.original
            ref = named_ref.get(name)
            if ref is None or ref.shape != latent.shape:
                got = "no such weight" if ref is None else f"shape {tuple(ref.shape)}"
                raise RecoverLMError(f"grid latents from the teacher need its {name} of shape {tuple(latent.shape)}; "
                                     f"the teacher has {got}")
            scale = module.parametrizations.weight[0].current_scale()
            new = latent_within_cell(latent, ref.to(latent.device), scale, self.zeros[name].to(latent.device),
                                     qmin, qmax)
            delta = (new - latent).float()
            moved += int((delta != 0).sum())
            total += latent.numel()
            offset += float((delta.reshape(scale.shape[0], scale.shape[1], -1).abs()
                             / scale.float().unsqueeze(-1)).sum())
            latent.copy_(new)
        return {"moved": moved / max(total, 1), "mean_offset_in_steps": offset / max(total, 1)}

    def finalize(self, model) -> None:
        """Bake the grid into the weights; learned scales replace the degraded model's scales."""
        for name, module in self._modules(model):
            if parametrize.is_parametrized(module, "weight"):
                grid = module.parametrizations.weight[0]
                if isinstance(grid, _LearnedScaleGridParametrization):
                    with torch.no_grad():
                        self.scales[name] = grid.current_scale().detach().float().cpu()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    @torch.no_grad()
    def enforce(self, model) -> None:
        """Nothing to do while attached: the forward pass always sees grid values."""

    @torch.no_grad()
    def verify(self, model) -> dict:
        qmin, qmax = self.qrange
        for name, module in self._modules(model):
            w = module.weight.float()
            projected = fake_quantize(w, self.scales[name].to(w.device).float(), self.zeros[name].to(w.device).float(),
                                      qmin, qmax)
            off = (projected != w).sum().item()
            if off:
                raise RecoverLMError(f"quantization grid broken: {off} weights of {name} are off the grid")
        return {"kind": self.kind, "bits": self.bits, "symmetric": self.symmetric, "matrices": len(self.scales),
                "learned_scales": self.learn_scales,
                "description": f"{self.bits}-bit grid, {len(self.scales)} matrices on grid (verified exactly)"}

    def projected(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self.scales:
            return weight
        qmin, qmax = self.qrange
        return fake_quantize(weight.float(), self.scales[name].float(), self.zeros[name].float(), qmin, qmax).to(weight.dtype)

    def codes(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        return grid_codes(weight, self.scales[name], self.zeros[name]) if name in self.scales else None

    def save(self, model_dir: Path) -> None:
        folder = side_dir(model_dir, create=True)
        tensors = {f"{k}.scale": v.contiguous() for k, v in self.scales.items()}
        tensors.update({f"{k}.zero": v.contiguous() for k, v in self.zeros.items()})
        save_file(tensors, str(folder / GRID_FILE))
        write_json_atomic(
            folder / CONSTRAINT_FILE,
            {"kind": self.kind, "file": GRID_FILE, "bits": self.bits, "symmetric": self.symmetric},
        )

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "QuantGridConstraint":
        tensors = load_file(str(Path(folder) / meta["file"]))
        scales = {k[: -len(".scale")]: v for k, v in tensors.items() if k.endswith(".scale")}
        zeros = {k[: -len(".zero")]: v for k, v in tensors.items() if k.endswith(".zero")}
        return cls(scales, zeros, bits=int(meta["bits"]), symmetric=bool(meta["symmetric"]))
