"""The optimizer a ``config.optim`` group describes."""

from __future__ import annotations

import optax


def make_optimizer(ocfg, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """AdamW (torch semantics: decoupled weight decay), Adam or SGD, with optional global-norm
    clipping and an optional step decay.

    ``optim.lr_decay_every_epochs = n`` multiplies the update by ``lr_decay_factor ** (epoch // n)``
    (PyTorch ``StepLR`` stepped once per epoch, as DiffuRec); for Adam/AdamW this equals decaying
    the learning rate. ``steps_per_epoch`` turns epochs into optimizer steps.
    """
    if ocfg.lr <= 0:
        raise ValueError(f"config.optim.lr must be > 0, got {ocfg.lr}")
    name = ocfg.get("name", "adamw")
    if name == "adamw":
        tx = optax.adamw(ocfg.lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps, weight_decay=ocfg.weight_decay)
    elif name == "adam":
        tx = optax.adam(ocfg.lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps)
    elif name == "sgd":
        tx = optax.sgd(ocfg.lr)
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {name!r}; choose adamw, adam or sgd")
    if ocfg.get("grad_clip", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), tx)
    every = int(ocfg.get("lr_decay_every_epochs", 0) or 0)
    if every > 0:
        gamma = float(ocfg.get("lr_decay_factor", 0.1))
        period = every * steps_per_epoch
        tx = optax.chain(tx, optax.scale_by_schedule(lambda s: gamma ** (s // period)))
    return tx
