"""One torch thread for a test module, imported where it is wanted: tiny models gain nothing from
threads, and waiting at thread barriers costs far more than it saves on a shared machine."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
