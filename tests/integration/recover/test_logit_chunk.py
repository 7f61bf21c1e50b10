"""recover.logit_chunk: the student's (and the on-policy teacher's) logits made through the LM head
a few positions at a time give the same training as the whole batch at once."""

import pytest
import torch
from helpers.recovery import short_config, weights

from recoverlm.recover.trainer import recover


@pytest.mark.parametrize("extra", [
    {"onpolicy_steps": 1, "hidden_weight": 0.5, "ce_weight": 0.1},  # off-policy top-k, then on-policy full vocab
    {"method": "sft-replay"},
])
def test_chunked_logits_train_like_whole_ones(tmp_path, tiny_model, pruned, data_cfg, extra):
    runs = {}
    for chunk in (0, 5):
        out = tmp_path / f"chunk{chunk}"
        cfg = short_config(offpolicy_steps=2, eval_every=1, logit_chunk=chunk, select_best=False, **extra)
        record = recover(tiny_model, pruned, out, cfg, data_cfg, progress=False, log=lambda _: None)
        runs[chunk] = (weights(out), record["history"])
    (w0, h0), (w5, h5) = runs[0], runs[5]
    for name in w0:
        assert torch.allclose(w0[name], w5[name], atol=1e-5, rtol=1e-4), name
    for a, b in zip(h0, h5):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)


def test_auto_chunks_only_where_the_logits_would_be_large(tmp_path, tiny_model, pruned, data_cfg, monkeypatch):
    """`auto` (the default) leaves a small batch whole; with the threshold lowered to nothing it
    chunks at AUTO_CHUNK, and trains as the whole batch does."""
    from recoverlm.ops import chunked
    from recoverlm.recover import objective

    seen = []
    real = chunked.chunked_per_token

    def spy(hidden, weight, loss_of, chunk, *a, **k):
        seen.append(chunk)
        return real(hidden, weight, loss_of, chunk, *a, **k)

    monkeypatch.setattr(objective, "chunked_per_token", spy)
    cfg = short_config(offpolicy_steps=2, eval_every=1, select_best=False, onpolicy_steps=1)
    assert cfg.logit_chunk == "auto"
    recover(tiny_model, pruned, tmp_path / "small", cfg, data_cfg, progress=False, log=lambda _: None)
    assert seen == []
    monkeypatch.setattr(chunked, "AUTO_CHUNK_BYTES", 1)
    monkeypatch.setattr(chunked, "AUTO_CHUNK", 5)
    auto = recover(tiny_model, pruned, tmp_path / "auto", cfg, data_cfg, progress=False, log=lambda _: None)
    assert seen and set(seen) == {5}
    whole = recover(tiny_model, pruned, tmp_path / "whole", cfg.model_copy(update={"logit_chunk": 0}), data_cfg,
                    progress=False, log=lambda _: None)
    for a, b in zip(auto["history"], whole["history"]):
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)
