"""Forward passes over the positions that predict response tokens: what distillation, fidelity
and the hidden-state term all score."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..data import Batch
from ..errors import RecoverLMError
from .blocks import unwrapped
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


@dataclass
class Head:
    """An LM head as tensors: logits = softcap(hidden @ weight.T + bias)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None


class _HeadInputs(torch.nn.Module):
    """Stands in for the LM head during one forward: keeps what the head was given and returns a
    one-wide placeholder, so the model's forward runs unchanged but no vocabulary-wide logits exist."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, hidden):
        self.seen.append(hidden)
        return hidden[..., :1] * 0


def head_of(model) -> Head:
    base = unwrapped(model)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise RecoverLMError(f"recover.logit_chunk needs a plain linear LM head; this model's is {type(head).__name__} "
                             "(a LoRA adapter on lm_head?)")
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    for scaled in ("logits_scaling", "logit_scale"):  # Granite, Cohere: a head recoverlm does not rebuild
        if getattr(config, scaled, None) not in (None, 1, 1.0):
            raise RecoverLMError(f"recover.logit_chunk does not support a model whose logits are scaled ({scaled})")
    return Head(head.weight, head.bias, getattr(config, "final_logit_softcapping", None))


@contextlib.contextmanager
def _head_inputs(model):
    base = unwrapped(model)
    if hasattr(base, "get_base_model"):  # PEFT: the transformers model inside
        base = base.get_base_model()
    head, stand_in = base.get_output_embeddings(), _HeadInputs()
    base.set_output_embeddings(stand_in)
    try:
        yield stand_in.seen
    finally:
        base.set_output_embeddings(head)


def completion_head_inputs(model, batch: Batch, hidden: bool = False):
    """What the LM head would get at the positions `completion_logits` scores, (N, d), instead of
    the logits themselves (the final norm applied); with `hidden`, every block's output as well.
    The divergences then go through the head in chunks (ops.chunked)."""
    with _head_inputs(model) as seen:
        _, states = completion_outputs(model, batch, logits=True, hidden=hidden)
    predicts = batch.completion[:, 1:].to(seen[0].device)
    cols = predicts.any(0).nonzero().squeeze(1)
    return seen[0][predicts[:, cols]], states


def completion_targets(batch: Batch) -> torch.Tensor:
    return batch.input_ids[:, 1:][batch.completion[:, 1:]]
