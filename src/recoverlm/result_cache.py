"""One model's measurement against a teacher, cached by everything that determines it.

Every cell of a study measures the same degraded model against the same teacher on the same
held-out responses; cached per model, that work runs once per degradation instead of once per
cell. A measurement may be cached per model because each model is compared with the teacher
alone: which other students share the pass changes nothing in its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import models
from .io import read_json, write_json_atomic

CACHE_VERSION = 2  # 2: the teacher measured as a student is; keyed by the setup files too


def entry(kind: str, settings: dict[str, Any]) -> Path:
    """The cache file of a result that `settings` (model hashes included) fully determine."""
    return models.settings_cache_path(kind, {**settings, "cache": CACHE_VERSION}, ".json")


def load(path: Path) -> dict | None:
    """A cached result, or None; an unreadable entry is treated as missing and later overwritten."""
    try:
        result = read_json(path)["result"] if path.is_file() else None
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return result if isinstance(result, dict) else None


def store(path: Path, result: dict, meta: dict[str, Any]) -> None:
    write_json_atomic(path, {"meta": meta, "result": result})


def against_teacher(kind: str, teacher_path: Path, refs: dict[str, str | Path], eval_meta: dict,
                    settings: dict[str, Any], use_cache: bool = True) -> tuple[dict[str, dict], dict[str, Path]]:
    """(cached results by name, cache file by name) for each model in `refs` measured against the
    teacher on the response set described by `eval_meta`, on this machine's compute device; with
    `use_cache` False nothing is found, and what is measured then replaces the entries."""
    base = {"teacher": models.model_hash(teacher_path), "teacher_setup": models.setup_hash(teacher_path),
            "heldout": eval_meta, "settings": settings, "device": models.compute_device().type}
    # The teacher is measured as a student is (its greedy answers included), so a student with the
    # teacher's weights and files shares its entry.
    paths = {name: entry(kind, {**base, "model": models.model_hash(models.resolve_model(ref)),
                                "setup": models.setup_hash(models.resolve_model(ref))})
             for name, ref in refs.items()}
    found = {name: r for name, p in paths.items() if use_cache and (r := load(p)) is not None}
    return found, paths
