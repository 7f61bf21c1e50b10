"""The shipped instructions suite: its data and its instruction checkers."""

import pytest
from helpers.suites import load_jsonl, load_module as load_utils


IF = load_utils("instructions")


def test_instructions_data():
    rows = load_jsonl("instructions")
    assert len(rows) >= 100
    assert len({r["prompt"] for r in rows}) == len(rows)
    for r in rows:
        assert r["checks"], r
        for c in r["checks"]:
            assert c["type"] in IF.CHECKERS, c


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
