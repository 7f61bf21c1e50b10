"""SIGKILL at random moments, then resume: the final model and metrics equal an uninterrupted
run's, bitwise. `recover --resume` continues from the last checkpoint; `run` reuses every finished
stage and resumes its recovery. Slow: it starts the CLI about two dozen times."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.slow
KILLS = 10


def _cli(*args, env):
    return subprocess.Popen([sys.executable, "-m", "recoverlm.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _soak(args, env, seconds: float, rng) -> int:
    """KILLS runs of the command, each killed at a random moment, then one left to finish."""
    for _ in range(KILLS):
        proc = _cli(*args, env=env)
        time.sleep(rng.uniform(0.5, seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return _cli(*args, env=env).wait()


@pytest.mark.parametrize("command", ["recover", "run"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_model, prompt_file, command):
    env = {**os.environ, "RECOVERLM_HOME": str(tmp_path / "home")}
    cfg = {"model": str(tiny_model), "degrade": {"method": "prune.magnitude", "params": {"sparsity": 0.5}},
           "data": {"prompts": str(prompt_file), "n_heldout": 4, "max_new_tokens": 8, "top_k_logits": 8,
                    "teacher_generation_dtype": "float32"},
           "recover": {"offpolicy_steps": 6, "batch_size": 4, "lr": 5e-3, "warmup_steps": 1, "eval_every": 1,
                       "save_every": 1, "cka_every_eval": False},
           "evaluate": {"generation": False}, "cka": {"cross_tokens": 0}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    degraded = tmp_path / "degraded"
    if command == "recover":
        assert _cli("degrade", "--model", str(tiny_model), "--out", str(degraded), env=env).wait() == 0

    def args(out):
        if command == "recover":
            return ["recover", "--teacher", str(tiny_model), "--student", str(degraded), "--out", str(out),
                    "--config", str(path), "--resume"]
        return ["run", str(path), "--out", str(out)]

    start = time.perf_counter()
    assert _cli(*args(tmp_path / "straight"), env=env).wait() == 0
    seconds = time.perf_counter() - start
    assert _soak(args(tmp_path / "killed"), env, seconds, random.Random(0)) == 0

    model = "model.safetensors" if command == "recover" else "recovered/model.safetensors"
    curve = "recoverlm/metrics.jsonl" if command == "recover" else "recovered/recoverlm/metrics.jsonl"
    for name in (model, curve):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    if command == "run":
        a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("straight", "killed"))
        assert a == b
