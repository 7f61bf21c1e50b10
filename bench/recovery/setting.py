"""What tells one recovery-benchmark run from another, as one frozen value.

bench/results/recovery.jsonl gained fields as the benchmark grew, and its rows are never rewritten.
A field missing from a row holds the value every run had before the field existed: the defaults
of `Setting` below, the only place those values live. Rows are read with `Setting.from_row`,
written with `to_row`, grouped over seeds with `group`, and a run's folder is `run_dir`.
"""

from dataclasses import MISSING, asdict, astuple, dataclass, fields, replace
from pathlib import Path

# Degradations by name: the `recoverlm degrade` method and its parameters.
DEGRADATIONS = {
    "wanda-50%": ("prune.wanda", {"sparsity": 0.5}),
    "magnitude-50%": ("prune.magnitude", {"sparsity": 0.5}),
    "rtn-int4-g32": ("quant.rtn", {"bits": 4, "group_size": 32}),
}
# Step budgets by name: (off-policy, on-policy) steps of `distill`; `sft-replay` trains their sum.
BUDGETS = {"full": (240, 60), "quick": (40, 10)}
# How the trainer chooses the exported checkpoint today (rows without the field chose on held-out).
SELECTION = "validation"


@dataclass(frozen=True)
class Setting:
    """One run's setting. A field without effect in a setting holds its default, so that settings
    which train the same way compare equal: the `sft-replay` control has no hidden-state term, the
    scales' lr matters only when the scales train, and pruned students have no grid."""

    degradation: str  # a key of DEGRADATIONS
    method: str  # "distill" or "sft-replay"
    offpolicy: int  # steps of distill's two stages; sft-replay trains offpolicy + onpolicy steps
    onpolicy: int
    seed: int
    bf16: bool = True  # bf16 autocast, else fp32
    device: str = "cpu"  # "cpu" or the GPU's name
    lr: float = 1e-4  # peak learning rate of every method
    selection: str = "heldout"  # prompts that chose the exported checkpoint: "validation" or "heldout"
    teacher_samples: int = 1  # teacher responses per training prompt
    teacher_temperature: float = 0.0  # their sampling temperature; 0 = greedy
    teacher_prompts: int = 0  # extra training prompts the teacher writes itself
    grid_scales: str = "fixed"  # quantized students: "fixed" or "learned" group scales
    grid_scale_lr: float = 1e-3  # peak lr of learned scales
    grid_latents: str = "grid"  # quantized students: latent weights start on the grid or at the "teacher"'s
    hidden_weight: float = 0.0  # distill: weight of the hidden-state term

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is float and isinstance(value, (int, str)) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # YAML reads 1e-4 as a string
            elif not isinstance(value, f.type):
                raise TypeError(f"setting field {f.name!r}: expected {f.type.__name__}, got {value!r}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {self.degradation!r}; known: {', '.join(DEGRADATIONS)}")
        if self.method not in ("distill", "sft-replay"):
            raise ValueError(f"unknown method {self.method!r}; known: distill, sft-replay")
        if self.teacher_samples > 1 and self.teacher_temperature == 0:
            raise ValueError("teacher_samples above 1 needs teacher_temperature above 0 (greedy answers would repeat)")
        idle = []
        if self.method == "sft-replay":
            idle.append("hidden_weight")
        if self.grid_scales != "learned":
            idle.append("grid_scale_lr")
        if not DEGRADATIONS[self.degradation][0].startswith("quant."):
            idle += ["grid_scales", "grid_scale_lr", "grid_latents"]
        for name in idle:
            object.__setattr__(self, name, default(name))

    @classmethod
    def from_row(cls, row: dict) -> "Setting":
        """The setting of a results row, of any age; the row's other fields are its results. A
        cut-short row names the prompts it was evaluated on, and the checkpoint would have been
        chosen on those: that stands for a missing `selection`."""
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        if "selection" not in row and "prompts" in row:
            values["selection"] = "heldout" if row["prompts"] == "held-out" else row["prompts"]
        return cls(**values)

    def to_row(self) -> dict:
        return asdict(self)

    @property
    def group(self) -> tuple:
        """The setting without its seed: the rows of one table line."""
        return astuple(replace(self, seed=0))

    @property
    def steps(self) -> str:
        """The budget as trained: off-policy + on-policy steps."""
        return f"{self.offpolicy} + {self.onpolicy}" if self.method == "distill" else f"{self.offpolicy + self.onpolicy} + 0"

    def run_name(self) -> str:
        """The run's folder name: method, budget, every field away from its default, and the seed.
        Device is left out (each machine has its own work folder)."""
        tag = "" if self.lr == default("lr") else f"-lr{self.lr:g}"
        if (self.teacher_samples, self.teacher_temperature) != (default("teacher_samples"), default("teacher_temperature")):
            tag += f"-x{self.teacher_samples}t{self.teacher_temperature:g}"
        tag += "-learned-scales" if self.grid_scales == "learned" else ""
        tag += "" if self.grid_scale_lr == default("grid_scale_lr") else f"-scale-lr{self.grid_scale_lr:g}"
        tag += "-teacher-latents" if self.grid_latents == "teacher" else ""
        tag += f"-written{self.teacher_prompts}" if self.teacher_prompts else ""
        tag += f"-hidden{self.hidden_weight:g}" if self.hidden_weight else ""
        tag += "" if self.bf16 else "-fp32"
        tag += "" if self.selection == SELECTION else f"-best-on-{self.selection}"
        return f"{self.method}-{self.offpolicy}-{self.onpolicy}{tag}-seed{self.seed}"


def default(name: str):
    """The value a Setting field takes when a row does not name it."""
    value = Setting.__dataclass_fields__[name].default
    if value is MISSING:
        raise KeyError(f"setting field {name!r} has no default")
    return value


def run_dir(work: Path, setting: Setting) -> Path:
    return work / setting.degradation / setting.run_name()


def degraded_dir(work: Path, degradation: str) -> Path:
    return work / degradation / "degraded"


def done(setting: Setting, rows: list[dict]) -> bool:
    """Whether a row, finished or cut short, already records this setting: a run stopped on purpose
    is not started again by a rerun of its arm."""
    return any(Setting.from_row(r) == setting for r in rows if r.get("kind", "run") in ("run", "partial"))
