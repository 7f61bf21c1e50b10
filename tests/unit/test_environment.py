"""What a run records of its machine, and the precision "auto" picks on it."""

import torch

from recoverlm import environment


def test_auto_generation_dtype_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(environment, "native_bf16", lambda device=None: False)
    assert environment.generation_dtype("auto") == "float32"
    monkeypatch.setattr(environment, "native_bf16", lambda device=None: True)
    assert environment.generation_dtype("auto") == "bfloat16"
    assert environment.generation_dtype("float32") == "float32"  # an explicit choice is kept


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(environment, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert environment.native_bf16(cpu) is False
    monkeypatch.setattr(environment, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert environment.native_bf16(cpu) is True


def test_describe_environment_names_versions_and_device():
    env = environment.describe_environment()
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert env["device"] and isinstance(env["native_bf16"], bool)
