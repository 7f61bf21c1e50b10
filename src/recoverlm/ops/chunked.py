"""Per-token losses through the LM head, a chunk of positions at a time, so that no
[positions x vocabulary] float32 tensor exists in full: at 8 x 2048 positions and Qwen2.5's 152k
tokens that tensor is 10 GB per model, more than the 3B model's weights.

Each chunk's logits are made from the final hidden states inside an activation checkpoint: the
forward keeps only the chunk's hidden rows, and the backward remakes its logits to get their
gradient. The teacher's side (its logits, or its cached top-k) is computed inside the same chunk
by the caller's `loss_of` and never kept. Values and gradients equal the unchunked computation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                softcap: float | None = None) -> torch.Tensor:
    """An LM head on hidden rows (N, d) -> (N, V), with Gemma-style final logit soft-capping."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


# Measured on CPU at Qwen2.5's 152k vocabulary (docs/benchmarks.md, "Memory"): at 1,024 positions
# (0.6 GiB of logits) chunks of 512 cost 1.22x the time and save 1.8x the memory; at 4,096
# (2.3 GiB) they take 0.81x the time and 7.1x less memory.
AUTO_CHUNK, AUTO_CHUNK_BYTES = 512, 2**30


def auto_chunk(positions: int, vocab: int) -> int:
    """The chunk `recover.logit_chunk: auto` uses: none until a float32 [positions x vocab] logits
    tensor would reach AUTO_CHUNK_BYTES, where chunks start to be faster as well as smaller."""
    return AUTO_CHUNK if positions * vocab * 4 >= AUTO_CHUNK_BYTES else 0


def chunked_per_token(hidden: torch.Tensor, weight: torch.Tensor, loss_of: Callable[[torch.Tensor, slice], torch.Tensor],
                      chunk: int, bias: torch.Tensor | None = None, softcap: float | None = None) -> torch.Tensor:
    """Per-token losses, (..., N): `loss_of(logits_of_rows, rows)` on consecutive slices of
    `chunk` rows of `hidden`, the logits made by the head (`weight`, `bias`, `softcap`) inside the
    slice; `loss_of` returns (..., n) for its n rows (several terms may be stacked in front)."""
    if chunk <= 0 or chunk >= hidden.shape[0]:
        return loss_of(head_logits(hidden, weight, bias, softcap), slice(0, hidden.shape[0]))
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, min(start + chunk, hidden.shape[0]))

        def piece(h, w, b, rows=rows):
            return loss_of(head_logits(h, w, b, softcap), rows)

        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            parts.append(checkpoint(piece, hidden[rows], weight, bias, use_reentrant=False))
        else:
            parts.append(piece(hidden[rows], weight, bias))
    return torch.cat(parts, dim=-1)
