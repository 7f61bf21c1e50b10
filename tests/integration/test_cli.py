"""End-to-end through the CLI on a tiny random model, and the one-line errors for bad input."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from recoverlm import models
from recoverlm.cli import app

runner = CliRunner()


def _config(tmp_path, tiny_model, prompt_file, **degrade):
    cfg = {
        "model": str(tiny_model),
        "degrade": degrade or {"method": "prune.magnitude", "params": {"sparsity": 0.5}},
        "data": {"prompts": str(prompt_file), "n_heldout": 4, "max_new_tokens": 8, "top_k_logits": 8,
                 "teacher_generation_dtype": "float32"},
        "recover": {"offpolicy_steps": 4, "batch_size": 4, "lr": 1e-3, "eval_every": 1, "warmup_steps": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_end_to_end(tmp_path, tiny_model, prompt_file):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_config(tmp_path, tiny_model, prompt_file)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "metrics.json", "cka.json", "summary.md", "degraded/recoverlm/degradation.json",
                 "degraded/recoverlm/masks.safetensors", "recovered/recoverlm/recovery.json",
                 "recovered/recoverlm/metrics.jsonl"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["metrics"]["degraded"]["kl"] > 0
    assert set(metrics["recovery_ratio"]) == {"kl", "reverse_kl", "nll", "top1_agreement", "exact_match", "length_ratio"}
    assert metrics["metrics"]["teacher"]["exact_match"] == 1.0 and 0 <= metrics["metrics"]["recovered"]["exact_match"] <= 1
    recovery = json.loads((out / "recovered" / "recoverlm" / "recovery.json").read_text())
    assert recovery["constraint"]["sparsity"] == pytest.approx(0.5)
    cka = json.loads((out / "cka.json").read_text())["cka"]
    assert len(cka["recovered"]["linear"]) == 3  # embeddings + 2 blocks
    assert cka["degraded"]["linear"][0] == pytest.approx(1.0)  # embeddings are not pruned
    assert "recovery ratio" in result.output.lower()
    # A rerun resumes: every stage is reused.
    again = runner.invoke(app, ["run", str(_config(tmp_path, tiny_model, prompt_file)), "--out", str(out)])
    assert again.exit_code == 0 and again.output.count("reusing") == 4


def test_stage_commands(tmp_path, tiny_model, prompt_file):
    cfg = _config(tmp_path, tiny_model, prompt_file)
    deg, rec = tmp_path / "deg", tmp_path / "rec"
    r = runner.invoke(app, ["degrade", "--model", str(tiny_model), "--method", "quant.rtn", "--bits", "4",
                            "--group-size", "32", "--out", str(deg)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["recover", "--teacher", str(tiny_model), "--student", str(deg), "--out", str(rec),
                            "--config", str(cfg), "--steps", "2", "--hidden-weight", "1", "--grid-latents", "teacher"])
    assert r.exit_code == 0, r.output
    assert "grid latents:" in r.output
    record = json.loads((rec / "recoverlm" / "recovery.json").read_text())
    assert record["constraint"]["kind"] == "quant_grid" and record["recover"]["hidden_weight"] == 1.0
    assert record["recover"]["grid_latents"] == "teacher"
    r = runner.invoke(app, ["evaluate", "--model", str(rec), "--degraded", str(deg), "--teacher", str(tiny_model),
                            "--out", str(tmp_path / "eval.json"), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "recovery_ratio" in json.loads((tmp_path / "eval.json").read_text())
    r = runner.invoke(app, ["cka", "--teacher", str(tiny_model), "--student", str(rec), "--out",
                            str(tmp_path / "cka.json"), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "smollm2-135m-instruct" in r.output


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0]


def test_missing_model_path(tmp_path):
    r = runner.invoke(app, ["degrade", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    _one_line_error(r, "model not found")
    assert not (tmp_path / "o").exists()


def test_sparsity_out_of_range(tmp_path, tiny_model):
    r = runner.invoke(app, ["degrade", "--model", str(tiny_model), "--sparsity", "1.5", "--out", str(tmp_path / "o")])
    _one_line_error(r, "sparsity")
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.partial-*"))


def test_missing_prompt_file(tmp_path, tiny_model):
    deg = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(deg)]).exit_code == 0
    r = runner.invoke(app, ["recover", "--teacher", str(tiny_model), "--student", str(deg), "--out",
                            str(tmp_path / "rec"), "--prompts", str(tmp_path / "missing.jsonl")])
    _one_line_error(r, "missing.jsonl")
    assert not (tmp_path / "rec").exists()


def test_hidden_weight_errors(tmp_path, tiny_model):
    deg = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(deg)]).exit_code == 0
    base = ["recover", "--teacher", str(tiny_model), "--student", str(deg), "--out", str(tmp_path / "rec")]
    _one_line_error(runner.invoke(app, base + ["--hidden-weight", "-1"]), "hidden_weight")
    _one_line_error(runner.invoke(app, base + ["--hidden-weight", "1", "--method", "sft-replay"]),
                    "hidden_weight needs method 'distill'")
    _one_line_error(runner.invoke(app, base + ["--grid-latents", "nearby"]), "grid_latents")
    _one_line_error(runner.invoke(app, base + ["--grid-latents", "teacher"]),
                    "grid_latents 'teacher' needs a student on a quantization grid")
    assert not (tmp_path / "rec").exists()


def test_invalid_config_field(tmp_path, tiny_model):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model), "recover": {"offpolicy_steps": -3}}))
    _one_line_error(runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")]), "recover.offpolicy_steps")


def test_pickle_only_model_is_refused(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _one_line_error(runner.invoke(app, ["degrade", "--model", str(bad), "--out", str(tmp_path / "o")]), "safetensors")


def test_corrupt_weights(tmp_path, tiny_model):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    _one_line_error(runner.invoke(app, ["degrade", "--model", str(bad), "--out", str(tmp_path / "o")]), "cannot load model")


def test_report_writes_html_with_embedded_plots(tmp_path, tiny_model, prompt_file):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(_config(tmp_path, tiny_model, prompt_file)), "--out", str(out)]).exit_code == 0
    for name in ("cka_layers.png", "recovery_curve.png", "cka_vs_kl.png", "report.html"):
        assert (out / name).exists() and (out / name).stat().st_size > 1000, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<table>" in page and "partial r" in page
    (out / "report.html").unlink()
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0 and (out / "report.html").exists()
    _one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "not a finished run folder")


def test_evaluate_task_suites_with_ratios(tmp_path, tiny_model, prompt_file):
    cfg = _config(tmp_path, tiny_model, prompt_file)
    deg = tmp_path / "deg"
    assert runner.invoke(app, ["degrade", "--model", str(tiny_model), "--out", str(deg)]).exit_code == 0
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", "--model", str(deg), "--degraded", str(deg), "--teacher", str(tiny_model),
                            "--out", str(out), "--config", str(cfg), "--suite", "knowledge,arithmetic", "--limit", "6"])
    assert r.exit_code == 0, r.output
    tasks = json.loads(out.read_text())["tasks"]
    assert set(tasks["results"]) == {"teacher", "degraded", "recovered"}
    assert 0.0 <= tasks["results"]["teacher"]["knowledge"]["acc"] <= 1.0
    assert "knowledge/acc" in tasks["recovery_ratio_ci"]


def _without_chat_template(src, dst):
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    for f in dst.glob("chat_template.*"):
        f.unlink()
    assert not getattr(models.load_tokenizer(dst), "chat_template", None)
    return dst


def test_no_chat_template_flag(tiny_model, prompt_file, tmp_path):
    base = _without_chat_template(tiny_model, tmp_path / "base")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"prompts": str(prompt_file), "n_heldout": 2, "max_new_tokens": 4,
                                            "teacher_generation_dtype": "float32"}}))
    args = ["evaluate", "--model", str(base), "--teacher", str(base), "--out", str(tmp_path / "e.json"),
            "--config", str(cfg), "--suite", "fidelity,instructions", "--limit", "2"]
    detected = runner.invoke(app, args)  # a base model: plain prompts without being asked, said once
    assert detected.exit_code == 0, detected.output
    assert detected.output.count("has no chat template: prompts are plain text") == 1
    ok = runner.invoke(app, args + ["--no-chat-template"])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["tasks"]["results"]["teacher"]["instructions"]["n"] == 2
    assert report["metrics"]["model"]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_task_suites_without_a_teacher(tmp_path, tiny_model):
    out = tmp_path / "e.json"
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model), "--suite", "knowledge", "--limit", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["tasks"]["results"]) == {"model"} and report["tasks"]["results"]["model"]["knowledge"]["n"] == 3
    refused = runner.invoke(app, ["evaluate", "--model", str(tiny_model), "--out", str(tmp_path / "f.json")])
    assert refused.exit_code == 2 and "--teacher" in refused.output and not (tmp_path / "f.json").exists()


def test_recover_on_a_process_that_does_not_write_exits_cleanly(tmp_path, tiny_model, monkeypatch):
    """Under `accelerate launch` every rank runs the command; only the main one gets the history."""
    import recoverlm.recover.trainer as trainer

    monkeypatch.setattr(trainer, "recover", lambda *a, **k: {"world_size": 2})
    result = runner.invoke(app, ["recover", "--teacher", str(tiny_model), "--student", str(tiny_model),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "recovered model written" not in result.output
