"""The peers benchmark's harness runs end to end on the tiny model: every harness builds, takes
turns and reports, so `make bench-peers` does not break unseen."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("ckatorch")
ROOT = Path(__file__).resolve().parents[3]


def test_peers_harness_smoke(tmp_path, tiny_model):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), "--smoke", "--teacher", str(tiny_model),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    for arm in ("plain SFT (torch loop) | ", "recoverlm off-policy, cached top-64 | ", "recoverlm on-policy",
                "TRL GKD lmbda 0, beta 0"):
        assert f"| {arm}" in table, table
    assert "| 512 |" in table and "1.00x" in table
