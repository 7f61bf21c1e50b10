"""Hidden-state capture on a tiny model: the blocks' outputs, before the LM head, with padding masked."""

import pytest
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


def test_training_and_cka_see_the_same_layers(three_layer):
    """hidden_weight (completion_outputs) and CKA (hidden_states) take the same layers: every
    block's raw output, the last one too, which is not HF's final-norm hidden_states[-1]."""
    from recoverlm.data import collate
    from recoverlm.lm.forward import completion_outputs

    model = load_model(three_layer)
    batch = collate([[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14, 15, 16]], PAD)
    _, trained = completion_outputs(model, batch, logits=False, hidden=True)
    captured = hidden_states(model, batch.input_ids, batch.attention_mask)
    predicts = batch.completion[:, 1:]
    for layer, states in enumerate(captured[1:]):
        assert torch.allclose(trained[layer], states[:, :-1][predicts], atol=1e-6)
    final_norm = model(**{k: getattr(batch, k) for k in ("input_ids", "attention_mask")},
                       output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(trained[-1], final_norm[:, :-1][predicts], atol=1e-3)
    assert trained.shape[0] == model.config.num_hidden_layers


@pytest.mark.parametrize("checkpointing", [False, True])
def test_hidden_states_keep_their_gradient_for_training(three_layer, checkpointing):
    """The captured states are the graph's own tensors, with activation checkpointing too."""
    from recoverlm.data import collate
    from recoverlm.lm.forward import completion_outputs

    model = load_model(three_layer).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    _, states = completion_outputs(model, collate([[5, 6]], [[7, 8, 9]], PAD), hidden=True)
    states.square().sum().backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
