"""Run by integration/recover/test_distributed.py under `accelerate launch`: one recovery on the tiny model.
Training runs in fp32 on every machine (bf16 "auto" would differ between processes by rounding).
Arguments: teacher student prompts out [grad_accum max_grad_norm [onpolicy_steps]]. Environment:
RECOVERLM_TEST_FSDP_CPU=1 shards the student with FSDP2 over the CPU processes;
RECOVERLM_TEST_SAVE_EVERY=N checkpoints every N steps; RECOVERLM_TEST_CRASH_AT=S makes step S
raise (a crash: the process exits non-zero); RECOVERLM_TEST_RESUME=1 resumes."""

import os
import sys
from pathlib import Path

from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.recover import trainer as trainer_mod
from recoverlm.recover.trainer import recover

if os.environ.get("RECOVERLM_TEST_FSDP_CPU") == "1":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from helpers import fsdp_cpu

    fsdp_cpu.enable()

crash_at = int(os.environ.get("RECOVERLM_TEST_CRASH_AT", "0"))
if crash_at:
    real = trainer_mod.Recovery.train_step

    def crash(self, step, *a):
        if step == crash_at:
            raise SystemExit(3)
        return real(self, step, *a)

    trainer_mod.Recovery.train_step = crash

teacher, student, prompts, out = sys.argv[1:5]
grad_accum, max_grad_norm = (int(sys.argv[5]), float(sys.argv[6])) if len(sys.argv) > 6 else (1, 1.0)
onpolicy_steps = int(sys.argv[7]) if len(sys.argv) > 7 else 0
data = DataConfig(prompts=Path(prompts), n_heldout=4, max_new_tokens=8, top_k_logits=8, teacher_generation_dtype="float32")
cfg = RecoverConfig(offpolicy_steps=int(os.environ.get("RECOVERLM_TEST_STEPS", "2")), onpolicy_steps=onpolicy_steps,
                    onpolicy_max_new_tokens=6, batch_size=4, grad_accum=grad_accum, lr=5e-3, warmup_steps=1,
                    eval_every=0, cka_every_eval=False, select_best=False, max_grad_norm=max_grad_norm, bf16=False,
                    save_every=int(os.environ.get("RECOVERLM_TEST_SAVE_EVERY", "0")))
recover(teacher, student, Path(out), cfg, data, progress=False, resume=os.environ.get("RECOVERLM_TEST_RESUME") == "1")
