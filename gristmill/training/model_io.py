"""Trained models in and out of a run directory: the final model, checkpoints along the way, the run record.

    OUTPUT/config.json          the run record `train.prepare` writes (train, model, optimizer, input, vocab, ...)
    OUTPUT/model/params/        final float32 params (orbax)
                 t5_config.json the `t5.T5Config` (CONTRIBUTING.md style rule 8: the config travels with the weights)
                 spiece.model   a copy of the vocabulary
    OUTPUT/checkpoints/<step>/  see `checkpointing`

`load_trained` gives the params of the final model or of any kept checkpoint as the `t5`
functions' tree, for evaluation along the training curve. Local paths and gs:// both work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax

from gristmill import io
from gristmill.models import t5
from gristmill.training import checkpointing, configs, optim
from gristmill.training import model as model_lib
from gristmill.training import step as step_lib
from gristmill.training.configs import TrainError

CONFIG_FILE = "config.json"
MODEL_DIR = "model"
MODEL_CONFIG_FILE = "t5_config.json"
VOCAB_FILE = "spiece.model"


class TrainedModel(NamedTuple):
    """A trained T5: its config, float32 params (the `t5` functions' tree) and SentencePiece model path."""
    config: t5.T5Config
    params: Any
    vocab_path: str


def save_model(directory: str, params: Any, config: t5.T5Config, vocab_path: str) -> None:
    """Writes params (orbax), ``t5_config.json`` and a copy of the vocabulary into ``directory`` (replaced)."""
    import orbax.checkpoint as ocp

    io.delete_tree(directory)
    io.makedirs(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(checkpointing.absolute(io.join(directory, "params")), params)
    checkpointer.wait_until_finished()
    io.write_text(io.join(directory, MODEL_CONFIG_FILE), configs.dumps(dataclasses.asdict(config)))
    io.atomic_write(io.join(directory, VOCAB_FILE), io.read_bytes(vocab_path))


def read_run(output_dir: str) -> dict[str, Any]:
    """The run's config.json (train, model, optimizer, input, vocab, parameters, flops_per_step)."""
    path = io.join(output_dir, CONFIG_FILE)
    if not io.exists(path):
        raise TrainError(f"{output_dir}: not a training run (no {CONFIG_FILE})")
    return io.read_json(path)


def load_trained(output_dir: str, step: Optional[int] = None, *, dtype: Optional[str] = None) -> TrainedModel:
    """Loads a trained model: the final one (OUTPUT/model), or the params of checkpoint ``step``.

    ``dtype`` overrides the compute dtype recorded for the run (e.g. float32 for evaluation on CPU).
    Parameters come back as float32 arrays on the default device.
    """
    import orbax.checkpoint as ocp

    run = read_run(output_dir)
    config = configs.model_config_from_dict(run["model"])
    if dtype:
        config = config.replace(dtype=dtype)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if step is None:
        directory = io.join(output_dir, MODEL_DIR)
        if not io.is_dir(io.join(directory, "params")):
            raise TrainError(f"{output_dir}: no final model (training did not finish); pass a checkpoint step "
                             f"from {checkpointing.checkpoint_steps(output_dir)}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                t5.param_shapes(config))
        params = ocp.StandardCheckpointer().restore(checkpointing.absolute(io.join(directory, "params")), abstract)
        return TrainedModel(config, params, io.join(directory, VOCAB_FILE))
    steps = checkpointing.checkpoint_steps(output_dir)
    if step not in steps:
        raise TrainError(f"{output_dir}: no checkpoint at step {step}; have {steps}")
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(**run["optimizer"]), run["train"]["steps"])
    abstract_state = step_lib.abstract_state(model_lib.EncoderDecoderModel(config), tx, device)
    manager = checkpointing.checkpoint_manager(io.join(output_dir, checkpointing.CHECKPOINTS_DIR),
                                               run["train"]["keep_checkpoints"], read_only=True)
    try:
        state = checkpointing.restore(manager, step, abstract_state)
    finally:
        manager.close()
    return TrainedModel(config, state.params, run["vocab"])
