"""No network at run time unless the user asks for it.

Models are local folders or embedded packages and the task suites ship their data, so the Hub
clients are switched off by default. A user who sets HF_HUB_OFFLINE=0 (or HF_DATASETS_OFFLINE=0)
asked for the network and keeps it.
"""

from __future__ import annotations

import os
import sys

FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _on(value: str) -> bool:
    """Offline unless the flag says off in so many words: an empty or unknown value stays safe."""
    return value.strip().lower() not in ("0", "false", "no", "off")


def go_offline() -> None:
    """Set the offline flags unless the user set them, and make already imported Hub clients
    agree: `datasets` and `huggingface_hub` read the flags once, at import time."""
    for flag in FLAGS:
        os.environ.setdefault(flag, "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    hub, data = _on(os.environ["HF_HUB_OFFLINE"]), _on(os.environ["HF_DATASETS_OFFLINE"])
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = hub
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = hub
        datasets.config.HF_DATASETS_OFFLINE = data
