"""The one hidden-state capture: the input embeddings, then the raw output of every decoder block.

Every consumer (CKA, the hidden-state training term, the hidden-error measure) sees the same
layers. The last entry is the last block's output (the residual stream), not the final-norm output
that HF returns as `hidden_states[-1]`: a normalised last entry would be a different kind of
quantity from the others. Forward hooks take the states, which also lets a pass stop after the
last block so that the (tokens x vocab) logits, useless for CKA, are never formed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import RecoverLMError
from .blocks import run_blocks, unwrapped


class StopForward(Exception):
    """Raised by a hook once a forward pass has produced what it was run for."""


def forward_until_stop(model, **inputs):
    """model(**inputs), ended early (returning None) where a hook raises StopForward."""
    try:
        return model(**inputs)
    except StopForward:
        return None


@contextlib.contextmanager
def layer_outputs(model, stop_after_last: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collects, for each forward inside the block, the embeddings and then every block's output
    (each (B, T, d), with autograd intact). With `stop_after_last` the pass raises StopForward
    after the last block; run it through `forward_until_stop`."""
    blocks = run_blocks(model)
    states: list[torch.Tensor] = []

    def grab(stop: bool):
        def hook(module, args, out):
            states.append(out[0] if isinstance(out, tuple) else out)
            if stop:
                raise StopForward

        return hook

    handles = [unwrapped(model).get_input_embeddings().register_forward_hook(grab(False))]
    handles += [b.register_forward_hook(grab(stop_after_last and i == len(blocks) - 1)) for i, b in enumerate(blocks)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()
    if states and len(states) % (len(blocks) + 1):
        raise RecoverLMError(f"captured {len(states)} hidden states, expected a multiple of {len(blocks) + 1} "
                             "(embeddings + blocks)")


@torch.no_grad()
def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Embeddings, then the output of every decoder block: len = depth + 1, each (B, T, d) on the
    model's device. The pass stops after the last block."""
    device = next(model.parameters()).device
    with layer_outputs(model, stop_after_last=True) as states:
        forward_until_stop(model, input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                           use_cache=False)
    return tuple(states)
