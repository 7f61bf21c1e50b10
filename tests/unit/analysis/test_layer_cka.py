"""Which tokens layer CKA leaves out, on small tensors: massive-activation tokens and padding."""

import pytest
import torch

from recoverlm.analysis.layer_cka import typical_token_mask
from recoverlm.ops.cka import linear_cka


def test_one_massive_token_dominates_linear_cka_until_left_out():
    """The reason for typical_token_mask: one shared huge row makes unrelated features look aligned."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)  # unrelated
    x[0], y[0] = 500.0, 500.0  # a sink token, huge in both models
    assert linear_cka(x, y) > 0.95
    states = (x[None], x[None] * 2)  # (B=1, T=200, d) at two layers; the teacher's states decide
    keep = typical_token_mask(states, torch.ones(1, 200, dtype=torch.long), ratio=20.0)[0]
    assert not keep[0] and keep[1:].all()
    assert linear_cka(x[keep], y[keep]) < 0.3


def test_typical_token_mask_never_keeps_padding_and_checks_the_ratio():
    h = torch.ones(2, 4, 3)
    h[1, 3] = 1e6  # a padded position with a huge value must not move the median or be kept
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    keep = typical_token_mask((h,), mask, ratio=5.0)
    assert keep.tolist() == [[True] * 4, [True, True, True, False]]
    with pytest.raises(Exception, match="ratio must be > 1"):
        typical_token_mask((h,), mask, ratio=1.0)
