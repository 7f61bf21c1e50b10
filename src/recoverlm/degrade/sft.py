"""SFT forgetting: fine-tune hard on one narrow task, which damages general ability.

This is the third kind of damage beside pruning and quantization. It leaves the weights
unconstrained (Constraint()), and the model from before the SFT stays the natural teacher for
recovery, because `degrade` writes the fine-tuned model to a new folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..constraints import Constraint
from ..errors import RecoverLMError
from ..tasks import RESERVED_SEEDS, TASKS, load_task_data, task_accuracy

EVAL_N = 32  # held-out items for the before/after accuracy in the record: cheap, and enough to see the jump


def _as_float(value) -> float | None:
    """A number, or a numeric string: YAML 1.1 (and so `--param lr=1e-4`) reads 1e-4 as a string."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_sft_args(task, n_train, steps, batch_size, lr, lora, lora_r, seed) -> None:
    """Every field is checked before any training (before the model loads, where the caller can), each
    failure a one-line error naming the field."""
    def integer(name, value, low=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RecoverLMError(f"sft: {name} must be an integer >= {low}, got {value!r}")

    if not isinstance(task, (str, Path)) or (str(task) not in TASKS and not Path(task).expanduser().is_file()):
        raise RecoverLMError(f"sft: task {task!r} is neither a built-in task ({', '.join(TASKS)}) nor a JSONL file")
    integer("n_train", n_train)
    integer("steps", steps)
    integer("batch_size", batch_size)
    integer("lora_r", lora_r)
    integer("seed", seed, low=0)
    if str(task) in TASKS and seed in RESERVED_SEEDS:  # the same seed draws the same items
        raise RecoverLMError(f"sft: seed {seed} draws {RESERVED_SEEDS[seed]}; fine-tuning on them would score the "
                             "model on its own training items; choose another seed")
    if _as_float(lr) is None or not _as_float(lr) > 0:
        raise RecoverLMError(f"sft: lr must be a number > 0, got {lr!r}")
    if not isinstance(lora, bool):
        raise RecoverLMError(f"sft: lora must be true or false, got {lora!r}")


def _encode(tokenizer, pairs: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """Chat-templated prompts; responses end with EOS so the fine-tuned model learns to stop."""
    from ..data import encode_prompt

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    chat = _chat(tokenizer)
    prompts = [encode_prompt(tokenizer, p["prompt"], chat) for p in pairs]
    responses = [tokenizer(p["response"], add_special_tokens=False)["input_ids"] + eos for p in pairs]
    return prompts, responses


def _chat(tokenizer) -> bool:
    """Task prompts are chat turns where the model has a template, plain text for a base model."""
    return bool(getattr(tokenizer, "chat_template", None))


def response_nll(model, batch) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of a batch (prompt tokens are not trained on)."""
    from ..lm.forward import completion_logits, completion_targets
    from ..ops.divergences import token_nll

    targets = completion_targets(batch).to(next(model.parameters()).device)
    return token_nll(completion_logits(model, batch), targets).mean()


def finetune_sft(model, task: str = "extraction", n_train: int = 512, steps: int = 150, batch_size: int = 8,
                 lr: float = 5e-4, lora: bool = False, lora_r: int = 16, seed: int = 0, tokenizer=None,
                 record: dict | None = None):
    """Plain SFT on `task` (a built-in task, `n_train` generated items; or every record of a
    prompt/response JSONL): full fine-tuning, or a LoRA adapter merged back so the result is a
    plain HF model. Returns (model, Constraint())."""
    from ..config import LoraConfig
    from ..constraints.lora import merged_for_export, wrap_lora
    from ..data import collate, texts_hash

    check_sft_args(task, n_train, steps, batch_size, lr, lora, lora_r, seed)
    if tokenizer is None:
        raise RecoverLMError("sft: needs the model's tokenizer to render the task prompts")
    pairs = load_task_data(task, n=n_train, seed=seed)
    prompt_ids, response_ids = _encode(tokenizer, pairs)
    builtin = str(task) in TASKS
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    measure = builtin and record is not None  # accuracy only where there is a checker and somewhere to put it
    accuracy_before = task_accuracy(model, tokenizer, str(task), n=EVAL_N, use_chat_template=_chat(tokenizer)) if measure else None

    torch.manual_seed(seed)  # LoRA initialisation
    constraint = Constraint()
    trained = wrap_lora(model, LoraConfig(r=lora_r), constraint) if lora else model
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=_as_float(lr), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses, tokens = [], 0
    trained.train()
    bar = tqdm(range(steps), desc=f"sft {Path(str(task)).name}", unit="step")
    for _ in bar:
        if len(order) < batch_size:  # reshuffle once per epoch; a batch never spans two epochs
            order = torch.randperm(len(pairs), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([prompt_ids[i] for i in idx], [response_ids[i] for i in idx], pad)
        loss = response_nll(trained, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        tokens += batch.n_completion
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    trained.eval()
    if lora:
        model = merged_for_export(trained, constraint)
        for p in model.parameters():  # a plain model again, as if it had been fully fine-tuned
            p.requires_grad_(True)

    if record is not None:
        head = max(1, min(10, steps // 10))
        record["sft"] = {
            "task": str(task),
            "data_hash": texts_hash([f"{p['prompt']}\0{p['response']}" for p in pairs]),
            "n_train": len(pairs),
            "steps": steps,
            "response_tokens_trained": tokens,
            "loss_first": round(sum(losses[:head]) / head, 4),  # mean of the first and last ~10% of steps
            "loss_last": round(sum(losses[-head:]) / head, 4),
            "accuracy_before": accuracy_before,
            "accuracy_after": (task_accuracy(model, tokenizer, str(task), n=EVAL_N, use_chat_template=_chat(tokenizer))
                               if measure else None),
            "accuracy_n": EVAL_N if measure else None,
        }
    return model, constraint
