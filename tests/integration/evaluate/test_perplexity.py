"""Sliding-window perplexity on a tiny model: the window maths against plain forward passes, the errors, the command."""

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from recoverlm.cli import app
from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.perplexity import perplexity, sliding_window_nll, window_spans

runner = CliRunner()


TEXTS = [
    "The quick brown fox jumps over the lazy dog. Explain why the sky is blue, then list three fruits.",
    "Write a short poem about rain. Sure! Here is an answer: rain falls on 12 roofs and 7 gardens.",
    "What is 12 plus 7? It is 19, and the fox is still quick, the dog still lazy, the sky still blue.",
]


@pytest.fixture(scope="module")
def lm(tiny_model):
    from recoverlm.models import load_model, load_tokenizer

    return load_model(tiny_model), load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def ids(lm):
    _, tok = lm
    out = torch.tensor(tok(tok.eos_token.join(TEXTS), add_special_tokens=False)["input_ids"])
    assert 60 < len(out) < 500  # several 16-token windows, and one window of 512 holds it all
    return out


def _sum_nll(model, chunk: torch.Tensor) -> float:
    """Summed NLL of tokens 1.. of one chunk, from a plain forward pass with labels."""
    with torch.no_grad():
        loss = model(input_ids=chunk[None], labels=chunk[None]).loss
    return float(loss) * (len(chunk) - 1)


def _hf_guide(model, ids: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """The loop of the HF "perplexity of fixed-length models" guide, one window per forward."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg = end - prev_end
        inp = ids[begin:end][None]
        labels = inp.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = model(input_ids=inp, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        total += float(loss) * n
        count += n
        prev_end = end
        if end == len(ids):
            break
    return total, count


def test_one_window_equals_a_plain_forward(lm, ids):
    model, tok = lm
    with torch.no_grad():
        expected = float(model(input_ids=ids[None], labels=ids[None]).loss)
    result = perplexity(model, tok, TEXTS, window=512, stride=256, progress=False)
    assert result["windows"] == 1 and result["tokens"] == len(ids) - 1
    assert result["nll"] == pytest.approx(expected, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert result["documents"] == 3 and result["window"] == 512 and result["stride"] == 256


def test_no_overlap_equals_independent_chunks(lm, ids):
    model, _ = lm
    total, n, per_window = sliding_window_nll(model, ids, window=16, stride=16, batch_size=4)
    # Each chunk starts on the last token of the one before: that token is the context that
    # predicts the chunk's first scored token, so no token goes unscored.
    expected, count, begin = 0.0, 0, 0
    while True:
        end = min(begin + 16, len(ids))
        expected += _sum_nll(model, ids[begin:end])
        count += end - begin - 1
        if end == len(ids):
            break
        begin = end - 1
    assert n == count == len(ids) - 1
    assert total == pytest.approx(expected, rel=1e-5)
    assert [(w["begin"], w["end"]) for w in per_window][:3] == [(0, 16), (15, 31), (30, 46)]
    assert sum(w["nll"] for w in per_window) == pytest.approx(total, rel=1e-9)


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 5), (7, 3), (32, 31)])
def test_overlapping_windows_match_the_hf_guide(lm, ids, window, stride):
    model, _ = lm
    total, n, _ = sliding_window_nll(model, ids, window, stride, batch_size=3)
    expected, count = _hf_guide(model, ids, window, stride)
    assert n == count == len(ids) - 1
    assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("window,stride", [(2, 1), (2, 2), (5, 3), (5, 5), (16, 16), (16, 5), (64, 63), (500, 7)])
def test_every_token_after_the_first_is_scored_once(lm, ids, window, stride):
    model, _ = lm
    spans = window_spans(len(ids), window, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(1, len(ids)))
    assert all(end - begin <= window and begin < first for begin, end, first in spans)
    _, n, per_window = sliding_window_nll(model, ids, window, stride, batch_size=8)
    assert n == len(ids) - 1 == sum(w["tokens"] for w in per_window)


def test_batching_does_not_change_the_result(lm, ids):
    model, _ = lm
    one = sliding_window_nll(model, ids, window=24, stride=10, batch_size=1)
    for bs in (3, 4):  # the last, shorter window is padded beside full ones
        many = sliding_window_nll(model, ids, window=24, stride=10, batch_size=bs)
        assert many[1] == one[1]
        assert many[0] / many[1] == pytest.approx(one[0] / one[1], abs=1e-5)
        for a, b in zip(one[2], many[2]):
            assert (a["begin"], a["end"], a["tokens"]) == (b["begin"], b["end"], b["tokens"])
            assert a["nll"] == pytest.approx(b["nll"], abs=1e-4)


def test_smaller_stride_keeps_the_token_count(lm):
    model, tok = lm
    results = [perplexity(model, tok, TEXTS, window=32, stride=s, batch_size=4, progress=False) for s in (32, 16, 4)]
    assert len({r["tokens"] for r in results}) == 1
    assert results[2]["windows"] > results[1]["windows"] > results[0]["windows"]
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in results)


def test_training_mode_is_restored(lm, ids):
    model, _ = lm
    model.train()
    try:
        sliding_window_nll(model, ids, window=16, stride=8)
        assert model.training
    finally:
        model.eval()


def test_default_window_and_stride(lm):
    model, tok = lm
    result = perplexity(model, tok, TEXTS, progress=False)
    assert result["window"] == 512 and result["stride"] == 256  # the tiny model has 512 positions


def test_window_and_text_errors(lm, ids):
    model, tok = lm
    with pytest.raises(RecoverLMError, match="stride must be between 1 and the window"):
        perplexity(model, tok, TEXTS, window=16, stride=17, progress=False)
    with pytest.raises(RecoverLMError, match="stride must be between 1 and the window"):
        perplexity(model, tok, TEXTS, window=16, stride=0, progress=False)
    with pytest.raises(RecoverLMError, match="window must be at least 2"):
        sliding_window_nll(model, ids, window=1, stride=1)
    with pytest.raises(RecoverLMError, match="longer than the model's 512 positions"):
        perplexity(model, tok, TEXTS, window=513, progress=False)
    with pytest.raises(RecoverLMError, match="every text is empty"):
        perplexity(model, tok, ["", "  "], progress=False)
    one_token = next(t for t in ("a", "b", "x", "!") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1)
    with pytest.raises(RecoverLMError, match="perplexity needs at least 2"):
        perplexity(model, tok, [one_token], progress=False)


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for n in needles:
        assert n in lines[0]


def test_cli(tmp_path, tiny_model, lm):
    model, tok = lm
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXTS[0])
    out = tmp_path / "ppl.json"
    r = runner.invoke(app, ["perplexity", "--model", str(tiny_model), "--data", str(corpus), "--window", "16",
                            "--stride", "8", "--batch-size", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    saved = json.loads(out.read_text())
    expected = perplexity(model, tok, [TEXTS[0]], window=16, stride=8, progress=False)
    assert saved["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert saved["tokens"] == expected["tokens"] and saved["data"] == str(corpus)
    assert f"tokens {expected['tokens']}" in r.output and "perplexity" in r.output and "nll/token" in r.output

    _one_line_error(runner.invoke(app, ["perplexity", "--model", str(tiny_model), "--data", str(tmp_path / "nope.txt")]),
                    "file not found", "nope.txt")
    (tmp_path / "blank.txt").write_text("")
    _one_line_error(runner.invoke(app, ["perplexity", "--model", str(tiny_model), "--data", str(tmp_path / "blank.txt")]),
                    "blank.txt is empty")
    _one_line_error(runner.invoke(app, ["perplexity", "--model", str(tiny_model), "--data", str(corpus),
                                        "--window", "8", "--stride", "9"]), "stride")
    assert not (tmp_path / "nope.json").exists()


@pytest.mark.parametrize("window,stride", [(512, 256), (16, 16), (9, 4)])
def test_a_bos_prefix_opens_every_window_and_scores_the_first_token(lm, ids, window, stride):
    """As a base model that needs BOS sees text: every window starts with it, within its length."""
    model, tok = lm
    bos = tok.bos_token_id
    total, n, per_window = sliding_window_nll(model, ids, window, stride, batch_size=3, prefix=[bos])
    assert n == len(ids) == sum(w["tokens"] for w in per_window)
    if window >= len(ids) + 1:
        assert total == pytest.approx(_sum_nll(model, torch.cat([torch.tensor([bos]), ids])), rel=1e-5)
    expected = 0.0
    for w in per_window:  # each window: [BOS] + its tokens, scoring its new tokens only
        chunk = torch.cat([torch.tensor([bos]), ids[w["begin"]:w["end"]]])
        assert len(chunk) <= window
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=chunk[None]).logits[0, :-1].float(), -1)
        nll = -logp.gather(1, chunk[1:, None]).squeeze(1)
        expected += float(nll[-w["tokens"]:].sum())
    assert total == pytest.approx(expected, rel=1e-5)


def test_bos_prefix_follows_the_tokenizer(lm):
    from tokenizers.processors import TemplateProcessing

    from recoverlm.evaluate.perplexity import bos_prefix

    _, tok = lm
    assert bos_prefix(tok) == []  # it adds no BOS: windows are scored as before
    gemma_like = copy.deepcopy(tok)
    gemma_like.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.bos_token_id)])
    assert bos_prefix(gemma_like) == [tok.bos_token_id]
