"""docs/benchmarks.md, "Against TRL and the CKA packages": recoverlm side by side with TRL's GKD
trainer and ckatorch, on one machine in one run (`make bench-peers`).

Training: every arm is a worker process that builds its trainer once, then runs one optimizer step
each time the driver asks. The driver asks the arms of a group in turn (A B C A B C ...), so they
share the machine's state; after one warm-up step each, every arm runs `--reps` timed steps. The
table gives each arm's median seconds per step, min and max, its peak RSS, and its ratio to the
plain SFT step (cross-entropy, AdamW, a plain torch loop) measured in the same run. The batches are
the same for all: `--batch` teacher responses to the built-in prompts (64 new tokens at most).

CKA: the streaming accumulator against ckatorch (`cka_base`, linear kernel) on real hidden states of
the embedded model: seconds per layer pair, peak memory and the largest difference from a float64
reference, at n = 1024, 4096 and 16384 tokens.

    python bench/peers.py                  # the embedded model; about 20 minutes on a 2-core CPU
    python bench/peers.py --smoke          # the harness on a tiny model, one repetition, no doc
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdsection import ROOT, update_section  # noqa: E402 - also puts src/ on sys.path

RESULTS = ROOT / "bench" / "results" / "peers.json"
# name -> (harness, settings); groups run together, interleaved (memory: about 3.5 GB per arm here)
ARMS = {
    "plain SFT (torch loop)": ("torch", {}),
    "recoverlm sft-replay": ("recoverlm", {"method": "sft-replay"}),
    "recoverlm off-policy, cached top-64": ("recoverlm", {}),
    "recoverlm off-policy + hidden-state term (live teacher)": ("recoverlm", {"hidden_weight": 1.0}),
    "recoverlm LoRA r16, off-policy": ("recoverlm", {"lora": {"r": 16, "alpha": 32}}),
    "recoverlm on-policy (reverse KL)": ("recoverlm", {"on_policy": True}),
    "TRL SFTTrainer": ("trl-sft", {}),
    "TRL GKD lmbda 0, beta 0 (forward KL, live teacher)": ("trl-gkd", {"lmbda": 0.0, "beta": 0.0}),
    "TRL GKD lmbda 0, beta 0.5 (JSD)": ("trl-gkd", {"lmbda": 0.0, "beta": 0.5}),
    "TRL GKD lmbda 1, beta 0.5 (on-policy)": ("trl-gkd", {"lmbda": 1.0, "beta": 0.5}),
    "TRL GKD lmbda 1, beta 0 (on-policy, forward KL)": ("trl-gkd", {"lmbda": 1.0, "beta": 0.0}),
    "TRL GKD at its defaults (lmbda 0.5, beta 0.5)": ("trl-gkd", {}),
}
GROUPS = [["plain SFT (torch loop)", "recoverlm sft-replay", "TRL SFTTrainer"],
          ["plain SFT (torch loop)", "recoverlm off-policy, cached top-64",
           "TRL GKD lmbda 0, beta 0 (forward KL, live teacher)"],
          ["plain SFT (torch loop)", "recoverlm off-policy + hidden-state term (live teacher)",
           "TRL GKD lmbda 0, beta 0.5 (JSD)"],
          ["plain SFT (torch loop)", "recoverlm on-policy (reverse KL)", "TRL GKD lmbda 1, beta 0.5 (on-policy)",
           "recoverlm LoRA r16, off-policy"]]
# Groups run on their own with --group NAME and merged into bench/results/peers.json; their arms
# are timed against the plain SFT step of their own run.
EXTRA_GROUPS = {"gkd-forward-kl": ["plain SFT (torch loop)", "recoverlm on-policy (reverse KL)",
                                   "TRL GKD lmbda 1, beta 0 (on-policy, forward KL)"],
                "gkd-defaults": ["plain SFT (torch loop)", "recoverlm on-policy (reverse KL)",
                                 "TRL GKD at its defaults (lmbda 0.5, beta 0.5)"]}
SMOKE_GROUPS = [["plain SFT (torch loop)", "recoverlm off-policy, cached top-64", "recoverlm on-policy (reverse KL)",
                 "TRL GKD lmbda 0, beta 0 (forward KL, live teacher)"]]


def _peak_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return 0.0


# -- the workers -------------------------------------------------------------------------------------
def _data(teacher: str, n_heldout: int, max_new: int):
    from recoverlm.config import DataConfig

    return DataConfig(n_heldout=n_heldout, max_new_tokens=max_new, top_k_logits=64)


def _recoverlm_worker(teacher, student, work, data, batch, settings):
    from recoverlm.config import RecoverConfig
    from recoverlm.recover.schedule import batch_order
    from recoverlm.recover.trainer import Recovery

    on_policy = settings.pop("on_policy", False)
    cfg = RecoverConfig(offpolicy_steps=50, onpolicy_steps=50 if on_policy else 0, batch_size=batch, eval_every=0,
                        cka_every_eval=False, select_best=False, onpolicy_max_new_tokens=data.max_new_tokens,
                        **settings)
    run = Recovery(teacher, student, work, cfg, data, progress=False, log=lambda _: None)
    plan = batch_order(len(run.train_set), cfg.batch_size, 200, cfg.seed)
    step = iter(range(1, 10_000))

    def one():
        i = next(step)
        run.train_step(i, plan[i % len(plan)], on_policy)
    return one


def _batches(teacher, data, batch):
    """The teacher responses as (prompt ids, response ids) batches: the same rows every arm trains on."""
    from recoverlm.teacher.response_set import distill_set

    rs = distill_set(teacher, data, log=lambda _: None)
    rows = list(zip(rs.prompt_ids, rs.response_ids, rs.prompts))
    return [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]


def _torch_worker(teacher, student, work, data, batch, settings):
    import torch

    from recoverlm import models
    from recoverlm.data import collate
    from recoverlm.lm.forward import completion_logits, completion_targets
    from recoverlm.ops.divergences import token_nll

    model = models.load_model(student).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = _batches(teacher, data, batch)
    step = iter(range(10_000))

    def one():
        rows = batches[next(step) % len(batches)]
        b = collate([p for p, _, _ in rows], [r for _, r, _ in rows], pad_id=0)
        loss = token_nll(completion_logits(model, b), completion_targets(b)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return one


def _trl_worker(teacher, student, work, data, batch, settings, harness):
    import torch
    from datasets import Dataset

    from recoverlm import models

    tokenizer = models.load_tokenizer(teacher)
    rows = [r for b in _batches(teacher, data, batch) for r in b]
    messages = [{"messages": [{"role": "user", "content": prompt},
                              {"role": "assistant", "content": tokenizer.decode(resp, skip_special_tokens=True)}]}
                for _, resp, prompt in rows]
    common = dict(output_dir=str(work), per_device_train_batch_size=batch, learning_rate=1e-4, max_steps=10_000,
                  report_to=[], logging_steps=10_000, save_strategy="no", max_grad_norm=1.0, use_cpu=True,
                  bf16=False, dataloader_num_workers=0, seed=0)
    if harness == "trl-sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=data.max_prompt_tokens + data.max_new_tokens,
                         assistant_only_loss=False, completion_only_loss=None)
        trainer = SFTTrainer(model=models.load_model(student), args=args, train_dataset=Dataset.from_list(messages),
                             processing_class=tokenizer)
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, max_length=data.max_prompt_tokens + data.max_new_tokens,
                         max_new_tokens=data.max_new_tokens, **settings)
        trainer = GKDTrainer(model=models.load_model(student), teacher_model=models.load_model(teacher), args=args,
                             train_dataset=Dataset.from_list(messages), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's own loop sets before each step
    model = trainer.model.train()
    loader = iter(trainer.get_train_dataloader())

    def one():
        inputs = trainer._prepare_inputs(next(loader))
        trainer.training_step(model, inputs)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return one


def worker(arm: str, teacher: str, student: str, work: Path, batch: int, n_heldout: int, max_new: int) -> None:
    """Build the arm, say "ready", then one step per "step" line, answering with its seconds."""
    import torch

    torch.manual_seed(0)
    harness, settings = ARMS[arm]
    data = _data(teacher, n_heldout, max_new)
    if harness == "torch":
        one = _torch_worker(teacher, student, work, data, batch, dict(settings))
    elif harness == "recoverlm":
        one = _recoverlm_worker(teacher, student, work, data, batch, dict(settings))
    else:
        one = _trl_worker(teacher, student, work, data, batch, dict(settings), harness)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        one()
        print(json.dumps({"seconds": time.perf_counter() - start, "peak_gib": _peak_gib()}), flush=True)


# -- the driver --------------------------------------------------------------------------------------
def run_group(names: list[str], args, teacher: str, student: str) -> dict[str, dict]:
    procs = {}
    for name in names:
        cmd = [sys.executable, __file__, "--worker", name, "--teacher", teacher, "--student", student,
               "--work", str(args.work / f"arm{len(procs)}"), "--batch", str(args.batch),
               "--n-heldout", str(args.n_heldout), "--max-new", str(args.max_new)]
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        line = procs[name].stdout.readline()  # one arm built at a time: the builds do not overlap
        if not line:
            raise SystemExit(f"arm {name!r} failed to start (exit {procs[name].wait()})")
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    for rep in range(args.reps + 1):  # the first round is the warm-up
        for name, proc in procs.items():
            proc.stdin.write("step\n")
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"arm {name!r} failed at its step {rep} (exit {proc.wait()})")
            out = json.loads(line)
            peaks[name] = out["peak_gib"]
            if rep:
                times[name].append(out["seconds"])
    for proc in procs.values():
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait()
    return {n: {"seconds": times[n], "peak_gib": peaks[n]} for n in names}


def cka_arms(teacher: str, sizes: list[int]) -> list[dict]:
    """Seconds per layer pair and the difference from float64, streaming accumulator against ckatorch
    (linear CKA) and pytorch-cka (debiased CKA, from Gram matrices) where it is installed."""
    import importlib.util

    import torch
    from ckatorch.core import cka_base

    from recoverlm import models
    from recoverlm.data import load_prompts
    from recoverlm.lm.capture import hidden_states
    from recoverlm.ops.cka import LinearCKAAccumulator, debiased_linear_cka, linear_cka

    has_pytorch_cka = importlib.util.find_spec("cka") is not None and importlib.util.find_spec("cka.cka") is not None

    model = models.load_for_inference(teacher)
    tokenizer = models.load_tokenizer(teacher)
    text = " ".join(load_prompts(None)) * 20
    ids = torch.tensor([tokenizer(text)["input_ids"][: max(sizes)]])
    with torch.no_grad():
        states = hidden_states(model, ids, torch.ones_like(ids))
    x, y = states[len(states) // 2][0].float(), states[-1][0].float()  # a middle and the last layer
    rows = []
    for n in sizes:
        a, b = x[:n], y[:n]
        reference = float(linear_cka(a.double(), b.double()))
        start = time.perf_counter()
        acc = LinearCKAAccumulator(a.shape[1], b.shape[1])
        for i in range(0, n, 1024):
            acc.update(a[i:i + 1024], b[i:i + 1024])
        ours = acc.value()
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = float(cka_base(a, b, kernel="linear"))
        t_theirs = time.perf_counter() - start
        rows.append({"n": n, "d": a.shape[1], "recoverlm_s": t_ours, "ckatorch_s": t_theirs, "recoverlm_diff": abs(ours - reference),
                     "ckatorch_diff": abs(theirs - reference), "ckatorch_gram_gib": n * n * 4 / 2**30})
        if has_pytorch_cka:
            from cka.cka import cka_from_features

            debiased_reference = float(debiased_linear_cka(a.double(), b.double()))
            start = time.perf_counter()
            value = float(cka_from_features(a, b).flatten()[0])
            rows[-1].update(pytorch_cka_s=time.perf_counter() - start, pytorch_cka_diff=abs(value - debiased_reference),
                            recoverlm_debiased_diff=abs(acc.debiased_value() - debiased_reference))
    return rows


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def _ratio(arm: dict, base: float) -> float:
    return statistics.median(arm["seconds"]) / arm.get("base_s", base)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(train: dict, base: float, cka: list[dict]) -> list[str]:
    """The speed targets, each stated with the figures it rests on; an arm not measured says so."""
    med = {n: statistics.median(r["seconds"]) for n, r in train.items()}
    out = []
    off, gkd0 = med.get("recoverlm off-policy, cached top-64"), med.get("TRL GKD lmbda 0, beta 0 (forward KL, live teacher)")
    if off and gkd0:
        ratio = _ratio(train["recoverlm off-policy, cached top-64"], base)
        out.append(f"off-policy step at most 1.1x plain SFT and at least 1.25x faster than TRL GKD at lmbda 0: "
                   f"{ratio:.2f}x and {gkd0 / off:.1f}x faster, {_verdict(ratio <= 1.1 and gkd0 / off >= 1.25)}")
    ours = "recoverlm on-policy (reverse KL)"

    def faster(trl: str) -> float | None:
        """How many times faster recoverlm's on-policy step is than arm `trl`, both from one run."""
        group = train[trl].get("group")
        mine = train.get(f"{ours} ({group})" if group else ours)
        return _ratio(train[trl], base) / _ratio(mine, base) if mine else None

    on_policy = {n: faster(n) for n in train if n.startswith("TRL GKD lmbda 1")}
    on_policy = {n: x for n, x in on_policy.items() if x}
    if on_policy:
        best = min(on_policy, key=on_policy.get)
        out.append(f"on-policy step at least 1.5x faster than TRL GKD at lmbda 1 at its best settings ({best}): "
                   f"{on_policy[best]:.1f}x, {_verdict(on_policy[best] >= 1.5)}")
    default = "TRL GKD at its defaults (lmbda 0.5, beta 0.5)"
    if default in train and faster(default):
        # Each of its steps is on-policy with probability lmbda = 0.5: over a long run a step costs the
        # mean of its two kinds, here its fastest and slowest timed steps, whatever 3 draws gave.
        steps = train[default]["seconds"]
        even = faster(default) * (min(steps) + max(steps)) / 2 / statistics.median(steps)
        out.append(f"at least 3x faster than TRL GKD at its defaults, whose steps are on-policy with probability "
                   f"0.5: {faster(default):.1f}x by the median of its {len(steps)} timed steps, {even:.1f}x at an "
                   f"even mix of its two kinds ({min(steps):.1f} s and {max(steps):.1f} s), {_verdict(even >= 3)}"
                   + ("" if even >= 3 else ": half of its steps are off-policy ones that cost about what recoverlm's "
                      "on-policy step costs, which holds the ratio near the mean of 1 and its on-policy ratio"))
    elif ours in train:
        out.append("against TRL GKD at its defaults: not measured yet (`python bench/peers.py --group gkd-defaults`)")
    by_n = {r["n"]: r["ckatorch_s"] / r["recoverlm_s"] for r in cka}
    if 4096 in by_n and 16384 in by_n:
        exact = max(r["recoverlm_diff"] for r in cka)
        out.append(f"streaming CKA at least 20x faster than ckatorch at n = 4,096 and 100x at 16,384, within 1e-6 of "
                   f"float64: {by_n[4096]:.1f}x, {by_n[16384]:.1f}x, largest difference {exact:.1e}, "
                   f"{_verdict(by_n[4096] >= 20 and by_n[16384] >= 100 and exact <= 1e-6)}")
    out.append("sampling at least 200 new tokens/s at batch 16 x 64: see \"Generation and precision\" below")
    return out


def render(result: dict) -> str:
    train, base = result["train"], statistics.median(result["train"]["plain SFT (torch loop)"]["seconds"])
    lines = ["## Against TRL and the CKA packages", "",
             f"Written by `python bench/peers.py` on {result['date']} ({result['device']}; torch {result['torch']}, "
             f"transformers {result['transformers']}, TRL {result['trl']}, ckatorch {result['ckatorch']}). "
             f"{result['model']}, batch {result['batch']} teacher responses (at most {result['max_new']} new tokens), "
             "float32, 2 threads. Each arm is one process; the arms of a group took turns step by step; "
             f"{result['reps']} timed steps each after a warm-up. Ratio: median step over the plain SFT step's "
             f"median in the same run ({base:.2f} s).", "",
             "| arm | median s/step [min, max] | / plain SFT | peak RSS (GiB) |", "|---|---|---|---|"]
    for name, r in train.items():
        s = r["seconds"]
        lines.append(f"| {name}{' †' if 'base_s' in r else ''} | {statistics.median(s):.2f} [{min(s):.2f}, {max(s):.2f}] | "
                     f"{_ratio(r, base):.2f}x | {r['peak_gib']:.1f} |")
    merged = {r["group_date"] for r in train.values() if "group_date" in r}
    if merged:
        lines += ["", f"† measured in a later run ({', '.join(sorted(merged))}, `--group`), against that run's own plain "
                  "SFT step; TRL's defaults keep its lmbda and beta, with max_new_tokens set as for every arm."]
    lines += ["", "Targets:", ""] + [f"- {t}" for t in targets(train, base, result["cka"])]
    when = f" (measured {result['cka_date']})" if result.get("cka_date") else ""
    lines += ["", f"Linear CKA of one layer pair (d = {result['cka'][0]['d']}) on the teacher's hidden states, against a "
              f"float64 reference{when}:",
              "", "| tokens | recoverlm streaming (s) | ckatorch (s) | speed-up | recoverlm diff | ckatorch diff | "
              "ckatorch Gram matrices |", "|---|---|---|---|---|---|---|"]
    for r in result["cka"]:
        lines.append(f"| {r['n']:,} | {r['recoverlm_s']:.3f} | {r['ckatorch_s']:.3f} | "
                     f"{r['ckatorch_s'] / r['recoverlm_s']:.1f}x | {r['recoverlm_diff']:.1e} | {r['ckatorch_diff']:.1e} | "
                     f"2 x {r['ckatorch_gram_gib']:.2f} GiB |")
    if all("pytorch_cka_s" in r for r in result["cka"]):
        lines += ["", f"Debiased CKA (Song et al.'s unbiased HSIC) against pytorch-cka {result.get('pytorch-cka', '')} "
                  "(`cka_from_features`, Gram matrices) and a float64 reference; recoverlm's value comes from the same "
                  "streaming pass as the linear one:", "",
                  "| tokens | recoverlm streaming (s) | pytorch-cka (s) | speed-up | recoverlm diff | pytorch-cka diff |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['n']:,} | {r['recoverlm_s']:.3f} | {r['pytorch_cka_s']:.3f} | "
                  f"{r['pytorch_cka_s'] / r['recoverlm_s']:.1f}x | {r['recoverlm_debiased_diff']:.1e} | "
                  f"{r['pytorch_cka_diff']:.1e} |" for r in result["cka"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n-heldout", type=int, default=48)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-peers")
    ap.add_argument("--smoke", action="store_true", help="the tiny test model, one repetition, no doc")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--student")
    ap.add_argument("--cka-only", action="store_true",
                    help="rerun only the CKA arms, keeping the training arms of bench/results/peers.json")
    ap.add_argument("--group", choices=sorted(EXTRA_GROUPS), action="append",
                    help="run one more group of arms and merge it into bench/results/peers.json (repeatable)")
    ap.add_argument("--render", action="store_true", help="rewrite the section from bench/results/peers.json only")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        update_section("peers", render(json.loads(RESULTS.read_text())))
        return
    if args.worker:
        worker(args.worker, args.teacher, args.student, args.work, args.batch, args.n_heldout, args.max_new)
        return

    import importlib.metadata as md

    from recoverlm import models
    from recoverlm.degrade import degrade
    from recoverlm.environment import describe_environment
    from recoverlm.io import write_json_atomic

    if args.smoke:
        args.reps = 1
    teacher = str(models.resolve_model(args.teacher))
    if args.cka_only:
        result = {**json.loads(RESULTS.read_text()), "cka": cka_arms(teacher, [1024, 4096, 16384]),
                  "cka_date": time.strftime("%Y-%m-%d"),
                  **{p: _version(p) for p in ("ckatorch", "pytorch-cka")}}
        write_json_atomic(RESULTS, result)
        update_section("peers", render(result))
        print(render(result))
        return
    student = Path(args.student) if args.student else args.work / "student"
    if not models.is_model_dir(student):
        degrade(teacher, "prune.magnitude", {"sparsity": 0.5}, student)
    if args.group:
        result = json.loads(RESULTS.read_text())
        for group in args.group:
            arms = run_group(EXTRA_GROUPS[group], args, teacher, str(student))
            own_base = statistics.median(arms["plain SFT (torch loop)"]["seconds"])
            for name, r in arms.items():
                if name != "plain SFT (torch loop)":  # the arms measured before keep their own run
                    key = name if name not in result["train"] or "base_s" in result["train"][name] else f"{name} ({group})"
                    result["train"][key] = {**r, "base_s": own_base, "group": group,
                                            "group_date": time.strftime("%Y-%m-%d")}
                print(name, [round(x, 2) for x in r["seconds"]], flush=True)
            write_json_atomic(RESULTS, result)
        update_section("peers", render(result))
        print(render(result))
        return
    train = {}
    for group in (SMOKE_GROUPS if args.smoke else GROUPS):
        for name, r in run_group(group, args, teacher, str(student)).items():
            if name in train:  # the plain SFT step runs in every group: pool its steps
                train[name]["seconds"] += r["seconds"]
                train[name]["peak_gib"] = max(train[name]["peak_gib"], r["peak_gib"])
            else:
                train[name] = r
            print(name, [round(s, 2) for s in r["seconds"]], flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "device": describe_environment()["device"], "model": args.teacher,
              "batch": args.batch, "max_new": args.max_new, "reps": args.reps, "train": train,
              "cka": cka_arms(teacher, [256, 512] if args.smoke else [1024, 4096, 16384]),
              **{p: md.version(p) for p in ("torch", "transformers", "trl", "ckatorch")}, "pytorch-cka": _version("pytorch-cka")}
    if args.smoke:
        print(render(result))
        return
    write_json_atomic(RESULTS, result)
    update_section("peers", render(result))
    print(render(result))


if __name__ == "__main__":
    main()
