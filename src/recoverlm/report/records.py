"""A study's cell records: all that its results document needs of a finished cell, in one small
JSON file per cell. The run folders hold gigabytes of weights and stay on the machine that ran
them; the records are kept beside the document, so the document can be rendered again, and the
study resumed where it stopped, on a machine that holds none of the folders."""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from ..errors import RecoverLMError
from ..io import read_json, write_json_atomic
from ..models import is_model_dir, model_hash
from ..runs import CELL_FILE, DEGRADATION_FILE, METRICS_FILE, RECOVERY_FILE, RUN_FILE, TEACHER_FILE, read_history, side_file


def records_dir_for(doc: Path) -> Path:
    """Where a results document's records live when the study does not say: beside it."""
    doc = Path(doc)
    return doc.parent / f"{doc.stem}-cells"


def cell_record(folder: Path) -> dict:
    """The record of the finished cell in run folder `folder` (it holds cell.json); a damaged file
    in it (a folder copied in part, a run killed mid-write) is named in one line."""
    folder = Path(folder)
    try:
        return _cell_record(folder)
    except (ValueError, KeyError, TypeError, OSError, yaml.YAMLError) as exc:
        raise RecoverLMError(f"cell folder {folder} cannot be read as a finished cell ({type(exc).__name__}: {exc}); "
                             "remove it to run that cell again") from exc


def _cell_record(folder: Path) -> dict:
    rec = read_json(folder / CELL_FILE)
    metrics = read_json(folder / "metrics.json")
    rec["kl"] = {name: m["kl"] for name, m in metrics["metrics"].items()}
    rec["ratio"] = metrics.get("recovery_ratio", {}).get("kl")
    # Scores per suite; the per-question items stay in the run folder (a record is a summary).
    rec["suites"] = {name: {suite: {k: v for k, v in res.items() if k != "items"} for suite, res in by_suite.items()}
                     for name, by_suite in metrics.get("tasks", {}).get("results", {}).items()}
    recovery = side_file(folder / "recovered", RECOVERY_FILE)
    trained = read_json(recovery) if recovery.exists() else {}
    rec["tokens"] = trained.get("tokens", 0)
    rec["recovery"] = {k: trained[k] for k in ("train_blocks", "mask_update") if k in trained}
    history = side_file(folder / "recovered", METRICS_FILE)
    rec["history"] = read_history(history) if history.exists() else []
    degradation = side_file(folder / "degraded", DEGRADATION_FILE)
    made = read_json(degradation) if degradation.exists() else {}
    rec["degrade"] = {k: v for k, v in made.items() if k != "matrices"}  # per-matrix figures stay with the model
    if is_model_dir(folder / "degraded"):
        rec["degraded_hash"] = model_hash(folder / "degraded")  # which damaged copy the cell started from
    teacher = read_json(folder / TEACHER_FILE) if (folder / TEACHER_FILE).exists() else {}
    if teacher.get("hash"):
        rec["teacher_hash"] = teacher["hash"]  # which copy of the model taught it: a changed one makes it stale
    run = read_json(folder / RUN_FILE) if (folder / RUN_FILE).exists() else {}
    rec["stages"] = run.get("stages", {})
    config = folder / "config.yaml"
    rec["config"] = yaml.safe_load(config.read_text(encoding="utf-8")) if config.exists() else {}
    cka = read_json(folder / "cka.json").get("cka", {}) if (folder / "cka.json").exists() else {}
    rec["cka"] = {who: statistics.mean(v["linear"]) for who, v in cka.items() if v.get("linear")}
    return rec


def record_path(records_dir: Path, name: str) -> Path:
    """A cell's record file: its name (model/degradation/method-seedN) as a path."""
    return Path(records_dir) / f"{name}.json"


def store(records_dir: Path, record: dict) -> Path:
    path = record_path(records_dir, record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def load_records(records_dir: Path) -> dict[str, dict]:
    """Every record under `records_dir`, by cell name."""
    found = {}
    for path in sorted(Path(records_dir).glob("*/*/*.json")):
        try:  # records are copied between machines and committed: a bad one is named, not a traceback
            rec = read_json(path)
        except (ValueError, OSError) as exc:
            raise RecoverLMError(f"cell record {path} cannot be read ({exc}); restore it from git or delete it "
                                 "to run that cell again") from exc
        if isinstance(rec, dict) and rec.get("name"):
            found[rec["name"]] = rec
    return found
