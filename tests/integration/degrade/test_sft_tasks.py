"""A task's accuracy, measured on a tiny model."""

import pytest
import torch

from recoverlm.degrade.sft_tasks import task_accuracy
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread barriers cost 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_task_accuracy_runs_and_rejects_unknown_task(tiny_model, tok):
    model = load_model(tiny_model)
    acc = task_accuracy(model, tok, "rewriting", n=4, max_new_tokens=4)
    assert acc == 0.0  # a random model never writes the exact answer
    with pytest.raises(RecoverLMError, match="unknown task 'nope'"):
        task_accuracy(model, tok, "nope")
