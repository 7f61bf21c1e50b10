"""Where the decoder blocks and their weight matrices are, in Llama-style HF models (Llama, Qwen2,
Mistral, Gemma and alike), found by structure rather than by class name."""

from __future__ import annotations

import torch

from ..errors import RecoverLMError


def decoder_layers(model) -> tuple[str, torch.nn.ModuleList]:
    """The decoder blocks and their module path (e.g. "model.layers")."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and "lm_head" not in name:
            return name, module
    raise RecoverLMError("the model has no `layers` list of decoder blocks (supported: Llama, Qwen2, Mistral and alike)")


def run_blocks(model) -> list[torch.nn.Module]:
    """The decoder blocks the forward actually runs: a depth-pruned model may keep a longer list
    than its config's num_hidden_layers."""
    _, layers = decoder_layers(model)
    config = getattr(unwrapped(model), "config", None)
    return list(layers)[: getattr(config, "num_hidden_layers", len(layers))]


def unwrapped(model):
    """The model inside a DDP or DeepSpeed wrapper (PEFT models forward what is asked of them)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def linear_weights(model) -> dict[str, torch.nn.Parameter]:
    """The weight matrices of the decoder blocks: what pruning and quantization act on.

    Embeddings and the LM head are left alone, as in Wanda, SparseGPT and GPTQ.
    """
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name:
            out[f"{name}.weight"] = module.weight
    return out


def block_linears(model, index: int) -> dict[str, torch.nn.Linear]:
    """The Linear modules of block `index`, keyed by weight name as in `linear_weights`."""
    prefix, _ = decoder_layers(model)
    start = f"{prefix}.{index}."
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(start)
    }
