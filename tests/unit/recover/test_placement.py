"""Teacher placement: offloading parks the teachers only between the steps that run them."""

import pytest
import torch

from recoverlm.errors import RecoverLMError
from recoverlm.recover.placement import PARK, TeacherPlacement, teacher_device


class _Recorder:
    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(torch.device(device))
        return self


def test_offload_moves_only_when_the_need_changes():
    model, logs = _Recorder(), []
    place = TeacherPlacement([model, None], torch.device("cuda", 0), offload=True, log=logs.append)
    for needed in (True, False, False, True, True, False):
        place.need(needed)
    assert model.moves == [PARK, torch.device("cuda", 0), PARK]
    assert place.moves == 3 and len(logs) == 1


def test_no_offload_or_a_cpu_home_never_moves():
    model = _Recorder()
    for place in (TeacherPlacement([model], torch.device("cuda", 0), offload=False),
                  TeacherPlacement([model], torch.device("cpu"), offload=True)):
        place.need(False)
        place.need(True)
    assert model.moves == []


def test_teacher_device_is_checked():
    cpu = torch.device("cpu")
    assert teacher_device(None, cpu, 1) == cpu
    assert teacher_device("cpu", cpu, 2) == cpu
    with pytest.raises(RecoverLMError, match="is not a device"):
        teacher_device("gpu0", cpu, 1)
    if not torch.cuda.is_available():
        with pytest.raises(RecoverLMError, match="no CUDA devices"):
            teacher_device("cuda:1", cpu, 1)


def test_every_rank_splits_a_step_alike_or_the_run_is_refused():
    from types import SimpleNamespace

    import pytest

    from recoverlm.config import RecoverConfig
    from recoverlm.errors import RecoverLMError
    from recoverlm.recover.distributed import check_even_split

    check_even_split(SimpleNamespace(num_processes=2), RecoverConfig(batch_size=8, grad_accum=2))
    check_even_split(SimpleNamespace(num_processes=1), RecoverConfig(batch_size=7, grad_accum=3))
    with pytest.raises(RecoverLMError, match="with 3 processes, batch_size \\(8\\) must be a multiple"):
        check_even_split(SimpleNamespace(num_processes=3), RecoverConfig(batch_size=8, grad_accum=1))
