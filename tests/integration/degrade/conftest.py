import pytest
from helpers.tiny_model import build_tiny_model

from recoverlm.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("deep") / "teacher", layers=4)
