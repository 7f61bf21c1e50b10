"""The top-level API: stages and configs importable from `recoverlm`, without making the import
itself heavy, and without breaking the stage packages' own modules."""

import subprocess
import sys

import recoverlm


def test_import_recoverlm_loads_no_torch():
    code = "import sys, recoverlm; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_export_resolves():
    for name in recoverlm.__all__:
        assert getattr(recoverlm, name) is not None, name


def test_stage_packages_call_their_stage_and_keep_their_modules(monkeypatch):
    from recoverlm import degrade, recover
    from recoverlm.recover import trainer

    calls = []
    monkeypatch.setattr(trainer, "recover", lambda *a, **k: calls.append((a, k)) or "ran")
    assert recover("t", "s", "out", progress=False) == "ran" and calls == [(("t", "s", "out"), {"progress": False})]
    assert recoverlm.recover.trainer is trainer  # attribute walks into the package still work
    assert callable(degrade) and degrade.prune_magnitude is not None
    assert "prune.magnitude" in degrade.METHODS
