import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Caches (converted models, response sets) go to a per-session folder, not the user's."""
    home = tmp_path_factory.mktemp("recoverlm_home")
    old = os.environ.get("RECOVERLM_HOME")
    if old is None or not os.environ.get("RECOVERLM_TEST_KEEP_HOME"):
        os.environ["RECOVERLM_HOME"] = str(home)
    yield home
    if old is not None:
        os.environ["RECOVERLM_HOME"] = old


@pytest.fixture(autouse=True)
def _fp32_unless_asked():
    """Settings left at "auto" resolve as on a CPU without AMX (fp32), so the suite's exact
    comparisons hold on every machine; a test that wants bf16 asks for it, or sets the flags.
    Not through `monkeypatch`, whose undo() some tests call halfway."""
    from unittest import mock

    with mock.patch("recoverlm.environment._cpu_flags", lambda: frozenset({"avx2"})):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from helpers.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "teacher")


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    topics = ["rain", "cats", "the sea", "bread", "trains", "music", "stars", "gardens", "rivers", "snow", "clocks", "bees"]
    with open(path, "w") as fh:
        for i, t in enumerate(topics):
            fh.write(json.dumps({"prompt": f"Write one sentence about {t}."}) + "\n")
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"Explain {t} to a child, number {i}."}]}) + "\n")
    return path
