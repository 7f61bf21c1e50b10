"""Write one benchmark's section into docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recoverlm.io import write_text_atomic  # noqa: E402

HEADER = ("# Benchmarks\n\nEvery section below is written by a command under `bench/`; rerun it to refresh the "
          "numbers. Machine unless stated: 2-core x86-64 CPU, 24 GB, no GPU.\n")


def update_section(name: str, body: str, path: Path = ROOT / "docs" / "benchmarks.md", first: bool = False) -> Path:
    """Replace the block between <!-- bench:NAME --> markers; a new block goes after the others, or
    with `first` before them, right under the header."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif first and "<!-- bench:" in text:
        at = text.index("<!-- bench:")
        text = text[:at] + block + "\n\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)
    return path
