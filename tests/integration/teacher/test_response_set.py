"""The teacher's response sets on a tiny model follow the prompt splits."""

from recoverlm.config import DataConfig
from recoverlm.teacher.response_set import distill_set, heldout_set, validation_set


def test_response_sets_follow_the_splits(tiny_model, prompt_file):
    cfg = DataConfig(prompts=prompt_file, n_heldout=4, n_validation=3, max_new_tokens=4, top_k_logits=4,
                     teacher_generation_dtype="float32")
    train = set(distill_set(tiny_model, cfg, log=lambda *a: None).prompts)
    validation = set(validation_set(tiny_model, cfg, log=lambda *a: None).prompts)
    heldout = set(heldout_set(tiny_model, cfg, log=lambda *a: None).prompts)
    assert (len(train), len(validation), len(heldout)) == (17, 3, 4)
    assert not train & validation and not train & heldout and not validation & heldout


def test_a_damaged_cached_set_is_made_again(tiny_model, prompt_file):
    import torch

    from recoverlm import models

    cfg = DataConfig(prompts=prompt_file, n_heldout=4, max_new_tokens=4, top_k_logits=4, teacher_generation_dtype="float32")
    first = distill_set(tiny_model, cfg, log=lambda *a: None)
    cached = [p for p in (models.recoverlm_home() / "response_sets").rglob("teacher_topk.safetensors")]
    for path in cached:
        path.write_bytes(path.read_bytes()[:64])
    said = []
    again = distill_set(tiny_model, cfg, log=said.append)
    assert any("cannot be read" in line and "making them again" in line for line in said)
    assert again.response_ids == first.response_ids and torch.equal(again.topk_logprobs, first.topk_logprobs)
