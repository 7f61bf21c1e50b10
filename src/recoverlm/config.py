"""Every stage's settings as pydantic models loaded from YAML: the one place for defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RecoverLMError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DegradeConfig(_Strict):
    method: str = "prune.magnitude"
    params: dict[str, Any] = Field(default_factory=lambda: {"sparsity": 0.5})


class DataConfig(_Strict):
    """Prompts for the distillation set and the held-out evaluation set (disjoint)."""

    prompts: Optional[Path] = None  # JSONL with "prompt" or "messages"; None = the built-in general set
    n_heldout: int = Field(48, ge=1)
    split_seed: int = 0
    use_chat_template: bool = True
    max_prompt_tokens: int = Field(128, ge=8)
    overflow: Literal["skip", "truncate"] = "skip"
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # teacher sampling for the training responses; 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k_logits: int = Field(64, ge=1)  # cached teacher logits per token (+ one tail bucket)
    teacher_generation_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    generation_batch_size: int = Field(16, ge=1)


class RecoverConfig(_Strict):
    steps: int = Field(100, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    loss: Literal["forward_kl", "sft"] = "forward_kl"  # sft = cross-entropy on the teacher's tokens
    temperature: float = Field(1.0, gt=0)
    eval_every: int = Field(25, ge=0)  # 0 = only at the end
    select_best: bool = True  # keep the checkpoint with the lowest held-out teacher KL
    seed: int = 0
    threads: Optional[int] = None


class EvalConfig(_Strict):
    batch_size: int = Field(8, ge=1)


class CKAConfig(_Strict):
    batch_size: int = Field(8, ge=1)


class RunConfig(_Strict):
    model: str = "smollm2-135m-instruct"
    degrade: DegradeConfig = Field(default_factory=DegradeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    cka: CKAConfig = Field(default_factory=CKAConfig)


def _first_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{source}: invalid config field '{where}': {err['msg']}"


def parse_config(cls: type[BaseModel], data: dict, source: str = "config") -> Any:
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        raise RecoverLMError(_first_error(exc, source)) from exc


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecoverLMError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecoverLMError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is not None and not isinstance(data, dict):
        raise RecoverLMError(f"{path}: expected a mapping at the top level")
    return data or {}


def load_run_config(path: Path) -> RunConfig:
    return parse_config(RunConfig, load_yaml(path), str(path))


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
