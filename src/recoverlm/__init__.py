"""recoverlm: bring a damaged LLM back to its own earlier quality by self-distillation."""

__version__ = "0.1.0"
