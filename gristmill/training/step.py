"""The train state and the pure train step, jitted data-parallel with the state donated.

CONTRIBUTING.md style rule 8: ``train_step(state, batch, rng) -> (state, metrics)`` is a pure function; its
dropout key is ``fold_in(rng, state.step)``, so a step's randomness depends only on the seed and
the step (which is what makes resume exact). Data parallel: one 1-D mesh ``("data",)`` over
``jax.devices()``; batches are split on their leading axis, params, optimizer state, rng and
metrics are replicated (the global batch must divide by the device count). Compute is bfloat16
on accelerators and float32 on CPU by default (`default_dtype`); parameters stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gristmill.training import model as model_lib
from gristmill.training import optim


@flax.struct.dataclass
class TrainState:
    """What changes during training: the step (updates applied), params and optimizer state."""
    step: jax.Array
    params: Any
    opt_state: Any


def init_state(model: model_lib.EncoderDecoderModel, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Step 0: T5-initialised params and the optimizer's initial state."""
    params = model_lib.init_params(model.config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_state(model: model_lib.EncoderDecoderModel, tx: optax.GradientTransformation,
                   sharding: jax.sharding.Sharding) -> TrainState:
    """The shapes and dtypes of `init_state`, placed by ``sharding``, without allocating (to restore into)."""
    shapes = jax.eval_shape(functools.partial(init_state, model, tx), jax.random.key(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def make_train_step(model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule) -> Callable:
    """The pure ``train_step(state, batch, rng) -> (state, metrics)`` (not yet jitted).

    ``model`` is anything with ``loss_fn(params, batch, rng) -> (loss, metrics)``.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
        (total, metrics), grads = grad_fn(state.params, batch, step_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, total_loss=total, grad_norm=optax.tree.norm(grads),
                       learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_mesh(devices: Optional[list] = None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh ``("data",)`` over the devices (all of them by default)."""
    return jax.sharding.Mesh(np.asarray(devices or jax.devices()), ("data",))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Batches: leading axis split over the mesh."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Params, optimizer state, rng, metrics: a full copy on every device."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def compiled_functions(model: model_lib.EncoderDecoderModel, optimizer: optim.OptimizerConfig, total_steps: int,
                       mesh: jax.sharding.Mesh):
    """(init(rng) -> replicated state, jitted train_step, schedule, tx); cached, so runs in one process that
    differ only in their length (rsqrt and constant schedules ignore it) reuse the compilation."""
    if optimizer.resolved_schedule != optim.COSINE:
        total_steps = 0
    return _compiled_functions(model, optimizer, total_steps, mesh)


@functools.lru_cache(maxsize=8)
def _compiled_functions(model, optimizer, total_steps, mesh):
    tx, schedule = optim.make_optimizer(optimizer, total_steps)
    rep, batch = replicated(mesh), batch_sharding(mesh)

    def init(rng: jax.Array) -> TrainState:
        return jax.device_put(init_state(model, tx, rng), rep)

    step = jax.jit(make_train_step(model, tx, schedule), donate_argnums=0,
                   in_shardings=(rep, batch, rep), out_shardings=(rep, rep))
    return init, step, schedule, tx


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
