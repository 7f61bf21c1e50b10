"""A two-cell study on the tiny model, through the CLI: folder layout, one shared degraded model,
reuse of finished cells, a bad cell refused before anything runs, and the rendered results."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from recoverlm.cli import app

runner = CliRunner()


def _study(tmp_path, tiny_model, prompt_file, methods=None):
    spec = {
        "base": {
            "data": {"prompts": str(prompt_file), "n_heldout": 4, "max_new_tokens": 8, "top_k_logits": 8,
                     "teacher_generation_dtype": "float32"},
            "recover": {"batch_size": 4, "lr": 5e-3, "eval_every": 1, "warmup_steps": 1},
            "evaluate": {"generation": False},
            "cka": {"cross_tokens": 0},
        },
        "models": [str(tiny_model)],
        "degradations": {"mag": {"method": "prune.magnitude", "params": {"sparsity": 0.5}}},
        "methods": methods or {"none": {"recover": {"method": "none"}}, "offpolicy": {"recover": {"offpolicy_steps": 2}}},
        "seeds": [0],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_two_cell_study_runs_reuses_and_renders(tmp_path, tiny_model, prompt_file, monkeypatch):
    out, doc = tmp_path / "study", tmp_path / "results.md"
    args = ["study", str(_study(tmp_path, tiny_model, prompt_file)), "--out", str(out), "--doc", str(doc)]
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "README.md").write_text("<!-- results:results -->\nmine\n<!-- /results:results -->\n")
    monkeypatch.chdir(here)
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    shared = out / "teacher" / "mag" / "degraded"
    assert (shared / "recoverlm" / "degradation.json").exists()
    for method in ("none", "offpolicy"):
        cell = out / "teacher" / "mag" / f"{method}-seed0"
        assert (cell / "degraded").resolve() == shared.resolve()  # one degraded model for both cells
        record = json.loads((cell / "cell.json").read_text())
        assert record["method"] == method and record["device"] and (cell / "summary.md").exists()
    assert json.loads((out / "teacher/mag/none-seed0/cell.json").read_text())["ratio"] == 0.0

    text = doc.read_text()
    assert "| mag |" in text and "| none | offpolicy |" in text and "## Recovery against training steps" in text
    curves = tmp_path / "results-figures" / "teacher-mag-curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.name in text

    stamp = (out / "teacher/mag/offpolicy-seed0/cell.json").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "2 finished already, 0 to run" in again.output
    assert (out / "teacher/mag/offpolicy-seed0/cell.json").stat().st_mtime_ns == stamp

    doc.unlink()
    rendered = runner.invoke(app, args + ["--render"])
    assert rendered.exit_code == 0 and doc.read_text() == text
    assert "## Does alignment cause recovery?" in text
    assert "mine" in (here / "README.md").read_text(), "a README is quoted into only when --readme names it"

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:results -->\nold\n<!-- /results:results -->\n\nend\n")
    quoted = runner.invoke(app, args + ["--render", "--readme", str(readme)])
    assert quoted.exit_code == 0, quoted.output
    body = readme.read_text()
    assert "old" not in body and body.endswith("<!-- /results:results -->\n\nend\n")
    assert "From [results.md](results.md), generated from 2 finished cells" in body and "| mag |" in body
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("<!-- /results:results -->\n<!-- results:results -->\n")  # the marks out of order
    said = runner.invoke(app, args + ["--render", "--readme", str(unmarked)])
    assert said.exit_code == 0 and "the headline table was not quoted there" in said.output
    assert unmarked.read_text() == "<!-- /results:results -->\n<!-- results:results -->\n"


def test_the_records_render_and_resume_the_study_without_its_folders(tmp_path, tiny_model, prompt_file):
    """A study moved to another machine keeps only its records: the document renders the same from
    them, finished cells are not run again, and a cell whose settings changed is."""
    import shutil

    spec, out, doc = _study(tmp_path, tiny_model, prompt_file), tmp_path / "study", tmp_path / "results.md"
    args = ["study", str(spec), "--doc", str(doc)]
    assert runner.invoke(app, args + ["--out", str(out)]).exit_code == 0
    records = tmp_path / "results-cells" / "teacher" / "mag"
    assert sorted(p.name for p in records.iterdir()) == ["none-seed0.json", "offpolicy-seed0.json"]
    kept = json.loads((records / "offpolicy-seed0.json").read_text())
    assert kept["cell_config"]["recover"]["offpolicy_steps"] == 2 and kept["history"] and kept["kl"]
    text = doc.read_text()
    assert "from the records of 2 finished cells in `results-cells`" in text

    shutil.rmtree(out)
    doc.unlink()
    rendered = runner.invoke(app, args + ["--render"])
    assert rendered.exit_code == 0, rendered.output
    assert doc.read_text() == text

    again = runner.invoke(app, args + ["--out", str(out)])
    assert again.exit_code == 0 and "2 finished already, 0 to run" in again.output and not out.exists()
    planned = runner.invoke(app, args + ["--plan"])
    assert planned.exit_code == 0 and "2 cells: 2 finished, 0 to run" in planned.output
    assert planned.output.count("recorded") == 2

    raw = yaml.safe_load(spec.read_text())
    raw["methods"]["offpolicy"]["recover"]["lr"] = 1e-3
    spec.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, args + ["--render"]).exit_code == 0
    assert "from the records of 1 finished cell in" in doc.read_text(), "a record of other settings is not this cell's"
    lines = runner.invoke(app, args + ["--plan", "--only", "*/off*"]).output.splitlines()
    assert len(lines) == 2 and "to run" in lines[0] and " min" in lines[0], lines  # estimated from the other cell
    assert lines[1] == "1 cell: 0 finished, 1 to run" or lines[1].startswith("1 cell: 0 finished, 1 to run, about")
    changed = runner.invoke(app, args + ["--out", str(out)])
    assert changed.exit_code == 0 and "1 finished already, 1 to run" in changed.output, changed.output
    assert json.loads((records / "offpolicy-seed0.json").read_text())["cell_config"]["recover"]["lr"] == 1e-3
    assert not (out / "teacher/mag/none-seed0").exists()

    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--out" in refused.output

    (records / "none-seed0.json").write_text('{"name": "teacher/mag/none-se')  # cut short in a copy
    broken = runner.invoke(app, args + ["--render"])
    assert broken.exit_code == 2 and "none-seed0.json cannot be read" in broken.output
    assert len(broken.output.strip().splitlines()) == 1


def test_a_crashing_cell_is_one_line_naming_its_log(tmp_path, tiny_model, prompt_file, monkeypatch):
    """Whatever breaks inside a cell, the study says which cell in one line; the traceback is in its log."""
    from recoverlm import pipeline

    def broken(*a, **k):
        raise RuntimeError("out of memory in the forward\nmore detail")

    monkeypatch.setattr(pipeline, "run_experiment", broken)
    out = tmp_path / "study"
    result = runner.invoke(app, ["study", str(_study(tmp_path, tiny_model, prompt_file)), "--out", str(out),
                                 "--doc", str(tmp_path / "r.md")])
    assert result.exit_code == 2, result.output
    assert "cell teacher/mag/none-seed0: out of memory in the forward (its log:" in result.output
    assert "Traceback" not in result.output
    assert "RuntimeError: out of memory" in (out / "teacher/mag/none-seed0/run.log").read_text()


def test_a_bad_cell_is_refused_before_anything_runs(tmp_path, tiny_model, prompt_file):
    out = tmp_path / "study"
    spec = _study(tmp_path, tiny_model, prompt_file, methods={"ok": {"recover": {"offpolicy_steps": 1}},
                                                              "bad": {"recover": {"lr": -1}}})
    result = runner.invoke(app, ["study", str(spec), "--out", str(out), "--doc", str(tmp_path / "r.md")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cell teacher/mag/bad-seed0" in lines[0] and "recover.lr" in lines[0]
    assert not out.exists()


def test_an_empty_axis_and_an_unknown_degradation_name_their_key(tmp_path, tiny_model, prompt_file):
    spec = _study(tmp_path, tiny_model, prompt_file)
    raw = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**raw, "seeds": []}))
    result = runner.invoke(app, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "seeds" in result.output
    spec.write_text(yaml.safe_dump({**raw, "degradations": {"x": {"method": "prune.nothing"}}}))
    result = runner.invoke(app, ["study", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "degradation 'x'" in result.output and "prune.nothing" in result.output


def test_a_method_can_be_limited_to_some_degradations(tmp_path, tiny_model, prompt_file):
    from recoverlm.errors import RecoverLMError
    from recoverlm.study import cells, load_study

    spec = _study(tmp_path, tiny_model, prompt_file)
    raw = yaml.safe_load(spec.read_text())
    raw["degradations"]["sft"] = {"method": "sft", "params": {"steps": 2}, "evaluate": {"suites": ["extraction"]}}
    raw["methods"]["mixed"] = {"recover": {"offpolicy_steps": 1}, "data": {"task_prompts": "extraction"},
                               "degradations": ["sft"]}
    spec.write_text(yaml.safe_dump(raw))
    names = {c.name.split("/", 1)[1]: c for c in cells(load_study(spec))}
    assert "sft/mixed-seed0" in names and "mag/mixed-seed0" not in names and len(names) == 5
    assert names["sft/none-seed0"].config.evaluate.suites == ["extraction"]
    assert names["mag/none-seed0"].config.evaluate.suites == []
    raw["methods"]["mixed"]["degradations"] = ["nope"]
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecoverLMError, match="method 'mixed': unknown degradation"):
        cells(load_study(spec))
    raw["methods"]["mixed"]["degradations"] = []
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecoverLMError, match="method 'mixed': degradations is empty"):
        cells(load_study(spec))


def test_cells_sharing_a_calibrated_damage_must_share_its_split(tmp_path, tiny_model, prompt_file):
    """A damage calibrated on the built-in prompts left one split's scored prompts out: a method
    scoring another split on it would be measured on calibration texts."""
    from recoverlm.errors import RecoverLMError
    from recoverlm.study import cells, load_study

    spec = _study(tmp_path, tiny_model, prompt_file)
    raw = yaml.safe_load(spec.read_text())
    raw["base"]["data"].pop("prompts")
    raw["degradations"] = {"wanda": {"method": "prune.wanda", "params": {"sparsity": 0.5}}}
    raw["methods"]["other-split"] = {"recover": {"offpolicy_steps": 1}, "data": {"split_seed": 3}}
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecoverLMError, match="other-split-seed0: its data split differs"):
        cells(load_study(spec))
    raw["degradations"] = {"mag": {"method": "prune.magnitude", "params": {"sparsity": 0.5}}}  # not calibrated
    spec.write_text(yaml.safe_dump(raw))
    assert len(cells(load_study(spec))) == 3


def test_a_base_section_that_is_not_a_mapping_is_refused(tmp_path, tiny_model, prompt_file):
    spec = _study(tmp_path, tiny_model, prompt_file)
    raw = yaml.safe_load(spec.read_text())
    raw["base"]["recover"] = "lr=3e-4"
    spec.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["study", str(spec), "--plan"])
    assert result.exit_code == 2 and "base.recover must be a mapping" in result.output


def test_where_a_cell_runs_does_not_change_which_cell_it_is(tmp_path, tiny_model, prompt_file):
    """Threads, devices, checkpoint cadence: a record made with other placement settings is still the cell's."""
    from recoverlm.study import cells, load_study, records_cell

    spec = _study(tmp_path, tiny_model, prompt_file)
    cell = cells(load_study(spec))[1]
    record = {"name": cell.name, "cell_config": cell.config.model_dump(mode="json")}
    raw = yaml.safe_load(spec.read_text())
    raw["base"]["recover"].update(threads=2, save_every=10)
    spec.write_text(yaml.safe_dump(raw))
    assert records_cell(record, cells(load_study(spec))[1])
    raw["base"]["recover"]["lr"] = 1e-3
    spec.write_text(yaml.safe_dump(raw))
    assert not records_cell(record, cells(load_study(spec))[1])


def test_the_results_page_never_replaces_the_studys_config(tmp_path, tiny_model, prompt_file):
    spec = _study(tmp_path, tiny_model, prompt_file)
    before = spec.read_text()
    result = runner.invoke(app, ["study", str(spec), "--render", "--doc", str(spec)])
    assert result.exit_code == 2 and "is the input" in result.output and spec.read_text() == before


def test_a_damaged_cell_folder_is_one_line(tmp_path, tiny_model, prompt_file):
    spec, out = _study(tmp_path, tiny_model, prompt_file), tmp_path / "study"
    args = ["study", str(spec), "--out", str(out), "--doc", str(tmp_path / "r.md"), "--records", str(tmp_path / "rec")]
    assert runner.invoke(app, args + ["--only", "*/none-*"]).exit_code == 0
    metrics = out / "teacher/mag/none-seed0/metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    (tmp_path / "rec" / "teacher" / "mag" / "none-seed0.json").unlink()
    result = runner.invoke(app, args + ["--render"])
    assert result.exit_code == 2 and "cannot be read as a finished cell" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_cell_taught_by_another_copy_of_the_model_runs_again(tmp_path, tiny_model, prompt_file):
    """A record names the teacher's weights; another copy under the same name makes the record stale,
    and a folder it left here is refused rather than counted as finished."""
    from recoverlm import models

    spec, out = _study(tmp_path, tiny_model, prompt_file), tmp_path / "study"
    records = tmp_path / "rec"
    args = ["study", str(spec), "--doc", str(tmp_path / "r.md"), "--records", str(records), "--only", "*/none-*"]
    assert runner.invoke(app, args + ["--out", str(out)]).exit_code == 0
    path = records / "teacher" / "mag" / "none-seed0.json"
    record = json.loads(path.read_text())
    assert record["teacher_hash"] == models.model_hash(tiny_model)
    stages = json.loads((out / "teacher/mag/none-seed0/run.json").read_text())["stages"]
    assert record["seconds"] >= round(sum(stages.values()), 1) - 0.1  # every part of the run, not the last one

    (out / "teacher/mag/none-seed0/teacher.json").write_text(json.dumps({"hash": "0" * 16}))
    refused = runner.invoke(app, args + ["--out", str(out)])
    assert refused.exit_code == 2 and "another copy of" in refused.output, refused.output

    record["teacher_hash"] = "0" * 16
    path.write_text(json.dumps(record))
    planned = runner.invoke(app, args + ["--plan"])
    assert planned.exit_code == 0 and "to run: new teacher" in planned.output, planned.output
    assert "1 cell: 0 finished, 1 to run" in planned.output
    again = runner.invoke(app, args + ["--out", str(tmp_path / "elsewhere")])
    assert again.exit_code == 0 and "it runs again" in again.output and "0 finished already, 1 to run" in again.output
    assert json.loads(path.read_text())["teacher_hash"] == models.model_hash(tiny_model)


def test_a_cells_time_counts_the_stages_of_every_part(tmp_path):
    from recoverlm.study import stage_seconds

    assert stage_seconds(tmp_path) == 0.0
    (tmp_path / "run.json").write_text(json.dumps({"stages": {"recover": 100.5, "evaluate": 20.0, "odd": "x"}}))
    assert stage_seconds(tmp_path) == 120.5
    (tmp_path / "run.json").write_text("{")
    assert stage_seconds(tmp_path) == 0.0


def test_a_study_folder_holds_only_what_studies_write(tmp_path):
    from recoverlm.errors import RecoverLMError
    from recoverlm.study import check_study_folder

    check_study_folder(tmp_path / "new")  # not there yet: the study makes it
    cell = tmp_path / "out" / "model" / "nf4" / "two-stage-seed0"
    cell.mkdir(parents=True)
    (cell.parent / "degraded").mkdir()
    (cell.parent / ".degraded.partial-x1").mkdir()
    check_study_folder(tmp_path / "out")
    (cell.parent / "notes.md").write_text("mine")
    with pytest.raises(RecoverLMError, match="notes.md, which no study wrote"):
        check_study_folder(tmp_path / "out")
