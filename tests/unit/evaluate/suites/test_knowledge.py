"""The shipped knowledge suite's data."""

from helpers.suites import load_jsonl


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
