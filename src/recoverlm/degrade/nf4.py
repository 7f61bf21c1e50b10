"""NF4 quantization (Dettmers et al. 2023, QLoRA) of every decoder matrix; the grid and its
Constraint live in constraints/nf4.py."""

from __future__ import annotations

import torch

from ..constraints.nf4 import NF4Constraint, nf4_absmax, nf4_project
from ..lm.blocks import linear_weights
from .checks import check_divides, check_int


@torch.no_grad()
def quantize_nf4(model, blocksize: int = 64, *, tokenizer=None, record=None):
    """NF4 with the QLoRA block size of 64 by default (the block must divide every input dimension)."""
    weights = linear_weights(model)
    check_int("blocksize", blocksize, 2)
    check_divides("blocksize", blocksize, weights)
    absmax = {}
    for name, weight in weights.items():
        absmax[name] = nf4_absmax(weight, blocksize)
        weight.copy_(nf4_project(weight, absmax[name]).to(weight.dtype))
    return model, NF4Constraint(absmax, blocksize)
