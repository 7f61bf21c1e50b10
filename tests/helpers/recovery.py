"""Short recovery runs on the tiny model and what the tests read back from their folders."""

from safetensors.torch import load_file

from recoverlm.config import RecoverConfig
from recoverlm.constraints import load_constraint
from recoverlm.models import load_model


def short_config(**kw):
    """A RecoverConfig of a few off-policy steps and no evaluation, overridden by `kw`."""
    base = dict(offpolicy_steps=3, onpolicy_steps=0, batch_size=4, lr=5e-3, warmup_steps=1, eval_every=0,
                cka_every_eval=False, onpolicy_max_new_tokens=6)
    return RecoverConfig(**{**base, **kw})


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def verified(folder):
    """The saved Constraint's verify of the saved model (raises if the model broke it)."""
    model = load_model(folder)
    return load_constraint(folder).verify(model)


def crash_at(monkeypatch, step: int) -> None:
    """Make recover's step `step` raise KeyboardInterrupt (a crash), until monkeypatch.undo()."""
    from recoverlm.recover import trainer as trainer_mod

    real = trainer_mod.Recovery.train_step

    def crash(self, at, *a):
        if at == step:
            raise KeyboardInterrupt
        return real(self, at, *a)

    monkeypatch.setattr(trainer_mod.Recovery, "train_step", crash)
