import pytest
import torch

from recoverlm.teacher.response_set import ResponseSet


@pytest.fixture(scope="module")
def eval_set():
    """Six sequences of different lengths, so batching them together needs padding."""
    g = torch.Generator().manual_seed(0)
    lens = [(5, 7), (3, 2), (8, 9), (4, 4), (6, 1), (2, 10)]
    prompts = [torch.randint(3, 300, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(3, 300, (r,), generator=g).tolist() for _, r in lens]
    return ResponseSet([""] * len(lens), prompts, responses, {})
