"""docs/benchmarks.md, "Memory": the peak memory one training step adds on top of the models
(weights, gradients and AdamW state already allocated), with the LM head's logits made for the
whole micro-batch against `recover.logit_chunk`, on random-init models with the real Qwen2.5
configs (no download). Each arm runs in its own process; CPU peak RSS is read from the kernel.

    python bench/memory.py                        # Qwen2.5-0.5B, 2 x (64 + 448) tokens, on CPU
    python bench/memory.py --model qwen2.5-1.5b --batch 1
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "memory.jsonl"
# The published configs (hidden, layers, heads, kv heads, MLP), all with Qwen2.5's 151,936-token vocabulary.
QWEN = {"qwen2.5-0.5b": (896, 24, 14, 2, 4864), "qwen2.5-1.5b": (1536, 28, 12, 2, 8960),
        "qwen2.5-3b": (2048, 36, 16, 2, 11008)}
VOCAB = 151_936
ARMS = [("off-policy, cached top-64", False, 0), ("off-policy, cached top-64", False, 512),
        ("on-policy, live teacher", True, 0), ("on-policy, live teacher", True, 512)]


def build(name: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv, mlp = QWEN[name]
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=mlp, vocab_size=VOCAB, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**30


def _reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _TopK:
    """Cached teacher top-k as the training set hands it out, random but well formed."""

    def __init__(self, rows: int, k: int = 64):
        import torch

        g = torch.Generator().manual_seed(1)
        self.idx = torch.randint(0, VOCAB, (rows, k), generator=g)
        self.lp = torch.log_softmax(torch.randn(rows, k + 1, generator=g), -1)

    def topk_rows(self, seq_indices):
        return self.idx, self.lp


def arm(model: str, on_policy: bool, chunk: int, batch: int, prompt: int, response: int) -> dict:
    import torch

    from recoverlm.config import RecoverConfig
    from recoverlm.data import collate
    from recoverlm.recover.objective import MicroBatch, loss_mask, loss_sum
    from recoverlm.recover.teachers import Teachers

    torch.set_num_threads(2)
    student = build(model).train()
    teacher = build(model).eval().requires_grad_(False) if on_policy else None
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    cfg = RecoverConfig(logit_chunk=chunk, onpolicy_steps=1 if on_policy else 0)

    def micro(b: int, p: int, r: int) -> MicroBatch:
        g = torch.Generator().manual_seed(2)
        prompts = torch.randint(0, VOCAB, (b, p), generator=g).tolist()
        responses = torch.randint(0, VOCAB, (b, r), generator=g).tolist()
        lengths = [r] * b
        return MicroBatch(collate(prompts, responses, 0), list(range(b)), lengths, [0] * b, on_policy,
                          loss_mask(lengths, 0))

    def step(b: int, p: int, r: int) -> tuple[float, float]:
        """Peak RSS of the loss with its backward, and of the optimizer update, each in its own window."""
        mb = micro(b, p, r)
        _reset_peak()
        loss, _ = loss_sum(student, mb, cfg, Teachers(teacher), _TopK(b * r), pad_id=0)
        loss.backward()
        backward = _peak_gib()
        _reset_peak()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they belong to the baseline
        return backward, _peak_gib()

    step(1, 4, 4)  # gradients and AdamW state allocated: the baseline every arm shares
    before = _rss_gib()
    start = time.perf_counter()
    backward, update = step(batch, prompt, response)
    seconds = time.perf_counter() - start
    return {"model": model, "step": "on-policy, live teacher" if on_policy else "off-policy, cached top-64",
            "logit_chunk": chunk, "batch": f"{batch} x ({prompt} + {response})", "baseline_gib": round(before, 2),
            "peak_gib": round(max(backward, update), 2), "step_gib": round(backward - before, 2),
            "update_gib": round(update - before, 2), "seconds": round(seconds, 1)}


def copies_arm(share: str, work: Path) -> dict:
    """Resident memory of a LoRA recovery of the embedded model (magnitude-50%), built and one step
    taken, with the teacher's weights held once (`share_teacher: auto`) or twice (`off`)."""
    import torch

    from recoverlm.config import DataConfig, LoraConfig, RecoverConfig
    from recoverlm.degrade import degrade
    from recoverlm.recover.schedule import batch_order
    from recoverlm.recover.shared_teacher import TeacherView
    from recoverlm.recover.trainer import Recovery

    torch.set_num_threads(2)
    student = work / "magnitude-50"
    if not (student / "config.json").exists():
        degrade("smollm2-135m-instruct", "prune.magnitude", {"sparsity": 0.5}, student)
    cfg = RecoverConfig(offpolicy_steps=10, batch_size=8, eval_every=0, cka_every_eval=False, select_best=False,
                        lora=LoraConfig(r=16, alpha=32), share_teacher=share)
    run = Recovery("smollm2-135m-instruct", student, work / f"out-{share}", cfg,
                   DataConfig(n_heldout=48, max_new_tokens=64, top_k_logits=64), progress=False, log=lambda _: None)
    run.train_step(1, batch_order(len(run.train_set), 8, 1, 0)[0], False)
    storages = {}
    for model in (run.student, run.teacher):
        for t in list(model.parameters()) + list(model.buffers()):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator keeps of freed memory is not the run's
    return {"share_teacher": share, "one_copy": isinstance(run.teacher, TeacherView),
            "weights_gib": round(sum(storages.values()) / 2**30, 3), "rss_gib": round(_rss_gib(), 2),
            "peak_gib": round(_peak_gib(), 2)}


def render_copies(rows: list[dict]) -> str:
    lines = ["", "Teacher and student weights under LoRA (r 16), the embedded model pruned 50% by magnitude, after "
             "building the recovery and one off-policy step of 8 sequences:", "",
             "| share_teacher | weights held | teacher + student tensors (GiB) | resident after the step (GiB) | peak (GiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['share_teacher']} | {'once' if r['one_copy'] else 'twice'} | {r['weights_gib']:.3f} | "
              f"{r['rss_gib']:.2f} | {r['peak_gib']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def render(rows: list[dict]) -> str:
    lines = ["## Memory", "",
             f"Written by `python bench/memory.py` on {rows[0]['date']} ({rows[0]['device']}): the peak memory one "
             "training step adds on top of its models (weights, gradients, AdamW state), random-init Qwen2.5 with "
             f"its {VOCAB:,}-token vocabulary, float32, split into the loss with its backward (where the logits live) and "
             "the AdamW update. `logit_chunk` off makes the whole micro-batch's logits at once.",
             "", "| model | step | batch | logit_chunk | loss + backward adds (GiB) | AdamW update adds (GiB) | peak (GiB) "
             "| seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['step']} | {r['batch']} | {r['logit_chunk'] or 'off'} | {r['failed']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['step']} | {r['batch']} | {r['logit_chunk'] or 'off'} | {r['step_gib']:.2f} | "
                     f"{r['update_gib']:.2f} | {r['peak_gib']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(QWEN))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=448)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--copies", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.copies:  # one share_teacher measurement, in its own process
        print(json.dumps(copies_arm(args.copies, ROOT / "runs" / "bench-memory")))
        return
    if args.arm:  # one measurement, in its own process
        on_policy, chunk = args.arm.split(",")
        print(json.dumps(arm(args.model, on_policy == "1", int(chunk), args.batch, args.prompt, args.response)))
        return
    from recoverlm.environment import describe_environment

    rows = []
    for name, on_policy, chunk in ARMS:
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--prompt",
                               str(args.prompt), "--response", str(args.response), "--arm", f"{int(on_policy)},{chunk}"],
                              capture_output=True, text=True)
        if done.returncode:  # killed by the kernel for memory, most likely: that is the measurement
            result = {"model": args.model, "step": name, "logit_chunk": chunk, "batch": f"{args.batch} x ({args.prompt} + "
                      f"{args.response})", "failed": f"exit {done.returncode}" + (" (killed: out of memory)"
                                                                                   if done.returncode == -9 else "")}
        else:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        row = {**result, "date": time.strftime("%Y-%m-%d"), "device": describe_environment()["device"]}
        print(row, flush=True)
        rows.append(row)
    copies = [json.loads(subprocess.run([sys.executable, __file__, "--copies", share], capture_output=True, text=True,
                                        check=True).stdout.strip().splitlines()[-1]) for share in ("off", "auto")]
    print(copies, flush=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        for row in rows + copies:
            fh.write(json.dumps(row) + "\n")
    update_section("memory", render(rows) + render_copies(copies))


if __name__ == "__main__":
    main()
