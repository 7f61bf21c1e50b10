"""Weight quantization: move weights onto an integer grid and hand recovery that grid."""

from __future__ import annotations

import torch

from ..constraints import QuantGridConstraint
from ..constraints.grid_math import fake_quantize
from ..lm.blocks import linear_weights
from .checks import check_bool, check_divides, check_int


def check_quant_args(bits: int, group_size: int, symmetric: bool = False, weights: dict | None = None) -> None:
    check_int("bits", bits, 2, 8)
    check_int("group_size", group_size, 0)  # 0 = one group per row (per-channel)
    check_bool("symmetric", symmetric)
    if weights and group_size:
        check_divides("group_size", group_size, weights)


def rtn_grid(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest scales and zero points per (row, group) from the group's min/max.

    Symmetric: scale = max|w| / (2^(b-1) - 1), zero = 0 (grid -2^(b-1)..2^(b-1)-1).
    Asymmetric: scale = (max - min) / (2^b - 1), zero = round(-min / scale) (grid 0..2^b-1), with
    min clamped to at most 0 and max to at least 0, so that zero is always on the grid (as GPTQ's
    reference does): a group of one sign spends levels on the values between it and zero.
    Computed in float32 so the grid is reproducible whatever the model's dtype.
    """
    out_features, in_features = weight.shape
    group = group_size or in_features
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(dim=-1) / qmax
        zero = torch.zeros_like(scale)
    else:
        qmax = 2**bits - 1
        lo = w.amin(dim=-1).clamp(max=0)
        hi = w.amax(dim=-1).clamp(min=0)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    scale = scale.clamp(min=1e-8)  # an all-zero group still needs a valid grid
    return scale, zero


@torch.no_grad()
def quantize_rtn(model, bits: int = 4, group_size: int = 32, symmetric: bool = False, *, tokenizer=None, record=None):
    """Round to nearest on a group-wise grid (group_size 0: one scale per output row)."""
    weights = linear_weights(model)
    check_quant_args(bits, group_size, symmetric, weights)
    scales, zeros = {}, {}
    constraint = QuantGridConstraint(scales, zeros, bits=bits, symmetric=symmetric)
    qmin, qmax = constraint.qrange
    for name, weight in weights.items():
        scale, zero = rtn_grid(weight, bits, group_size, symmetric)
        weight.copy_(fake_quantize(weight.float(), scale, zero, qmin, qmax).to(weight.dtype))
        scales[name], zeros[name] = scale, zero
    return model, constraint
