"""Argument checks shared by the degradation methods.

Every method runs its checks before it touches the model, and every message is one line that
starts with the name of the offending field, so the CLI can print it as is.
"""

from __future__ import annotations

import torch

from ..errors import RecoverLMError


def check_int(field: str, value, lo: int, hi: int | None = None) -> int:
    # bool is an int in Python; `bits: true` in a YAML file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecoverLMError(f"{field} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise RecoverLMError(f"{field} must lie in {bounds}, got {value}")
    return value


def check_fraction(field: str, value) -> float:
    """A fraction in [0, 1): 1 would remove everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise RecoverLMError(f"{field} must lie in [0, 1), got {value!r}")
    return float(value)


def check_number(field: str, value, lo: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= lo:  # NaN fails too
        raise RecoverLMError(f"{field} must be a number >= {lo}, got {value!r}")
    return float(value)


def check_bool(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise RecoverLMError(f"{field} must be true or false, got {value!r}")
    return value


def check_choice(field: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RecoverLMError(f"{field} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_divides(field: str, size: int, weights: dict[str, torch.Tensor]) -> None:
    """`size` (a group or block length) must tile the input dimension of every matrix."""
    for name, weight in weights.items():
        if weight.shape[1] % size:
            raise RecoverLMError(
                f"{field} {size} does not divide the input dimension {weight.shape[1]} of {name}"
            )
