"""Recovery: self-distillation of the undamaged teacher into the damaged student (trainer), with
its schedule, objective, checkpoints and distributed setup. Calling this package runs
`trainer.recover`, so `from recoverlm import recover` is the stage itself."""

from ..stage_package import callable_as

callable_as(__name__, f"{__name__}.trainer", "recover")
