"""Batched generation: the teacher's responses, the student's on-policy samples, greedy answers."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from .modes import eval_mode


def left_padded(prompt_ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every prompt ending at the last column, where generation starts."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p):] = torch.tensor(p)
        attn[row, width - len(p):] = 1
    return ids, attn


def stop_ids(model, tokenizer) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS and those of the model's generation config,
    which for chat models often adds a turn-end token the tokenizer does not call EOS (Gemma's
    <end_of_turn>, Llama 3's <|eot_id|>). Passing the tokenizer's alone would override the others."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in configured if isinstance(configured, (list, tuple)) else [configured]:
        if t is not None and t not in ids:
            ids.append(int(t))
    return ids


@contextmanager
def plain_decoding(model):
    """The model's generation config replaced, for the call, by one that keeps only its special
    tokens: a shipped repetition_penalty, no_repeat_ngram_size or min_new_tokens would otherwise
    apply to every call (transformers fills unset options from it), so "greedy" would not be the
    argmax and samples would not come from the distribution the cached logits describe."""
    from transformers import GenerationConfig

    shipped = getattr(model, "generation_config", None)
    if shipped is None:
        yield
        return
    tokens = {k: getattr(shipped, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    model.generation_config = GenerationConfig(**{k: v for k, v in tokens.items() if v is not None})
    try:
        yield
    finally:
        model.generation_config = shipped


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 16, seed: int = 0, desc: str = "generating",
             progress: bool = True, synced: bool = False, stop_id: int | None = None) -> list[list[int]]:
    """Responses to tokenised prompts: KV-cached, left-padded, stopping at any end-of-turn token
    (`stop_ids`), or at `stop_id`.

    Prompts are bucketed by length so little compute goes to padding. The stop token, when
    produced, is kept as the last response token so that students learn to stop.
    Returns response token ids in the order of `prompt_ids`.
    """
    stops = stop_ids(model, tokenizer) if stop_id is None else [stop_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[list[int] | None] = [None] * len(prompt_ids)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=len(order), desc=desc, unit="seq", disable=not progress, leave=False)
    with eval_mode(model), plain_decoding(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            ids, attn = left_padded([prompt_ids[i] for i in chunk], pad)
            width = ids.shape[1]
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            sample = temperature > 0
            result = model.generate(
                input_ids=ids.to(model.device), attention_mask=attn.to(model.device), max_new_tokens=max_new_tokens,
                do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
                top_k=None, pad_token_id=pad, eos_token_id=stops, use_cache=True, synced_gpus=synced,
            )
            for row, i in enumerate(chunk):
                new = result[row, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), None)
                out[i] = new if end is None else new[: end + 1]
            bar.update(len(chunk))
    bar.close()
    return out  # type: ignore[return-value]
