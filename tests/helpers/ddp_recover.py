"""Run by integration/recover/test_distributed.py under `accelerate launch`: one recovery on the tiny model."""

import sys
from pathlib import Path

from recoverlm.config import DataConfig, RecoverConfig
from recoverlm.recover.trainer import recover

teacher, student, prompts, out = sys.argv[1:5]
grad_accum, max_grad_norm = (int(sys.argv[5]), float(sys.argv[6])) if len(sys.argv) > 6 else (1, 1.0)
data = DataConfig(prompts=Path(prompts), n_heldout=4, max_new_tokens=8, top_k_logits=8, teacher_generation_dtype="float32")
cfg = RecoverConfig(offpolicy_steps=2, onpolicy_steps=0, batch_size=4, grad_accum=grad_accum, lr=5e-3, warmup_steps=1,
                    eval_every=0, cka_every_eval=False, select_best=False, max_grad_norm=max_grad_norm)
recover(teacher, student, Path(out), cfg, data, progress=False)
