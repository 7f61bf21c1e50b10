"""Every stage's settings as pydantic models loaded from YAML: the one place for defaults, and for
the checks of options that cannot work together, so a bad combination fails when the config loads,
before any model is read. Those checks raise RecoverLMError, which pydantic passes through."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecoverLMError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DegradeConfig(_Strict):
    method: str = "prune.magnitude"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_params(cls, raw):
        """The default damage is magnitude pruning at 50%; another method named without params takes
        its own defaults (not a sparsity it does not have)."""
        if isinstance(raw, dict) and raw.get("params") is None:  # absent, or an empty YAML section
            magnitude = raw.get("method", "prune.magnitude") == "prune.magnitude"
            return {**raw, "params": {"sparsity": 0.5} if magnitude else {}}
        return raw


class DataConfig(_Strict):
    """Prompts for the distillation set and the held-out evaluation set (disjoint)."""

    prompts: Optional[Path] = None  # JSONL with "prompt" or "messages"; None = the built-in general set
    n_heldout: int = Field(48, ge=1)
    # Prompts taken from the training side to choose the best checkpoint, so that the held-out set
    # only ever scores: null = an eighth of the training prompts (at most 24); 0 = choose on held-out.
    n_validation: Optional[int] = Field(None, ge=0)
    split_seed: int = 0
    use_chat_template: bool = True
    max_prompt_tokens: int = Field(128, ge=8)
    overflow: Literal["skip", "truncate"] = "skip"
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # teacher sampling for the training responses; 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k_logits: int = Field(64, ge=1)  # cached teacher logits per token (+ one tail bucket)
    responses_per_prompt: int = Field(1, ge=1)
    # Extra training prompts the teacher writes from the opening of a user turn (needs a chat
    # template); the validation and held-out prompts stay the curated ones.
    teacher_prompts: int = Field(0, ge=0)
    teacher_prompt_temperature: float = Field(1.0, gt=0.0)
    # SFT forgetting: prompts of the new task (a JSONL, or a built-in SFT task's name), answered by `task_teacher`
    task_prompts: Optional[Path] = None
    n_task_prompts: int = Field(128, ge=1)  # drawn from a built-in task (its training distribution, another seed)
    task_teacher: Optional[str] = None  # default: the student as it was before recovery (keeps the new skill)
    replay_data: Optional[Path] = None  # sft-replay with replay_source=data: JSONL of prompt/response pairs
    # auto: bfloat16 where the hardware runs it natively, float32 where bf16 is emulated (slower)
    teacher_generation_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Rows per generation batch: a decode step reads every weight whatever the rows, so more rows
    # are nearly free tokens (docs/benchmarks.md, "Generation and precision": 1.8x from 16 to 64).
    generation_batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _compatible(self) -> "DataConfig":
        if self.teacher_prompts and not self.use_chat_template:
            raise RecoverLMError("data.teacher_prompts needs the chat template, which use_chat_template: false turns off")
        if self.responses_per_prompt > 1 and self.temperature == 0:
            raise RecoverLMError(f"data.responses_per_prompt = {self.responses_per_prompt} with temperature 0 gives "
                                 "identical greedy copies of every response: set a temperature > 0, or one response")
        return self


class LoraConfig(_Strict):
    """A PEFT LoRA adapter. Under sparsity masks the adapter is trained as (W + s*B@A) * M, so the
    merge keeps what was learned; under a quantization grid the base stays frozen on its grid."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class BlockChoice(_Strict):
    """recover.train_blocks as a rule over the damaged student: the K blocks it aligns least (or
    most) with the teacher by linear CKA on the validation prompts, or K blocks at random (seeded by
    recover.seed), the controls at equal K for "training where CKA locates the damage helps most".
    Exactly one rule. Its checks raise RecoverLMError themselves, before pydantic's type checks,
    so a bad rule is named as such rather than as a mismatch against every form train_blocks takes."""

    least_aligned: Optional[int] = None
    most_aligned: Optional[int] = None
    random: Optional[int] = None
    # How a block is scored (aligned rules only): `drop`, the CKA lost across the block (its
    # input's minus its output's), points at where the damage enters; `output`, the CKA of the
    # block's output, also carries all the damage of the blocks below it.
    score: Optional[Literal["drop", "output"]] = None

    @model_validator(mode="before")
    @classmethod
    def _one_rule(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # another form of train_blocks; pydantic tells them apart
        rules = ("least_aligned", "most_aligned", "random")
        unknown = [k for k in data if k not in (*rules, "score")]
        if unknown:
            raise RecoverLMError(f"recover.train_blocks: unknown key {unknown[0]!r}; a rule is one of "
                                 f"{', '.join(rules)} (with an optional score for the aligned ones)")
        given = [k for k in rules if data.get(k) is not None]
        if len(given) != 1:
            raise RecoverLMError(f"recover.train_blocks takes exactly one of {', '.join(rules)}; "
                                 f"got {', '.join(given) if given else 'none'}")
        k = data[given[0]]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RecoverLMError(f"recover.train_blocks {given[0]}: K must be a whole number >= 1, got {k!r}")
        score = data.get("score")
        if given[0] == "random" and score is not None:
            raise RecoverLMError("recover.train_blocks: score ranks blocks by CKA; random uses none")
        if score is not None and score not in ("drop", "output"):
            raise RecoverLMError(f"recover.train_blocks score must be drop or output, got {score!r}")
        if given[0] != "random" and score is None:
            data = {**data, "score": "drop"}
        return data


class MaskUpdateConfig(_Strict):
    """Re-choosing a sparse student's mask during recovery at fixed sparsity and pattern: every
    `every` steps, the `fraction` of kept weights with the lowest Wanda score (|W| x the norm of
    its input, estimated from the training forwards) are pruned and as many pruned weights with
    the largest accumulated gradient regrow; the fraction decays to zero at `stop` of the steps."""

    every: int = Field(20, ge=1)
    fraction: float = Field(0.1, gt=0.0, le=1.0)
    stop: float = Field(0.75, gt=0.0, le=1.0)  # share of the run after which the mask stays fixed
    # A regrown weight starts at zero, or at the teacher's value (the dense weight it replaces).
    regrow: Literal["zero", "teacher"] = "zero"


class RecoverConfig(_Strict):
    """Stage 1 (off-policy, cached teacher top-k) for `offpolicy_steps`, then stage 2 (on-policy)
    for `onpolicy_steps`. Names follow TRL's GKD where they mean the same thing."""

    method: Literal["distill", "sft-replay", "none"] = "distill"
    offpolicy_steps: int = Field(100, ge=0)
    onpolicy_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)  # sequences per optimizer step, over all processes
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"  # stage 1
    onpolicy_divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "reverse_kl"  # stage 2
    beta: float = Field(0.5, gt=0.0, lt=1.0)  # generalised JSD mixture weight (jsd only)
    temperature: float = Field(1.0, gt=0)  # applied to both models' logits in the loss
    lmbda: float = Field(1.0, ge=0.0, le=1.0)  # fraction of stage-2 batches sampled by the student
    ce_weight: float = Field(0.0, ge=0.0)  # + ce_weight * cross-entropy on the teacher's tokens (seq-KD; off-policy batches)
    skip_first_tokens: int = Field(0, ge=0)  # leave the first response tokens out of the loss
    # + hidden_weight * the relative squared error of every block's hidden state against the
    # teacher's (distill only; needs the teacher's layer shapes): aligns the activation trajectory
    # directly. Stage 1 then runs the teacher once per batch, for its hidden states.
    hidden_weight: float = Field(0.0, ge=0.0)
    # + cka_weight * (1 - linear CKA) of the student's and teacher's block outputs over each
    # micro-batch's kept response positions, averaged over `cka_layers` (None: every block; block
    # indices as in the hidden-state term), tokens the teacher carries as massive activations left
    # out as in the CKA analysis; weighted by the micro-batch's tokens (distill only; needs the
    # teacher's number of layers, any width). Trains CKA itself, to test whether raising it recovers.
    cka_weight: float = Field(0.0, ge=0.0)
    cka_layers: Optional[list[int]] = None
    teacher_mode: Literal["base", "ema"] = "base"  # stage-2 teacher: the fixed teacher or an EMA of the student
    ema_rate: float = Field(0.99, gt=0.0, lt=1.0)
    onpolicy_max_new_tokens: int = Field(64, ge=1)
    onpolicy_temperature: float = Field(1.0, ge=0.0)
    replay_source: Literal["teacher_text", "data"] = "teacher_text"  # sft-replay: teacher text or user data
    # Quantization-grid students: also train the group scales, as log gains on the degraded scales with their own peak lr.
    grid_scales: Literal["fixed", "learned"] = "fixed"
    grid_scale_lr: float = Field(1e-3, gt=0)
    # Their latent (QAT) weights start on the grid, or at the teacher's weights inside each grid
    # cell: the same forward pass, but rounding changes the teacher leaned towards are a small step away.
    grid_latents: Literal["grid", "teacher"] = "grid"
    lora: Optional[LoraConfig] = None
    # The decoder blocks that train: `all`, a list of block indices, or a BlockChoice rule. The rest
    # stay frozen, with the embeddings, final norm and LM head (under lora: adapters only in those
    # blocks); indices and K are checked against the student's depth when it is known.
    train_blocks: Union[Literal["all"], list[int], BlockChoice] = "all"
    # What the student must keep: its saved Constraint, else (auto) sparsity masks inferred from
    # its exact zeros where a decoder matrix has at least `sparsity_threshold` of them (a model
    # pruned by another tool); `saved`: only a saved Constraint; `none`: every weight trains freely.
    constraint: Literal["auto", "saved", "none"] = "auto"
    # After recovery, also write the model in a serving format beside the output (`<out>.<format>`):
    # compressed-tensors for integer-grid students, bitsandbytes-nf4 for NF4 ones.
    export: Optional[Literal["compressed-tensors", "bitsandbytes-nf4"]] = None
    # Response positions per chunk through the LM head (0: all at once). Chunked, no
    # [positions x vocabulary] logits tensor exists for the whole micro-batch (ops.chunked).
    # auto: chunks of 512 where a micro-batch's logits would reach 1 GiB (ops.chunked.auto_chunk).
    logit_chunk: Union[Literal["auto"], Annotated[int, Field(ge=0)]] = "auto"
    # Where the frozen teacher computes (null: the training device; e.g. cuda:1, or cpu), and whether
    # it waits in CPU memory while steps do not run it (the cached top-k stage), moving in for the
    # steps and evaluations that do (recover.placement).
    teacher_device: Optional[str] = None
    teacher_offload: bool = False
    # LoRA over a student that is exactly the teacher's weights under its Constraint: hold those
    # weights once, the teacher being the base with the adapter off (recover.shared_teacher).
    share_teacher: Literal["auto", "off"] = "auto"
    # Experiment trackers fed through accelerate, beside metrics.jsonl (which stays the record):
    # their logs go to `<out>.logs/`; wandb runs offline unless WANDB_MODE says otherwise.
    log_with: list[Literal["tensorboard", "wandb", "trackio"]] = []
    sparsity_threshold: float = Field(0.25, gt=0.0, le=1.0)
    # A sparse student may re-choose which weights it keeps (ops.mask_swap); None: the mask is fixed.
    mask_update: Optional[MaskUpdateConfig] = None
    eval_every: int = Field(25, ge=0)  # 0 = only at the end
    select_metric: Literal["kl", "reverse_kl", "nll", "top1_agreement"] = "kl"
    select_best: bool = True  # export the best checkpoint by select_metric on the validation prompts
    cka_every_eval: bool = True  # record the per-layer CKA trajectory at each evaluation
    save_every: int = Field(0, ge=0)  # training checkpoints for --resume; 0 = never
    # bf16 autocast for training and on-policy sampling; auto: where it beats fp32 (a GPU with bf16,
    # a CPU with AMX: environment.bf16_faster), fp32 elsewhere. Recorded in recovery.json.
    bf16: Union[bool, Literal["auto"]] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: Optional[int] = None

    @property
    def total_steps(self) -> int:
        return self.offpolicy_steps + self.onpolicy_steps

    @field_validator("train_blocks")
    @classmethod
    def _block_list(cls, value):
        if isinstance(value, list):
            if not value:
                raise RecoverLMError("recover.train_blocks: an empty list trains nothing; give block indices or 'all'")
            if min(value) < 0:
                raise RecoverLMError(f"recover.train_blocks: block indices count from 0, got {min(value)}")
            if len(set(value)) != len(value):
                raise RecoverLMError(f"recover.train_blocks: block indices repeat in {value}")
        return value

    @model_validator(mode="after")
    def _compatible(self) -> "RecoverConfig":
        if self.hidden_weight and self.method != "distill":
            raise RecoverLMError(f"hidden_weight needs method 'distill'; method '{self.method}' has no teacher to match")
        if self.cka_weight and self.method != "distill":
            raise RecoverLMError(f"cka_weight needs method 'distill'; method '{self.method}' has no teacher to match")
        if self.cka_layers is not None and (not self.cka_layers or min(self.cka_layers) < 0):
            raise RecoverLMError(f"cka_layers must be a non-empty list of block indices (0 = the first block's "
                                 f"output), got {self.cka_layers}")
        if self.lora is not None:
            if self.teacher_mode == "ema":
                raise RecoverLMError("teacher_mode 'ema' needs full fine-tuning; it is not supported with lora")
            for option, value in (("grid_scales", "learned"), ("grid_latents", "teacher")):
                if getattr(self, option) == value:
                    raise RecoverLMError(f"{option} '{value}' needs full fine-tuning; it is not supported with lora")
            if self.mask_update is not None:
                raise RecoverLMError("mask_update needs full fine-tuning (the gradient of every pruned weight); "
                                     "it is not supported with lora")
        # settings that would silently do nothing are refused rather than ignored
        if self.cka_layers is not None and not self.cka_weight:
            raise RecoverLMError("cka_layers chooses the blocks of the CKA term, which is off; set cka_weight too")
        if self.teacher_mode == "ema" and not self.onpolicy_steps:
            raise RecoverLMError("teacher_mode 'ema' is the teacher of the on-policy stage, and onpolicy_steps is 0")
        if self.method == "sft-replay" and self.onpolicy_steps:
            raise RecoverLMError("sft-replay trains on the teacher's text only and has no on-policy stage; "
                                 "give its steps as offpolicy_steps")
        if self.onpolicy_steps and self.skip_first_tokens >= self.onpolicy_max_new_tokens:
            raise RecoverLMError(f"skip_first_tokens ({self.skip_first_tokens}) leaves nothing of the on-policy "
                                 f"samples ({self.onpolicy_max_new_tokens} tokens) to train on")
        return self

    def check_data(self, data: DataConfig) -> None:
        """The checks that need the data section too."""
        if self.method == "sft-replay" and self.replay_source == "data" and data.replay_data is None:
            raise RecoverLMError("replay_source 'data' needs data.replay_data (a JSONL of prompt/response pairs)")
        if self.offpolicy_steps and self.skip_first_tokens >= data.max_new_tokens and self.replay_source != "data":
            raise RecoverLMError(f"skip_first_tokens ({self.skip_first_tokens}) leaves nothing of the teacher's "
                                 f"responses (data.max_new_tokens {data.max_new_tokens}) to train on")


class EvalConfig(_Strict):
    batch_size: int = Field(8, ge=1)
    suites: list[str] = Field(default_factory=list)  # task suites beside fidelity, e.g. [knowledge, instructions]
    suite_limit: Optional[int] = Field(None, ge=1)  # items per suite (None = all)
    generation: bool = True  # greedy exact match and length ratio against the teacher


class CKAConfig(_Strict):
    batch_size: int = Field(8, ge=1)
    pooling: Literal["token", "mean"] = "token"  # every real token, or one mean vector per sequence
    cross_tokens: int = Field(4096, ge=0)  # token sample for the cross-layer matrix; 0 = skip it
    # Leave out tokens the teacher carries as massive activations (norm > ratio x median at some
    # layer: attention sinks such as the first token); null keeps every token.
    massive_ratio: Optional[float] = Field(20.0, gt=1.0)


class RunConfig(_Strict):
    model: str = "smollm2-135m-instruct"
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    cka: CKAConfig = Field(default_factory=CKAConfig)

    @model_validator(mode="after")
    def _compatible(self) -> "RunConfig":
        self.recover.check_data(self.data)
        return self


class MethodArm(_Strict):
    """One recovery method of a study: what it changes in the base run's `recover` and `data`."""

    recover: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    # The degradations the method applies to (e.g. a teacher choice for SFT forgetting); None: all.
    degradations: Optional[list[str]] = None


class DegradationArm(DegradeConfig):
    """One damage of a study, and the evaluate settings its cells change from the base (e.g. a
    suite list that adds the SFT task's own suite)."""

    params: dict[str, Any] = Field(default_factory=dict)
    evaluate: dict[str, Any] = Field(default_factory=dict)


class StudyConfig(_Strict):
    """A grid of runs: a base run config, and axes whose cross product are the cells. Every cell
    is an ordinary run (RunConfig) with the base's settings, one model, one named degradation, one
    named method and one seed (recover.seed)."""

    base: dict[str, Any] = Field(default_factory=dict)  # RunConfig fields shared by every cell
    models: list[str] = Field(min_length=1)
    degradations: dict[str, DegradationArm] = Field(min_length=1)
    methods: dict[str, MethodArm] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    doc: Optional[Path] = None  # where --render writes the results (default docs/results.md)
    records: Optional[Path] = None  # the finished cells' records (default: beside doc, <stem>-cells)


def _first_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{source}: invalid config field '{where}': {err['msg']}"


def parse_config(cls: type[BaseModel], data: dict, source: str = "config") -> Any:
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        raise RecoverLMError(_first_error(exc, source)) from exc
    except RecoverLMError as exc:  # options that cannot work together
        raise RecoverLMError(f"{source}: {exc}") from exc


def updated(cfg: BaseModel, source: str = "command line", **changes) -> Any:
    """A copy of `cfg` with `changes`, validated again (pydantic's model_copy would skip the checks)."""
    return parse_config(type(cfg), {**cfg.model_dump(), **changes}, source)


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecoverLMError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecoverLMError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from exc
    except yaml.YAMLError as exc:
        raise RecoverLMError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is not None and not isinstance(data, dict):
        raise RecoverLMError(f"{path}: expected a mapping at the top level")
    return data or {}


def load_run_config(path: Path) -> RunConfig:
    return parse_config(RunConfig, load_yaml(path), str(path))


# Settings that change how a run computes but not what it computes (chunked logits equal whole
# ones): a run saved with another value, or before the default changed, is still the same run.
EXECUTION_ONLY = frozenset({"logit_chunk"})
# Settings that say where and how a run is carried out (its threads, devices, trackers, checkpoint
# cadence, extra exports), whose change leaves its training and measurements as they were, up to
# the order of floating-point sums: a twin run elsewhere, or a resumption on another machine.
PLACEMENT_ONLY = frozenset({"threads", "teacher_device", "teacher_offload", "log_with", "save_every", "export"})


def run_identity(settings):
    """Settings as they decide a run's results: the execution-only ones left out, at any depth."""
    if isinstance(settings, dict):
        return {k: run_identity(v) for k, v in settings.items() if k not in EXECUTION_ONLY}
    return settings


def result_identity(settings: dict) -> dict:
    """A run config as it decides the run's results: run_identity without the placement-only
    settings of its recover and data sections, so a twin run elsewhere is the same run."""
    settings = run_identity(settings)
    return {k: ({kk: vv for kk, vv in v.items() if kk not in PLACEMENT_ONLY} if k in ("recover", "data")
                and isinstance(v, dict) else v) for k, v in settings.items()}


def same_config(stored: Path, cfg: BaseModel) -> bool:
    """Whether the config saved at `stored` describes the same run as `cfg`. Compared as settings,
    not text, so a run saved before a field with a default existed still matches."""
    try:
        raw = load_yaml(stored)
    except RecoverLMError:
        return False
    return same_settings(raw, cfg, str(stored))


def same_settings(raw: dict, cfg: BaseModel, source: str = "stored config") -> bool:
    """Whether the settings `raw` (a config as saved) describe the same run as `cfg`."""
    try:
        old = parse_config(type(cfg), raw, source)
    except RecoverLMError:
        return False
    return result_identity(old.model_dump(mode="json")) == result_identity(cfg.model_dump(mode="json"))


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
