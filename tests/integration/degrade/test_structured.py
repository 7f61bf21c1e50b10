"""Structured pruning of tiny models: FFN neurons and whole blocks, saved, reloaded and run."""

import torch
from helpers.methods import CAL

from recoverlm.degrade import apply_method, degrade
from recoverlm.lm.blocks import decoder_layers
from recoverlm.models import load_model


def test_ffn_pruning_shrinks_and_reloads(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    record = degrade(tiny_model, "prune.ffn", {"fraction": 0.25, **CAL}, tmp_path / "ffn")
    assert record["shape"] == {"intermediate_size": [128, 96]}
    assert record["model"]["after"]["intermediate_size"] == 96
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ffn")
    assert model.config.intermediate_size == 96
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (96, 64)
        assert layer.mlp.up_proj.weight.shape == (96, 64)
        assert layer.mlp.down_proj.weight.shape == (64, 96)
    logits = model(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()


def test_ffn_score_keeps_a_massive_activation_neuron(tiny_model, tok):
    """A neuron with huge activations and a small down_proj column dominates the block's output;
    a weight-norm score would drop it, the activation-aware score must keep it."""
    model = load_model(tiny_model)
    mlp = decoder_layers(model)[1][0].mlp
    with torch.no_grad():
        mlp.up_proj.weight[7] *= 1000.0
        mlp.gate_proj.weight[7] *= 30.0
        mlp.down_proj.weight[:, 7] *= 0.01
    kept_before = mlp.up_proj.weight[7].clone()
    model, _ = apply_method(model, "prune.ffn", {"fraction": 0.5, **CAL}, tokenizer=tok)
    mlp = decoder_layers(model)[1][0].mlp
    assert any(torch.equal(row, kept_before) for row in mlp.up_proj.weight)


def test_depth_pruning_drops_blocks_and_generates(deep_model, tmp_path):
    from transformers import AutoModelForCausalLM

    record = degrade(deep_model, "prune.depth", {"n_blocks": 2, **CAL}, tmp_path / "depth")
    assert record["shape"] == {"num_hidden_layers": [4, 2]}
    assert len(record["dropped_blocks"]) == 2 and len(record["angular_distance"]) == 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "depth")
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape[1] == 9
    # The in-memory result matches what was saved: same blocks kept, same weights.
    reference = load_model(deep_model)
    kept = [i for i in range(4) if i not in record["dropped_blocks"]]
    for new, old in enumerate(kept):
        assert torch.equal(model.model.layers[new].mlp.up_proj.weight, reference.model.layers[old].mlp.up_proj.weight)
