"""What a run records of its machine, and the precision "auto" picks on it."""

import torch

from recoverlm import environment


def test_auto_generation_dtype_follows_where_bf16_is_faster(monkeypatch):
    monkeypatch.setattr(environment, "bf16_faster", lambda device=None: False)
    assert environment.generation_dtype("auto") == "float32"
    monkeypatch.setattr(environment, "bf16_faster", lambda device=None: True)
    assert environment.generation_dtype("auto") == "bfloat16"
    assert environment.generation_dtype("float32") == "float32"  # an explicit choice is kept


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(environment, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert environment.native_bf16(cpu) is False
    monkeypatch.setattr(environment, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert environment.native_bf16(cpu) is True
    assert environment.bf16_faster(cpu) is False  # native, yet slower than fp32 where measured
    monkeypatch.setattr(environment, "_cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert environment.bf16_faster(cpu) is True


def test_describe_environment_names_versions_and_device():
    env = environment.describe_environment()
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert env["device"] and isinstance(env["native_bf16"], bool)


def test_training_precision_auto_follows_the_hardware_and_a_setting_overrides_it(monkeypatch):
    monkeypatch.setattr(environment, "bf16_faster", lambda device=None: False)
    assert environment.training_bf16("auto") is False and environment.training_bf16(True) is True
    monkeypatch.setattr(environment, "bf16_faster", lambda device=None: True)
    assert environment.training_bf16("auto") is True and environment.training_bf16(False) is False
