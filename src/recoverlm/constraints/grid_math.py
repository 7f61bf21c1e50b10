"""The maths of an integer quantization grid, w = (q - zero) * scale with q in [qmin, qmax], and
the straight-through estimators that train weights (and scales) on it. Pure torch."""

from __future__ import annotations

import torch


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer levels of a grid: -2^(b-1)..2^(b-1)-1 symmetric, 0..2^b-1 asymmetric."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


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


def grid_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The integer code q of every weight (out, groups, group), unclamped: how many levels are used."""
    grouped = weight.float().reshape(weight.shape[0], scale.shape[1], -1)
    return torch.round(grouped / scale.float().unsqueeze(-1)) + zero.float().unsqueeze(-1)


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Project `weight` (out, in) on a group-wise grid: scale and zero are (out, in // group). The
    grid is computed in float32 whatever the weight's dtype (a bf16 scale would move every level),
    and only the result takes the weight's dtype."""
    levels, s = grid_levels(weight.float(), scale.float(), zero.float(), qmin, qmax)
    return (levels * s).reshape(weight.shape).to(weight.dtype)


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


class FakeQuant(torch.autograd.Function):
    """Round to the fixed grid in the forward pass; pass the gradient straight through."""

    @staticmethod
    def forward(ctx, weight, scale, zero, qmin, qmax):
        return fake_quantize(weight, scale, zero, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class _FakeQuantLearnedScale(torch.autograd.Function):
    """The same projection as `fake_quantize` (bit for bit, so the export verifies), differentiable
    in the group scales with the integers held fixed: d w_q / d s = q - zero, the grid's true local
    slope (as EfficientQAT trains its step sizes). The LSQ estimator would give (q - zero) - w / s
    instead, which is zero for weights on the grid, so from a degraded model it gives the scales
    nothing but rounding noise, which Adam then inflates to full-size steps. The weights keep the
    plain straight-through gradient, as on a fixed grid."""

    @staticmethod
    def forward(ctx, weight, scale, zero, qmin, qmax):
        levels, s = grid_levels(weight.float(), scale.float(), zero.float(), qmin, qmax)
        ctx.save_for_backward(levels)
        ctx.scale_dtype = scale.dtype
        return (levels * s).reshape(weight.shape).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad):
        (levels,) = ctx.saved_tensors
        grad_scale = (grad.float().reshape(levels.shape) * levels).sum(-1)
        return grad, grad_scale.to(ctx.scale_dtype), None, None, None


def learned_scale_fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int,
                                qmax: int) -> torch.Tensor:
    """`fake_quantize` with gradients for the weights (straight through) and for the scales."""
    return _FakeQuantLearnedScale.apply(weight, scale, zero, qmin, qmax)
