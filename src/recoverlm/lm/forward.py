"""Forward passes over the positions that predict response tokens: what distillation, fidelity
and the hidden-state term all score."""

from __future__ import annotations

import torch

from ..data import Batch
from ..errors import RecoverLMError
from .capture import layer_outputs


def completion_logits(model, batch: Batch) -> torch.Tensor:
    """Next-token logits at the positions that predict response tokens only, shape (N, V).

    The LM head runs only over the sequence positions that some row needs (`logits_to_keep`),
    which keeps a distillation step close to the cost of a plain SFT step; the call goes through
    the model's own forward, so DDP and PEFT wrappers see it. Rows are sequence-major, matching
    `completion_targets`.
    """
    return completion_outputs(model, batch)[0]


def completion_outputs(model, batch: Batch, logits: bool = True, hidden: bool = False):
    """`completion_logits` (None when `logits` is off: the LM head then runs on no position) and,
    with `hidden`, every block's output at the same positions, shape (L, N, d), from one forward:
    the layers of `lm.capture`, without the embeddings."""
    device = batch.input_ids.device if not hasattr(model, "parameters") else next(model.parameters()).device
    predicts = batch.completion[:, 1:].to(device)
    cols = predicts.any(0).nonzero().squeeze(1)
    inputs = dict(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                  logits_to_keep=cols if logits else cols[:0], use_cache=False)
    if not hidden:
        return model(**inputs).logits[predicts[:, cols]] if logits else None, None
    with layer_outputs(model) as layers:
        out = model(**inputs)
    states = torch.stack([h[:, :-1][predicts] for h in layers[1:]])
    if torch.is_grad_enabled() and not states.requires_grad and any(p.requires_grad for p in model.parameters()):
        raise RecoverLMError("the blocks' hidden states were captured without gradients (activation checkpointing "
                             "that runs the blocks' hooks outside autograd, as transformers 4.x does); turn "
                             "gradient_checkpointing off or use transformers 5")
    return (out.logits[predicts[:, cols]] if logits else None), states


def completion_targets(batch: Batch) -> torch.Tensor:
    return batch.input_ids[:, 1:][batch.completion[:, 1:]]
