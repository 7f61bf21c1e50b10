"""Layer-by-layer CKA of students against their teacher on the held-out set."""

from __future__ import annotations

from pathlib import Path

from .. import models, result_cache
from ..config import DataConfig
from ..teacher.response_set import heldout_set
from .layer_cka import DEFAULT_MASSIVE_RATIO, layer_cka


def cka_models(teacher_ref, students: dict, data_cfg: DataConfig | None = None, batch_size: int = 8,
               progress: bool = True, log=print, *, pooling: str = "token", cross_tokens: int = 4096, seed: int = 0,
               plots_dir: Path | None = None, massive_ratio: float | None = DEFAULT_MASSIVE_RATIO,
               use_cache: bool = True) -> dict:
    """Per-layer linear CKA (teacher layer l vs student layer l) for each student, plus the
    cross-layer matrix (every teacher layer vs every student layer) on a seeded subsample of at most
    `cross_tokens` rows; it shows where a depth-pruned or re-ordered student's layers went.

    With `plots_dir`, the trajectory plot and one heatmap per student are written there (normally
    the folder of cka.json) and their paths returned under "plots". Each student's result is cached
    by weight hash (`use_cache=False` measures again).
    """
    data_cfg = data_cfg or DataConfig()
    teacher_path = models.resolve_model(teacher_ref)
    tokenizer = models.load_tokenizer(teacher_path)
    eval_set = heldout_set(teacher_path, data_cfg, log=log)
    settings = {"batch_size": batch_size, "pooling": pooling, "cross_tokens": cross_tokens, "seed": seed,
                "massive_ratio": massive_ratio}
    result, entries = result_cache.against_teacher("cka_results", teacher_path, students, eval_set.meta, settings,
                                                   use_cache)
    if result:
        log(f"cka: {', '.join(result)} (cached)")
    todo = {name: ref for name, ref in students.items() if name not in result}
    if todo:
        teacher = models.load_for_inference(teacher_path)
        fresh = layer_cka(teacher, models.load_students(teacher_path, todo), eval_set, tokenizer.pad_token_id,
                          batch_size, progress, pooling=pooling, cross_tokens=cross_tokens, seed=seed,
                          massive_ratio=massive_ratio)
        for name, r in fresh.items():
            result_cache.store(entries[name], r, {"model": str(todo[name]), "teacher": str(teacher_path)})
        result.update(fresh)
    result = {name: result[name] for name in students}
    cross = {name: r.pop("cross_layer") for name, r in result.items() if "cross_layer" in r}
    out = {"teacher": str(teacher_path), "students": {k: str(v) for k, v in students.items()},
           "pooling": pooling, "massive_ratio": massive_ratio, "estimator": "linear (streaming, float64)", "cka": result,
           "cross_layer": cross, "plots": {}}
    if plots_dir is not None:
        out["plots"] = write_plots(out, Path(plots_dir))
    return out


def write_plots(cka: dict, folder: Path) -> dict:
    """cka_layers.png (all students' trajectories) and cka_cross_<student>.png heatmaps; returns their paths."""
    from .plots import plot_cross_layer, plot_trajectories

    plots = {"trajectories": str(plot_trajectories(cka, folder / "cka_layers.png")), "cross_layer": {}}
    for name, c in cka.get("cross_layer", {}).items():
        if c.get("matrix") is not None:
            unit = "sequences" if cka.get("pooling") == "mean" else "tokens"
            title = f"linear CKA, teacher vs {name} ({c['samples']} of {c['of']} {unit})"
            plots["cross_layer"][name] = str(plot_cross_layer(c["matrix"], folder / f"cka_cross_{_safe(name)}.png", title))
    return plots


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
