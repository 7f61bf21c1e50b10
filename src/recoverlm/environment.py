"""What a result was measured on: package versions, hardware and precision support.

A recovery figure means little without the machine it came from (bf16 is native on some CPUs and
emulated, about twice as slow, on others), so every run folder records this next to its numbers.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

import torch

from . import models

PACKAGES = ("recoverlm", "torch", "transformers", "accelerate", "peft", "lm_eval", "safetensors")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | None = None) -> bool:
    """Whether bf16 matmuls run in hardware here. On a CPU without AVX512-BF16 or AMX they are
    emulated and slower than fp32, so bf16 saves memory there but costs time."""
    device = device or models.compute_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        flags = _cpu_flags()
        if flags:
            return bool(flags & {"avx512_bf16", "amx_bf16"})
        return platform.machine() in ("arm64", "aarch64")  # Apple silicon and recent ARM servers
    return False


def bf16_faster(device: torch.device | None = None) -> bool:
    """Whether bf16 is expected to beat fp32 here: on a GPU that supports it, or a CPU with AMX
    tiles. AVX512-BF16 alone is native but not faster: on a 2-core Xeon with it, generation in bf16
    ran at 0.80-0.92x of fp32 (docs/benchmarks.md, "Generation and precision"), so "auto" keeps such CPUs, and ARM ones
    (unmeasured), in fp32."""
    device = device or models.compute_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and "amx_bf16" in _cpu_flags()


def training_bf16(setting: bool | str, device: torch.device | None = None) -> bool:
    """Whether recovery trains under bf16 autocast: the setting, with "auto" resolved for this machine."""
    return bf16_faster(device) if setting == "auto" else bool(setting)


def generation_dtype(name: str, device: torch.device | None = None) -> str:
    """The dtype `teacher_generation_dtype` names, with "auto" resolved for this machine."""
    if name != "auto":
        return name
    return "bfloat16" if bf16_faster(device) else "float32"


def device_label(device: torch.device | None = None) -> str:
    device = device or models.compute_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def describe_environment() -> dict:
    device = models.compute_device()
    return {
        "versions": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_label(device),
        "native_bf16": native_bf16(device),
        "bf16_faster": bf16_faster(device),
    }
