"""Training prompts written by the teacher itself, to widen a small prompt set.

Given nothing but the opening of a user turn in its chat template, an instruction-tuned model
writes a user message of the kind it was tuned on (the observation behind Magpie, Xu et al.
2024). Distilling on those prompts covers more of the teacher's own input distribution than a few
hundred curated prompts do, at no data cost: a student that sees each training response several
times memorises it instead of learning the teacher. Held-out and validation prompts are never
among the written ones, so evaluation is unchanged.
"""

from __future__ import annotations

import json
import math

import torch

from .. import environment, models
from ..data import encode_prompt, texts_hash
from ..errors import RecoverLMError
from ..io import write_text_atomic
from ..lm.generate import generate

_SLOT = "RECOVERLM_USER_MESSAGE_SLOT"
MIN_WORDS = 3
MAX_ROUNDS = 8


def user_turn_opening(tokenizer) -> tuple[list[int], int]:
    """The template's token ids up to where a user's message starts, and the token that ends a user turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise RecoverLMError("teacher-written prompts need a chat template, and the teacher's tokenizer has none; "
                             "set data.teacher_prompts to 0 for a base model")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], tokenize=False,
                                         add_generation_prompt=False)
    if _SLOT not in text:
        raise RecoverLMError("the teacher's chat template does not show the user's message verbatim, so its user "
                             "turn cannot be opened for teacher-written prompts")
    opening, closing = text.split(_SLOT, 1)
    opening_ids = tokenizer(opening, add_special_tokens=False)["input_ids"]
    closing_ids = tokenizer(closing, add_special_tokens=False)["input_ids"]
    end_id = closing_ids[0] if closing_ids else tokenizer.eos_token_id
    if end_id is None:
        raise RecoverLMError("the teacher's chat template has no token that ends a user turn")
    return opening_ids, end_id


def normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def usable_prompts(drafts: list[list[int]], end_id: int, tokenizer, seen: set[str]) -> list[str]:
    """The drafts that are finished (they end the user turn), hold no other control token, have at
    least MIN_WORDS words and are new to `seen` (case and spacing ignored). `seen` grows with them."""
    special = set(tokenizer.all_special_ids)
    kept = []
    for ids in drafts:
        if not ids or ids[-1] != end_id or special.intersection(ids[:-1]):
            continue
        text = tokenizer.decode(ids[:-1]).strip()
        key = normalized(text)
        if len(key.split()) < MIN_WORDS or key in seen:
            continue
        seen.add(key)
        kept.append(text)
    return kept


def teacher_written_prompts(teacher_ref, n: int, *, exclude: list[str], max_prompt_tokens: int,
                            temperature: float = 1.0, batch_size: int = 16, generation_dtype: str = "auto",
                            seed: int = 0, log=print) -> list[str]:
    """`n` distinct prompts the teacher writes (fewer, with a note, if it keeps repeating itself),
    none equal to a prompt in `exclude`; cached, so a teacher writes them once."""
    path = models.resolve_model(teacher_ref)
    tokenizer = models.load_tokenizer(path)
    generation_dtype = environment.generation_dtype(generation_dtype)  # the cache records what ran
    opening, end_id = user_turn_opening(tokenizer)
    # What the template adds around a message when it is used as a prompt: the written text must fit beside it.
    wrapping = len(encode_prompt(tokenizer, "x")) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    room = max_prompt_tokens - wrapping
    if room < 8:
        raise RecoverLMError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for teacher-written prompts "
                             f"(the chat template alone takes {wrapping} tokens)")
    settings = {"teacher_hash": models.model_hash(path), "n": n, "exclude_hash": texts_hash(sorted(exclude)),
                "template_hash": texts_hash([str(tokenizer.chat_template)]), "room": room,
                "temperature": temperature, "generation_dtype": generation_dtype, "batch_size": batch_size, "seed": seed,
                "version": 1}
    cache = models.settings_cache_path("written_prompts", settings, ".jsonl")
    if cache.exists():
        try:
            return [json.loads(line)["prompt"] for line in cache.read_text(encoding="utf-8").splitlines()]
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a damaged cache entry: written again below

    seen = {normalized(p) for p in exclude}
    written: list[str] = []
    model = models.load_model(path, dtype=getattr(torch, generation_dtype)).to(models.compute_device())
    for round_ in range(MAX_ROUNDS):
        asked = batch_size * math.ceil(1.5 * (n - len(written)) / batch_size)
        drafts = generate(model, tokenizer, [opening] * asked, room, temperature, 1.0, batch_size,
                          seed=seed * 1_000 + round_, desc=f"teacher-written prompts ({len(written)}/{n})",
                          stop_id=end_id)
        written += usable_prompts(drafts, end_id, tokenizer, seen)[: n - len(written)]
        if len(written) >= n:
            break
    del model
    if not written:
        raise RecoverLMError("the teacher wrote no usable prompt (none finished its user turn within "
                             f"{room} tokens); raise max_prompt_tokens or set data.teacher_prompts to 0")
    if len(written) < n:
        log(f"the teacher wrote {len(written)} distinct usable prompts of the {n} asked for")
    write_text_atomic(cache, "".join(json.dumps({"prompt": p}) + "\n" for p in written))
    return written
