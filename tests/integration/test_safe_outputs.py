"""Outputs never destroy anything: an output that is, contains or lies inside an input is refused,
a folder holding someone else's files is never replaced, and a config that is not UTF-8 is one
line, not a traceback."""

import hashlib
import shutil

from typer.testing import CliRunner

from recoverlm.cli import app

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_degrade_refuses_to_write_over_or_into_its_input(tmp_path, tiny_model):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    before = _digest(model)
    _one_line_error(runner.invoke(app, ["degrade", "--model", str(model), "--out", str(model)]), "is the input")
    _one_line_error(runner.invoke(app, ["degrade", "--model", str(model), "--out", str(model / "pruned")]),
                    "lies inside the input")
    assert _digest(model) == before and not (model / "pruned").exists()


def test_a_folder_with_other_files_is_never_replaced(tmp_path, tiny_model):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my only copy")
    _one_line_error(runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(mine)]),
                    "already holds files that recoverlm did not write")
    deg = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(deg)]).exit_code == 0
    _one_line_error(runner.invoke(app, ["recover", "--teacher", str(tiny_model), "--student", str(deg),
                                        "--out", str(mine), "--steps", "1"]), "did not write")
    assert (mine / "notes.txt").read_text() == "my only copy" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_recoverlm_replaces_its_own_output_and_fills_an_empty_folder(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(empty)]).exit_code == 0
    again = runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(empty), "--sparsity", "0.3"])
    assert again.exit_code == 0, again.output
    assert '"sparsity": 0.3' in (empty / "recoverlm" / "degradation.json").read_text()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, tiny_model):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("recover:\n  # r\xe9glages\n  lr: 1.0e-4\n".encode("latin-1"))
    _one_line_error(runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "run")]), "latin1.yaml", "not UTF-8")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_follows_its_inputs(tmp_path, tiny_model):
    """Finished stages are reused only while the teacher's weights and the prompts file are the
    ones the run began with; a damaged record of the run is one line."""
    import pytest

    from recoverlm.config import RunConfig
    from recoverlm.errors import RecoverLMError
    from recoverlm.pipeline import StageClock, claim_run_dir

    teacher = shutil.copytree(tiny_model, tmp_path / "teacher")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n')
    cfg = RunConfig.model_validate({"model": str(teacher), "data": {"prompts": str(prompts)}})
    out = tmp_path / "run"
    claim_run_dir(cfg, out, teacher)
    claim_run_dir(cfg, out, teacher)  # the same inputs: the folder is reused
    prompts.write_text('{"prompt": "b"}\n')
    with pytest.raises(RecoverLMError, match="the prompts file changed since this run began"):
        claim_run_dir(cfg, out, teacher)
    prompts.write_text('{"prompt": "a"}\n')
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(RecoverLMError, match="the teacher's weights changed"):
        claim_run_dir(cfg, out, teacher)
    (out / "run.json").write_text("{not json")
    with pytest.raises(RecoverLMError, match="run.json cannot be read"):
        StageClock(out)


def test_an_empty_section_means_its_defaults(tmp_path):
    from recoverlm.cli import _stage_configs
    from recoverlm.config import DataConfig, RecoverConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("recover:\ndata:\n")
    assert _stage_configs(cfg) == (RecoverConfig(), DataConfig())


def test_an_export_folder_holding_other_files_is_refused_before_training(tmp_path, tiny_model):
    """recover.export writes beside the output: that folder is checked before the first step."""
    deg = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(deg), "--method", "quant.rtn",
                               "--bits", "4", "--group-size", "16"]).exit_code == 0
    taken = tmp_path / "rec.compressed-tensors"
    taken.mkdir()
    (taken / "notes.txt").write_text("my only copy")
    config = tmp_path / "export.yaml"
    config.write_text("recover:\n  export: compressed-tensors\n")
    _one_line_error(runner.invoke(app, ["recover", "--teacher", str(tiny_model), "--student", str(deg), "--out",
                                        str(tmp_path / "rec"), "--config", str(config), "--steps", "1"]),
                    "rec.compressed-tensors", "did not write")
    assert not (tmp_path / "rec").exists() and (taken / "notes.txt").read_text() == "my only copy"


def test_a_users_folder_with_its_own_config_is_not_taken_for_a_run(tmp_path, tiny_model):
    """A config.yaml alone does not mark a folder as a run's: the user's config, notes and all are kept."""
    proj = tmp_path / "proj"
    proj.mkdir()
    config = proj / "config.yaml"
    config.write_text(f"# my experiment\nmodel: {tiny_model}\n")
    (proj / "notes.md").write_text("my notes")
    _one_line_error(runner.invoke(app, ["run", str(config), "--out", str(proj)]), "contains the input")
    elsewhere = tmp_path / "run.yaml"
    elsewhere.write_text(config.read_text())  # the same settings, run from elsewhere into the folder
    _one_line_error(runner.invoke(app, ["run", str(elsewhere), "--out", str(proj)]), "did not write")
    assert config.read_text().startswith("# my experiment") and (proj / "notes.md").read_text() == "my notes"
