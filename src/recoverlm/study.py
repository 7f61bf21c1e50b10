"""A study: the cross product of models, degradations, recovery methods and seeds, each cell an
ordinary run folder (the stages of `recoverlm run`), so a study resumes after a crash and grows
across days and machines. Work the cells share is done once: one degraded model per (model,
degradation), linked into each of its cells; teacher responses and suite scores come from the
caches every run uses.

Layout: OUT/<model>/<degradation>/degraded and OUT/<model>/<degradation>/<method>-seed<seed>/.
"""

from __future__ import annotations

import fnmatch
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from . import models
from .config import RunConfig, StudyConfig, dump_config, load_yaml, parse_config
from .degrade import degrade, method_params
from .errors import RecoverLMError
from .io import write_json_atomic
from .runs import CELL_FILE


@dataclass(frozen=True)
class Cell:
    model: str
    degradation: str
    method: str
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{model_tag(self.model)}/{self.degradation}/{self.method}-seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return Path(out) / self.name

    def degraded(self, out: Path) -> Path:
        """The degraded model every method and seed of this (model, degradation) shares."""
        return self.folder(out).parent / "degraded"


def model_tag(model: str) -> str:
    """A folder name for a model: an embedded model's name, or a local folder's last part."""
    name = model if model in models.EMBEDDED_MODELS else Path(model).name
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "model"


def load_study(path: Path) -> StudyConfig:
    return parse_config(StudyConfig, load_yaml(path), str(path))


def _merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def cells(study: StudyConfig) -> list[Cell]:
    """Every cell with its merged run config, all validated before any of them runs: an invalid
    cell is one line naming the cell and the key."""
    for method, arm in study.methods.items():
        unknown = set(arm.degradations or ()) - set(study.degradations)
        if unknown:
            raise RecoverLMError(f"method {method!r}: unknown degradation(s) {', '.join(sorted(unknown))}; "
                                 f"the study has {', '.join(study.degradations)}")
    out = []
    for model in study.models:
        for deg_name, deg in study.degradations.items():
            try:
                method_params(deg.method, deg.params)
            except RecoverLMError as exc:
                raise RecoverLMError(f"degradation {deg_name!r}: {exc}") from exc
            for method, arm in study.methods.items():
                if arm.degradations is not None and deg_name not in arm.degradations:
                    continue
                for seed in study.seeds:
                    degrade_cfg = deg.model_dump(mode="json", include={"method", "params"})
                    raw = _merged(study.base, {"model": model, "degrade": degrade_cfg, "evaluate": deg.evaluate,
                                               "recover": {**arm.recover, "seed": seed}, "data": arm.data})
                    name = f"{model_tag(model)}/{deg_name}/{method}-seed{seed}"
                    out.append(Cell(model, deg_name, method, seed, parse_config(RunConfig, raw, f"cell {name}")))
    return out


def selected(all_cells: list[Cell], only: str | None) -> list[Cell]:
    """The cells whose name matches the shell pattern `only` (e.g. '*/nf4/*'); all without one."""
    if not only:
        return all_cells
    picked = [c for c in all_cells if fnmatch.fnmatch(c.name, only)]
    if not picked:
        raise RecoverLMError(f"--only {only!r} matches no cell; cells are named like {all_cells[0].name!r}")
    return picked


def finished(cell: Cell, out: Path) -> bool:
    """Whether the cell's run is complete. A folder holding a run of another config is an error:
    the study's axes changed under an existing folder."""
    folder = cell.folder(out)
    stored = folder / "config.yaml"
    if stored.exists() and stored.read_text(encoding="utf-8") != dump_config(cell.config):
        raise RecoverLMError(f"cell {cell.name}: {folder} holds a run with a different config; "
                             "remove it or write the study to another --out")
    return (folder / CELL_FILE).exists()


def _as_run(todo: list[Cell], log) -> list[Cell]:
    """The cells' configs as their runs will store them: a model without a chat template gets
    plain prompts (said once per model)."""
    template: dict[str, bool] = {}
    out = []
    for cell in todo:
        if cell.model not in template:
            template[cell.model] = models.has_chat_template(models.resolve_model(cell.model))
            if not template[cell.model]:
                log(f"{cell.model} has no chat template: its cells use plain prompts (use_chat_template: false)")
        data = cell.config.data
        if data.use_chat_template and not template[cell.model]:
            data = data.model_copy(update={"use_chat_template": False})
        out.append(replace(cell, config=cell.config.model_copy(update={"data": data})))
    return out


def device_label() -> str:
    import torch

    device = models.compute_device()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def _degrade_once(todo: list[Cell], out: Path, log) -> None:
    done = set()
    for cell in todo:
        target = cell.degraded(out)
        if target in done or models.is_model_dir(target):
            continue
        d = cell.config.degrade
        log(f"degrade {model_tag(cell.model)}/{cell.degradation}: {d.method} {d.params}")
        degrade(models.resolve_model(cell.model), d.method, d.params, target)
        done.add(target)


def run_cell(cell: Cell, out: Path, threads: int | None = None) -> dict:
    """One cell as an ordinary run, its degraded model linked from the shared one; its log goes to
    the cell's run.log. Runs in a worker process under --jobs."""
    import torch

    from .pipeline import run_experiment

    if threads:
        torch.set_num_threads(threads)
    folder = cell.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "degraded"
    if not link.exists():
        link.symlink_to(os.path.relpath(cell.degraded(out), folder))
    start = time.perf_counter()
    with open(folder / "run.log", "a", encoding="utf-8") as fh:
        result = run_experiment(cell.config, folder, progress=False, log=lambda msg: print(msg, file=fh, flush=True))
    record = {"name": cell.name, "model": cell.model, "degradation": cell.degradation, "method": cell.method,
              "seed": cell.seed, "device": device_label(), "seconds": round(time.perf_counter() - start, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ratio": result["metrics"].get("recovery_ratio", {}).get("kl")}
    write_json_atomic(folder / CELL_FILE, record)
    return record


def run_study(study: StudyConfig, out: Path, jobs: int = 1, only: str | None = None, progress: bool = True,
              log=print) -> list[dict]:
    """Run every unfinished selected cell; returns the records of the cells run now."""
    out = Path(out)
    todo = _as_run(selected(cells(study), only), log)
    pending = [c for c in todo if not finished(c, out)]
    log(f"study: {len(todo)} cells, {len(todo) - len(pending)} finished already, {len(pending)} to run, "
        f"{max(jobs, 1)} at a time")
    if not pending:
        return []
    out.mkdir(parents=True, exist_ok=True)
    _degrade_once(pending, out, log)
    bar = tqdm(total=len(pending), desc="study", unit="cell", disable=not progress)
    records = []

    def done(record: dict) -> None:
        ratio = "n/a" if record["ratio"] is None else f"{record['ratio']:.3f}"
        bar.write(f"finished {record['name']}: recovery ratio (teacher KL) {ratio}, {record['seconds']:.0f} s")
        bar.update(1)
        records.append(record)

    if jobs <= 1:
        for cell in pending:
            bar.write(f"running {cell.name} (log: {cell.folder(out) / 'run.log'})")
            try:
                done(run_cell(cell, out))
            except RecoverLMError as exc:
                raise RecoverLMError(f"cell {cell.name}: {exc}") from exc
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs) if models.compute_device().type == "cpu" else None
        import multiprocessing

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, cell, out, threads): cell for cell in pending}
            for future in as_completed(futures):
                try:
                    done(future.result())
                except RecoverLMError as exc:
                    raise RecoverLMError(f"cell {futures[future].name}: {exc}") from exc
    bar.close()
    return records
