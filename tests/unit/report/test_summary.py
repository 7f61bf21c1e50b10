"""The summary's correlation section, written from a metrics file."""

import json

from recoverlm.report.summary import correlation_text


def _write(tmp_path, rows):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_correlation_section_reports_raw_and_partial(tmp_path):
    rows = [{"step": 10 * i, "kl": 3.0 - 0.3 * i + 0.05 * (-1) ** i, "cka": [0.8 + 0.02 * i, 0.7 + 0.01 * i]}
            for i in range(8)]
    text = correlation_text(_write(tmp_path, rows))
    assert "| mean |" in text and "| last |" in text and "partial r" in text
    assert "-0.9" in text or "-1.0" in text  # KL falls as CKA rises


def test_correlation_section_says_when_there_are_too_few_points(tmp_path):
    text = correlation_text(_write(tmp_path, [{"step": 0, "kl": 1.0, "cka": [0.5]}, {"step": 5, "kl": 0.5, "cka": [0.6]}]))
    assert text.startswith("Only 2 evaluations")


def test_the_task_table_lists_aggregate_metrics_without_an_interval():
    """IFEval's instruction-level accuracy has no score per item: its row shows the values, no interval."""
    from recoverlm.report.summary import tasks_table

    def scores(p, i):
        return {"prompt_level_strict_acc": p, "inst_level_strict_acc": i, "n": 3, "seconds": 1.0,
                "stderr": {}, "items": {"prompt_level_strict_acc": [p, p, p]}}

    tasks = {"suites": ["instructions"],
             "results": {"teacher": {"instructions": scores(0.3, 0.4)}, "degraded": {"instructions": scores(0.1, 0.2)},
                         "recovered": {"instructions": scores(0.2, 0.3)}},
             "recovery_ratio_ci": {"instructions/prompt_level_strict_acc": {"ratio": 0.5, "low": 0.4, "high": 0.6,
                                                                           "meaningful": True}}}
    text = tasks_table(tasks)
    assert "| instructions/prompt_level_strict_acc | 0.3000 | 0.1000 | 0.2000 |" in text
    assert "| instructions/inst_level_strict_acc | 0.4000 | 0.2000 | 0.3000 | — | — |" in text
    assert "seconds" not in text
