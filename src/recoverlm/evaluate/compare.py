"""Evaluate a teacher and its students on the same held-out set, and compute recovery ratios."""

from __future__ import annotations

from pathlib import Path

from .. import models, result_cache
from ..config import DataConfig
from ..ops.stats import recovery_ratio, recovery_ratio_ci
from ..teacher.response_set import heldout_set
from .fidelity import (
    GENERATION_METRICS,
    LOWER_IS_BETTER,
    METRICS,
    fidelity,
    generation_metrics,
)

N_SAMPLES = 3


def evaluate_models(teacher_ref, students: dict[str, str | Path], data_cfg: DataConfig | None = None,
                    batch_size: int = 8, progress: bool = True, log=print, generation: bool = True,
                    use_cache: bool = True) -> dict:
    """Fidelity metrics for the teacher and every student; recovery ratios when both
    a "degraded" and a "recovered" student are given. Each model's results are cached by weight
    hash, so a degraded model shared by many runs is measured once."""
    data_cfg = data_cfg or DataConfig()
    teacher_path = models.resolve_model(teacher_ref)
    tokenizer = models.load_tokenizer(teacher_path)
    eval_set = heldout_set(teacher_path, data_cfg, log=log)
    settings = {"batch_size": batch_size, "generation": generation, "max_new_tokens": data_cfg.max_new_tokens,
                "generation_batch_size": data_cfg.generation_batch_size}
    refs = {"teacher": teacher_path, **students}
    results, entries = result_cache.against_teacher("fidelity_results", teacher_path, refs, eval_set.meta, settings,
                                                    use_cache)
    if results:
        log(f"fidelity: {', '.join(results)} (cached)")
    todo = [name for name in refs if name not in results]
    if todo:
        teacher = models.load_for_inference(teacher_path)
        loaded = {"teacher": teacher, **models.load_students(teacher_path, {k: students[k] for k in todo if k != "teacher"})}
        fresh = fidelity(teacher, loaded, eval_set, tokenizer.pad_token_id, batch_size, progress)
        if generation:
            # The teacher answers too, as the students do: the references were written in the
            # response set's generation dtype, which the models scored here need not share, so the
            # teacher's own match is measured (a bf16 reference is not every float32 argmax), not set to 1.
            gen = generation_metrics(loaded, tokenizer, eval_set, data_cfg.max_new_tokens,
                                     data_cfg.generation_batch_size, progress)
            for name, g in gen.items():
                fresh[name].update({m: g[m] for m in GENERATION_METRICS}, responses=g.get("responses"))
                fresh[name]["per_item"].update(g["per_item"])
        for name in todo:
            result_cache.store(entries[name], fresh[name], {"model": str(refs[name]), "teacher": str(teacher_path)})
            results[name] = fresh[name]
    results = {name: results[name] for name in refs}
    if generation:
        samples = sample_generations(tokenizer, eval_set, {k: results[k]["responses"] for k in students})
    metrics = METRICS + (GENERATION_METRICS if generation else ())
    report = {
        "teacher": str(teacher_path),
        "students": {k: str(v) for k, v in students.items()},
        "heldout": {"sequences": len(eval_set), "tokens": eval_set.n_response_tokens, "prompts_hash": eval_set.meta["prompts_hash"]},
        "metrics": {name: {m: r[m] for m in metrics} for name, r in results.items()},
        "per_item": {name: r["per_item"] for name, r in results.items()},
        "lower_is_better": LOWER_IS_BETTER,
    }
    if generation:
        report["samples"] = samples
    if "degraded" in results and "recovered" in results:
        report["recovery_ratio"] = {
            m: recovery_ratio(results["teacher"][m], results["degraded"][m], results["recovered"][m]) for m in metrics
        }
        items = {name: results[name]["per_item"] for name in ("teacher", "degraded", "recovered")}
        # Per-token metrics are token-weighted means, so their items weigh by their response tokens;
        # the generation metrics are means over prompts.
        tokens = [len(r) for r in eval_set.response_ids]
        report["recovery_ratio_ci"] = {
            m: recovery_ratio_ci(items["teacher"][m], items["degraded"][m], items["recovered"][m],
                                 weights=tokens if m in METRICS else None) for m in metrics
        }
    return report


def sample_generations(tokenizer, eval_set, responses: dict[str, list[list[int]]], n: int = N_SAMPLES) -> list[dict]:
    """The first `n` held-out prompts with the teacher's greedy response and each student's, as
    text: what a reader checks before trusting any of the numbers."""
    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    return [{"prompt": eval_set.prompts[i], "teacher": text(eval_set.response_ids[i]),
             **{name: text(r[i]) for name, r in responses.items()}} for i in range(min(n, len(eval_set)))]


def evaluate_task_suites(teacher_ref, students: dict[str, str | Path], suites: list[str], limit: int | None = None,
                         batch_size: int = 8, log=print, apply_chat_template: bool | None = None,
                         use_cache: bool = True) -> dict:
    """Task suites (lm-eval) for the teacher (when given: a suite needs none) and every student, one
    model in memory at a time, each with its own tokenizer.

    Higher is better for every suite metric; recovery ratios come with paired bootstrap intervals
    over the suite's items when the teacher, "degraded" and "recovered" are all present. Results
    are cached by model hash, so the teacher is scored once however many students follow.
    """
    from . import suite_cache
    from .lm_eval_runner import SUITES_DIR, check_suites, run_suites, uses_chat_template

    check_suites(suites)

    refs = {**({"teacher": teacher_ref} if teacher_ref is not None else {}), **students}
    results = {}
    for name, ref in refs.items():
        path = models.resolve_model(ref)
        tokenizer = models.load_tokenizer(path)
        entries = {}
        for suite in suites:
            settings = {"limit": limit, "batch_size": batch_size, "dtype": "float32",
                        "device": models.compute_device().type,  # greedy answers may differ between devices
                        "chat_template": uses_chat_template(suite, apply_chat_template),
                        "setup": models.setup_hash(path)}  # its tokenizer and template score it too
            entries[suite] = suite_cache.cache_path(models.model_hash(path), suite,
                                                    suite_cache.suite_version(suite, SUITES_DIR), settings)
        cached = {s: result_cache.load(p) for s, p in entries.items()} if use_cache else {}
        todo = [s for s in suites if cached.get(s) is None]
        results[name] = {s: {**cached[s], "cached": True} for s in suites if s not in todo}
        if todo:
            log(f"task suites {', '.join(todo)}: {name}")
            model = models.load_for_inference(path)
            fresh = run_suites(model, tokenizer, todo, limit=limit, batch_size=batch_size,
                               apply_chat_template=apply_chat_template)
            del model
            for suite, res in fresh.items():
                result_cache.store(entries[suite], res, {"model": str(path), "suite": suite, "limit": limit})
                results[name][suite] = {**res, "cached": False}
        else:
            log(f"task suites {', '.join(suites)}: {name} (cached)")
        results[name] = {s: results[name][s] for s in suites}
    report = {"suites": suites, "limit": limit, "results": results}
    if {"teacher", "degraded", "recovered"} <= set(results):
        ratios = {}
        for suite in suites:
            for metric, items in results["teacher"][suite].get("items", {}).items():
                ratios[f"{suite}/{metric}"] = recovery_ratio_ci(
                    items, results["degraded"][suite]["items"][metric], results["recovered"][suite]["items"][metric])
        report["recovery_ratio_ci"] = ratios
    return report
