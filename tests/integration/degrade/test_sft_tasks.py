"""A task's accuracy, measured on a tiny model."""

import pytest

from recoverlm.tasks import task_accuracy
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_model
from helpers.threads import one_thread  # noqa: F401 (an autouse fixture)


def test_task_accuracy_runs_and_rejects_unknown_task(tiny_model, tok):
    model = load_model(tiny_model)
    acc = task_accuracy(model, tok, "rewriting", n=4, max_new_tokens=4)
    assert acc == 0.0  # a random model never writes the exact answer
    with pytest.raises(RecoverLMError, match="unknown task 'nope'"):
        task_accuracy(model, tok, "nope")
