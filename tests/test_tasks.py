"""The shipped lm-eval suites: data files, instruction checkers, and run_suites on a tiny random model."""

import importlib.util
import json
import math

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, available_suites, run_suites

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def load_jsonl(suite: str) -> list[dict]:
    path = SUITES_DIR / suite / f"{suite}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def load_utils(suite: str):
    spec = importlib.util.spec_from_file_location(f"_{suite}_utils", SUITES_DIR / suite / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IF = load_utils("instructions")


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random Llama and a byte-level BPE tokenizer trained here, both offline."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["Question: What is the capital of France?\nAnswer: Paris", "hello world, the cat sat on the mat."] * 4,
        vocab_size=300, min_frequency=1, special_tokens=["<|eos|>", "<|pad|>"],
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|eos|>", pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval(), tok


# ---------------------------------------------------------------- data files


def test_suites_are_listed():
    assert available_suites() == ["arithmetic", "extraction", "gsm8k", "instructions", "knowledge", "rewriting"]


def test_knowledge_data():
    rows = load_jsonl("knowledge")
    assert len(rows) >= 320
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    cats = {r["category"] for r in rows}
    assert len(cats) >= 10
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4, r
        assert r["answer"] in range(4)
    # the right answer is spread over the four positions
    positions = [sum(r["answer"] == i for r in rows) for i in range(4)]
    assert min(positions) > len(rows) / 8


def test_instructions_data():
    rows = load_jsonl("instructions")
    assert len(rows) >= 100
    assert len({r["prompt"] for r in rows}) == len(rows)
    for r in rows:
        assert r["checks"], r
        for c in r["checks"]:
            assert c["type"] in IF.CHECKERS, c


def test_arithmetic_data_is_reproducible():
    rows = load_jsonl("arithmetic")
    assert len(rows) == 200 and len({r["question"] for r in rows}) == 200
    gen = importlib.util.spec_from_file_location("_arith_gen", SUITES_DIR / "arithmetic" / "generate.py")
    module = importlib.util.module_from_spec(gen)
    gen.loader.exec_module(module)
    assert module.generate() == rows
    for r in rows:
        a, op, b = r["question"].removeprefix("What is ").removesuffix("?").split()
        assert max(len(a), len(b)) <= 2 and int(r["answer"]) == {"plus": int.__add__, "minus": int.__sub__,
                                                                 "times": int.__mul__}[op](int(a), int(b))


def test_arithmetic_scoring():
    utils = load_utils("arithmetic")
    assert utils.first_integer(" 1,234 apples and 5") == "1234"
    assert utils.first_integer("no digits") is None
    doc = {"answer": "42"}
    assert utils.process_results(doc, [" 42.\nQuestion: 7"]) == {"exact_match": 1}
    assert utils.process_results(doc, ["It is 41"]) == {"exact_match": 0}


# ---------------------------------------------------------------- instruction checkers

CHECKER_CASES = [  # (type, arg, compliant answer, non-compliant answer)
    ("one_word", None, "Paris.", "It is Paris."),
    ("lowercase", None, "the rain falls softly.", "The rain falls softly."),
    ("uppercase", None, "CAUTION: WET FLOOR!", "Caution: wet floor!"),
    ("bullets", "3", "- eat\n- sleep\n- run", "- eat\n- sleep"),
    ("end_word", "snow", "White fields of snow.", "Snow covers the fields."),
    ("start_word", "because", "Because of light scattering.", "Light scatters, because."),
    ("keyword", "pancakes", "I love Pancakes!", "I love waffles."),
    ("forbidden_word", "hot", "The sun is bright.", "The sun is very hot."),
    ("no_commas", None, "Rice and beans", "Rice, beans"),
    ("max_words", "5", "A moon is round.", "The moon is a big round rock."),
    ("min_words", "5", "one two three four five", "one two three"),
    ("quoted", None, '"Rome"', "Rome"),
    ("number_only", None, "4", "4 legs"),
    ("json", None, '```json\n{"name": "Ann", "age": 30}\n```', "name: Ann"),
    ("title", None, "<<Sea>>\nWaves roll.", "Sea\nWaves roll."),
    ("postscript", None, "Dear Bo,\nHi.\nP.S. See you.", "Dear Bo,\nHi."),
    ("end_punct", "?", "What do you like?", "Tell me what you like."),
]


def test_every_checker_has_a_case():
    assert {c[0] for c in CHECKER_CASES} == set(IF.CHECKERS)


@pytest.mark.parametrize(("kind", "arg", "good", "bad"), CHECKER_CASES, ids=[c[0] for c in CHECKER_CASES])
def test_checker(kind, arg, good, bad):
    spec = {"type": kind, "arg": arg}
    assert IF.check(good, spec)
    assert not IF.check(bad, spec)
    assert not IF.check("   ", spec)


def test_loose_accuracy_forgives_wrapping_lines_and_asterisks():
    doc = {"checks": [{"type": "one_word", "arg": None}, {"type": "start_word", "arg": "paris"}]}
    strict_fail = "Sure! Here is my answer:\nParis"
    out = IF.process_results(doc, [strict_fail])
    assert out["prompt_level_strict_acc"] is False and out["prompt_level_loose_acc"] is True
    assert out["inst_level_loose_acc"] == [True, True]
    assert IF.process_results(doc, ["Paris"])["prompt_level_strict_acc"] is True
    assert IF.check("**paris**", {"type": "lowercase", "arg": None})
    assert IF.agg_inst_level_acc([[True, False], [True]]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- run_suites


def test_run_suites_on_tiny_model(tiny):
    model, tok = tiny
    model.train()
    out = run_suites(model, tok, ["knowledge", "arithmetic", "instructions"], limit=8, batch_size=8, max_gen_toks=8)
    assert model.training  # lm-eval switches to eval mode; run_suites switches back
    model.eval()
    expected = {
        "knowledge": ["acc", "acc_norm"],
        "arithmetic": ["exact_match"],
        "instructions": ["prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc"],
    }
    for suite, metrics in expected.items():
        res = out[suite]
        assert res["n"] == 8
        for m in metrics:
            assert math.isfinite(res[m]) and 0.0 <= res[m] <= 1.0, (suite, m, res[m])
    k = out["knowledge"]
    assert len(k["items"]["acc"]) == 8 and set(k["items"]["acc"]) <= {0.0, 1.0}
    assert k["acc"] == pytest.approx(sum(k["items"]["acc"]) / 8)
    assert k["stderr"]["acc"] is not None
    assert set(k["by_category"]) == {"geography"}  # the first 8 items
    assert len(out["instructions"]["items"]["prompt_level_strict_acc"]) == 8


def test_plain_prompts_without_a_chat_template(tiny):
    model, tok = tiny
    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|eos|>", pad_token="<|pad|>")
    with pytest.raises(RecoverLMError, match="chat template.*apply_chat_template=False"):
        run_suites(model, plain, ["instructions"], limit=2)
    out = run_suites(model, plain, ["knowledge", "instructions"], limit=2, apply_chat_template=False, max_gen_toks=4)
    assert out["knowledge"]["n"] == 2 and out["instructions"]["n"] == 2


def test_task_yaml_path_from_another_directory(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.chdir(tmp_path)  # the data files must not depend on the working directory
    path = str(SUITES_DIR / "knowledge" / "knowledge.yaml")
    out = run_suites(model, tok, [path], limit=3)
    assert out[path]["n"] == 3 and 0.0 <= out[path]["acc"] <= 1.0


def test_unknown_suite_names_the_available_ones(tiny):
    model, tok = tiny
    with pytest.raises(RecoverLMError, match="arithmetic, extraction, gsm8k, instructions, knowledge, rewriting"):
        run_suites(model, tok, ["knowledgee"], limit=2)
    with pytest.raises(RecoverLMError, match="not found"):
        run_suites(model, tok, ["missing/task.yaml"], limit=2)
