import pytest

from recoverlm.degrade import degrade


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
