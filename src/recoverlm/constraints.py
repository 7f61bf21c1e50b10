"""What a degraded model must keep while it is being recovered.

A Constraint is handed out by a degradation method and honoured by the trainer:
`attach` before training, `enforce` after every optimizer step, `finalize` before export,
`verify` to prove (exactly) that the exported weights still obey it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import RecoverLMError
from .io import read_json, write_json_atomic

MASKS_FILE = "masks.safetensors"
GRID_FILE = "quant_grid.safetensors"
CONSTRAINT_FILE = "constraint.json"


def linear_weights(model) -> dict[str, torch.nn.Parameter]:
    """The weight matrices of the decoder blocks: what pruning and quantization act on.

    Embeddings and the LM head are left alone, as in Wanda, SparseGPT and GPTQ.
    """
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            out[f"{name}.weight"] = module.weight
    return out


def _param(model, name: str) -> torch.nn.Parameter:
    params = dict(model.named_parameters())
    if name not in params:
        # PEFT and parametrizations rename parameters; match on the suffix.
        hits = [p for n, p in params.items() if n.endswith(name) or n.replace(".base_layer", "").endswith(name)]
        if len(hits) != 1:
            raise RecoverLMError(f"constraint names parameter {name!r}, which the model does not have")
        return hits[0]
    return params[name]


def placed_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` on `ref`'s device and, when `ref` is a DTensor (a parameter sharded by FSDP2), sharded
    the same way, so that elementwise updates of the parameter see matching shards."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(t.to(ref.device), ref.device_mesh, ref.placements)
    return t.to(ref.device)


def modules_of(model, weight_names, label: str):
    """(weight name, owning module) for each name, or one clear error naming the missing module."""
    named = dict(model.named_modules())
    for name in weight_names:
        module_name = name.rsplit(".", 1)[0]
        if module_name not in named:
            raise RecoverLMError(f"{label} names {module_name!r}, which the model does not have")
        yield name, named[module_name]


class Constraint:
    kind = "none"

    def attach(self, model) -> None:
        """Prepare the model for training under the constraint."""

    def enforce(self, model) -> None:
        """Restore the constraint after an optimizer step."""

    def finalize(self, model) -> None:
        """Bake the constraint into plain weights before export."""

    def verify(self, model) -> dict:
        """Check the constraint exactly; raise RecoverLMError if it is broken, else return a summary."""
        return {"kind": self.kind}

    def save(self, folder: Path) -> None:
        write_json_atomic(Path(folder) / CONSTRAINT_FILE, {"kind": self.kind})


@dataclass
class SparsityConstraint(Constraint):
    """Binary masks (True = kept). Pruned weights stay exactly zero through recovery."""

    masks: dict[str, torch.Tensor]
    kind: str = field(default="sparsity", init=False)
    _placed: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    @torch.no_grad()
    def enforce(self, model) -> None:
        for name, mask in self.masks.items():
            weight = _param(model, name)
            placed = self._placed.get(name)
            if placed is None or placed.device != weight.device or type(placed) is not type(weight.data):
                placed = self._placed[name] = placed_like(mask, weight.data)  # once, not on every step
            weight.mul_(placed)

    def attach(self, model) -> None:
        self.enforce(model)

    @torch.no_grad()
    def verify(self, model) -> dict:
        per_matrix = {}
        for name, mask in self.masks.items():
            weight = _param(model, name)
            leaked = (weight[~mask.to(weight.device)] != 0).sum().item()
            if leaked:
                raise RecoverLMError(f"sparsity broken: {leaked} pruned weights of {name} are non-zero")
            per_matrix[name] = 1.0 - mask.float().mean().item()
        total = sum(m.numel() for m in self.masks.values())
        zeros = sum((~m).sum().item() for m in self.masks.values())
        return {"kind": self.kind, "sparsity": zeros / max(total, 1), "per_matrix": per_matrix}

    def save(self, folder: Path) -> None:
        save_file({k: v.to(torch.uint8).contiguous() for k, v in self.masks.items()}, str(Path(folder) / MASKS_FILE))
        write_json_atomic(Path(folder) / CONSTRAINT_FILE, {"kind": self.kind, "file": MASKS_FILE})


class _FakeQuant(torch.autograd.Function):
    """Round to the fixed grid in the forward pass; pass the gradient straight through."""

    @staticmethod
    def forward(ctx, weight, scale, zero, qmin, qmax):
        return fake_quantize(weight, scale, zero, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def grid_levels(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int,
                qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer level minus the zero point of every weight, (out, groups, group), and the scales
    broadcast to match: the projected weight is their product."""
    out_features, in_features = weight.shape
    groups = scale.shape[1]
    w = weight.reshape(out_features, groups, in_features // groups)
    s = scale.unsqueeze(-1).to(w.dtype)
    z = zero.unsqueeze(-1).to(w.dtype)
    return torch.clamp(torch.round(w / s) + z, qmin, qmax) - z, s


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Project `weight` (out, in) on a group-wise grid: scale and zero are (out, in // group)."""
    levels, s = grid_levels(weight, scale, zero, qmin, qmax)
    return (levels * s).reshape(weight.shape)


def latent_within_cell(weight: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       qmin: int, qmax: int, margin: float = 0.49) -> torch.Tensor:
    """Latent weights that project to exactly the grid values `weight` projects to, moved towards
    `reference` (the undamaged weights) as far as their grid cell allows. A latent weight at the
    centre of its cell needs half a grid step of updates before its rounding can change; one at
    the reference's position is as close to the rounding boundary as the original weight was, so
    the updates that flip it are the ones the undamaged model already leaned towards."""
    levels, s = grid_levels(weight.float(), scale.float(), zero.float(), qmin, qmax)
    on_grid = levels * s
    ref = reference.float().reshape(on_grid.shape)
    latent = on_grid + torch.clamp(ref - on_grid, -margin * s, margin * s)
    latent = latent.reshape(weight.shape).to(weight.dtype)
    # In low precision a latent can round into the next cell: those keep their grid value.
    moved = grid_levels(latent.float(), scale.float(), zero.float(), qmin, qmax)[0]
    return torch.where((moved == levels).reshape(weight.shape), latent, on_grid.reshape(weight.shape).to(weight.dtype))


class _FakeQuantLearnedScale(torch.autograd.Function):
    """The same projection as `fake_quantize` (bit for bit, so the export verifies), differentiable
    in the group scales with the integers held fixed: d w_q / d s = q - zero, the grid's true local
    slope (as EfficientQAT trains its step sizes). The LSQ estimator would give (q - zero) - w / s
    instead, which is zero for weights on the grid, so from a degraded model it gives the scales
    nothing but rounding noise, which Adam then inflates to full-size steps. The weights keep the
    plain straight-through gradient, as on a fixed grid."""

    @staticmethod
    def forward(ctx, weight, scale, zero, qmin, qmax):
        levels, s = grid_levels(weight, scale, zero, qmin, qmax)
        ctx.save_for_backward(levels)
        return (levels * s).reshape(weight.shape)

    @staticmethod
    def backward(ctx, grad):
        (levels,) = ctx.saved_tensors
        grad_scale = (grad.reshape(levels.shape) * levels).sum(-1)
        return grad, grad_scale, None, None, None


def learned_scale_fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int,
                                qmax: int) -> torch.Tensor:
    """`fake_quantize` with gradients for the weights (straight through) and for the scales."""
    return _FakeQuantLearnedScale.apply(weight, scale, zero, qmin, qmax)


class _GridParametrization(torch.nn.Module):
    def __init__(self, scale, zero, qmin, qmax):
        super().__init__()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("zero", zero, persistent=False)
        self.qmin, self.qmax = qmin, qmax

    def forward(self, weight):
        return _FakeQuant.apply(weight, self.scale, self.zero, self.qmin, self.qmax)


class _LearnedScaleGridParametrization(torch.nn.Module):
    """A grid whose group scales train with the weights. They are kept as logarithms: an Adam step
    then changes every scale by about the same fraction, whatever its size."""

    def __init__(self, scale, zero, qmin, qmax):
        super().__init__()
        self.log_scale = torch.nn.Parameter(scale.float().log())
        self.register_buffer("zero", zero, persistent=False)
        self.qmin, self.qmax = qmin, qmax

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, weight):
        return learned_scale_fake_quantize(weight, self.scale(), self.zero, self.qmin, self.qmax)


@dataclass
class QuantGridConstraint(Constraint):
    """Weights live on a fixed integer grid: w = (q - zero) * scale with q in [qmin, qmax].

    Training uses fake quantization with a straight-through estimator over latent float weights
    (QAT); `finalize` rounds the latent weights onto the grid, so the export is exactly on it.
    With `learn_scales` the group scales train too (the zero points and the bit width stay): the
    export is still one integer grid per group, only with the scales recovery found, and they are
    what `save` writes.
    """

    scales: dict[str, torch.Tensor]
    zeros: dict[str, torch.Tensor]
    bits: int
    symmetric: bool
    learn_scales: bool = False
    kind: str = field(default="quant_grid", init=False)

    @property
    def qrange(self) -> tuple[int, int]:
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def _modules(self, model):
        return modules_of(model, self.scales, "quantization grid")

    def attach(self, model) -> None:
        from torch.nn.utils import parametrize

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
        from torch.nn.utils import parametrize

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
            grid = module.parametrizations.weight[0]
            scale = grid.scale() if isinstance(grid, _LearnedScaleGridParametrization) else grid.scale
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
        from torch.nn.utils import parametrize

        for name, module in self._modules(model):
            if parametrize.is_parametrized(module, "weight"):
                grid = module.parametrizations.weight[0]
                if isinstance(grid, _LearnedScaleGridParametrization):
                    with torch.no_grad():
                        self.scales[name] = grid.scale().detach().float().cpu()
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
                "learned_scales": self.learn_scales}

    def save(self, folder: Path) -> None:
        tensors = {f"{k}.scale": v.contiguous() for k, v in self.scales.items()}
        tensors.update({f"{k}.zero": v.contiguous() for k, v in self.zeros.items()})
        save_file(tensors, str(Path(folder) / GRID_FILE))
        write_json_atomic(
            Path(folder) / CONSTRAINT_FILE,
            {"kind": self.kind, "file": GRID_FILE, "bits": self.bits, "symmetric": self.symmetric},
        )


def load_constraint(folder: Path) -> Constraint:
    """Read the constraint saved beside a degraded model; a folder without one is unconstrained."""
    folder = Path(folder)
    meta_path = folder / CONSTRAINT_FILE
    if not meta_path.exists():
        return Constraint()
    meta = read_json(meta_path)
    kind = meta.get("kind")
    if kind == "sparsity":
        masks = load_file(str(folder / meta["file"]))
        return SparsityConstraint({k: v.bool() for k, v in masks.items()})
    if kind == "quant_grid":
        tensors = load_file(str(folder / meta["file"]))
        scales = {k[: -len(".scale")]: v for k, v in tensors.items() if k.endswith(".scale")}
        zeros = {k[: -len(".zero")]: v for k, v in tensors.items() if k.endswith(".zero")}
        return QuantGridConstraint(scales, zeros, bits=int(meta["bits"]), symmetric=bool(meta["symmetric"]))
    if kind == "nf4":
        from .degrade.nf4 import NF4Constraint

        return NF4Constraint.load(folder)
    if kind == "none":
        return Constraint()
    raise RecoverLMError(f"{meta_path}: unknown constraint kind {kind!r}")
