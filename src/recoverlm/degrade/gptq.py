"""GPTQ (Frantar et al. 2022), written out so that its result lies on a QuantGridConstraint grid.

Per Linear: H = 2/N X^T X from the calibration inputs; quantize the columns left to right and
spread each column's rounding error over the columns still to come, weighted by the Cholesky
factor of H^-1 (the OBS update). Blocks are calibrated in order on the outputs of the already
quantized blocks, as in the reference code; the Linears inside one block share one pass (no
"true sequential" inside the block). act_order is off, so groups are contiguous columns and the
scales and zeros have exactly RTN's format: recovery keeps the weights on the same kind of grid.
"""

from __future__ import annotations

import contextlib

import torch

from ..constraints import QuantGridConstraint
from ..constraints.grid_math import fake_quantize, qrange
from ..errors import RecoverLMError
from ..lm.blocks import block_linears, linear_weights
from .calibration import (
    check_calibration_args,
    load_calibration,
    run_block,
    walk_blocks,
)
from .checks import check_int
from .quantize import check_quant_args, rtn_grid


def _hinv_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1, in float64; damping grows if H is too ill-posed."""
    h = h.clone()
    damp = percdamp * torch.mean(torch.diag(h))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(4):
        factor, info = torch.linalg.cholesky_ex(h + damp * eye)
        if info == 0:
            hinv = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if info == 0:
                return upper
        damp = damp * 10 if damp > 0 else 1e-6
    raise RecoverLMError("percdamp: the calibration Hessian stays singular; raise percdamp or add calibration data")


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of tiny ops, where synchronising threads costs more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def gptq_matrix(weight: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                percdamp: float = 0.01, blocksize: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize one (out, in) matrix given its input Hessian; returns (weights on grid, scale, zero).

    Each group's scale and zero are fixed when the quantizer reaches the group's first column,
    from the weights as error compensation has updated them by then (the reference takes them
    from W, which misses the updates made inside the current lazy block; we take all of them).
    """
    w = weight.detach().float().clone()
    out_features, n_cols = w.shape
    h = h.to(device=w.device, dtype=torch.float64, copy=True)
    dead = torch.diag(h) == 0  # inputs that never fire: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = _hinv_cholesky(h, percdamp).float()

    group = group_size or n_cols
    # Lazy blocks aligned to groups, so a group never straddles two blocks.
    blocksize = max(group, blocksize // group * group) if group_size else blocksize
    scales = torch.empty(out_features, n_cols // group, device=w.device)
    zeros = torch.empty_like(scales)
    if not group_size:
        scales[:], zeros[:] = rtn_grid(w, bits, 0, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    q = torch.zeros_like(w)
    for i1 in range(0, n_cols, blocksize):
        i2 = min(i1 + blocksize, n_cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col // group
            if group_size and col % group == 0:
                s, z = rtn_grid(w1[:, i:i + group], bits, 0, symmetric)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            qcol = fake_quantize(w1[:, i:i + 1], scales[:, g:g + 1], zeros[:, g:g + 1], qmin, qmax)[:, 0]
            q[:, col] = qcol
            err = (w1[:, i] - qcol) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q, scales, zeros


@torch.no_grad()
def quantize_gptq(model, bits: int = 4, group_size: int = 32, symmetric: bool = False, percdamp: float = 0.01,
                  blocksize: int = 128, calibration=None, n_calibration: int = 128, max_length: int = 128,
                  *, tokenizer=None, record=None, held_out=()):
    weights = linear_weights(model)
    check_quant_args(bits, group_size, symmetric, weights)
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 < percdamp <= 1:
        raise RecoverLMError(f"percdamp must lie in (0, 1], got {percdamp!r}")
    check_int("blocksize", blocksize, 1)
    check_calibration_args(calibration, n_calibration, max_length)
    calib = load_calibration(tokenizer, calibration, n_calibration, max_length, held_out)

    scales, zeros = {}, {}
    for i, block, inputs in walk_blocks(model, calib, "gptq"):
        linears = block_linears(model, i)
        xtx = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device)
               for n, m in linears.items()}
        run_block(block, inputs, linears, lambda n, x: xtx[n].addmm_(x.double().T, x.double()))
        for name, module in linears.items():
            h = 2.0 * xtx[name] / calib.n_tokens
            with _one_thread():
                qw, scales[name], zeros[name] = gptq_matrix(module.weight, h, bits, group_size, symmetric, percdamp, blocksize)
            module.weight.copy_(qw.to(module.weight.dtype))
    if record is not None:
        record["calibration"] = calib.summary()
    return model, QuantGridConstraint(scales, zeros, bits=bits, symmetric=symmetric)
