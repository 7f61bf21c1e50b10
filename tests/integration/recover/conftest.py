import pytest

from recoverlm.config import DataConfig
from recoverlm.degrade import degrade


@pytest.fixture(scope="module")
def data_cfg(prompt_file):
    return DataConfig(prompts=prompt_file, n_heldout=4, max_new_tokens=8, top_k_logits=8,
                      teacher_generation_dtype="float32")


@pytest.fixture(scope="module")
def pruned(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "m"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, out)
    return out


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant") / "m"
    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 32}, out)
    return out
