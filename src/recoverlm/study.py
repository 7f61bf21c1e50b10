"""A study: the cross product of models, degradations, recovery methods and seeds, each cell an
ordinary run folder (the stages of `recoverlm run`), so a study resumes after a crash and grows
across days and machines. Work the cells share is done once: one degraded model per (model,
degradation), linked into each of its cells; teacher responses and suite scores come from the
caches every run uses.

Layout: OUT/<model>/<degradation>/degraded and OUT/<model>/<degradation>/<method>-seed<seed>/.
Each finished cell is also recorded in a small JSON file (report.records) kept with the results
document: a cell recorded with the same settings is finished wherever its folder is.
Under --jobs the first cell of each teacher runs alone, so that the teacher's response sets are
written to the cache once and read by the cells after it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import statistics
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from . import environment, models
from .config import RunConfig, StudyConfig, load_yaml, parse_config, same_config, same_settings
from .degrade import (
    calibration_split,
    check_calibration_kept_apart,
    check_params,
    degrade,
    is_calibrated_on_builtin,
    method_params,
)
from .errors import RecoverLMError
from .io import read_json, write_json_atomic
from .report.records import cell_record, load_records, store
from .runs import CELL_FILE, CONFIG_FILE, DEGRADATION_FILE, RUN_FILE, TEACHER_FILE, side_file


@dataclass(frozen=True)
class Cell:
    model: str
    degradation: str
    method: str
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return cell_name(self.model, self.degradation, self.method, self.seed)

    def folder(self, out: Path) -> Path:
        return Path(out) / self.name

    def degraded(self, out: Path) -> Path:
        """The degraded model every method and seed of this (model, degradation) shares."""
        return self.folder(out).parent / "degraded"


def cell_name(model: str, degradation: str, method: str, seed: int) -> str:
    """A cell's name, which is also its folder under the study's OUT."""
    return f"{model_tag(model)}/{degradation}/{method}-seed{seed}"


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


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_base(study: StudyConfig) -> None:
    """A base section the cells would merge into must be a mapping: merged, another value would be
    replaced by the axes' settings without a word, and the study would run on defaults."""
    for key in ("recover", "data", "evaluate", "degrade", "cka"):
        value = study.base.get(key)
        if value is not None and not isinstance(value, dict):
            raise RecoverLMError(f"base.{key} must be a mapping of settings, got {type(value).__name__}")


def _check_names(study: StudyConfig) -> None:
    """Cell names are folder names: one safe path part each, and no two cells alike."""
    for kind, names in (("degradation", study.degradations), ("method", study.methods)):
        for name in names:
            if not NAME.fullmatch(name):
                raise RecoverLMError(f"{kind} name {name!r}: use letters, digits and . _ + - (it names a folder)")
    tags = [model_tag(m) for m in study.models]
    for axis, values in (("models", tags), ("seeds", study.seeds)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise RecoverLMError(f"{axis}: {', '.join(repeated)} appears more than once (cells would share a folder)")
    for method, arm in study.methods.items():
        if arm.degradations is not None and not arm.degradations:
            raise RecoverLMError(f"method {method!r}: degradations is empty, so it has no cell; "
                                 "leave it out to run it on every degradation")
        unknown = set(arm.degradations or ()) - set(study.degradations)
        if unknown:
            raise RecoverLMError(f"method {method!r}: unknown degradation(s) {', '.join(sorted(unknown))}; "
                                 f"the study has {', '.join(study.degradations)}")


def cells(study: StudyConfig) -> list[Cell]:
    """Every cell with its merged run config, all validated before any of them runs: an invalid
    cell is one line naming the cell and the key."""
    _check_base(study)
    _check_names(study)
    out = []
    for model in study.models:
        for deg_name, deg in study.degradations.items():
            for method, arm in study.methods.items():
                if arm.degradations is not None and deg_name not in arm.degradations:
                    continue
                for seed in study.seeds:
                    degrade_cfg = deg.model_dump(mode="json", include={"method", "params"})
                    raw = _merged(study.base, {"model": model, "degrade": degrade_cfg, "evaluate": deg.evaluate,
                                               "recover": {**arm.recover, "seed": seed}, "data": arm.data})
                    name = cell_name(model, deg_name, method, seed)
                    cfg = parse_config(RunConfig, raw, f"cell {name}")
                    try:
                        check_params(cfg.degrade.method, cfg.degrade.params)
                    except RecoverLMError as exc:
                        raise RecoverLMError(f"degradation {deg_name!r}: {exc}") from exc
                    out.append(Cell(model, deg_name, method, seed, cfg))
    _check_splits(out)
    return out


def _check_splits(all_cells: list[Cell]) -> None:
    """The cells of a degradation share one damaged model; calibrated on the built-in prompts, it
    left out one split's scored prompts, so every cell of it must score that split."""
    first: dict[tuple[str, str], tuple[Cell, str]] = {}
    for cell in all_cells:
        d = cell.config.degrade
        if not is_calibrated_on_builtin(d.method, d.params):
            continue
        split = calibration_split(d.method, d.params, cell.config.data)
        other, other_split = first.setdefault((cell.model, cell.degradation), (cell, split))
        if split != other_split:
            raise RecoverLMError(f"cell {cell.name}: its data split differs from {other.name}'s, but both share the "
                                 f"damaged model of {cell.degradation!r}, calibrated around one split; give them one "
                                 "split, or separate degradations")


def selected(all_cells: list[Cell], only: str | None) -> list[Cell]:
    """The cells whose name matches the shell pattern `only` (e.g. '*/nf4/*'); all without one."""
    if not only:
        return all_cells
    picked = [c for c in all_cells if fnmatch.fnmatch(c.name, only)]
    if not picked:
        raise RecoverLMError(f"--only {only!r} matches no cell; cells are named like {all_cells[0].name!r}")
    return picked


def finished(cell: Cell, out: Path, teacher_hash: str | None = None) -> bool:
    """Whether the cell's run is complete. A folder holding a run of another config, or (given
    `teacher_hash`) one taught by another copy of the model, is an error: what the study asks for
    changed under an existing folder."""
    folder = cell.folder(out)
    stored, teacher = folder / CONFIG_FILE, folder / TEACHER_FILE
    if stored.exists() and not same_config(stored, cell.config):
        raise RecoverLMError(f"cell {cell.name}: {folder} holds a run with a different config; "
                             "remove it or write the study to another --out")
    if teacher_hash and teacher.exists() and _stored_hash(teacher) not in (None, teacher_hash):
        raise RecoverLMError(f"cell {cell.name}: {folder} was run with another copy of {cell.model} as teacher; "
                             "remove it or write the study to another --out")
    return (folder / CELL_FILE).exists()


CELL_FOLDER = re.compile(r"[^/]+-seed-?\d+")


def check_study_folder(out: Path) -> None:
    """A study writes into `out` only if it holds nothing but study folders (model/degradation/
    {degraded, METHOD-seedN}, and the hidden scratch of an interrupted write): a user's folder with
    other files in it is refused, not filled."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RecoverLMError(f"--out {out} is a file, not a study folder")
    stray = next(_strays(out), None) if out.exists() else None
    if stray is not None:
        raise RecoverLMError(f"--out {out} holds {stray}, which no study wrote; give the study a folder of its own")


def _strays(out: Path):
    for model_dir in out.iterdir():
        if not model_dir.is_dir():
            yield model_dir
            continue
        for degradation in model_dir.iterdir():
            if not degradation.is_dir():
                yield degradation
                continue
            for entry in degradation.iterdir():
                ours = entry.is_dir() and (entry.name == "degraded" or CELL_FOLDER.fullmatch(entry.name))
                if not (ours or entry.name.startswith(".")):
                    yield entry


def _stored_hash(teacher_file: Path) -> str | None:
    try:
        value = read_json(teacher_file)
    except (ValueError, OSError):
        return None  # a damaged record is the run's to report when it claims the folder
    return value.get("hash") if isinstance(value, dict) else None


def records_cell(record: dict, cell: Cell, teachers: dict[str, str | None] | None = None) -> bool:
    """Whether `record` is of `cell` as the study now defines it: same name, same settings (those
    the study gave it; records written before they were kept compare the run's own config) and,
    given `teachers` (model -> hash of the copy here), the same teacher weights where it names them."""
    raw = record.get("cell_config") or record.get("config")
    if not (record.get("name") == cell.name and isinstance(raw, dict) and same_settings(raw, cell.config, cell.name)):
        return False
    here = (teachers or {}).get(cell.model)
    return not (here and record.get("teacher_hash") and record["teacher_hash"] != here)


def teacher_hashes(chosen: list[Cell], required: bool = True) -> dict[str, str | None]:
    """The hash of each chosen cell's model as it is on this machine. Without `required`, a model
    that is not here (a study planned where it was not run) is None: its records are not checked."""
    hashes = {}
    for model in dict.fromkeys(c.model for c in chosen):
        try:
            hashes[model] = models.model_hash(models.resolve_model(model))
        except RecoverLMError:
            if required:
                raise
            hashes[model] = None
    return hashes


def study_records(study: StudyConfig, records_dir: Path) -> list[dict]:
    """The records of the study's cells, in cell order; records of settings the study no longer
    has are left out."""
    found = load_records(records_dir)
    return [found[c.name] for c in cells(study) if c.name in found and records_cell(found[c.name], c)]


def record_finished(study: StudyConfig, out: Path, records_dir: Path) -> int:
    """Record every finished cell folder in `out` whose settings are the study's; returns how many
    records were written or changed."""
    known, changed = load_records(records_dir), 0
    for cell in cells(study):
        if not (cell.folder(out) / CELL_FILE).exists():
            continue
        record = cell_record(cell.folder(out))
        if records_cell(record, cell) and known.get(cell.name) != record:
            store(records_dir, record)
            changed += 1
    return changed


def plan(study: StudyConfig, out: Path | None, records_dir: Path, only: str | None = None) -> list[dict]:
    """Each selected cell's state: recorded (where and how long it ran), finished in a folder of
    `out` but not yet recorded, or to run, with an estimate from the recorded cells most like it."""
    every_cell = cells(study)
    chosen = selected(every_cell, only)
    found = load_records(records_dir)
    teachers = teacher_hashes(chosen, required=False)
    kept = {c.name: found[c.name] for c in every_cell if c.name in found and records_cell(found[c.name], c)}
    here = environment.device_label()
    rows = []
    for cell in chosen:
        if cell.name in kept and not records_cell(kept[cell.name], cell, teachers):
            rows.append({"cell": cell.name, "state": "to run: new teacher", "device": "",
                         "seconds": estimate(cell, kept.values(), here)})
        elif cell.name in kept:
            rec = kept[cell.name]
            rows.append({"cell": cell.name, "state": "recorded", "device": rec.get("device", "?"),
                         "seconds": rec.get("seconds")})
        elif out is not None and (cell.folder(out) / CELL_FILE).exists():
            current = same_config(cell.folder(out) / CONFIG_FILE, cell.config)
            rows.append({"cell": cell.name, "state": "finished, not recorded" if current else "stale: other settings",
                         "device": "", "seconds": None})
        else:
            rows.append({"cell": cell.name, "state": "to run", "device": "",
                         "seconds": estimate(cell, kept.values(), here)})
    return rows


def estimate(cell: Cell, records, device: str) -> float | None:
    """The median time of the recorded cells most like `cell`: its model and method on this device,
    then on any device, then its method, then any cell. A median, because the first cell of a
    teacher also writes the teacher's responses and scores, which the others read."""
    timed = [r for r in records if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]
    for alike in (lambda r: r.get("model") == cell.model and r.get("method") == cell.method and r.get("device") == device,
                  lambda r: r.get("model") == cell.model and r.get("method") == cell.method,
                  lambda r: r.get("method") == cell.method,
                  lambda r: True):
        times = [r["seconds"] for r in timed if alike(r)]
        if times:
            return statistics.median(times)
    return None


def _as_run(todo: list[Cell], log) -> list[Cell]:
    """The cells' configs as their runs will store them: a model without a chat template gets
    plain prompts (said once per model)."""
    said: set[str] = set()

    def once(message: str) -> None:
        if message not in said:
            said.add(message)
            log(message)

    out = []
    for cell in todo:
        try:
            data = models.prompts_for(models.resolve_model(cell.model), cell.config.data, once)
        except RecoverLMError as exc:
            raise RecoverLMError(f"cell {cell.name}: {exc}") from exc
        out.append(replace(cell, config=cell.config.model_copy(update={"data": data})))
    return out


def _degrade_once(todo: list[Cell], out: Path, log) -> None:
    done = set()
    for cell in todo:
        target = cell.degraded(out)
        d = cell.config.degrade
        if target in done:
            continue
        if models.is_model_dir(target):
            record = side_file(target, DEGRADATION_FILE)
            if not record.is_file():
                raise RecoverLMError(f"{target} holds a model without its {DEGRADATION_FILE}, so what damaged it is "
                                     "unknown; remove it or write the study to another --out")
            try:
                made = read_json(record)
            except (ValueError, OSError) as exc:
                raise RecoverLMError(f"{record} cannot be read ({exc}); remove {target} so that it is made again") from exc
            if made.get("source_hash") and made["source_hash"] != models.model_hash(models.resolve_model(cell.model)):
                raise RecoverLMError(f"{target} was degraded from another copy of {cell.model} than the study's; "
                                     "remove it or write the study to another --out")
            if made.get("method") != d.method or made.get("params") != method_params(d.method, d.params):
                raise RecoverLMError(f"{target} holds a {made.get('method')} degradation with other settings than "
                                     f"{cell.degradation!r} asks for; remove it or write the study to another --out")
            check_calibration_kept_apart(made, target, cell.config.data)
            continue
        log(f"degrade {model_tag(cell.model)}/{cell.degradation}: {d.method} {d.params}")
        # the cells of a degradation share their prompt split, which its calibration leaves out
        degrade(models.resolve_model(cell.model), d.method, d.params, target, data_cfg=cell.config.data)
        done.add(target)


def run_cell(cell: Cell, out: Path, threads: int | None = None, settings: dict | None = None) -> dict:
    """One cell as an ordinary run, its degraded model linked from the shared one; its log goes to
    the cell's run.log. Runs in a worker process under --jobs. `settings`: the cell's config as
    the study gave it, before the run adapted it to its model, which its record keeps."""
    import torch

    from .pipeline import claim_run_dir, run_experiment

    if threads:
        torch.set_num_threads(threads)
    folder = cell.folder(out)
    claim_run_dir(cell.config, folder, models.resolve_model(cell.model))  # before the link and the log go in
    link, shared = folder / "degraded", os.path.relpath(cell.degraded(out), folder)
    if link.is_symlink() and os.readlink(link) != shared:
        raise RecoverLMError(f"{link} links to {os.readlink(link)}, not to the study's {shared}")
    if not link.is_symlink() and not link.exists():
        link.symlink_to(shared)
    start = time.perf_counter()
    with open(folder / "run.log", "a", encoding="utf-8") as fh:
        try:
            result = run_experiment(cell.config, folder, progress=False, log=lambda msg: print(msg, file=fh, flush=True))
        except Exception:  # the study says one line; the traceback stays in the cell's log
            traceback.print_exc(file=fh)
            raise
    record = {"name": cell.name, "model": cell.model, "degradation": cell.degradation, "method": cell.method,
              "seed": cell.seed, "device": environment.device_label(),
              "seconds": round(max(time.perf_counter() - start, stage_seconds(folder)), 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ratio": result["metrics"].get("recovery_ratio", {}).get("kl")}
    if settings is not None:
        record["cell_config"] = settings
    write_json_atomic(folder / CELL_FILE, record)
    return record


def run_study(study: StudyConfig, out: Path, jobs: int = 1, only: str | None = None, progress: bool = True,
              log=print, records_dir: Path | None = None) -> list[dict]:
    """Run every unfinished selected cell; returns the records of the cells run now. With
    `records_dir`, a cell recorded there with its settings counts as finished, and every cell that
    finishes is recorded there."""
    out = Path(out)
    chosen = selected(cells(study), only)
    given = {c.name: c.config.model_dump(mode="json") for c in chosen}
    suites = sorted({s for c in chosen for s in c.config.evaluate.suites})
    if suites:  # before any cell degrades or trains: a typo would otherwise surface after its recovery
        from .evaluate.lm_eval_runner import check_suites

        check_suites(suites)
    teachers = teacher_hashes(chosen)
    recorded = set()
    if records_dir is not None:
        record_finished(study, out, records_dir)
        by_name = {c.name: c for c in chosen}
        for rec in study_records(study, records_dir):
            if rec["name"] not in by_name:
                continue
            if records_cell(rec, by_name[rec["name"]], teachers):
                recorded.add(rec["name"])
            else:
                log(f"{rec['name']}: recorded with another copy of {by_name[rec['name']].model} as teacher; it runs again")
    todo = _as_run([c for c in chosen if c.name not in recorded], log)
    check_study_folder(out)
    pending = [c for c in todo if not finished(c, out, teachers.get(c.model))]
    log(f"study: {len(chosen)} cells, {len(chosen) - len(pending)} finished already, {len(pending)} to run, "
        f"{max(jobs, 1)} at a time")
    if not pending:
        return []
    out.mkdir(parents=True, exist_ok=True)
    _degrade_once(pending, out, log)
    bar = tqdm(total=len(pending), desc="study", unit="cell", disable=not progress)
    records = []

    def done(record: dict) -> None:
        if records_dir is not None:
            store(records_dir, cell_record(out / record["name"]))
        ratio = "n/a" if record["ratio"] is None else f"{record['ratio'] + 0.0:.3f}".replace("-0.000", "0.000")
        bar.write(f"finished {record['name']}: recovery ratio (teacher KL) {ratio}, {record['seconds']:.0f} s")
        bar.update(1)
        records.append(record)

    # The first cell of each teacher and data setting runs alone: it writes the teacher's response
    # sets to the cache, which every other cell of that setting then reads instead of writing too.
    first, rest = _first_per_teacher(pending) if jobs > 1 else (pending, [])
    for cell in first:
        bar.write(f"running {cell.name} (log: {cell.folder(out) / 'run.log'})")
        done(_named(cell, run_cell, cell, out, None, given[cell.name], out=out))
    if rest:
        _run_parallel(rest, out, jobs, done, given)
    bar.close()
    return records


def stage_seconds(folder: Path) -> float:
    """The wall time of every part of a cell's run: its stages' clock keeps the time of a part that
    was interrupted, which a resumed cell's own clock never saw."""
    path = Path(folder) / RUN_FILE
    try:
        stages = read_json(path).get("stages", {}) if path.exists() else {}
        return float(sum(v for v in stages.values() if isinstance(v, (int, float))))
    except (ValueError, OSError, AttributeError):
        return 0.0


def _named(cell: Cell, fn, *args, out: Path | None = None):
    """fn(*args), with any failure as one line naming the cell (and, given `out`, its log)."""
    try:
        return fn(*args)
    except RecoverLMError as exc:
        raise RecoverLMError(f"cell {cell.name}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - as a worker's failure is under --jobs
        raise RecoverLMError(_failure(cell, exc, out)) from exc


def _failure(cell: Cell, exc: BaseException, out: Path | None) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cell {cell.name}: {first}" + (f" (its log: {cell.folder(out) / 'run.log'})" if out is not None else "")


def _first_per_teacher(pending: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    seen, first, rest = set(), [], []
    for cell in pending:
        rc, data = cell.config.recover, cell.config.data
        # what the cached response sets are keyed by: the data, the distillation temperature of the
        # cached top-k, and the damaged student where it answers the task prompts itself
        key = (cell.model, data.model_dump_json(), rc.temperature if rc.method == "distill" else 1.0,
               cell.degradation if data.task_prompts is not None and data.task_teacher is None else None)
        (rest if key in seen else first).append(cell)
        seen.add(key)
    return first, rest


def _run_parallel(cells_: list[Cell], out: Path, jobs: int, done, given: dict[str, dict]) -> None:
    """The cells in `jobs` worker processes (CPU threads split between them; on a GPU they share
    the device). The first failure stops the study: cells not started yet are cancelled."""
    import multiprocessing

    # The cores this process may use, which a container or taskset can make fewer than the machine's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs) if models.compute_device().type == "cpu" else None
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(run_cell, cell, out, threads, given[cell.name]): cell for cell in cells_}
        for future in as_completed(futures):
            cell = futures[future]
            try:
                done(future.result())
            except Exception as exc:  # noqa: BLE001 - a worker's failure, whatever it was, is one line
                raise RecoverLMError(_failure(cell, exc, out)) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
