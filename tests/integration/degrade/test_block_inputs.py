"""Calibration feeds each block what the model's own forward feeds it: on models that mix attention
kinds (Gemma 3's sliding-window and global layers), each block its own mask and rotary tables."""

import pytest
import torch

from recoverlm.degrade.calibration import Calibration, walk_blocks
from recoverlm.lm.capture import hidden_states


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"] * 2, rope_theta=1e6)
    return Gemma3ForCausalLM(config).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("build", [_gemma3, _llama])
def test_every_block_gets_the_inputs_of_the_models_own_forward(build):
    model = build()
    ids = torch.randint(5, 200, (40,))
    seen = [inputs[0].hidden[0].clone() for _, _, inputs in walk_blocks(model, Calibration("t", [], [ids], "h"), "t")]
    reference = hidden_states(model, ids[None], torch.ones(1, 40, dtype=torch.long))
    for i, hidden in enumerate(seen):
        assert torch.allclose(hidden, reference[i][0], atol=1e-5, rtol=1e-4), f"block {i}"
