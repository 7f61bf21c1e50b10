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
