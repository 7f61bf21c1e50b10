"""The narrow SFT tasks: seeded generators, their checkers, and user task data."""

import json

import pytest
from helpers.files import write_lines as _write

from recoverlm.tasks import HELDOUT_SEED, TASKS, load_task_data
from recoverlm.errors import RecoverLMError


# --- the built-in tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_seeded_unique_and_disjoint_from_heldout(name):
    task = TASKS[name]
    assert task.NAME == name
    assert task.generate(40, 3) == task.generate(40, 3)
    assert task.generate(40, 3) != task.generate(40, 4)
    train = task.generate(512, 0)
    prompts = [it["prompt"] for it in train]
    assert len(set(prompts)) == 512
    assert not set(prompts) & {it["prompt"] for it in task.generate(64, HELDOUT_SEED)}
    assert all(set(it) == {"prompt", "response", "answer"} for it in train)


ACCEPTED = [  # (task, rewrite of the reference response that the checker must still accept)
    ("extraction", lambda r: r),
    ("extraction", lambda r: f"  {r}\n"),
    ("extraction", lambda r: r.replace("; ", " ;  ").replace("=", " = ")),
    ("rewriting", lambda r: r),
    ("rewriting", lambda r: "\n " + r.replace(" ", "   ") + " "),
]


REJECTED = [  # (task, corruption of the reference response that the checker must reject)
    ("extraction", lambda r: r.replace("age=", "age=1")),
    ("extraction", lambda r: r.rsplit(";", 1)[0]),  # a field missing
    ("extraction", lambda r: "; ".join(reversed(r.split("; ")))),  # fields out of order
    ("extraction", lambda r: r + "."),
    ("extraction", lambda r: r.upper()),
    ("extraction", lambda r: ""),
    ("rewriting", lambda r: " ".join(r.split()[::-1])),
    ("rewriting", lambda r: " ".join(r.split()[:-1])),
    ("rewriting", lambda r: r + "."),
    ("rewriting", lambda r: r.upper()),
    ("rewriting", lambda r: ""),
]


@pytest.mark.parametrize("name,rewrite", ACCEPTED)
def test_checker_accepts_reference(name, rewrite):
    task = TASKS[name]
    assert all(task.check(rewrite(it["response"]), it) for it in task.generate(30, 1))


@pytest.mark.parametrize("name,corrupt", REJECTED)
def test_checker_rejects_corruption(name, corrupt):
    task = TASKS[name]
    assert not any(task.check(corrupt(it["response"]), it) for it in task.generate(30, 1))


# --- user task data -------------------------------------------------------------------------------


def test_load_task_data_reads_both_formats(tmp_path):
    path = _write(tmp_path / "task.jsonl", [
        json.dumps({"prompt": "Say hi.", "response": "hi"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "Say bye."}, {"role": "assistant", "content": "bye"}]}),
    ])
    assert load_task_data(path) == [{"prompt": "Say hi.", "response": "hi"}, {"prompt": "Say bye.", "response": "bye"}]
    assert load_task_data("rewriting", n=3, seed=0) == [
        {"prompt": it["prompt"], "response": it["response"]} for it in TASKS["rewriting"].generate(3, 0)]


@pytest.mark.parametrize("bad,message", [
    (json.dumps({"prompt": "x"}), "needs a non-empty string 'prompt' and 'response'"),
    (json.dumps({"prompt": "x", "response": ""}), "needs a non-empty string"),
    (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
     "a user turn then an assistant turn"),
    (json.dumps({"messages": "hello"}), "a user turn then an assistant turn"),
    ("{not json", "invalid JSON"),
])
def test_load_task_data_names_the_bad_line(tmp_path, bad, message):
    good = json.dumps({"prompt": "p", "response": "r"})
    path = _write(tmp_path / "task.jsonl", [good, "", bad, good])  # the bad record is on line 3
    with pytest.raises(RecoverLMError, match=f"task.jsonl:3: .*{message}"):
        load_task_data(path)


def test_load_task_data_unknown_name(tmp_path):
    with pytest.raises(RecoverLMError, match="neither a built-in task"):
        load_task_data(tmp_path / "missing.jsonl")
