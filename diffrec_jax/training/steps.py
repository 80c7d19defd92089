"""The train state and the one update step every task uses."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree, checkpointed as a whole."""

    step: jnp.ndarray  # int32 scalar, optimizer steps taken
    params: Any
    opt_state: Any
    model_state: Any  # e.g. DiffRec's loss history


def init_state(model, tx: optax.GradientTransformation, key) -> TrainState:
    """A fresh :class:`TrainState`: ``model.init(key)`` parameters, ``tx.init``, step 0."""
    _, params, model_state = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)


def make_update(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """The pure update ``(state, *batch) -> (state, loss, aux)`` of one optimizer step.

    ``loss_fn(params, model_state, *batch) -> (loss, (model_state, aux))``: the gradient is taken
    with respect to ``params``; the returned ``model_state`` replaces the state's (e.g. DiffRec's
    loss history). Not jitted: callers jit, ``vmap`` (seeds), ``scan`` (chunks of steps) or shard
    it as their task needs.
    """

    def update(state: TrainState, *batch):
        (loss, (model_state, aux)), grads = jax.value_and_grad(
            lambda p: loss_fn(p, state.model_state, *batch), has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), loss, aux

    return update
