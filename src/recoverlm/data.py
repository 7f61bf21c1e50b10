"""Prompt sets, chat formatting and tokenisation of prompt/response pairs."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import RecoverLMError

BUILTIN_PROMPTS = Path(__file__).parent / "data" / "prompts_general.jsonl"


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file; a bad line is reported with its file and line number."""
    path = Path(path)
    if not path.is_file():
        raise RecoverLMError(f"file not found: {path}")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoverLMError(f"cannot read {path}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecoverLMError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise RecoverLMError(f"{path}:{lineno}: expected a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise RecoverLMError(f"{path}:{lineno}: missing required key(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise RecoverLMError(f"{path} holds no records")
    return rows


def load_prompts(path: Path | None = None) -> list[str]:
    """User prompts from JSONL: each line has "prompt" (a string) or "messages" (chat turns, whose
    last user turn is the prompt: a conversation that ends in the assistant's answer, as task files
    of question and answer do, is not prompted with that answer)."""
    where = path or BUILTIN_PROMPTS
    rows = read_jsonl(where)
    prompts = []
    for number, row in enumerate(rows, 1):
        if isinstance(row.get("prompt"), str) and row["prompt"].strip():
            prompts.append(row["prompt"])
        elif isinstance(row.get("messages"), list) and row["messages"]:
            turns = row["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in turns):
                raise RecoverLMError(f"{where}: record {number}: each message must be an object "
                                     "with a string 'content', like {\"role\": \"user\", \"content\": \"...\"}")
            users = [m for m in turns if m.get("role", "user") == "user"]
            if not users:
                raise RecoverLMError(f"{where}: record {number}: no message has the role 'user', so there is no prompt")
            prompts.append(users[-1].get("content", ""))
        else:
            raise RecoverLMError(f"{where}: record {number} (of the non-blank lines) has neither a "
                                 "non-empty 'prompt' nor 'messages'")
    return prompts


def split_prompts(prompts: list[str], n_heldout: int, seed: int = 0, label: str = "n_heldout") -> tuple[list[str], list[str]]:
    """A deterministic split into (train, held-out); the two never share a prompt text."""
    unique = list(dict.fromkeys(prompts))
    if n_heldout >= len(unique):
        raise RecoverLMError(f"{label}={n_heldout} leaves no training prompts (only {len(unique)} distinct prompts)")
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    heldout = [unique[i] for i in sorted(order[:n_heldout])]
    train = [unique[i] for i in sorted(order[n_heldout:])]
    return train, heldout


def validation_size(n_train: int, requested: int | None) -> int:
    """Prompts set aside from the training side to pick the best checkpoint: an eighth of them
    (at most 24, at least 1) unless the config names a number; 0 selects on the held-out set."""
    return min(24, max(1, n_train // 8)) if requested is None else requested


def split_three(prompts: list[str], n_heldout: int, n_validation: int | None, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, held-out), pairwise disjoint. The held-out split is the same as with
    `split_prompts`, so adding a validation split never changes what evaluation scores."""
    train, heldout = split_prompts(prompts, n_heldout, seed)
    n_val = validation_size(len(train), n_validation)
    if n_val == 0:
        return train, [], heldout
    train, validation = split_prompts(train, n_val, seed + 1, label="n_validation")
    return train, validation, heldout


def scored_prompts(prompts: list[str], n_heldout: int, n_validation: int | None, seed: int = 0) -> list[str]:
    """The prompts a run scores rather than trains on (validation, then held-out), which nothing
    fitted to the model, calibration included, may see."""
    _, validation, heldout = split_three(prompts, n_heldout, n_validation, seed)
    return validation + heldout


def heldout_hash(prompts: list[str], n_heldout: int, seed: int = 0) -> str:
    """Which prompts a split holds out, by content: the same file name may hold other prompts later."""
    return texts_hash(split_prompts(prompts, n_heldout, seed)[1])


def texts_hash(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def encode_prompt(tokenizer, prompt: str, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it before answering."""
    if use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise RecoverLMError(
                "the tokenizer has no chat template; pass use_chat_template: false (--no-chat-template) for a base model"
            )
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int, use_chat_template: bool = True,
                   overflow: str = "skip") -> tuple[list[list[int]], list[int], int]:
    """Encode prompts; over-long ones are skipped, or keep their end (the template kept whole).
    Returns (ids, kept indices, n_overflow)."""
    if overflow not in ("skip", "truncate"):
        raise RecoverLMError(f"overflow must be 'skip' or 'truncate', got {overflow!r}")
    encoded, kept, n_over = [], [], 0
    for i, p in enumerate(prompts):
        ids = encode_prompt(tokenizer, p, use_chat_template)
        if not ids:  # nothing would predict a response's first token, and every row after it would shift
            raise RecoverLMError(f"prompt {i + 1} encodes to no tokens (an empty prompt without a chat template or "
                                 "BOS token); remove it")
        if len(ids) > max_prompt_tokens:
            n_over += 1
            if overflow == "skip":
                continue
            ids = _truncated(tokenizer, p, ids, max_prompt_tokens, use_chat_template)
        encoded.append(ids)
        kept.append(i)
    if not encoded:
        raise RecoverLMError(f"no prompt fits in max_prompt_tokens={max_prompt_tokens}")
    return encoded, kept, n_over


def _truncated(tokenizer, prompt: str, ids: list[int], limit: int, use_chat_template: bool) -> list[int]:
    """The prompt's end kept and rendered again, so that the BOS token and the chat template's
    opening survive (cutting the rendered ids would start mid-message); its plain ids' end where
    not even the template's own tokens fit."""
    content = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    keep = len(content) - (len(ids) - limit)
    while keep > 0:
        shorter = encode_prompt(tokenizer, tokenizer.decode(content[-keep:]), use_chat_template)
        if len(shorter) <= limit:
            return shorter
        keep -= len(shorter) - limit  # a re-tokenized join can come out a token or two longer
    return ids[-limit:]


@dataclass
class Batch:
    """Right-padded prompt+response sequences; `completion` marks the response tokens."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    completion: torch.Tensor  # (B, T) bool: the token at t belongs to the response

    @property
    def n_completion(self) -> int:
        return int(self.completion.sum())


def collate(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Batch:
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(lengths), width), dtype=torch.long)
    comp = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        comp[i, len(p): len(seq)] = True
    return Batch(ids, attn, comp)


def chat_texts(tokenizer, prompts: list[str], use_chat_template: bool = True) -> list[str]:
    """Prompts rendered as the model sees them (for calibration data)."""
    return [tokenizer.decode(encode_prompt(tokenizer, p, use_chat_template)) for p in prompts]
