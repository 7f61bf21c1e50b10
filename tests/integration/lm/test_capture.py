"""Hidden-state capture on a tiny model: the blocks' outputs, before the LM head, with padding masked."""

import torch

from recoverlm.analysis.layer_cka import pool
from recoverlm.lm.capture import hidden_states
from recoverlm.models import load_model


PAD = 2


def test_capture_stops_before_the_lm_head_and_masks_padding(three_layer):
    model = load_model(three_layer)
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.full((1, 4), PAD)], 1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    plain = pool(hidden_states(model, ids, torch.ones_like(ids)), torch.ones_like(ids))
    masked = pool(hidden_states(model, padded, mask), mask)
    assert [h.shape for h in masked] == [(6, 64)] * 4
    for a, b in zip(plain, masked):
        assert torch.allclose(a, b, atol=1e-5)
    ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(plain[2], ref[2][0], atol=1e-6)  # blocks match HF; HF's last one is after the final norm
