"""Fixtures shared by the integration tests of several packages."""

import pytest
from helpers.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny3") / "m", layers=3)
