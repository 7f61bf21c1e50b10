"""Names inside run folders, in one place: what a recovery leaves beside its output while it
trains, and the metrics history every reader of a run parses."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"  # a run folder's resolved config
DEGRADATION_FILE = "degradation.json"  # what a degraded model folder records of its damage
RECOVERY_FILE = "recovery.json"  # what a recovered model folder records of its training
CHECKPOINT_DIR = "checkpoint"
# Inside a model folder, the subfolder for everything that is not the model itself (its Constraint,
# degradation.json, recovery.json, the metrics history): the top level then holds only config,
# tokenizer and weight shards, as loaders that read every top-level *.safetensors expect.
SIDE_DIR = "recoverlm"
# A LoRA adapter kept beside a frozen base (a quantization grid), in PEFT's own layout; a model
# folder that has one is its base with the adapter applied.
ADAPTER_DIR = "adapter"
CELL_FILE = "cell.json"  # a finished study cell: what it was and where it ran
TEACHER_FILE = "teacher.json"  # a run folder's teacher and prompts, by hash: what its stages follow from
RUN_FILE = "run.json"  # a run folder's machine, package versions and the wall time of each stage


def work_dir(out: Path) -> Path:
    """`<out>.work`, beside the recovery output: checkpoints and the metrics of a run in progress.
    A sibling rather than a child, so the output folder appears complete or not at all."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def side_dir(model_dir: Path, create: bool = False) -> Path:
    folder = Path(model_dir) / SIDE_DIR
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def side_file(model_dir: Path, name: str) -> Path:
    """Where the side file `name` of a model folder is: in its side folder, or at the top level in
    folders written before there was one, which are still read."""
    new, legacy = side_dir(model_dir) / name, Path(model_dir) / name
    return legacy if legacy.exists() and not new.exists() else new


def own_files(name: str, legacy: bool = True) -> tuple[str, ...]:
    """The paths, relative to a model folder, at which recoverlm's record `name` marks the folder as
    its own output (io.check_output_dir): in the side folder, or at the top level of older folders.
    `legacy=False` for records that never lay at the top level: a file of that name there is
    another tool's, and must not make a user's folder count as ours."""
    return (f"{SIDE_DIR}/{name}", name) if legacy else (f"{SIDE_DIR}/{name}",)


def read_history(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A run killed mid-write can leave its last line cut off: that
    line is dropped, while a broken line anywhere else is an error."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
    return rows
