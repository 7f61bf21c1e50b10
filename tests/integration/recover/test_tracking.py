"""recover.log_with feeds accelerate's trackers with every validation row, beside metrics.jsonl."""

import json

import pytest
from helpers.recovery import short_config

from recoverlm.recover.trainer import recover
from recoverlm.recover.tracking import logs_dir, scalars

pytest.importorskip("tensorboard")


def test_tensorboard_gets_every_validation_row(tmp_path, tiny_model, pruned, data_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    recover(tiny_model, pruned, out, short_config(offpolicy_steps=4, eval_every=2, log_with=["tensorboard"]),
            data_cfg, progress=False, log=lambda _: None)
    history = [json.loads(line) for line in (out / "recoverlm" / "metrics.jsonl").read_text().splitlines()]
    events = list(logs_dir(out).rglob("events.out.tfevents.*"))
    assert events, list(logs_dir(out).rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    kl = acc.Scalars("kl")
    assert [e.step for e in kl] == [row["step"] for row in history]
    assert [round(e.value, 5) for e in kl] == [round(row["kl"], 5) for row in history]


def test_scalars_flatten_a_row():
    row = {"step": 3, "stage": "off-policy", "kl": 0.5, "cka": [1.0, 0.5], "flag": True}
    assert scalars(row) == {"kl": 0.5, "cka/mean": 0.75, "cka/last": 0.5}
