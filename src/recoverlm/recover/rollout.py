"""Batched generation and teacher scoring: the two places where the teacher does real work."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import Batch, collate


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 16, seed: int = 0, desc: str = "generating",
             progress: bool = True, synced: bool = False, stop_id: int | None = None) -> list[list[int]]:
    """Responses to tokenised prompts: KV-cached, left-padded, stopping at EOS (or `stop_id`).

    Prompts are bucketed by length so little compute goes to padding. The EOS token, when
    produced, is kept as the last response token so that students learn to stop.
    Returns response token ids in the order of `prompt_ids`.
    """
    eos = tokenizer.eos_token_id if stop_id is None else stop_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[list[int] | None] = [None] * len(prompt_ids)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(order), desc=desc, unit="seq", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        width = max(len(prompt_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            p = prompt_ids[i]
            ids[row, width - len(p):] = torch.tensor(p)
            attn[row, width - len(p):] = 1
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        sample = temperature > 0
        result = model.generate(
            input_ids=ids.to(model.device), attention_mask=attn.to(model.device), max_new_tokens=max_new_tokens,
            do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
            top_k=None, pad_token_id=pad, eos_token_id=eos, use_cache=True, synced_gpus=synced,
        )
        for row, i in enumerate(chunk):
            new = result[row, width:].tolist()
            if eos in new:
                new = new[: new.index(eos) + 1]
            out[i] = new
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out  # type: ignore[return-value]


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
    with `hidden`, every block's hidden state at the same positions, shape (L, N, d), from one
    forward. The last state is the final-norm output, as HF returns it."""
    device = batch.input_ids.device if not hasattr(model, "parameters") else next(model.parameters()).device
    predicts = batch.completion[:, 1:].to(device)
    cols = predicts.any(0).nonzero().squeeze(1)
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                logits_to_keep=cols if logits else cols[:0], use_cache=False, output_hidden_states=hidden)
    rows = out.logits[predicts[:, cols]] if logits else None
    states = torch.stack([h[:, :-1][predicts] for h in out.hidden_states[1:]]) if hidden else None
    return rows, states


def completion_targets(batch: Batch) -> torch.Tensor:
    return batch.input_ids[:, 1:][batch.completion[:, 1:]]


@torch.no_grad()
def teacher_topk(teacher, prompt_ids: list[list[int]], response_ids: list[list[int]], k: int, pad_id: int,
                 batch_size: int = 16, temperature: float = 1.0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k log-probabilities (+ tail bucket) at every response token, concatenated.

    Returns (indices (N, k) int32, bucket log-probs (N, k+1) float32), rows in sequence order.
    """
    from .losses import bucket_logprobs

    all_idx, all_lp = [], []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="teacher top-k", disable=not progress, leave=False):
        batch = collate(prompt_ids[start: start + batch_size], response_ids[start: start + batch_size], pad_id)
        logits = completion_logits(teacher, batch).float()
        idx = torch.topk(logits, k, dim=-1).indices
        all_lp.append(bucket_logprobs(logits, idx, temperature).cpu())
        all_idx.append(idx.to(torch.int32).cpu())
    return torch.cat(all_idx), torch.cat(all_lp)
