"""Narrow tasks for the SFT-forgetting damage: generated with a seed, checked exactly.

A model fine-tuned hard on one narrow task forgets general skills; these tasks give that damage a
measurable upside (task accuracy) next to the downside that recovery measures. Each task module has
NAME, generate(n, seed) -> [{prompt, response, answer}] and check(response_text, item) -> bool.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RecoverLMError
from . import extraction, rewriting

TASKS = {extraction.NAME: extraction, rewriting.NAME: rewriting}
HELDOUT_SEED = 999  # training data uses other seeds; the generators' spaces are large enough not to collide
# Task prompts a recovery adds (data.task_prompts) are drawn with a seed no SFT run may use.
RECOVERY_SEED = 10_007
RESERVED_SEEDS = {HELDOUT_SEED: "the task suites' held-out items", RECOVERY_SEED: "recovery's task prompts"}


def task_accuracy(model, tokenizer, task_name: str, n: int = 64, seed: int = HELDOUT_SEED, max_new_tokens: int = 48,
                  batch_size: int = 16, use_chat_template: bool = True) -> float:
    """Fraction of `n` held-out items that greedy generation answers correctly, by the task's own checker."""
    from ..data import encode_prompt
    from ..lm.generate import generate

    if task_name not in TASKS:
        raise RecoverLMError(f"unknown task {task_name!r}; built-in tasks: {', '.join(TASKS)}")
    task = TASKS[task_name]
    items = task.generate(n, seed)
    prompt_ids = [encode_prompt(tokenizer, it["prompt"], use_chat_template) for it in items]
    responses = generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size=batch_size, progress=False)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return sum(task.check(text, it) for text, it in zip(texts, items)) / n


def suite_items(task_name: str, n: int = 200) -> list[dict]:
    """The held-out items a task's lm-eval suite ships: the first n of what task_accuracy draws, with ids."""
    return [{"id": f"{task_name}-{i:03d}", **item} for i, item in enumerate(TASKS[task_name].generate(n, HELDOUT_SEED))]


def suite_scorer(task_name: str):
    """lm-eval's process_results for a task suite: the task's own checker decides."""
    check = TASKS[task_name].check

    def process_results(doc: dict, results: list[str]) -> dict:
        item = {"prompt": doc["prompt"], "response": doc["response"], "answer": doc["answer"]}
        return {"acc": int(check(results[0], item))}

    return process_results


def load_task_data(name_or_path: str | Path, n: int = 512, seed: int = 0) -> list[dict]:
    """Prompt/response pairs: `n` generated items of a built-in task, or every record of a user JSONL file.

    A record is {"prompt", "response"} or {"messages": [user turn, assistant turn]}; anything else is
    an error that names the file and line.
    """
    if str(name_or_path) in TASKS:
        return [{"prompt": it["prompt"], "response": it["response"]} for it in TASKS[str(name_or_path)].generate(n, seed)]
    from ..data import read_jsonl

    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise RecoverLMError(f"task {str(name_or_path)!r} is neither a built-in task ({', '.join(TASKS)}) nor a file")
    rows = read_jsonl(path)  # JSON errors, unreadable and empty files are reported there
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    return [_pair(row, f"{path}:{lineno}") for row, lineno in zip(rows, lines)]


def _pair(row: dict, where: str) -> dict:
    if "messages" in row:
        msgs = row["messages"]
        ok = (isinstance(msgs, list) and len(msgs) == 2 and all(isinstance(m, dict) for m in msgs)
              and [m.get("role") for m in msgs] == ["user", "assistant"])
        if not ok:
            raise RecoverLMError(f"{where}: 'messages' must be exactly a user turn then an assistant turn")
        prompt, response = msgs[0].get("content"), msgs[1].get("content")
    else:
        prompt, response = row.get("prompt"), row.get("response")
    if not (isinstance(prompt, str) and prompt.strip() and isinstance(response, str) and response.strip()):
        raise RecoverLMError(f"{where}: needs a non-empty string 'prompt' and 'response' (or chat 'messages')")
    return {"prompt": prompt, "response": response}
