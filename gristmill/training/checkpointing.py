"""Orbax checkpoints of a run: the train state and the batch stream's position, keeping the last K.

    OUTPUT/checkpoints/<step>/state/   params, optimizer state, step (orbax StandardSave)
                             data/    the `stream.BatchStream` position and tf.data iterator, per process
                             run/     {"step", "epoch", "batch_in_epoch", ...} (JSON)

A checkpoint holds everything a resumed run needs to compute what the uninterrupted run would
have: restoring the state and the data position and continuing gives bitwise the same losses on
CPU. Orbax keeps `keep` checkpoints (the latest) and lists only finalised ones, so a checkpoint
cut short by a crash is never restored. Directories may be local or gs:// (orbax and
TensorFlow both write there).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

from gristmill import io
from gristmill.training.step import TrainState
from gristmill.training.stream import BatchStream

CHECKPOINTS_DIR = "checkpoints"


def absolute(path: str) -> str:
    """An absolute local path (orbax needs one), or the URL unchanged."""
    return str(path) if io.is_remote(path) else os.path.abspath(path)


def checkpoint_manager(directory: str, keep: int, read_only: bool = False):
    """An orbax CheckpointManager over ``directory`` keeping the latest ``keep`` steps."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(absolute(directory), options=options)


@functools.cache
def _data_args():
    """Orbax handler + args for a `BatchStream` (built lazily so orbax is imported only when used)."""
    import orbax.checkpoint as ocp

    class DataStreamHandler(ocp.CheckpointHandler):
        """Saves / restores a BatchStream inside an orbax step directory."""

        def save(self, directory, args):
            args.stream.save(str(directory))

        def restore(self, directory, args):
            args.stream.restore(str(directory))
            return args.stream

    @ocp.args.register_with_handler(DataStreamHandler, for_save=True, for_restore=True)
    @dataclasses.dataclass
    class DataStreamArgs(ocp.args.CheckpointArgs):
        stream: BatchStream

    return DataStreamArgs


def save(manager, state: TrainState, stream: BatchStream) -> None:
    """Saves checkpoint ``state.step``: the state, the stream's position and a JSON summary of both."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=_data_args()(stream),
        run=ocp.args.JsonSave({"step": step, **stream.position()})))


def restore(manager, step: int, abstract: TrainState, stream: Optional[BatchStream] = None) -> TrainState:
    """The state of checkpoint ``step``, placed as ``abstract`` says; also restores ``stream`` when given."""
    import orbax.checkpoint as ocp

    items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract)}
    if stream is not None:
        items["data"] = _data_args()(stream)
    return manager.restore(step, args=ocp.args.Composite(**items)).state


def checkpoint_steps(output_dir: str) -> list[int]:
    """Steps with a finalised checkpoint in a run directory, ascending (for evaluating along the curve)."""
    from orbax.checkpoint import utils

    directory = io.join(output_dir, CHECKPOINTS_DIR)
    if not io.is_dir(directory):
        return []
    return sorted(utils.checkpoint_steps(absolute(directory)))
