"""Degradation methods applied in memory, as the degrade tests run them."""

from recoverlm.degrade import apply_method
from recoverlm.models import load_model

CAL = {"n_calibration": 8, "max_length": 32}  # enough tokens for a tiny model, and fast


def run_method(path, tok, method, **params):
    """(model, constraint, record) of one method applied to a freshly loaded model."""
    record = {}
    model, constraint = apply_method(load_model(path), method, params, tokenizer=tok, record=record)
    return model, constraint, record
