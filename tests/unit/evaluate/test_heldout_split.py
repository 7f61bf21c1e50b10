"""A recovered model is scored on the prompts its recovery held out: its recorded split is taken
when the user gives none, and a config asking for another split is refused."""

import json

import pytest

from recoverlm.config import DataConfig
from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.heldout_split import matching_split


def _recovered(folder, **data):
    (folder / "recoverlm").mkdir(parents=True)
    record = {"data": DataConfig(**data).model_dump(mode="json")}
    (folder / "recoverlm" / "recovery.json").write_text(json.dumps(record))
    return folder


def test_the_recorded_split_is_taken_and_said(tmp_path):
    folder = _recovered(tmp_path / "rec", n_heldout=32, split_seed=1)
    said = []
    cfg = matching_split(DataConfig(), [tmp_path / "degraded", folder], given=False, log=said.append)
    assert (cfg.n_heldout, cfg.split_seed) == (32, 1)
    assert len(said) == 1 and "n_heldout = 32" in said[0] and "split_seed = 1" in said[0]


def test_a_config_asking_another_split_is_refused(tmp_path):
    folder = _recovered(tmp_path / "rec", n_heldout=32)
    with pytest.raises(RecoverLMError, match="data.n_heldout = 32, the config asks 48"):
        matching_split(DataConfig(), [folder], given=True)
    same = matching_split(DataConfig(n_heldout=32, max_new_tokens=16), [folder], given=True)
    assert same.max_new_tokens == 16  # settings that do not move the split are the user's


def test_two_recovered_models_of_different_splits_are_refused(tmp_path):
    a, b = _recovered(tmp_path / "a", split_seed=1), _recovered(tmp_path / "b", split_seed=2)
    with pytest.raises(RecoverLMError, match="split_seed"):
        matching_split(DataConfig(), [a, b], given=False, log=lambda _: None)


def test_a_prompts_file_that_changed_since_recovery_is_refused(tmp_path):
    """Same path, same settings, one prompt more: the shuffle now holds out prompts it trained on."""
    from recoverlm.data import heldout_hash, load_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(40)))
    folder = _recovered(tmp_path / "rec", prompts=str(prompts), n_heldout=8)
    record = json.loads((folder / "recoverlm" / "recovery.json").read_text())
    record["heldout_hash"] = heldout_hash(load_prompts(prompts), 8)
    (folder / "recoverlm" / "recovery.json").write_text(json.dumps(record))
    asked = DataConfig(prompts=str(prompts), n_heldout=8)
    assert matching_split(asked, [folder], given=True) == asked
    with prompts.open("a") as fh:
        fh.write(json.dumps({"prompt": "question 40"}) + "\n")
    with pytest.raises(RecoverLMError, match="other held-out prompts"):
        matching_split(asked, [folder], given=True)
    with pytest.raises(RecoverLMError, match="other held-out prompts"):
        matching_split(DataConfig(), [folder], given=False, log=lambda _: None)  # its settings taken, then checked
