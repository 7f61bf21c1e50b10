"""The bad-input table: every case ends with exit code 2 and one line naming the offending path,
key or value, no traceback, and nothing written where the output would have gone. Config-field
cases are generated from the pydantic models, so a new field is covered without being typed here."""

import json
import typing
from pathlib import Path

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from typer.testing import CliRunner

from recoverlm.cli import app
from recoverlm.config import CKAConfig, DataConfig, EvalConfig, RecoverConfig

runner = CliRunner()
SECTIONS = {"recover": RecoverConfig, "data": DataConfig, "evaluate": EvalConfig, "cka": CKAConfig}


def _bad_value(field):
    """A value the field refuses: out of its range, off its choices, or of the wrong type."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "not-a-choice"
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        annotation = next(a for a in args if a is not type(None))
        if typing.get_origin(annotation) is typing.Literal:
            return "not-a-choice"
    if annotation is bool:
        return "maybe"
    if annotation in (int, float):
        for m in field.metadata:
            if isinstance(m, Ge):
                return m.ge - 1
            if isinstance(m, Gt):
                return m.gt
            if isinstance(m, Le):
                return m.le + 1
            if isinstance(m, Lt):
                return m.lt
        return "a number, not this"
    if typing.get_origin(annotation) is list:
        return 7
    return None  # paths and free-form mappings: their own cases below


FIELD_CASES = [(section, name, value) for section, cls in SECTIONS.items() for name, f in cls.model_fields.items()
               if (value := _bad_value(f)) is not None]


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def test_the_table_is_long_enough():
    assert len(FIELD_CASES) >= 40


@pytest.mark.parametrize("section,name,value", FIELD_CASES, ids=[f"{s}.{n}" for s, n, _ in FIELD_CASES])
def test_every_config_field_refuses_a_bad_value(tmp_path, section, name, value):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({section: {name: value}}))
    out = tmp_path / "run"
    _one_line_error(runner.invoke(app, ["run", str(cfg), "--out", str(out)]), f"{section}.{name}")
    assert not out.exists()


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _run_with(config_text: str):
    """A case's command: `run` on a config holding `config_text`."""
    return lambda t, m: ["run", str(_write(t / "c.yaml", config_text)), "--out", str(t / "o")]


def _pickle_only(tmp_path, tiny_model):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((Path(tiny_model) / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    return folder


def _quantized_by(tmp_path, tiny_model, quantization_config: dict):
    folder = tmp_path / "quantized"
    folder.mkdir()
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    for f in Path(tiny_model).iterdir():
        if f.name != "config.json" and f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _foreign(tmp_path):
    """A folder holding somebody else's file."""
    folder = tmp_path / "theirs"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def _with_file(tmp_path, tiny_model, name: str, text: str) -> Path:
    """A copy of the model folder with one file replaced (or added) by `text`."""
    import shutil

    folder = shutil.copytree(tiny_model, tmp_path / "copy")
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def _cut_short_run(tmp_path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    return folder


def _degraded(tmp_path, tiny_model, method="prune.magnitude", params=None):
    from recoverlm.degrade import degrade

    degrade(tiny_model, method, params or {"sparsity": 0.5}, tmp_path / "degraded")
    return tmp_path / "degraded"


INPUT_CASES = {
    "missing model": (lambda t, m: ["degrade", "--model", str(t / "nope"), "--out", str(t / "o")], "model not found"),
    "Hub id not cached": (lambda t, m: ["degrade", "--model", "Qwen/Qwen2.5-3B", "--out", str(t / "o")], "Qwen/Qwen2.5-3B"),
    "folder without config.json": (lambda t, m: ["degrade", "--model", str(t), "--out", str(t / "o")], "no config.json"),
    "pickle-only weights": (lambda t, m: ["degrade", "--model", str(_pickle_only(t, m)), "--out", str(t / "o")], "pickle"),
    "unknown method": (lambda t, m: ["degrade", "--model", str(m), "--method", "prune.nothing", "--out", str(t / "o")],
                       "prune.nothing"),
    "sparsity out of range": (lambda t, m: ["degrade", "--model", str(m), "--sparsity", "1.5", "--out", str(t / "o")],
                              "sparsity"),
    "unknown method parameter": (lambda t, m: ["degrade", "--model", str(m), "--param", "colour=red", "--out", str(t / "o")],
                                 "colour"),
    "param without =": (lambda t, m: ["degrade", "--model", str(m), "--param", "colour", "--out", str(t / "o")], "colour"),
    "missing config": (lambda t, m: ["run", str(t / "none.yaml"), "--out", str(t / "o")], "none.yaml"),
    "empty prompts": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                    "--prompts", str(_write(t / "p.jsonl", "\n"))], "p.jsonl"),
    "truncated prompts": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                        "--prompts", str(_write(t / "p.jsonl", '{"prompt": "a"}\n{"prom'))], "p.jsonl:2"),
    "non-UTF-8 prompts": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                        "--prompts", str(_write(t / "p.jsonl", b'{"prompt": "caf\xe9"}\n'))], "p.jsonl"),
    "non-UTF-8 config": (lambda t, m: ["run", str(_write(t / "c.yaml", b"recover:\n  # r\xe9\n")), "--out", str(t / "o")],
                         "not UTF-8"),
    "config not YAML": (_run_with("recover: [unclosed"),
                        "not valid YAML"),
    "config a list": (_run_with("- 1\n- 2\n"), "mapping"),
    "unknown section": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                      "--config", str(_write(t / "c.yaml", "trainer: {}\n"))], "trainer"),
    "hidden_weight without distill": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out",
                                                    str(t / "o"), "--method", "sft-replay", "--hidden-weight", "1"],
                                      "hidden_weight needs method 'distill'"),
    "EMA under LoRA": (_run_with("recover: {teacher_mode: ema, lora: {r: 4}}\n"), "teacher_mode 'ema'"),
    "learned scales under LoRA": (_run_with("recover: {grid_scales: learned, lora: {}}\n"), "grid_scales 'learned'"),
    "train_blocks with two rules": (_run_with("recover: {train_blocks: {random: 1, least_aligned: 1}}\n"), "exactly one of"),
    "train_blocks beyond the depth": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                                    "--config", str(_write(t / "c.yaml", "recover: {train_blocks: [5]}\n"))],
                                      "block 5 does not exist"),
    "written prompts without template": (_run_with("data: {teacher_prompts: 4, use_chat_template: false}\n"), "teacher_prompts"),
    "replay data missing": (_run_with("recover: {method: sft-replay, replay_source: data}\n"), "replay_data"),
    "output is the input": (lambda t, m: ["degrade", "--model", str(m), "--out", str(m)], "is the input"),
    "empty suite list": (lambda t, m: ["evaluate", "--model", str(m), "--teacher", str(m), "--suite", ",",
                                       "--out", str(t / "o.json")], "--suite"),
    "unknown suite": (lambda t, m: ["evaluate", "--model", str(m), "--teacher", str(m), "--suite", "no_such_suite",
                                    "--out", str(t / "o.json")], "no_such_suite"),
    "perplexity of a missing file": (lambda t, m: ["perplexity", "--model", str(m), "--data", str(t / "c.txt")], "c.txt"),
    "report of a folder that is not a run": (lambda t, m: ["report", str(t)], "not a finished run folder"),
    "study with an empty axis": (lambda t, m: ["study", str(_write(t / "s.yaml", json.dumps(
        {"models": [], "degradations": {"a": {"method": "prune.magnitude"}}, "methods": {"n": {}}}))),
        "--out", str(t / "o")], "models"),
    "GPTQ checkpoint": (lambda t, m: ["inspect", str(_quantized_by(t, m, {"quant_method": "gptq", "bits": 4}))], "GPTQ"),
    "unsupported compressed-tensors format": (lambda t, m: ["recover", "--teacher", str(m), "--out", str(t / "o"), "--student",
                                                            str(_quantized_by(t, m, {"quant_method": "compressed-tensors",
                                                                                     "format": "nvfp4-pack-quantized"}))],
                                              "nvfp4-pack-quantized"),
    "export of a dense model": (lambda t, m: ["export", str(m), "--format", "compressed-tensors", "--out", str(t / "o")],
                                "integer grid"),
    "export of a sparse model": (lambda t, m: ["export", str(_degraded(t, m)), "--format", "compressed-tensors",
                                               "--out", str(t / "o")], "sparse"),
    "unknown export format": (lambda t, m: ["export", str(m), "--format", "onnx", "--out", str(t / "o")], "onnx"),
    "unknown export dtype": (lambda t, m: ["export", str(m), "--format", "compressed-tensors", "--dtype", "float8",
                                           "--out", str(t / "o")], "float8"),
    "recover.export that does not fit": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                                       "--config", str(_write(t / "c.yaml", "recover: {export: bitsandbytes-nf4}\n"))],
                                         "NF4"),
    "recover.export of a LoRA grid": (lambda t, m: ["recover", "--teacher", str(m), "--out", str(t / "o"), "--student",
                                                    str(_degraded(t, m, "quant.rtn", {"bits": 4, "group_size": 16})), "--config", str(_write(t / "c.yaml",
                                                    "recover: {export: compressed-tensors, lora: {r: 4}}\n"))],
                                      "needs the recovery in the weights"),
    "tracker not installed": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                            "--config", str(_write(t / "c.yaml", "recover: {log_with: [trackio]}\n"))],
                              "pip install trackio"),
    "config section a list": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                            "--config", str(_write(t / "c.yaml", "recover: [1]\n"))], "'recover' must be a mapping"),
    "messages that are not objects": (lambda t, m: ["recover", "--teacher", str(m), "--student", str(m), "--out", str(t / "o"),
                                                    "--prompts", str(_write(t / "p.jsonl", '{"messages": ["hi"]}\n'))],
                                      "each message must be an object"),
    "run into a folder of other files": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\n")), "--out",
                                                       str(_foreign(t))], "did not write"),
    "run into the model folder": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\n")), "--out", str(m)],
                                  "is the input"),
    "evaluate into a folder": (lambda t, m: ["evaluate", "--model", str(m), "--teacher", str(m), "--out", str(_foreign(t))],
                               "is a folder"),
    "cka into the student": (lambda t, m: ["cka", "--teacher", str(m), "--student", str(m), "--out",
                                           str(Path(m) / "cka.json")], "lies inside the input"),
    "cka_layers without cka_weight": (_run_with("recover: {cka_layers: [0]}\n"), "set cka_weight too"),
    "EMA teacher without on-policy steps": (_run_with("recover: {teacher_mode: ema}\n"), "onpolicy_steps is 0"),
    "sft-replay with on-policy steps": (_run_with("recover: {method: sft-replay, onpolicy_steps: 5}\n"), "has no on-policy stage"),
    "skip_first_tokens past the responses": (_run_with("recover: {skip_first_tokens: 64}\n"), "leaves nothing of the teacher's"),
    "SFT on the held-out items' seed": (lambda t, m: ["degrade", "--model", str(m), "--method", "sft", "--param", "seed=999",
                                                      "--out", str(t / "o")], "seed 999 draws the task suites"),
    "param value not YAML": (lambda t, m: ["degrade", "--model", str(m), "--param", "sparsity=[1", "--out", str(t / "o")],
                             "--param sparsity"),
    "suite limit of zero": (lambda t, m: ["evaluate", "--model", str(m), "--suite", "knowledge", "--limit", "0",
                                          "--out", str(t / "o.json")], "--limit"),
    "task YAML that is a list": (lambda t, m: ["evaluate", "--model", str(m), "--suite", str(_write(t / "s.yaml", "- 1\n")),
                                               "--out", str(t / "o.json")], "not an lm-eval task"),
    "task YAML not UTF-8": (lambda t, m: ["evaluate", "--model", str(m), "--suite", str(_write(t / "s.yaml", b"task: caf\xe9\n")),
                                          "--out", str(t / "o.json")], "cannot read task YAML"),
    "inspect a folder whose config is not JSON": (lambda t, m: ["inspect", str(_with_file(t, m, "config.json", "{not json"))],
                                                  "cannot read"),
    "inspect a folder whose config is a list": (lambda t, m: ["inspect", str(_with_file(t, m, "config.json", "[1]"))],
                                                "cannot read"),
    "inspect with a threshold past 1": (lambda t, m: ["inspect", str(m), "--sparsity-threshold", "5"], "--sparsity-threshold"),
    "inspect with a NaN threshold": (lambda t, m: ["inspect", str(m), "--sparsity-threshold", "nan"], "--sparsity-threshold"),
    "report of a run folder cut short": (lambda t, m: ["report", str(_cut_short_run(t))], "not a complete run folder"),
    "recovery record cut short": (lambda t, m: ["evaluate", "--model", str(_with_file(t, m, "recoverlm/recovery.json", "{bad")),
                                                "--teacher", str(m), "--out", str(t / "o.json")], "recovery.json cannot be read"),
    "cka of a missing student": (lambda t, m: ["cka", "--teacher", str(m), "--student", str(t / "nope"), "--out",
                                               str(t / "o.json")], "model not found"),
    "cka with an unknown pooling": (lambda t, m: ["cka", "--teacher", str(m), "--student", str(m), "--pooling", "max",
                                                  "--out", str(t / "o.json")], "pooling"),
    "cka with a negative token sample": (lambda t, m: ["cka", "--teacher", str(m), "--student", str(m), "--cross-tokens",
                                                       "-5", "--out", str(t / "o.json")], "cross_tokens"),
    "evaluate of a missing degraded model": (lambda t, m: ["evaluate", "--model", str(m), "--teacher", str(m), "--degraded",
                                                           str(t / "nope"), "--out", str(t / "o.json")], "model not found"),
    "run with a typo in the method": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\ndegrade: {{method: prune.bogus}}\n")),
                                                    "--out", str(t / "o")], "prune.bogus"),
    "run with a bit width out of range": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\ndegrade: {{method: quant.rtn, "
                                                                                  "params: {bits: 99}}\n")), "--out", str(t / "o")],
                                          "bits"),
    "run with an unknown suite": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\nevaluate: {{suites: [no_such_suite]}}\n")),
                                                "--out", str(t / "o")], "no_such_suite"),
    "run with task prompts that are not there": (lambda t, m: ["run", str(_write(t / "c.yaml", f"model: {m}\ndata: {{task_prompts: "
                                                                                     f"{t / 'tasks.jsonl'}}}\n")),
                                                               "--out", str(t / "o")], "tasks.jsonl"),
    "GPTQ with a negative damping": (lambda t, m: ["degrade", "--model", str(m), "--method", "quant.gptq", "--param",
                                                   "percdamp=-1", "--out", str(t / "o")], "percdamp"),
    "study into a folder of other files": (lambda t, m: ["study", str(_write(t / "s.yaml", json.dumps(
        {"models": [str(m)], "degradations": {"a": {"method": "prune.magnitude"}}, "methods": {"n": {"recover": {"method": "none"}}}}))),
        "--out", str(_foreign(t))], "which no study wrote"),
    "study quoting a README that is not there": (lambda t, m: ["study", str(_write(t / "s.yaml", json.dumps(
        {"models": [str(m)], "degradations": {"a": {"method": "prune.magnitude"}}, "methods": {"n": {"recover": {"method": "none"}}}}))),
        "--render", "--doc", str(t / "o.json"), "--readme", str(t / "README.md")], "no such file"),
    "missing required option": (lambda t, m: ["degrade", "--model", str(m)], "--out"),
    "unknown command": (lambda t, m: ["degrad"], "degrad"),
    "unknown option": (lambda t, m: ["degrade", "--model", str(m), "--out", str(t / "o"), "--sparsity-ratio", "1"],
                       "--sparsity-ratio"),
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_bad_inputs_and_combinations_are_one_line(tmp_path, tiny_model, case):
    make_args, needle = INPUT_CASES[case]
    before = sorted(p.name for p in Path(tiny_model).iterdir())
    result = runner.invoke(app, make_args(tmp_path, tiny_model))
    _one_line_error(result, needle)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.json").exists()
    assert sorted(p.name for p in Path(tiny_model).iterdir()) == before, "an input was written to"
    if (tmp_path / "theirs").exists():
        assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "degrade", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "model not found" in str(result.exception)
