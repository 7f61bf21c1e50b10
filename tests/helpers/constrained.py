"""Training steps under a Constraint, as recovery takes them: shared by the constraint tests."""

import torch


def optimizer_steps(model, constraint, steps: int = 3, lr: float = 1e-2, weight_decay: float = 0.0) -> None:
    """AdamW steps on one fixed batch, each followed by the Constraint's enforce."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        constraint.enforce(model)


def train_and_finalize(model, constraint, steps: int = 3, lr: float = 1e-2) -> bool:
    """attach -> optimizer steps -> finalize; whether any entry of the state dict moved."""
    constraint.attach(model)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_steps(model, constraint, steps, lr)
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    constraint.finalize(model)
    return changed
