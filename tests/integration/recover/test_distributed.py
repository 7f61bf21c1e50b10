"""Two gloo processes under `accelerate launch` (DDP, FSDP2, DeepSpeed ZeRO-2) give the same model as one process."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from recoverlm.degrade import degrade

SCRIPT = Path(__file__).parents[2] / "helpers" / "ddp_recover.py"


LAUNCHER = Path(sys.executable).parent / "accelerate"
needs_launcher = pytest.mark.skipif(shutil.which("accelerate") is None and not LAUNCHER.exists(),
                                    reason="accelerate launcher not installed")


def _single_and_launched(tmp_path, tiny_model, prompt_file, launch_args: list[str], extra: list[str] = (),
                         env: dict | None = None, degradation=("prune.magnitude", {"sparsity": 0.5})):
    """The model one process recovers, and the one `accelerate launch` with `launch_args` recovers."""
    student = tmp_path / "degraded"
    degrade(tiny_model, *degradation, student)
    args = [str(tiny_model), str(student), str(prompt_file)]
    single, launched = tmp_path / "single", tmp_path / "launched"
    subprocess.run([sys.executable, str(SCRIPT), *args, str(single), *extra],
                   check=True, env=os.environ.copy(), capture_output=True, timeout=300)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([str(LAUNCHER), "launch", *launch_args, str(SCRIPT), *args, str(launched), *extra],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return single, launched


def _max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max((x[k] - y[k]).abs().max().item() for k in x)


@needs_launcher
def test_two_process_ddp_matches_single_process(tmp_path, tiny_model, prompt_file):
    single, ddp = _single_and_launched(tmp_path, tiny_model, prompt_file, [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29533"], env={"ACCELERATE_USE_CPU": "1"})
    assert _max_difference(single, ddp) < 1e-5
    last = [json.loads((run / "recoverlm" / "metrics.jsonl").read_text().splitlines()[-1]) for run in (single, ddp)]
    assert last[1]["train_loss"] == pytest.approx(last[0]["train_loss"], rel=1e-4)  # the global batch's, not a rank's
    assert json.loads((ddp / "recoverlm" / "recovery.json").read_text())["world_size"] == 2
    assert json.loads((single / "recoverlm" / "recovery.json").read_text())["world_size"] == 1


@needs_launcher
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_two_process_deepspeed_zero2_matches_single_process(tmp_path, tiny_model, prompt_file):
    """ZeRO-2 steps inside its engine; recover's accumulation and (active) clipping must still hold."""
    config = Path(__file__).parents[3] / "configs" / "accelerate" / "deepspeed_zero2_cpu.yaml"
    single, zero2 = _single_and_launched(tmp_path, tiny_model, prompt_file,
                                         ["--config_file", str(config), "--main_process_port", "29534"],
                                         extra=["2", "1e-4"])  # grad_accum 2, clipping far below the gradient norm
    assert _max_difference(single, zero2) < 1e-5
    assert 0 < _max_difference(single, tmp_path / "degraded")
    record = json.loads((zero2 / "recoverlm" / "recovery.json").read_text())
    assert record["world_size"] == 2 and record["distributed"] == "DEEPSPEED"


@needs_launcher
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@pytest.mark.parametrize("student", ["pruned", "quantized"])
def test_two_process_deepspeed_zero3_matches_single_process(tmp_path, tiny_model, prompt_file, student):
    """ZeRO-3 partitions the student alone (the teacher loads whole on every rank): pruned weights
    keep a zero gradient, a grid is computed in the forward, and the export is gathered whole.
    Clipping is on, far below the gradient norm: every backend clips the masked gradient."""
    config = Path(__file__).parents[3] / "configs" / "accelerate" / "deepspeed_zero3_cpu.yaml"
    method = {"pruned": ("prune.magnitude", {"sparsity": 0.5}), "quantized": ("quant.rtn", {"bits": 4, "group_size": 32})}
    single, zero3 = _single_and_launched(tmp_path, tiny_model, prompt_file,
                                         ["--config_file", str(config), "--main_process_port", "29535"],
                                         extra=["2", "1e-4"], degradation=method[student])
    assert _max_difference(single, zero3) < 1e-5
    assert 0 < _max_difference(single, tmp_path / "degraded")
    record = json.loads((zero3 / "recoverlm" / "recovery.json").read_text())
    assert record["world_size"] == 2 and record["distributed"] == "DEEPSPEED"
    assert "verified exactly" in record["constraint"]["description"]


FSDP_CPU = {"ACCELERATE_USE_CPU": "1", "RECOVERLM_TEST_FSDP_CPU": "1"}
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no"]


@needs_launcher
def test_two_process_fsdp2_matches_single_process(tmp_path, tiny_model, prompt_file):
    """accelerate's own FSDP2 preparation (its wrapping, the tied embedding and head in one unit,
    the optimizer remapped to the shards), with grad_accum 2; the export is gathered whole."""
    single, fsdp = _single_and_launched(tmp_path, tiny_model, prompt_file, [*TWO_PROCESSES, "--main_process_port", "29536"],
                                        extra=["2", "1.0"], env=FSDP_CPU)
    assert _max_difference(single, fsdp) < 1e-5
    assert 0 < _max_difference(single, tmp_path / "degraded")
    record = json.loads((fsdp / "recoverlm" / "recovery.json").read_text())
    assert record["world_size"] == 2 and record["distributed"] == "FSDP"


CONFIGS = Path(__file__).parents[3] / "configs" / "accelerate"
BACKENDS = {"fsdp2": (TWO_PROCESSES, FSDP_CPU),
            "zero2": (["--config_file", str(CONFIGS / "deepspeed_zero2_cpu.yaml")], {}),
            "zero3": (["--config_file", str(CONFIGS / "deepspeed_zero3_cpu.yaml")], {})}


def _launch(backend: str, args: list[str], env: dict, port: str) -> subprocess.CompletedProcess:
    launch_args, backend_env = BACKENDS[backend]
    return subprocess.run([str(LAUNCHER), "launch", *launch_args, "--main_process_port", port, str(SCRIPT), *args],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **backend_env, **env}, capture_output=True,
                          text=True, timeout=600)


@needs_launcher
@pytest.mark.parametrize("backend", ["fsdp2", "zero2", "zero3"])
def test_sharded_resume_continues_exactly(tmp_path, tiny_model, prompt_file, backend):
    """Checkpoints gathered from the shards (FSDP) or ZeRO's partitions into the same safe files,
    every rank's RNG kept: crashed in the on-policy stage and resumed, the run ends where a
    straight one does."""
    if backend != "fsdp2" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed not installed")
    student = tmp_path / "pruned"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, student)
    args = [str(tiny_model), str(student), str(prompt_file)]
    env, port = {"RECOVERLM_TEST_SAVE_EVERY": "2"}, {"fsdp2": 29537, "zero2": 29540, "zero3": 29543}[backend]
    straight = _launch(backend, [*args, str(tmp_path / "straight"), "1", "1.0", "2"], env, str(port))
    assert straight.returncode == 0, straight.stderr[-3000:]
    crashed = _launch(backend, [*args, str(tmp_path / "resumed"), "1", "1.0", "2"],
                      {**env, "RECOVERLM_TEST_CRASH_AT": "3"}, str(port + 1))
    assert crashed.returncode != 0 and not (tmp_path / "resumed").exists()
    state = json.loads((tmp_path / "resumed.work" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 2
    resumed = _launch(backend, [*args, str(tmp_path / "resumed"), "1", "1.0", "2"],
                      {**env, "RECOVERLM_TEST_RESUME": "1"}, str(port + 2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stdout + resumed.stderr
    assert _max_difference(tmp_path / "straight", tmp_path / "resumed") < 1e-6
