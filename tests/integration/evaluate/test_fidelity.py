"""Fidelity metrics between tiny models, batched by length."""

import pytest


def test_fidelity_buckets_by_length_but_keeps_item_order():
    import tempfile
    from pathlib import Path

    import torch

    from recoverlm.evaluate.fidelity import fidelity
    from helpers.tiny_model import build_tiny_model
    from recoverlm.models import load_model
    from recoverlm.teacher.response_set import ResponseSet

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "m")
        teacher, student = load_model(path), load_model(path)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    lens = [(9, 2), (2, 3), (5, 12), (3, 1), (12, 6), (4, 4), (7, 9)]
    rs = ResponseSet([""] * len(lens), [torch.randint(3, 300, (a,), generator=g).tolist() for a, _ in lens],
                     [torch.randint(3, 300, (b,), generator=g).tolist() for _, b in lens], {})
    batched = fidelity(teacher, {"s": student, "t": teacher}, rs, pad_id=2, batch_size=3, progress=False)
    for i in range(len(lens)):  # each item alone gives the value stored at its own position
        one = ResponseSet([""], [rs.prompt_ids[i]], [rs.response_ids[i]], {})
        single = fidelity(teacher, {"s": student}, one, pad_id=2, batch_size=1, progress=False)["s"]
        for m in ("kl", "nll", "top1_agreement"):
            assert batched["s"]["per_item"][m][i] == pytest.approx(single["per_item"][m][0], abs=1e-4)
    assert batched["t"]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert batched["s"]["kl"] > 1e-4
    assert batched["s"]["tokens"] == sum(b for _, b in lens)
