"""--plan's estimate of a cell not yet run: from the recorded cells most like it."""

from types import SimpleNamespace

from recoverlm.study import estimate


def _rec(method, seconds, device="cpu A", model="m"):
    return {"model": model, "method": method, "seconds": seconds, "device": device}


def test_the_estimate_prefers_the_same_method_on_this_device():
    cell = SimpleNamespace(model="m", method="two-stage")
    records = [_rec("two-stage", 600), _rec("two-stage", 900), _rec("two-stage", 60, device="gpu"),
               _rec("none", 30), _rec("two-stage", 5000, model="other")]
    assert estimate(cell, records, "cpu A") == 750
    assert estimate(cell, records, "gpu") == 60
    assert estimate(cell, records, "cpu B") == 600  # the model's two-stage cells on any device: median of 60, 600, 900


def test_the_estimate_falls_back_and_skips_cells_without_a_time():
    cell = SimpleNamespace(model="m", method="offpolicy")
    assert estimate(cell, [_rec("offpolicy", None), _rec("none", 30), _rec("two-stage", 90)], "cpu A") == 60
    assert estimate(cell, [_rec("offpolicy", 0)], "cpu A") is None
    assert estimate(cell, [], "cpu A") is None
