"""A Hub model id resolves from the local Hugging Face cache, with no network call, and model
hashing never writes into the model folder."""

import shutil

import pytest

from recoverlm import models
from recoverlm.errors import RecoverLMError


def _cache_snapshot(hf_home, repo_id, source):
    """The layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_id_resolves_from_the_local_cache(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub.constants as hub

    hf_home = tmp_path / "hf"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _cache_snapshot(hf_home, "someone/tiny-llama", tiny_model)
    before = sorted(p.name for p in snapshot.iterdir())
    path = models.resolve_model("someone/tiny-llama")
    assert path == snapshot
    models.load_model("someone/tiny-llama")
    models.model_hash(path)
    assert sorted(p.name for p in snapshot.iterdir()) == before  # nothing written into the input
    with pytest.raises(RecoverLMError, match="not in the local Hugging Face cache"):
        models.resolve_model("someone/absent-model")
