"""Teacher responses to a prompt set, generated once and cached by what determines them.

The same mechanism serves the distillation set (teacher samples + cached top-k logits) and the
held-out evaluation set (greedy teacher responses). The cache key covers the teacher's weights,
the prompts, the tokenisation and the generation settings, so a changed input never reuses a stale set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import environment, models
from ..config import DataConfig
from ..data import encode_prompts, load_prompts, split_three, texts_hash
from ..io import atomic_dir, read_json, write_json_atomic
from ..lm.generate import generate
from .topk import teacher_topk
from .written_prompts import teacher_written_prompts


@dataclass
class ResponseSet:
    prompts: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    meta: dict
    topk_indices: torch.Tensor | None = None  # (N_response_tokens, k) int32
    topk_logprobs: torch.Tensor | None = None  # (N_response_tokens, k+1) float32
    offsets: list[int] = field(default_factory=list)  # row of each sequence's first response token
    sources: list[int] = field(default_factory=list)  # which teacher answers each prompt (0 = the main teacher)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def source(self, i: int) -> int:
        return self.sources[i] if self.sources else 0

    def topk_rows(self, seq_indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.cat([torch.arange(self.offsets[i], self.offsets[i] + len(self.response_ids[i])) for i in seq_indices])
        return self.topk_indices[rows], self.topk_logprobs[rows]

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            with open(tmp / "responses.jsonl", "w", encoding="utf-8") as fh:
                for p, pi, ri in zip(self.prompts, self.prompt_ids, self.response_ids):
                    fh.write(json.dumps({"prompt": p, "prompt_ids": pi, "response_ids": ri}) + "\n")
            if self.topk_indices is not None:
                save_file({"indices": self.topk_indices.contiguous(), "logprobs": self.topk_logprobs.contiguous()},
                          str(tmp / "teacher_topk.safetensors"))
            write_json_atomic(tmp / "meta.json", self.meta)

    @classmethod
    def load(cls, folder: Path) -> "ResponseSet":
        folder = Path(folder)
        rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
        rs = cls([r["prompt"] for r in rows], [r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows],
                 read_json(folder / "meta.json"))
        topk = folder / "teacher_topk.safetensors"
        if topk.exists():
            tensors = load_file(str(topk))
            rs.topk_indices, rs.topk_logprobs = tensors["indices"], tensors["logprobs"]
            rs._index()
        return rs

    def _index(self) -> None:
        self.offsets, total = [], 0
        for r in self.response_ids:
            self.offsets.append(total)
            total += len(r)


SCORING_BATCH = 16  # sequences per teacher top-k scoring batch


def build_response_set(teacher_ref, prompts: list[str], *, max_prompt_tokens: int, max_new_tokens: int,
                       temperature: float = 0.0, top_p: float = 1.0, top_k_logits: int = 0,
                       use_chat_template: bool = True, overflow: str = "skip", generation_dtype: str = "auto",
                       batch_size: int = 16, seed: int = 0, teacher=None, log=print,
                       topk_temperature: float = 1.0) -> ResponseSet:
    """Generate (or load from cache) the teacher's responses, plus its top-k logits if asked, at
    `topk_temperature`: the distillation temperature, which must soften the teacher as it does the
    student (the tail bucket cannot be re-tempered afterwards)."""
    path = models.resolve_model(teacher_ref)
    tokenizer = models.load_tokenizer(path)
    generation_dtype = environment.generation_dtype(generation_dtype)  # the cache records what ran
    settings = {
        "teacher_hash": models.model_hash(path), "setup_hash": models.setup_hash(path), "prompts_hash": texts_hash(prompts),
        "tokenizer_hash": texts_hash([str(getattr(tokenizer, "chat_template", None)), str(len(tokenizer)),
                                      str(tokenizer.eos_token_id), str(tokenizer.pad_token_id)]),
        "max_prompt_tokens": max_prompt_tokens, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "top_p": top_p, "top_k_logits": top_k_logits, "use_chat_template": use_chat_template, "overflow": overflow,
        "generation_dtype": generation_dtype, "seed": seed, "version": 1,
    }
    if top_k_logits and topk_temperature != 1.0:  # keyed only where it differs, so sets cached before still match
        settings["topk_temperature"] = topk_temperature
    if temperature > 0:  # sampled: each batch draws its own seed, so the batch decides the text
        settings["batch_size"] = batch_size
    cache = models.settings_cache_path("response_sets", settings)
    if (cache / "meta.json").exists():
        try:
            return ResponseSet.load(cache)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is made again, not a dead end
            log(f"the cached teacher responses in {cache} cannot be read ({type(exc).__name__}); making them again")

    prompt_ids, kept, n_over = encode_prompts(tokenizer, prompts, max_prompt_tokens, use_chat_template, overflow)
    if n_over:
        log(f"{n_over} of {len(prompts)} prompts exceed max_prompt_tokens={max_prompt_tokens}: {overflow}ped")
    device = models.compute_device()
    gen_model = models.load_model(path, dtype=getattr(torch, generation_dtype)).to(device)
    responses = generate(gen_model, tokenizer, prompt_ids, max_new_tokens, temperature, top_p, batch_size, seed,
                         desc=f"teacher responses ({len(prompt_ids)} prompts)")
    del gen_model
    rs = ResponseSet([prompts[i] for i in kept], prompt_ids, responses, {**settings, "n_overflow": n_over})
    if top_k_logits:
        scorer = teacher if teacher is not None else models.load_for_inference(path)
        # Scoring holds [positions x vocabulary] logits per batch, so it keeps to the old batch of 16
        # whatever the generation batch (at Gemma's 262k vocabulary, 64 rows would need ~13 GB).
        rs.topk_indices, rs.topk_logprobs = teacher_topk(scorer, prompt_ids, responses, top_k_logits,
                                                         tokenizer.pad_token_id, min(batch_size, SCORING_BATCH),
                                                         temperature=topk_temperature)
        rs._index()
    rs.save(cache)
    return rs


def _common(data_cfg: DataConfig) -> dict:
    return dict(max_prompt_tokens=data_cfg.max_prompt_tokens, max_new_tokens=data_cfg.max_new_tokens,
                use_chat_template=data_cfg.use_chat_template, overflow=data_cfg.overflow,
                generation_dtype=data_cfg.teacher_generation_dtype, batch_size=data_cfg.generation_batch_size)


def distill_set(teacher_ref, data_cfg: DataConfig, teacher=None, log=print, prompts: list[str] | None = None,
                topk_temperature: float = 1.0) -> ResponseSet:
    """Teacher responses to the training prompts, with the teacher's top-k logits cached (at the
    distillation temperature).

    With responses_per_prompt > 1 every prompt is answered several times (different seeds).
    """
    if prompts is None:
        prompts = training_prompts(teacher_ref, data_cfg, log)
    parts = [build_response_set(teacher_ref, prompts, temperature=data_cfg.temperature, top_p=data_cfg.top_p,
                                top_k_logits=data_cfg.top_k_logits, teacher=teacher, log=log, seed=seed,
                                topk_temperature=topk_temperature, **_common(data_cfg))
             for seed in range(data_cfg.responses_per_prompt)]
    merged = concat(parts)
    merged.sources = []  # one teacher answered all of them
    return merged


def training_prompts(teacher_ref, data_cfg: DataConfig, log=print) -> list[str]:
    """The training split, plus the prompts the teacher writes itself when the config asks for them."""
    train, validation, heldout = _splits(data_cfg)
    if not data_cfg.teacher_prompts:  # DataConfig refuses them without the chat template
        return train
    written = teacher_written_prompts(
        teacher_ref, data_cfg.teacher_prompts, exclude=train + validation + heldout,
        max_prompt_tokens=data_cfg.max_prompt_tokens, temperature=data_cfg.teacher_prompt_temperature,
        batch_size=data_cfg.generation_batch_size, generation_dtype=data_cfg.teacher_generation_dtype,
        seed=data_cfg.split_seed, log=log)
    log(f"training prompts: {len(train)} from the prompt set + {len(written)} written by the teacher")
    return train + written


def _splits(data_cfg: DataConfig) -> tuple[list[str], list[str], list[str]]:
    return split_three(load_prompts(data_cfg.prompts), data_cfg.n_heldout, data_cfg.n_validation, data_cfg.split_seed)


def heldout_set(teacher_ref, data_cfg: DataConfig, log=print) -> ResponseSet:
    """Greedy teacher responses to the held-out prompts, which training never sees."""
    return build_response_set(teacher_ref, _splits(data_cfg)[2], temperature=0.0, log=log, **_common(data_cfg))


def validation_set(teacher_ref, data_cfg: DataConfig, log=print) -> ResponseSet:
    """Greedy teacher responses to the validation prompts: the training curve and the choice of the
    best checkpoint. With n_validation 0 it is the held-out set (selection then peeks at the test)."""
    _, validation, heldout = _splits(data_cfg)
    return build_response_set(teacher_ref, validation or heldout, temperature=0.0, log=log, **_common(data_cfg))


def concat(sets: list[ResponseSet]) -> ResponseSet:
    """One set from several; sequence i of sets[s] gets source s (its teacher)."""
    if len(sets) == 1:
        return sets[0]
    out = ResponseSet([], [], [], {"parts": [s.meta for s in sets]})
    for source, part in enumerate(sets):
        out.prompts += part.prompts
        out.prompt_ids += part.prompt_ids
        out.response_ids += part.response_ids
        out.sources += [source] * len(part)
    if all(s.topk_indices is not None for s in sets):
        out.topk_indices = torch.cat([s.topk_indices for s in sets])
        out.topk_logprobs = torch.cat([s.topk_logprobs for s in sets])
        out._index()
    return out


def replay_set(tokenizer, path: Path, data_cfg: DataConfig, keep=None) -> ResponseSet:
    """User prompt/response pairs as a set without teacher logits (the sft-replay baseline on
    original data); `keep` maps the prompts to those that may be trained on."""
    from ..data import read_jsonl

    rows = read_jsonl(path, required=("prompt", "response"))
    if keep is not None:
        allowed = set(keep([r["prompt"] for r in rows]))
        rows = [r for r in rows if r["prompt"] in allowed]
    prompt_ids, kept, _ = encode_prompts(tokenizer, [r["prompt"] for r in rows], data_cfg.max_prompt_tokens,
                                         data_cfg.use_chat_template, data_cfg.overflow)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    responses = [tokenizer(rows[i]["response"], add_special_tokens=False)["input_ids"] + eos for i in kept]
    return ResponseSet([rows[i]["prompt"] for i in kept], prompt_ids, responses, {"replay_data": str(path)})
