"""Experiment trackers (tensorboard, wandb, trackio) fed through accelerate's tracker API with
every validation row. metrics.jsonl stays the record every report reads; a tracker is a view.

Nothing leaves the machine by default: tensorboard and trackio write local files, and wandb runs
offline unless the user's WANDB_MODE says otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import RecoverLMError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def logs_dir(out: Path) -> Path:
    """`<out>.logs`, beside the output: it survives the run, unlike the work folder."""
    out = Path(out)
    return out.with_name(out.name + ".logs")


def check_trackers(names: list[str]) -> None:
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise RecoverLMError(f"recover.log_with names {name}, which is not installed: pip install {PACKAGES[name]}")


def accelerator_options(names: list[str], out: Path) -> dict:
    if not names:
        return {}
    check_trackers(names)
    os.environ.setdefault("WANDB_MODE", "offline")
    return {"log_with": list(names), "project_dir": str(logs_dir(out))}


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of scalars, which every tracker's hyperparameter table takes."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


def start(acc, names: list[str], run_name: str, settings: dict) -> None:
    if names:
        acc.init_trackers(run_name, config=_flat(settings))


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a metrics row; the per-layer CKA list becomes its mean and last layer."""
    out = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    cka = row.get("cka")
    if isinstance(cka, list) and cka:
        out.update({"cka/mean": sum(cka) / len(cka), "cka/last": float(cka[-1])})
    return out


def log_row(acc, names: list[str], row: dict) -> None:
    if names:
        acc.log(scalars(row), step=int(row["step"]))


def finish(acc, names: list[str]) -> None:
    if names:
        acc.end_training()
