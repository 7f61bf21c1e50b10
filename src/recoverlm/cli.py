"""The `recoverlm` command: parse, validate, call one function per stage."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from .errors import RecoverLMError
from .offline import go_offline


class _OneLineUsageErrors(typer.core.TyperGroup):
    """A usage error (a missing option, an unknown command) is one line on stderr and exit code 2,
    like every other bad input, instead of a usage block in a frame."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        except typer.TyperException as exc:  # click's usage errors, as typer vendors them
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # the help text itself
            else:
                where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
                typer.echo(f"error: {exc.format_message()}{where}", err=True)
            code = exc.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineUsageErrors,
                  help="Degrade, recover, evaluate and analyse LLMs by self-distillation.")


_DEBUG = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the traceback behind an error.")) -> None:
    _DEBUG["on"] = debug


def cli_errors(fn):
    """Bad input ends in one line on stderr and exit code 2, never a traceback (--debug shows it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        go_offline()
        try:
            return fn(*args, **kwargs)
        except RecoverLMError as exc:
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        except OSError as exc:  # a path that cannot be read or written: the user's to fix, in one line
            if _DEBUG["on"]:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted; finished stages are kept and a rerun resumes", err=True)
            raise typer.Exit(130)

    return wrapper


def _parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise RecoverLMError(f"--param expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RecoverLMError(f"--param {key.strip()}: {value!r} is not a value ({str(exc).splitlines()[0]})") from exc
    return params


def _models_exist(*refs) -> None:
    """Every model named is found before any of them is scored (teacher responses take minutes)."""
    from .models import resolve_model

    for ref in refs:
        if ref is not None:
            resolve_model(ref)


@app.command()
@cli_errors
def models() -> None:
    """List the embedded models, where each is cached, and whether it is ready."""
    from .models import EMBEDDED_MODELS, embedded_status, recoverlm_home

    typer.echo(f"cache: {recoverlm_home()}  (set RECOVERLM_HOME to move it)")
    for name in EMBEDDED_MODELS:
        st = embedded_status(name)
        typer.echo(f"{name:24s} {'ready' if st['ready'] else 'not converted yet'}")
        typer.echo(f"  {st['description']}")
        typer.echo(f"  source: {st['source']}")
        typer.echo(f"  cache:  {st['cache']}")
    typer.echo("Any local Hugging Face folder (config.json + safetensors) works wherever a model is expected.")


@app.command()
@cli_errors
def degrade(
    model: str = typer.Option(..., help="Embedded model name or HF folder."),
    method: str = typer.Option("prune.magnitude", help="Degradation method, e.g. prune.magnitude, quant.rtn."),
    out: Path = typer.Option(..., help="Output HF folder for the degraded model."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of weights to prune, in [0, 1)."),
    bits: Optional[int] = typer.Option(None, help="Quantization bits, 2..8."),
    group_size: Optional[int] = typer.Option(None, help="Quantization group size (0 = per channel)."),
    param: list[str] = typer.Option([], help="Any other method parameter as key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="YAML whose `data:` section (the prompt split) the recovery will "
                                          "use: a method calibrated on the built-in prompts leaves out its held-out "
                                          "and validation prompts (default: those of the default split)."),
) -> None:
    """Damage a model; save it with its Constraint and degradation.json."""
    from .degrade import degrade as run_degrade

    params = _parse_params(param)
    for key, value in {"sparsity": sparsity, "bits": bits, "group_size": group_size}.items():
        if value is not None:
            params[key] = value
    _, data_cfg = _stage_configs(config)
    record = run_degrade(model, method, params, out, data_cfg=data_cfg)
    typer.echo(json.dumps({k: record[k] for k in ("method", "params", "seconds")}))
    typer.echo(f"degraded model written to {out}")


NO_CHAT_TEMPLATE = typer.Option(False, "--no-chat-template", help="Plain prompts, for a base model without a chat template.")


def _plain_prompts(data_cfg, no_chat_template: bool, teacher):
    """Plain prompts when asked, or when the teacher has no chat template (said once)."""
    from .config import updated
    from .models import prompts_for

    if no_chat_template:
        return updated(data_cfg, "--no-chat-template", use_chat_template=False)
    return prompts_for(teacher, data_cfg, log=lambda msg: typer.echo(msg, err=True))


def _split_of(data_cfg, folders, given: bool):
    """The held-out split the recovered models among `folders` were recovered around; a damaged
    model among them calibrated around another is refused."""
    from .degrade import check_folder_split
    from .evaluate.heldout_split import matching_split

    data_cfg = matching_split(data_cfg, folders, given, log=lambda msg: typer.echo(msg, err=True))
    for folder in folders:
        check_folder_split(folder, data_cfg)
    return data_cfg


def _stage_configs(config: Optional[Path], recover_options: dict | None = None, data_options: dict | None = None):
    """The `recover` and `data` sections of a YAML with the command line's options on top, each
    validated once, as the user wrote them together."""
    from .config import DataConfig, RecoverConfig, load_yaml, parse_config

    raw = load_yaml(config) if config else {}
    unknown = set(raw) - {"recover", "data", "model", "degrade", "evaluate", "cka"}
    if unknown:
        raise RecoverLMError(f"{config}: unknown section(s) {', '.join(sorted(unknown))}")
    where = f"{config} with the command line" if config else "command line"
    for section in ("recover", "data"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise RecoverLMError(f"{config}: section '{section}' must be a mapping of settings, "
                                 f"got {type(raw[section]).__name__}")
    raw = {k: v for k, v in raw.items() if v is not None}  # an empty section means its defaults
    rec = {k: v for k, v in (recover_options or {}).items() if v is not None}
    data = {k: v for k, v in (data_options or {}).items() if v is not None}
    return (parse_config(RecoverConfig, {**raw.get("recover", {}), **rec}, f"{where}: recover"),
            parse_config(DataConfig, {**raw.get("data", {}), **data}, f"{where}: data"))


@app.command()
@cli_errors
def recover(
    teacher: str = typer.Option(..., help="The undamaged model (embedded name or HF folder)."),
    student: Path = typer.Option(..., help="The damaged model folder (from `degrade`)."),
    out: Path = typer.Option(..., help="Output HF folder for the recovered model."),
    config: Optional[Path] = typer.Option(None, help="YAML with `recover:` and `data:` sections."),
    steps: Optional[int] = typer.Option(None, help="Override recover.offpolicy_steps (stage 1)."),
    onpolicy_steps: Optional[int] = typer.Option(None, help="Override recover.onpolicy_steps (stage 2)."),
    method: Optional[str] = typer.Option(None, help="distill | sft-replay | none (overrides recover.method)."),
    prompts: Optional[Path] = typer.Option(None, help="Prompt JSONL (overrides data.prompts)."),
    teacher_prompts: Optional[int] = typer.Option(
        None, min=0, help="Extra training prompts the teacher writes itself (overrides data.teacher_prompts)."),
    hidden_weight: Optional[float] = typer.Option(
        None, help="Also match every layer's hidden states to the teacher's at this weight (overrides recover.hidden_weight)."),
    grid_latents: Optional[str] = typer.Option(
        None, help="grid | teacher: where a quantized student's latent weights start (overrides recover.grid_latents)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in OUT.work/."),
    no_chat_template: bool = NO_CHAT_TEMPLATE,
) -> None:
    """Self-distil the teacher into the damaged student, keeping its Constraint."""
    from .recover.trainer import recover as run_recover

    rec_cfg, data_cfg = _stage_configs(
        config, {"offpolicy_steps": steps, "onpolicy_steps": onpolicy_steps, "method": method,
                 "hidden_weight": hidden_weight, "grid_latents": grid_latents},
        {"prompts": prompts, "teacher_prompts": teacher_prompts})
    data_cfg = _plain_prompts(data_cfg, no_chat_template, teacher)
    summary = run_recover(teacher, student, out, rec_cfg, data_cfg, resume=resume)
    if summary.get("history"):  # under `accelerate launch`, only the main process writes and reports
        last = summary["history"][-1]
        typer.echo(f"recovered model written to {out} (validation teacher KL {last['kl']:.4f} at step {last['step']})")


@app.command()
@cli_errors
def evaluate(
    model: Path = typer.Option(..., help="The model to evaluate (usually the recovered one)."),
    teacher: Optional[str] = typer.Option(None, help="The teacher (embedded name or HF folder); fidelity needs one, "
                                          "task suites alone do not."),
    degraded: Optional[Path] = typer.Option(None, help="The degraded model, for recovery ratios."),
    out: Path = typer.Option(..., help="Where to write the metrics JSON."),
    config: Optional[Path] = typer.Option(None, help="YAML with a `data:` section (held-out split)."),
    suite: str = typer.Option("fidelity", help="Comma-separated: fidelity and/or task suites "
                              "(knowledge, instructions, arithmetic, or any lm-eval task or YAML path)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Items per task suite (default: all): the first N, and the shipped "
                                        "suites are grouped by category, so a limit is a quick check, not a sample."),
    no_chat_template: bool = NO_CHAT_TEMPLATE,
    no_cache: bool = typer.Option(False, "--no-cache", help="Rescore every model, ignoring cached results."),
) -> None:
    """Teacher fidelity (KL, NLL, agreement, greedy match), task suites, and recovery ratios with CIs."""
    from .evaluate.compare import evaluate_models, evaluate_task_suites
    from .evaluate.lm_eval_runner import available_suites, check_suites
    from .io import check_output_file, write_json_atomic

    check_output_file(out, [model, degraded, teacher, config])
    names = [s.strip() for s in suite.split(",") if s.strip()]
    if not names:
        raise RecoverLMError(f"--suite is empty; choose from fidelity, {', '.join(available_suites())}")
    if "fidelity" in names and teacher is None:
        raise RecoverLMError("--suite fidelity compares with a teacher: pass --teacher, or name task suites only")
    _models_exist(teacher, degraded, model)
    tasks = [n for n in names if n != "fidelity"]
    if tasks:
        check_suites(tasks)
    _, data_cfg = _stage_configs(config)
    data_cfg = _plain_prompts(data_cfg, no_chat_template, teacher or str(model))
    data_cfg = _split_of(data_cfg, [p for p in (degraded, model) if p is not None], config is not None)
    students = {"recovered": model} if degraded else {"model": model}
    if degraded:
        students = {"degraded": degraded, **students}
    report = (evaluate_models(teacher, students, data_cfg, use_cache=not no_cache) if "fidelity" in names
              else {"metrics": {}})
    if tasks:
        report["tasks"] = evaluate_task_suites(teacher, students, tasks, limit, use_cache=not no_cache,
                                               apply_chat_template=None if data_cfg.use_chat_template else False)
    write_json_atomic(out, report)
    for name, m in report["metrics"].items():
        typer.echo(f"{name:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    for k, v in report.get("recovery_ratio", {}).items():
        typer.echo(f"recovery ratio {k}: {'n/a' if v is None else f'{v:.3f}'}")
    for name, res in report.get("tasks", {}).get("results", {}).items():
        for s_name, r in res.items():
            scores = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float) and k != "seconds")
            source = "cached" if r.get("cached") else f"{r.get('seconds', 0):.0f} s"
            typer.echo(f"{name:10s} {s_name}: {scores} (n={r.get('n')}, {source})")


@app.command()
@cli_errors
def perplexity(
    model: str = typer.Option(..., help="Embedded model name or HF folder."),
    data: str = typer.Option(..., help="A .txt/.md/.jsonl file, a save_to_disk folder, or a locally cached dataset name."),
    column: str = typer.Option("text", help="Text column of a .jsonl file or dataset."),
    split: str = typer.Option("test", help="Split of a dataset (or of a saved DatasetDict)."),
    window: Optional[int] = typer.Option(None, help="Tokens per window (default: model positions, at most 1024)."),
    stride: Optional[int] = typer.Option(None, help="Tokens between window starts (default: window // 2)."),
    batch_size: int = typer.Option(8, help="Windows per forward pass."),
    out: Optional[Path] = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Perplexity of a text corpus with a sliding window (every token after the first scored once)."""
    from .evaluate.perplexity import load_texts
    from .evaluate.perplexity import perplexity as run_perplexity
    from .io import check_output_file, write_json_atomic
    from .models import load_for_inference, load_tokenizer, resolve_model

    if out is not None:
        check_output_file(out, [model, data])
    texts = load_texts(data, column=column, split=split)
    path = resolve_model(model)
    result = run_perplexity(load_for_inference(path), load_tokenizer(path), texts, window=window, stride=stride,
                            batch_size=batch_size)
    if out is not None:
        write_json_atomic(out, {"model": model, "data": data, "column": column, "split": split, **result})
    typer.echo(f"perplexity {result['perplexity']:.4f}  nll/token {result['nll']:.4f}  tokens {result['tokens']}"
               f"  (window {result['window']}, stride {result['stride']})")


@app.command()
@cli_errors
def cka(
    teacher: str = typer.Option(..., help="The teacher (embedded name or HF folder)."),
    student: list[Path] = typer.Option(..., help="Student folder(s) to compare (repeatable)."),
    out: Path = typer.Option(..., help="Where to write cka.json (plots go beside it)."),
    config: Optional[Path] = typer.Option(None, help="YAML with a `data:` section (held-out split)."),
    pooling: str = typer.Option("token", help="token (every real token) or mean (one vector per sequence)."),
    cross_tokens: int = typer.Option(4096, help="Token sample for the cross-layer matrix; 0 skips it."),
    no_chat_template: bool = NO_CHAT_TEMPLATE,
    massive_ratio: float = typer.Option(20.0, help="Leave out tokens whose teacher hidden-state norm exceeds this "
                                        "multiple of the median (attention sinks); 0 keeps every token."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Measure every student, ignoring cached results."),
) -> None:
    """Per-layer linear CKA between teacher and student hidden states, cross-layer maps and plots."""
    from .analysis.layers import cka_models
    from .config import CKAConfig, parse_config
    from .io import check_output_file, write_json_atomic

    check_output_file(out, [teacher, *student, config])  # its plots go beside it: not into an input either
    parse_config(CKAConfig, {"pooling": pooling, "cross_tokens": cross_tokens, "massive_ratio": massive_ratio or None},
                 "command line")
    _models_exist(teacher, *student)
    names = {p.name or str(p): p for p in student}
    if len(names) < len(student):
        names = {str(p): p for p in student}  # a/recovered and b/recovered: named by their paths
    if len(names) < len(student):
        raise RecoverLMError("a student is named twice in --student")
    _, data_cfg = _stage_configs(config)
    data_cfg = _plain_prompts(data_cfg, no_chat_template, teacher)
    data_cfg = _split_of(data_cfg, student, config is not None)
    result = cka_models(teacher, names, data_cfg, pooling=pooling, cross_tokens=cross_tokens, plots_dir=out.parent,
                        massive_ratio=massive_ratio or None, use_cache=not no_cache)
    write_json_atomic(out, result)
    for name, r in result["cka"].items():
        mean = sum(r["linear"]) / len(r["linear"])
        left_out = f" ({r['excluded_tokens']} massive-activation tokens left out)" if r.get("massive_ratio") else ""
        typer.echo(f"{name}: mean CKA {mean:.4f}, last layer {r['linear'][-1]:.4f} over {r['tokens']} tokens{left_out}")


@app.command()
@cli_errors
def run(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/demo.yaml)."),
    out: Path = typer.Option(..., help="Run folder; an interrupted run resumes here."),
    no_chat_template: bool = NO_CHAT_TEMPLATE,
) -> None:
    """The whole experiment: degrade, recover, evaluate, CKA, summary."""
    from .config import load_run_config
    from .pipeline import run_experiment

    cfg = load_run_config(config)
    if no_chat_template:
        from .config import updated

        cfg = updated(cfg, "--no-chat-template", data={**cfg.data.model_dump(), "use_chat_template": False})
    result = run_experiment(cfg, out, config_file=config)
    typer.echo("")
    typer.echo(result["summary"])
    typer.echo(f"run folder: {out}")


@app.command()
@cli_errors
def inspect(
    model: str = typer.Argument(..., help="Embedded model name or HF folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    sparsity_threshold: float = typer.Option(0.25, help="Share of exact zeros from which a matrix counts as pruned."),
) -> None:
    """What a model folder is, which Constraint it carries or implies, and what `recover` keeps."""
    from .describe import inspect_model, inspect_text

    if not 0 < sparsity_threshold <= 1:  # written so that NaN fails too
        raise RecoverLMError(f"--sparsity-threshold must be in (0, 1], got {sparsity_threshold}")
    info = inspect_model(model, sparsity_threshold)
    typer.echo(json.dumps(info, indent=2) if json_out else inspect_text(info))


@app.command()
@cli_errors
def export(
    model: str = typer.Argument(..., help="Recovered or degraded model folder (weights on a grid)."),
    format: str = typer.Option(..., "--format", help="compressed-tensors (integer grids) or bitsandbytes-nf4."),
    out: Path = typer.Option(..., help="Output folder."),
    dtype: str = typer.Option("float32", help="dtype of scales and unquantized weights: float32, bfloat16, float16 "
                              "(a bfloat16 or float16 scale moves each weight of its group by up to 2^-9 or 2^-11 of it; float32 keeps "
                              "the grid exact)."),
) -> None:
    """Write a model in a serving format, its grid packed; read back and checked against the source."""
    from .export import export_model

    export_model(model, format, out, dtype, log=typer.echo)


@app.command()
@cli_errors
def study(
    config: Path = typer.Argument(..., help="Study YAML: a base run config and the axes models, degradations, methods, seeds."),
    out: Optional[Path] = typer.Option(None, help="Study folder; one run folder per cell, reused when finished "
                                       "(needed unless --render)."),
    jobs: int = typer.Option(1, min=1, help="Cells run at once, each in its own process (CPU threads split between them)."),
    only: Optional[str] = typer.Option(None, help="Run only the cells whose name matches this pattern, e.g. '*/nf4/*'."),
    render: bool = typer.Option(False, help="Only rewrite the results document from the finished cells."),
    show_plan: bool = typer.Option(False, "--plan", help="Only list each cell's state (recorded, or to run with "
                                   "an estimate of its time) and run nothing."),
    doc: Optional[Path] = typer.Option(None, help="Results document (default: the config's doc, else docs/results.md)."),
    records: Optional[Path] = typer.Option(None, help="The finished cells' records, one small JSON each (default: the "
                                           "config's records, else DOC's folder/<DOC name>-cells)."),
    readme: Optional[Path] = typer.Option(None, help="Also quote the headline table in this file, where it marks a "
                                          "place for this document (<!-- results:NAME --> ... <!-- /results:NAME -->)."),
) -> None:
    """A grid of runs (models x degradations x methods x seeds) and its results document. Every
    finished cell is recorded beside the document, so the document renders, and the study
    resumes, without the run folders."""
    from .report.records import records_dir_for
    from .report.study import write_results
    from .study import load_study, plan, record_finished, run_study, study_records

    spec = load_study(config)
    target = doc or spec.doc or Path("docs/results.md")
    ledger = records or spec.records or records_dir_for(target)
    from .io import check_output_file

    check_output_file(target, [config, readme])  # the results page replaces neither the study's config nor the README
    if readme is not None:
        try:
            readme.read_text(encoding="utf-8")
        except IsADirectoryError as exc:
            raise RecoverLMError(f"--readme {readme} is a folder, not a file to quote the headline in") from exc
        except FileNotFoundError as exc:
            raise RecoverLMError(f"--readme {readme}: no such file") from exc
        except UnicodeDecodeError as exc:
            raise RecoverLMError(f"--readme {readme} is not UTF-8 text") from exc
    if ledger.exists() and not ledger.is_dir():
        raise RecoverLMError(f"--records {ledger} is a file; the cell records are a folder")
    if show_plan:
        rows = plan(spec, out, ledger, only)
        width = max(len(r["cell"]) for r in rows)
        for r in rows:
            took = "" if r["seconds"] is None else f"{'~' if r['state'].startswith('to run') else ''}{r['seconds'] / 60:.0f} min"
            typer.echo(f"{r['cell']:<{width}}  {r['state']:<22}  {took:>8}  {r['device']}".rstrip())
        todo = [r for r in rows if r["state"].startswith("to run")]
        left = sum(r["seconds"] or 0 for r in todo)
        typer.echo(f"{len(rows)} cell{'' if len(rows) == 1 else 's'}: {len(rows) - len(todo)} finished, {len(todo)} to run"
                   + (f", about {left / 3600:.1f} h at the recorded cells' pace" if left else ""))
        return
    if out is None and not render:
        raise RecoverLMError("--out: a study folder is needed to run cells (only --render and --plan work without one)")
    if not render:
        run_study(spec, out, jobs=jobs, only=only, records_dir=ledger)  # validates every cell before any runs
    elif out is not None:
        record_finished(spec, out, ledger)
    quoted = write_results(study_records(spec, ledger), target, ledger, list(spec.methods), list(spec.degradations),
                           readme)[1]
    typer.echo(f"results written to {target} (cell records: {ledger})")
    if readme is not None and not quoted:
        typer.echo(f"{readme} has no <!-- results:{target.stem} --> ... <!-- /results:{target.stem} --> marks (in that "
                   "order), so the headline table was not quoted there", err=True)


@app.command()
@cli_errors
def report(run_dir: Path = typer.Argument(..., help="A run folder written by `recoverlm run`.")) -> None:
    """Write summary.md and report.html (plots embedded) for a run folder, and print the summary."""
    from .report.summary import write_report

    if not (run_dir / "metrics.json").exists():
        raise RecoverLMError(f"{run_dir} is not a finished run folder (no metrics.json)")
    typer.echo(write_report(run_dir))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
