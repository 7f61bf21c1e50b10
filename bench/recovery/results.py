"""The recovery benchmark's results file: one JSON object a line, kind "run", "partial" (cut short)
or "step_cost". Rows are only ever added; a row's setting is read with `Setting.from_row`."""

import json
from pathlib import Path

from recoverlm.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "recovery.jsonl"


def load_rows(path: Path = RESULTS) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return rows


def write_rows(rows: list[dict], path: Path = RESULTS) -> None:
    """Rewrite the whole file atomically, so a crash never leaves half a line."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_row(row: dict, path: Path = RESULTS) -> None:
    write_rows(load_rows(path) + [row], path)
