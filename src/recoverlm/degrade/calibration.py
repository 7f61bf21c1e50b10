"""Calibration data, and the block-by-block walk that the calibrated methods share.

Calibrated methods (Wanda, N:M by Wanda score, FFN and depth pruning, GPTQ) look at activations.
They all walk the decoder blocks in order, as the reference Wanda and GPTQ code do: block i is
calibrated on the outputs of blocks 0..i-1 *as already damaged*, so each block compensates for
what the earlier ones lost. That costs two passes per block instead of one pass over the model,
but no pass is ever longer than one block.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import data
from ..errors import RecoverLMError
from ..lm.blocks import decoder_layers
from ..lm.capture import StopForward, forward_until_stop
from ..lm.modes import eval_mode
from .checks import check_int

CALIBRATION_DEFAULTS = {"calibration": None, "n_calibration": 128, "max_length": 128}


@dataclass
class Calibration:
    source: str  # "builtin" or the file path
    texts: list[str]
    ids: list[torch.Tensor]  # one 1-D LongTensor per sample, unpadded
    hash: str

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.ids)

    def summary(self) -> dict:
        return {"source": self.source, "samples": len(self.ids), "tokens": self.n_tokens, "hash": self.hash}


def check_calibration_args(calibration, n_calibration, max_length) -> None:
    check_int("n_calibration", n_calibration, 1)
    check_int("max_length", max_length, 2)
    if calibration is not None and not isinstance(calibration, (str, Path)):
        raise RecoverLMError(f"calibration must be a file path (JSONL or text), got {calibration!r}")


def _render(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """A conversation as the model sees it, and whether a chat template rendered it (its special
    tokens are then in the text); plain turns joined by newlines for a model without one."""
    if getattr(tokenizer, "chat_template", None):
        add = messages[-1].get("role") == "user"
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add), True
    return "\n".join(str(m.get("content", "")) for m in messages), False


def _encode(tokenizer, text: str, templated: bool) -> list[int]:
    """Token ids as the run's own prompts get them: a template's text holds its special tokens; any
    other text gets the tokenizer's (a BOS a base model such as Gemma expects before every sequence),
    once, even where the text already begins with it."""
    if templated:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ids[1:] if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos else ids


def _file_texts(path: Path, tokenizer) -> list[tuple[str, bool]]:
    """JSONL: each record has "text" (used as written), "prompt" (a user turn) or "messages" (chat
    turns), the last two rendered with the chat template. Any other file: plain UTF-8 text, one
    sample per blank-line-separated paragraph. Each text comes with whether a template rendered it."""
    if not path.is_file():
        raise RecoverLMError(f"calibration: file not found: {path}")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoverLMError(f"calibration: cannot read {path}: {exc}") from exc
    if path.suffix != ".jsonl":
        texts = [(p.strip(), False) for p in content.split("\n\n") if p.strip()]
    else:
        texts = []
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecoverLMError(f"calibration: {path}:{lineno}: invalid JSON ({exc.msg})") from exc
            row = row if isinstance(row, dict) else {}
            if isinstance(row.get("text"), str) and row["text"].strip():
                texts.append((row["text"], False))
            elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
                texts.append(_render(tokenizer, [{"role": "user", "content": row["prompt"]}]))
            elif isinstance(row.get("messages"), list) and row["messages"] and all(isinstance(m, dict) for m in row["messages"]):
                texts.append(_render(tokenizer, row["messages"]))
            else:
                raise RecoverLMError(f"calibration: {path}:{lineno}: needs a non-empty 'text', 'prompt' or 'messages'")
    if not texts:
        raise RecoverLMError(f"calibration: {path} holds no text")
    return texts


def load_calibration(tokenizer, calibration=None, n_calibration: int = 128, max_length: int = 128,
                     held_out: Sequence[str] = ()) -> Calibration:
    """The first `n_calibration` samples, each cut to `max_length` tokens.

    The default is the built-in prompts rendered with the chat template (plain, for a model without
    one), shuffled with a fixed seed so that every category is represented (the file is sorted by
    category), less the `held_out` prompts that evaluation and checkpoint selection score: a damage
    fitted to the prompts it is measured on would look smaller than it is.
    """
    check_calibration_args(calibration, n_calibration, max_length)
    if tokenizer is None:
        raise RecoverLMError("calibration needs the model's tokenizer")
    if calibration is None:
        scored = set(held_out)
        prompts = [p for p in data.load_prompts() if p not in scored]
        random.Random(0).shuffle(prompts)
        rendered = [_render(tokenizer, [{"role": "user", "content": p}]) for p in prompts[:n_calibration]]
        source = f"builtin, less {len(scored)} held-out and validation prompts"
    else:
        rendered = _file_texts(Path(calibration), tokenizer)[:n_calibration]
        source = str(calibration)
    encoded = [_encode(tokenizer, text, templated) for text, templated in rendered]
    ids = [torch.tensor(e[:max_length], dtype=torch.long) for e in encoded]
    ids = [t for t in ids if len(t) >= 2]
    if not ids:
        raise RecoverLMError(f"calibration: no sample of {source} has two or more tokens")
    texts = [text for text, _ in rendered]
    # Special tokens added to plain texts change the samples, so they are part of what is hashed.
    added = any(e != tokenizer(t, add_special_tokens=False)["input_ids"]
                for e, (t, templated) in zip(encoded, rendered) if not templated)
    return Calibration(source, texts, ids, data.texts_hash(texts + [f"max_length={max_length}"]
                                                          + (["special tokens added"] if added else [])))


@dataclass
class BlockInput:
    hidden: torch.Tensor  # (B, T, d)
    kwargs: dict  # what the model passes to this block besides the hidden states (mask, rotary tables)
    valid: torch.Tensor  # (B, T) bool: real tokens, not right padding


BATCH_SIZE = 16  # samples per forward; batching is several times faster than one at a time on CPU


@torch.no_grad()
def _block_inputs(model, calib: Calibration) -> tuple[list[BlockInput], list[list[dict]]]:
    """Block 0's inputs per batch, and every block's own arguments per batch.

    The model's forward runs up to the last block once: models that mix attention kinds (Gemma 3's
    sliding-window and global layers) hand each block its own mask and rotary tables, so block
    i's arguments are taken from the call to block i, never reused from block 0's. Samples are
    sorted by length and right-padded in small batches without an attention mask: attention is
    causal, so a real token never sees the padding after it, and the statistics skip the padded
    positions. Every real token counts as if its sample had run alone.
    """
    _, layers = decoder_layers(model)
    last = len(layers) - 1
    captured: dict[int, tuple[torch.Tensor, dict]] = {}

    def grab(index):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs.pop("hidden_states", None)
            captured[index] = (hidden if index == 0 else None, kwargs)  # later inputs come from run_block
            if index == last:
                raise StopForward
        return hook

    ordered = sorted(calib.ids, key=len)
    batches = [ordered[i:i + BATCH_SIZE] for i in range(0, len(ordered), BATCH_SIZE)]
    inputs, per_block = [], []
    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            width = len(batch[-1])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            valid = torch.zeros(len(batch), width, dtype=torch.bool)
            for row, sample in enumerate(batch):
                ids[row, : len(sample)] = sample
                valid[row, : len(sample)] = True
            captured.clear()
            forward_until_stop(model, input_ids=ids.to(model.device), use_cache=False)
            hidden = captured[0][0]
            inputs.append(BlockInput(hidden, captured[0][1], valid.to(hidden.device)))
            per_block.append([captured[i][1] for i in range(len(layers))])
    finally:
        for h in handles:
            h.remove()
    return inputs, per_block


@torch.no_grad()
def run_block(block, inputs: list[BlockInput], watch: dict[str, torch.nn.Module] | None = None,
              fn: Callable[[str, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Run one block over the calibration batches and return its outputs.

    With `watch`, fn(name, x) receives each watched module's input at the real tokens only,
    flattened to (tokens, features).
    """
    valid = None

    def make(name):
        def hook(module, args):
            fn(name, args[0].detach()[valid])  # a returned value would replace the input

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in (watch or {}).items()]
    outs = []
    try:
        for batch in inputs:
            valid = batch.valid
            out = block(batch.hidden, **batch.kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    finally:
        for h in handles:
            h.remove()
    return outs


def walk_blocks(model, calib: Calibration, desc: str) -> Iterator[tuple[int, torch.nn.Module, list[BlockInput]]]:
    """Yield (index, block, inputs) for each decoder block in order.

    The consumer may change the block; once it hands control back, the block's outputs as the
    consumer left it become the next block's inputs.
    """
    _, layers = decoder_layers(model)
    with eval_mode(model):
        inputs, per_block = _block_inputs(model, calib)
        for i, block in enumerate(tqdm(list(layers), desc=desc, unit="block", leave=False)):
            inputs = [BlockInput(b.hidden, kwargs[i], b.valid) for b, kwargs in zip(inputs, per_block)]
            yield i, block, inputs
            inputs = [BlockInput(h, b.kwargs, b.valid) for h, b in zip(run_block(block, inputs), inputs)]
