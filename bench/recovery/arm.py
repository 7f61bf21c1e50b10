"""An arm of the recovery benchmark: the degradations, methods, seeds and step budget to run, and
the setting they share, read from a YAML file under configs/bench/. Keeping arms as data lets a
studied variant be rerun or extended by name rather than by a remembered command line.

    description: what the arm asks
    degradations: [wanda-50%, rtn-int4-g32]
    methods: [distill, sft-replay]
    seeds: [0, 1, 2]
    budget: full              # a name in BUDGETS, or [off-policy, on-policy] steps of distill
    setting:                  # Setting fields; those not named take their defaults
      grid_scales: learned
"""

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from .setting import BUDGETS, SELECTION, Setting

ARMS = Path(__file__).resolve().parents[2] / "configs" / "bench"
# Fields each run or machine decides, never an arm.
PER_RUN = {"degradation", "method", "seed", "offpolicy", "onpolicy", "device", "selection"}
SHARED = [f.name for f in fields(Setting) if f.name not in PER_RUN]


@dataclass(frozen=True)
class Arm:
    degradations: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: tuple[int, int]
    setting: dict = field(default_factory=dict)
    description: str = ""

    def override(self, setting: dict | None = None, **changes) -> "Arm":
        """This arm with some of its lists, its budget or its setting fields replaced."""
        return replace(self, **changes, setting={**self.setting, **check_fields(setting or {})})

    def settings(self, device: str) -> list[Setting]:
        """Every run of the arm on this machine, degradation by degradation, seed by seed."""
        off, on = self.budget
        return [Setting(degradation=d, method=m, offpolicy=off, onpolicy=on, seed=s, device=device,
                        selection=SELECTION, **self.setting)
                for d in self.degradations for s in self.seeds for m in self.methods]


def check_fields(setting: dict) -> dict:
    unknown = set(setting) - set(SHARED)
    if unknown:
        raise ValueError(f"not an arm's setting field: {', '.join(sorted(unknown))}; known: {', '.join(SHARED)}")
    return setting


def budget(value) -> tuple[int, int]:
    """A budget name, or off-policy and on-policy step counts."""
    if isinstance(value, str) and value in BUDGETS:
        return BUDGETS[value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value) \
            and sum(value) > 0:
        return tuple(value)
    raise ValueError(f"budget: expected one of {', '.join(BUDGETS)} or [off-policy, on-policy] step counts, got {value!r}")


def load_arm(path: Path) -> Arm:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    keys = {f.name for f in fields(Arm)}
    if not isinstance(data, dict) or not {"degradations", "methods", "seeds", "budget"} <= set(data) <= keys:
        raise ValueError(f"{path}: expected the keys degradations, methods, seeds, budget "
                         f"(and optionally setting, description); got {sorted(data) if isinstance(data, dict) else data!r}")
    return Arm(degradations=tuple(data["degradations"]), methods=tuple(data["methods"]), seeds=tuple(data["seeds"]),
               budget=budget(data["budget"]), setting=check_fields(data.get("setting") or {}),
               description=data.get("description", ""))
