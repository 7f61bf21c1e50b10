"""GPTQ's matrix maths on plain tensors."""

import torch

from recoverlm.constraints.grid_math import fake_quantize


def test_gptq_matrix_maths():
    """With an isotropic Hessian there is no error to spread, so GPTQ is RTN; lazy batching is an
    exact reordering of the updates, so the block size does not change the result."""
    from recoverlm.degrade.gptq import gptq_matrix
    from recoverlm.degrade.quantize import rtn_grid

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g)
    q, scale, zero = gptq_matrix(w, torch.eye(64, dtype=torch.float64), 3, 16, False)
    rtn_scale, rtn_zero = rtn_grid(w, 3, 16, False)
    assert torch.equal(q, fake_quantize(w, rtn_scale, rtn_zero, 0, 7))
    x = torch.randn(256, 64, generator=g) @ torch.randn(64, 64, generator=g)
    h = 2 * x.double().T @ x.double() / 256
    one_block, _, _ = gptq_matrix(w, h, 3, 16, False, blocksize=64)
    lazy, _, _ = gptq_matrix(w, h, 3, 16, False, blocksize=16)
    # Equal up to float rounding (the scales may differ in the last bit; a rare tie may flip).
    assert ((one_block - lazy).abs() > 1e-4).float().mean() < 0.01
    assert (x @ (w - lazy).T).pow(2).mean() < (x @ (w - fake_quantize(w, rtn_scale, rtn_zero, 0, 7)).T).pow(2).mean()
