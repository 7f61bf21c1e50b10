import pytest

from recoverlm.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)
