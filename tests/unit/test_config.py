"""Config checks made when a config is built, before any model work."""

import pytest

from recoverlm.config import DataConfig
from recoverlm.errors import RecoverLMError


def test_written_prompts_need_the_chat_template(prompt_file):
    """Refused when the config is built, before any model work."""
    with pytest.raises(RecoverLMError, match="teacher_prompts needs the chat template"):
        DataConfig(prompts=prompt_file, n_heldout=4, teacher_prompts=2, use_chat_template=False)


def test_a_run_is_the_same_whatever_its_execution_only_settings(tmp_path):
    """A run folder saved with logit_chunk 0 (or before the default became auto) resumes under
    auto; a setting that changes what is computed still makes it another run."""
    from recoverlm.config import RunConfig, dump_config, same_config

    stored = tmp_path / "config.yaml"
    stored.write_text(dump_config(RunConfig.model_validate({"recover": {"logit_chunk": 0}})))
    assert same_config(stored, RunConfig())
    assert same_config(stored, RunConfig.model_validate({"recover": {"logit_chunk": 256}}))
    assert not same_config(stored, RunConfig.model_validate({"recover": {"lr": 3e-4}}))


def test_a_method_named_without_params_takes_its_own_defaults():
    """Magnitude pruning at 50% is the default damage; quant.rtn named alone is not given a sparsity."""
    from recoverlm.config import DegradeConfig, RunConfig

    assert DegradeConfig().params == {"sparsity": 0.5}
    assert DegradeConfig(method="prune.magnitude").params == {"sparsity": 0.5}
    assert DegradeConfig(method="quant.rtn").params == {}
    assert RunConfig.model_validate({"degrade": {"method": "quant.nf4", "params": None}}).degrade.params == {}
    assert RunConfig().model_dump()["degrade"] == {"method": "prune.magnitude", "params": {"sparsity": 0.5}}
