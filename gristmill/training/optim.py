"""Optimizers and learning-rate schedules for T5 pre-training (pure optax constructors).

Default, as the original T5 (and T5X's T5 v1.1 runs): Adafactor with factored second moments,
no momentum, update clipping at RMS 1.0, parameter-scaled updates, decay rate 0.8, and the
inverse-square-root schedule

    lr(step) = peak * sqrt(warmup / max(step, warmup)),   peak = 1 / sqrt(warmup) by default,

which for warmup = 10,000 is T5's ``1 / sqrt(max(step, 10_000))``: a constant 0.01 for the first
10k steps, then decaying as 1/sqrt(step). Tiny runs use a shorter warmup (a higher constant).

Option: AdamW (decoupled weight decay, global-norm clipping at 1.0) with a linear warmup to
``learning_rate`` and a cosine decay to 10% of it at the last step.

Note on scanned layers: optax's Adafactor factors the two largest dimensions of each parameter,
so a stacked ``[layers, d_in, d_out]`` kernel keeps per-layer second-moment statistics as the
unscanned model would; ``multiply_by_parameter_scale`` however uses the RMS of the whole stack
rather than of each layer (T5X's own Adafactor rules treat the layer axis separately).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

ADAFACTOR, ADAMW = "adafactor", "adamw"
OPTIMIZERS = (ADAFACTOR, ADAMW)
RSQRT, COSINE, CONSTANT = "rsqrt", "cosine", "constant"
SCHEDULES = (RSQRT, COSINE, CONSTANT)


class OptimizerError(ValueError):
    """An optimizer or schedule setting is invalid."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Which optimizer and schedule, with T5's defaults.

    name: ``adafactor`` (T5) or ``adamw``.
    learning_rate: the peak rate; None means ``1/sqrt(warmup_steps)`` for Adafactor with the
        rsqrt schedule (T5), and 1e-3 for AdamW.
    schedule: ``rsqrt`` (constant during warmup, then 1/sqrt decay; T5), ``cosine`` (linear
        warmup, cosine decay to ``final_fraction`` of the peak at the last step) or ``constant``.
        None picks rsqrt for Adafactor and cosine for AdamW.
    warmup_steps: the warmup length in steps (T5: 10,000).
    weight_decay: AdamW's decoupled weight decay (multiplied by the learning rate, as optax does).
    clip_norm: global gradient-norm clipping for AdamW (Adafactor clips its updates instead).
    decay_rate: Adafactor's second-moment decay exponent (T5: 0.8).
    """

    name: str = ADAFACTOR
    learning_rate: Optional[float] = None
    schedule: Optional[str] = None
    warmup_steps: int = 10_000
    weight_decay: float = 0.01
    clip_norm: Optional[float] = 1.0
    decay_rate: float = 0.8
    b1: float = 0.9
    b2: float = 0.98
    final_fraction: float = 0.1

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise OptimizerError(f"unknown optimizer {self.name!r}; choose one of {OPTIMIZERS}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise OptimizerError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.warmup_steps < 1:
            raise OptimizerError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise OptimizerError(f"learning_rate must be > 0, got {self.learning_rate}")

    @property
    def resolved_schedule(self) -> str:
        """The schedule name after applying the per-optimizer default."""
        return self.schedule or (RSQRT if self.name == ADAFACTOR else COSINE)

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate at the end of warmup."""
        if self.learning_rate is not None:
            return self.learning_rate
        if self.name == ADAFACTOR:
            return self.warmup_steps ** -0.5
        return 1e-3

    def replace(self, **changes) -> OptimizerConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def rsqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """T5's schedule: ``peak * sqrt(warmup / max(step, warmup))``.

    With ``peak = 1/sqrt(warmup)`` this is ``1/sqrt(max(step, warmup))``: for warmup 10,000,
    0.01 up to step 10k, 0.005 at 40k, 0.001 at 1M.
    """
    def schedule(step):
        return peak * jnp.sqrt(warmup_steps / jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))
    return schedule


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (0-based: the rate used by update ``step + 1``)."""
    peak, warmup = config.peak_learning_rate, config.warmup_steps
    kind = config.resolved_schedule
    if kind == RSQRT:
        return rsqrt_schedule(peak, warmup)
    if kind == CONSTANT:
        return optax.constant_schedule(peak)
    warmup = min(warmup, max(total_steps - 1, 1))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=peak * config.final_fraction)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation and its schedule (the trainer logs ``schedule(step)``)."""
    schedule = make_schedule(config, total_steps)
    if config.name == ADAFACTOR:
        tx = optax.adafactor(learning_rate=schedule, decay_rate=config.decay_rate, min_dim_size_to_factor=128,
                             multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None)
        return tx, schedule
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=1e-8, weight_decay=config.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*parts), schedule


def _decay_mask(params) -> Any:
    """Weight decay on matrices only (kernels, embeddings), not on norm scales or position biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", "") in ("kernel", "embedding"), params)
