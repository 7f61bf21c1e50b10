"""Two gloo processes under `accelerate launch` give the same model as one process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.degrade import degrade
from recoverlm.recover.trainer import recover

SCRIPT = Path(__file__).with_name("_ddp_recover.py")


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate launcher not installed")
def test_two_process_ddp_matches_single_process(tmp_path, tiny_model, prompt_file):
    student = tmp_path / "pruned"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, student)
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(SCRIPT), str(tiny_model), str(student), str(prompt_file), str(single)],
                   check=True, env=os.environ.copy(), capture_output=True, timeout=300)
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    proc = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
                           str(SCRIPT), str(tiny_model), str(student), str(prompt_file), str(ddp)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    import json

    assert json.loads((ddp / "recovery.json").read_text())["world_size"] == 2
    assert json.loads((single / "recovery.json").read_text())["world_size"] == 1
