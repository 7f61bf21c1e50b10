"""Fixtures shared by the integration tests of several packages."""

import pytest
from helpers.tiny_model import build_tiny_model

from recoverlm.config import DataConfig


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny3") / "m", layers=3)


@pytest.fixture(scope="module")
def data_cfg(prompt_file):
    return DataConfig(prompts=prompt_file, n_heldout=4, max_new_tokens=8, top_k_logits=8,
                      teacher_generation_dtype="float32")
