"""The whole experiment: degrade -> recover -> evaluate -> analyse -> report, in one run folder.

Each stage writes its output atomically and is skipped when that output already exists, so an
interrupted run resumes where it stopped. The resolved config is stored with the run; a run
folder is never reused for a different config.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from pathlib import Path

from . import environment, models
from .analysis.layers import cka_models
from .config import RunConfig, dump_config, same_config
from .degrade import check_folder_split, check_params, degrade
from .errors import RecoverLMError
from .evaluate.compare import evaluate_models, evaluate_task_suites
from .io import check_output_dir, read_json, write_json_atomic, write_text_atomic
from .recover.trainer import recover
from .report.summary import write_report
from .runs import CHECKPOINT_DIR, CONFIG_FILE, RUN_FILE, TEACHER_FILE, work_dir


def claim_run_dir(cfg: RunConfig, out: Path, teacher: Path, config_file: Path | None = None) -> None:
    """The run folder made ours before anything is written: refused where it is or holds an input
    (the config file run included), holds files of something else, or holds a run of another config
    or from other inputs. A run's own mark is its teacher record, written first: a config.yaml
    alone may be the user's own."""
    inputs = [teacher] + [Path(p) for p in (cfg.data.prompts, cfg.data.task_teacher, cfg.data.replay_data, config_file)
                          if p is not None and Path(p).exists()]
    check_output_dir(out, inputs, (TEACHER_FILE, RUN_FILE))
    stored, record = out / CONFIG_FILE, out / TEACHER_FILE
    if stored.exists() and not same_config(stored, cfg):
        raise RecoverLMError(f"{out} holds a run with a different config; choose another --out or remove it")
    made = {"model": cfg.model, "path": str(teacher), "hash": models.model_hash(teacher),
            "prompts_hash": _file_hash(cfg.data.prompts)}
    if record.exists():
        was = _read(record)
        changed = [k for k in ("hash", "prompts_hash") if k in was and was[k] != made[k]]
        if changed:
            what = " and ".join({"hash": "the teacher's weights", "prompts_hash": "the prompts file"}[k] for k in changed)
            raise RecoverLMError(f"{out}: {what} changed since this run began, so its finished stages no longer "
                                 "follow from its inputs; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, made)
    write_text_atomic(stored, dump_config(cfg))


def _file_hash(path) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path is not None and Path(path).is_file() else None


def _read(path: Path) -> dict:
    """A run folder's own JSON record; a damaged one is named in one line."""
    try:
        value = read_json(path)
    except (ValueError, OSError) as exc:
        raise RecoverLMError(f"{path} cannot be read ({exc}); remove it (or the run folder) to go on") from exc
    if not isinstance(value, dict):
        raise RecoverLMError(f"{path} is not a record recoverlm wrote; remove it (or the run folder) to go on")
    return value


class StageClock:
    """Wall time of each stage, kept in run.json with the machine it ran on. A resumed run keeps the
    times of the stages it reuses and adds the machine it resumed on, if that is another one."""

    def __init__(self, out: Path):
        self.path = out / RUN_FILE
        self.record = _read(self.path) if self.path.exists() else {"environment": [], "stages": {}}
        here = environment.describe_environment()
        if here not in self.record["environment"]:
            self.record["environment"].append(here)
        write_json_atomic(self.path, self.record)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:  # an interrupted stage keeps the time it ran; its resumption adds to it
            spent = time.perf_counter() - start + self.record["stages"].get(name, 0.0)
            self.record["stages"][name] = round(spent, 1)
            write_json_atomic(self.path, self.record)


def check_run_inputs(cfg: RunConfig) -> None:
    """What a run can refuse before it claims its folder: a folder claimed by a run that then fails
    on a typo would refuse the corrected config as "another run"."""
    from .recover.training_data import check_inputs

    check_params(cfg.degrade.method, cfg.degrade.params)
    check_inputs(cfg.data)
    if cfg.evaluate.suites:
        from .evaluate.lm_eval_runner import check_suites

        check_suites(cfg.evaluate.suites)


def run_experiment(cfg: RunConfig, out: Path, progress: bool = True, log=print, config_file: Path | None = None) -> dict:
    out = Path(out)
    teacher = models.resolve_model(cfg.model)
    cfg = cfg.model_copy(update={"data": models.prompts_for(teacher, cfg.data, log)})
    check_run_inputs(cfg)
    claim_run_dir(cfg, out, teacher, config_file)
    degraded, recovered = out / "degraded", out / "recovered"
    clock = StageClock(out)

    if models.is_model_dir(degraded):
        check_folder_split(degraded, cfg.data)
        log(f"[1/5] degrade: reusing {degraded}")
    else:
        log(f"[1/5] degrade: {cfg.degrade.method} {cfg.degrade.params}")
        with clock.stage("degrade"):
            degrade(teacher, cfg.degrade.method, cfg.degrade.params, degraded, data_cfg=cfg.data)

    if models.is_model_dir(recovered):
        log(f"[2/5] recover: reusing {recovered}")
    else:
        r = cfg.recover
        log(f"[2/5] recover ({r.method}): " + ("no training, the degraded model as it is" if r.method == "none" else
                                             f"{r.offpolicy_steps} off-policy + {r.onpolicy_steps} on-policy steps"))
        resume = (work_dir(recovered) / CHECKPOINT_DIR).exists()
        with clock.stage("recover"):
            recover(teacher, degraded, recovered, cfg.recover, cfg.data, progress=progress, log=log, resume=resume)

    students = {"degraded": degraded, "recovered": recovered}
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        log("[3/5] evaluate: reusing metrics.json")
        metrics = _read(metrics_path)
    else:
        log("[3/5] evaluate: teacher fidelity on held-out prompts")
        with clock.stage("evaluate"):
            metrics = evaluate_models(teacher, students, cfg.data, cfg.evaluate.batch_size, progress, log,
                                      generation=cfg.evaluate.generation)
        if cfg.evaluate.suites:
            with clock.stage("task suites"):
                metrics["tasks"] = evaluate_task_suites(
                    teacher, students, cfg.evaluate.suites, cfg.evaluate.suite_limit, cfg.evaluate.batch_size, log,
                    apply_chat_template=None if cfg.data.use_chat_template else False)
        write_json_atomic(metrics_path, metrics)

    cka_path = out / "cka.json"
    if cka_path.exists():
        log("[4/5] cka: reusing cka.json")
        cka = _read(cka_path)
    else:
        log("[4/5] cka: per-layer linear CKA against the teacher")
        with clock.stage("cka"):
            cka = cka_models(teacher, students, cfg.data, cfg.cka.batch_size, progress, log, pooling=cfg.cka.pooling,
                             cross_tokens=cfg.cka.cross_tokens, plots_dir=out, massive_ratio=cfg.cka.massive_ratio)
        write_json_atomic(cka_path, cka)

    log("[5/5] report: summary.md and report.html")
    summary = write_report(out)
    return {"metrics": metrics, "cka": cka, "summary": summary}
