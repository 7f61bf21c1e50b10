"""recoverlm: bring a damaged LLM back to its own earlier quality by self-distillation.

The stages and configs are importable from here, loaded on first use so that `import recoverlm`
stays light:

    from recoverlm import degrade, recover, evaluate_models, RunConfig, run_experiment
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "degrade": ("recoverlm.degrade", None),  # callable packages (stage_package)
    "recover": ("recoverlm.recover", None),
    "evaluate_models": ("recoverlm.evaluate.compare", "evaluate_models"),
    "evaluate_task_suites": ("recoverlm.evaluate.compare", "evaluate_task_suites"),
    "cka_models": ("recoverlm.analysis.layers", "cka_models"),
    "export_model": ("recoverlm.export", "export_model"),
    "inspect_model": ("recoverlm.describe", "inspect_model"),
    "load_constraint": ("recoverlm.constraints", "load_constraint"),
    "run_experiment": ("recoverlm.pipeline", "run_experiment"),
    "run_study": ("recoverlm.study", "run_study"),
    **{name: ("recoverlm.config", name) for name in ("RunConfig", "DegradeConfig", "RecoverConfig", "DataConfig",
                                                     "EvalConfig", "CKAConfig", "LoraConfig", "StudyConfig",
                                                     "load_run_config")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recoverlm' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
