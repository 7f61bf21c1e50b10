"""The registry of degradation methods."""

from recoverlm.degrade import METHODS


def test_every_method_is_registered_with_its_defaults():
    assert set(METHODS) >= {"prune.magnitude", "prune.wanda", "prune.nm", "prune.ffn", "prune.depth",
                            "quant.rtn", "quant.gptq", "quant.nf4"}
