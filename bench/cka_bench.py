"""Streaming all-layer linear CKA at scale: SmolLM2-135M (teacher) vs a 50%-magnitude-pruned copy.

Measures (a) forward passes vs CKA arithmetic, (b) that the accumulators' memory does not grow with
the token count, (c) the streaming accumulator against the n x n Gram reference at n tokens per
layer (speed and agreement). Writes the "cka" section of docs/benchmarks.md and prints it.

    python bench/cka_bench.py --tokens 100000      # the documented run
    python bench/cka_bench.py --quick              # smoke test; leaves docs/benchmarks.md alone

Data: the built-in prompt set, each prompt rendered with the chat template and tokenised
(data.encode_prompts), all concatenated into one stream and cut into rows of --seq-len tokens,
the stream repeated as often as needed to reach --tokens. Rows are packed (no padding, full causal
attention across prompt boundaries), so every position is a real token.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time

from mdsection import update_section  # also puts src/ on sys.path

import torch  # noqa: E402

from recoverlm import models  # noqa: E402
from recoverlm.analysis.layer_cka import pool  # noqa: E402
from recoverlm.lm.capture import hidden_states  # noqa: E402
from recoverlm.ops.cka import LinearCKAAccumulator, gram_linear_cka, linear_cka  # noqa: E402
from recoverlm.data import encode_prompts, load_prompts  # noqa: E402
from recoverlm.degrade.prune import prune_magnitude  # noqa: E402


def proc_status_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, MB, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def acc_bytes(accs: list[LinearCKAAccumulator]) -> int:
    """Bytes held by the accumulators' state tensors (moments and shifts)."""
    return sum(t.nbytes for a in accs for t in [*(a._s or {}).values(), a._cx, a._cy] if t is not None)


def packed_rows(tokenizer, n_tokens: int, seq_len: int) -> tuple[torch.Tensor, int, int]:
    """(rows, seq_len) token ids from the chat-rendered built-in prompts, repeated to >= n_tokens."""
    prompts = load_prompts()
    ids, _, _ = encode_prompts(tokenizer, prompts, max_prompt_tokens=1 << 20, use_chat_template=True)
    stream = [t for seq in ids for t in seq]
    rows = math.ceil(n_tokens / seq_len)
    reps = math.ceil(rows * seq_len / len(stream))
    flat = torch.tensor((stream * reps)[: rows * seq_len], dtype=torch.long)
    return flat.view(rows, seq_len), len(stream), len(prompts)


def run(args) -> str:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    path = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(path)
    teacher = models.load_model(path, dtype=torch.float32)
    student, _ = prune_magnitude(copy.deepcopy(teacher), 0.5)
    rows, unique, n_prompts = packed_rows(tokenizer, args.tokens, args.seq_len)
    depth = teacher.config.num_hidden_layers
    print(f"{rows.numel()} tokens in {rows.shape[0]} rows of {args.seq_len}; stream of {unique} tokens from "
          f"{n_prompts} prompts, repeated {rows.numel() / unique:.1f}x; {depth + 1} layer pairs; "
          f"{torch.get_num_threads()} threads; load {load0:.1f}", flush=True)

    # (a) + (b): stream every token through both models and all-layer accumulators.
    accs: list[LinearCKAAccumulator] = []
    t_fwd = {"teacher": 0.0, "student": 0.0}
    t_upd = 0.0
    marks = sorted({min(rows.numel(), math.ceil(f * args.tokens)) for f in (0.25, 0.5, 1.0)})
    memory = []
    rss0, seen = proc_status_mb("VmRSS"), 0
    for start in range(0, rows.shape[0], args.batch):
        ids = rows[start: start + args.batch]
        mask = torch.ones_like(ids)
        states = {}
        for name, model in (("teacher", teacher), ("student", student)):
            t0 = time.perf_counter()
            states[name] = pool(hidden_states(model, ids, mask), mask, "token")
            t_fwd[name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if not accs:
            accs = [LinearCKAAccumulator(t.shape[1], s.shape[1]) for t, s in zip(states["teacher"], states["student"])]
        for acc, t, s in zip(accs, states["teacher"], states["student"]):
            acc.update(t, s)
        t_upd += time.perf_counter() - t0
        del states
        seen += ids.numel()
        if marks and seen >= marks[0]:
            marks = [m for m in marks if m > seen]
            memory.append({"tokens": seen, "state": acc_bytes(accs), "rss": proc_status_mb("VmRSS"),
                           "hwm": proc_status_mb("VmHWM")})
            print(f"  {seen} tokens: forward {sum(t_fwd.values()):.0f} s, updates {t_upd:.0f} s, "
                  f"state {memory[-1]['state'] / 2**20:.1f} MiB, RSS {memory[-1]['rss']:.0f} MB", flush=True)
    t0 = time.perf_counter()
    lin = [a.value() for a in accs]
    deb = [a.debiased_value() for a in accs]
    t_val = time.perf_counter() - t0
    per_pair = acc_bytes(accs[:1])
    del accs

    # (c): the first gram_n tokens, every layer, streaming accumulator vs linear_cka vs the Gram reference.
    n = args.gram_n
    ids = rows.flatten()[: n].view(-1, args.seq_len) if n % args.seq_len == 0 else rows.flatten()[: n][None]
    xs, ys = [], []
    for chunk in ids.split(args.batch):
        mask = torch.ones_like(chunk)
        xs.append(pool(hidden_states(teacher, chunk, mask), mask))
        ys.append(pool(hidden_states(student, chunk, mask), mask))
    xs = [torch.cat(p) for p in zip(*xs)][: args.gram_layers or None]
    ys = [torch.cat(p) for p in zip(*ys)][: args.gram_layers or None]
    print(f"(c) {len(xs)} layers at n={xs[0].shape[0]}: accumulator, linear_cka, gram_linear_cka", flush=True)
    timing, values = {}, {}
    for name, fn in (("accumulator", _acc_value), ("linear_cka", linear_cka), ("gram_linear_cka", gram_linear_cka)):
        t0 = time.perf_counter()
        values[name] = [fn(x, y) for x, y in zip(xs, ys)]
        timing[name] = time.perf_counter() - t0
        print(f"  {name}: {timing[name]:.1f} s", flush=True)

    return _markdown(args, rows, unique, n_prompts, depth, t_fwd, t_upd, t_val, memory, per_pair, lin, deb,
                     xs, timing, values, load0, os.getloadavg()[0])


def _acc_value(x: torch.Tensor, y: torch.Tensor) -> float:
    acc = LinearCKAAccumulator(x.shape[1], y.shape[1])
    for xc, yc in zip(x.split(2048), y.split(2048)):
        acc.update(xc, yc)
    return acc.value()


def _markdown(args, rows, unique, n_prompts, depth, t_fwd, t_upd, t_val, memory, per_pair, lin, deb, xs, timing,
              values, load0, load1) -> str:
    n_tok = rows.numel()
    fwd = sum(t_fwd.values())
    total = fwd + t_upd + t_val
    mib = lambda b: b / 2**20  # noqa: E731
    ref = values["gram_linear_cka"]
    diff = {k: max(abs(a - b) for a, b in zip(v, ref)) for k, v in values.items() if k != "gram_linear_cka"}
    n_gram = xs[0].shape[0]
    lines = [
        "## Streaming linear CKA (`bench/cka_bench.py`)",
        "",
        f"Teacher: {args.model} (float32, {depth} blocks, d={xs[0].shape[1]}); student: a copy magnitude-pruned to "
        f"50% per row in memory (`prune_magnitude(model, 0.5)`). All {depth + 1} layer pairs (embeddings + every block "
        f"output) are streamed through `LinearCKAAccumulator` over {n_tok:,} tokens: the {n_prompts} built-in prompts, "
        f"chat-rendered and tokenised ({unique:,} tokens), concatenated and repeated {n_tok / unique:.1f}x, packed into "
        f"{rows.shape[0]} rows of {args.seq_len} tokens (no padding), batches of {args.batch}. "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; load average "
        f"{load0:.1f} at the start and {load1:.1f} at the end (the 2 cores were shared).",
        "",
        "**(a) Where the time goes**",
        "",
        "| phase | seconds | ms per token | share |",
        "|---|---|---|---|",
        f"| forward, teacher (capture + padding mask) | {t_fwd['teacher']:.1f} | {1e3 * t_fwd['teacher'] / n_tok:.3f} | {t_fwd['teacher'] / total:.0%} |",
        f"| forward, student | {t_fwd['student']:.1f} | {1e3 * t_fwd['student'] / n_tok:.3f} | {t_fwd['student'] / total:.0%} |",
        f"| CKA accumulator updates ({depth + 1} pairs, float64) | {t_upd:.1f} | {1e3 * t_upd / n_tok:.3f} | {t_upd / total:.0%} |",
        f"| CKA values (linear + debiased, all pairs) | {t_val:.2f} | - | {t_val / total:.1%} |",
        "",
        "**(b) Memory does not grow with the token count**",
        "",
        "| tokens seen | accumulator state (MiB) | process RSS (MB) | peak RSS so far (MB) |",
        "|---|---|---|---|",
        *[f"| {m['tokens']:,} | {mib(m['state']):.1f} | {m['rss']:.0f} | {m['hwm']:.0f} |" for m in memory],
        "",
        f"State per layer pair: {mib(per_pair):.2f} MiB (X^T X, Y^T Y, Y^T X and the vectors for the debiased "
        f"estimator, float64); one update briefly holds two more pair-sized sets ({2 * mib(per_pair):.1f} MiB).",
        "",
        f"**(c) Against the n x n Gram reference, n = {n_gram} tokens per layer, {len(xs)} layers**",
        "",
        "| method | seconds, all layers | per layer | speed-up vs Gram | max abs difference vs Gram |",
        "|---|---|---|---|---|",
        *[f"| `{k}` | {t:.2f} | {t / len(xs):.3f} | {_times(timing['gram_linear_cka'] / t)} | "
          f"{diff[k]:.1e} |" if k in diff else f"| `{k}` | {t:.2f} | {t / len(xs):.3f} | 1x | - |"
          for k, t in timing.items()],
        "",
        f"Result: over {n_tok:,} tokens the pruned copy's linear CKA with the teacher is {lin[0]:.4f} at the embeddings, "
        f"{min(lin):.4f} at its lowest (layer {lin.index(min(lin))}), {lin[-1]:.4f} after the last block, mean "
        f"{sum(lin) / len(lin):.4f} (debiased: mean {sum(deb) / len(deb):.4f}).",
        "",
        _reading(fwd, t_upd, total, memory, timing, diff, n_gram,
                 batch_mb=(depth + 1) * args.batch * args.seq_len * xs[0].shape[1] * 4 / 1e6),
    ]
    return "\n".join(lines)


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def _reading(fwd, t_upd, total, memory, timing, diff, n_gram, batch_mb) -> str:
    states = {m["state"] for m in memory}
    checkpoints = ", ".join(f"{m['tokens']:,}" for m in memory)
    rss_growth = memory[-1]["rss"] - memory[0]["rss"]
    hwm_growth = memory[-1]["hwm"] - memory[0]["hwm"]
    speed = timing["gram_linear_cka"] / timing["accumulator"]
    versus = f"{_times(speed)} faster than" if speed >= 1 else f"{_times(1 / speed)} slower than"
    return (
        f"Reading: the two forward passes take {fwd / total:.0%} of the time and the float64 CKA arithmetic "
        f"{t_upd / total:.0%}; the updates cost O(d^2) per token per layer pair, so their share is about fixed "
        f"whatever the token count. The accumulator state is "
        f"{'exactly the same' if len(states) == 1 else 'not constant (!)'} at every checkpoint "
        f"({checkpoints} tokens); between the first and last checkpoint the process RSS moved by "
        f"{rss_growth:+.0f} MB and its peak by {hwm_growth:+.0f} MB. With the state fixed, such moves come from the "
        f"per-batch forward and capture buffers (about {batch_mb:.0f} MB of hidden states per model per batch) and the "
        f"allocator, not from n. At n = {n_gram} the feature-space accumulator is {versus} "
        f"the n x n Gram reference (which is O(n^2) memory and O(n^3) time with a dense centring matrix) "
        f"and agrees with it to {diff['accumulator']:.0e} at worst, i.e. to rounding."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=100_000, help="tokens streamed through both models (>= 100k for the doc)")
    p.add_argument("--quick", action="store_true", help="smoke test: 4096 tokens, Gram at n=512 on 4 layers; no doc write")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gram-n", type=int, default=4096, help="tokens per layer for the Gram comparison")
    p.add_argument("--gram-layers", type=int, default=0, help="compare only the first k layers (0 = all)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.tokens, args.gram_n, args.gram_layers = 4096, 512, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text = run(args)
    if not args.quick:
        print(f"wrote {update_section('cka', text)}")
    print(text)


if __name__ == "__main__":
    main()
