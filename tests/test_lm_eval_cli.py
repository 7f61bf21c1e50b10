"""The shipped knowledge suite gives the same numbers in memory and through the plain lm_eval CLI."""

import json
import os
import subprocess
import sys

import pytest

from recoverlm import models
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, TASK_PREFIX, run_suites


def test_cli_matches_in_memory_run(tiny_model, tmp_path):
    limit = 12
    model, tok = models.load_model(tiny_model), models.load_tokenizer(tiny_model)
    native = run_suites(model, tok, ["knowledge"], limit=limit, batch_size=4)["knowledge"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
           "--tasks", TASK_PREFIX + "knowledge", "--include_path", str(SUITES_DIR), "--limit", str(limit),
           "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    cli = results["results"][TASK_PREFIX + "knowledge"]
    assert native["n"] == limit
    assert cli["acc,none"] == pytest.approx(native["acc"], abs=1e-12)
    assert cli["acc_norm,none"] == pytest.approx(native["acc_norm"], abs=1e-12)
    # item by item, not just on average
    samples = [json.loads(line) for f in sorted((tmp_path / "out").rglob("samples_*.jsonl")) for line in f.open()]
    cli_items = [float(s["acc"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    assert cli_items == native["items"]["acc"]
