"""Task-suite results cached by (model hash, suite, suite version, settings).

A teacher is evaluated against many students, and its suite scores never change: caching them
means a second evaluation of a new student never runs the teacher again. The suite version is a
hash of the suite's files (shipped suites and task YAML folders) or the lm-eval version (lm-eval's
own tasks), so editing a suite invalidates its entries.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import models

CACHE_VERSION = 1
# A suite built from an SFT task is scored by that task's checker, whose source is part of the
# suite's version; read by path, as lm-eval reads the suite plugins.
SFT_TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"


SUITE_SUFFIXES = {".yaml", ".yml", ".jsonl", ".json", ".py", ".csv", ".parquet"}


def suite_version(suite: str, suites_dir: Path) -> str:
    folder = suites_dir / suite if (suites_dir / suite).is_dir() else None
    if folder is None and suite.endswith((".yaml", ".yml")) and Path(suite).is_file():
        folder = Path(suite).resolve().parent
    if folder is None:  # one of lm-eval's own tasks: the harness's versions are all there is to key on
        return "lm-eval task; " + "; ".join(_harness())
    digest = hashlib.sha256()
    # Subfolders too: a suite's data often lies in data/ beside its YAML (data_files: data/test.jsonl).
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUITE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        digest.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    for part in _outside_sources(suite) + _harness():
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _harness() -> list[str]:
    """The libraries that turn a suite's files into scores (prompt building, generation, metrics):
    a teacher scored under one version is not paired with students scored under another."""
    from importlib import metadata

    return [f"{name} {metadata.version(name)}" for name in ("lm_eval", "transformers")]


def _outside_sources(suite: str) -> list[str]:
    """What a shipped suite depends on beyond its folder: a built-in task's checker, a data package."""
    from importlib import metadata

    from .lm_eval_runner import DATA_PACKAGES

    parts = []
    checker = SFT_TASKS_DIR / f"{suite}.py"
    if checker.is_file():
        parts.append(checker.read_text(encoding="utf-8"))
    if suite in DATA_PACKAGES:
        try:
            parts.append(metadata.version(DATA_PACKAGES[suite][1]))
        except metadata.PackageNotFoundError:
            parts.append("missing")
    return parts


def cache_path(model_hash: str, suite: str, version: str, settings: dict[str, Any]) -> Path:
    key = json.dumps({"model": model_hash, "suite": suite, "version": version, "settings": settings,
                      "cache": CACHE_VERSION}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    return models.recoverlm_home() / "suite_results" / f"{name}.json"
