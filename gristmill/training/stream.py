"""The batch stream: training batches epoch after epoch, with a position that saves and restores exactly.

Data and epochs (iso-compute, docs/paper.md §5.2): the selection is read one epoch at a time, each
epoch a `data.make_dataset` pass with its own seed derived from (seed, epoch) (fresh shuffle and
span-corruption noise), for as many epochs as the run needs (or at most ``max_epochs``). The
epoch fraction is estimated from the previous epoch's batch count.

The position is the epoch, the batches read in it, and the tf.data iterator itself
(``tf.train.Checkpoint``, which saves the shuffle buffer and the pipeline's internal position;
about the shuffle buffer's documents in size), so a restored stream neither re-reads nor skips
data, at the same cost at any step. Each process saves its own position (``process_<i>``);
local paths and gs:// both work (`gristmill.io` for the JSON, TensorFlow's file systems for the
iterator).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Optional

import jax
import numpy as np

from gristmill import io, sampling
from gristmill.training import data
from gristmill.training.configs import TrainError

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch, a hash of (seed, epoch) (shuffle order and span noise differ per epoch)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


class BatchStream:
    """Training batches epoch after epoch, with a position that checkpoints and restores exactly.

    Each epoch is one pass of `data.make_dataset` over the selection with ``epoch_seed(seed, e)``.
    ``max_epochs`` None repeats forever. Yields dicts of int32 numpy arrays [batch, length].
    """

    def __init__(self, files: list[str], vocabulary: data.Vocabulary, config: data.InputConfig,
                 plan: Optional[sampling.Plan] = None, max_epochs: Optional[int] = None):
        self.files, self.vocabulary, self.config, self.plan = files, vocabulary, config, plan
        self.max_epochs = max_epochs
        self.epoch = 0
        self.batch_in_epoch = 0
        self.previous_epoch_batches: Optional[int] = None
        self._iterator = None

    def _open(self):
        config = dataclasses.replace(self.config, seed=epoch_seed(self.config.seed, self.epoch), num_epochs=1)
        return iter(data.make_dataset(self.files, self.vocabulary, config, self.plan))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._iterator is None:
                if self.max_epochs is not None and self.epoch >= self.max_epochs:
                    raise StopIteration
                self._iterator = self._open()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    raise TrainError(f"epoch {self.epoch} of {self.files} gave no batch of {self.config.batch_size} "
                                     "rows: the selection is too small for the batch size") from None
                log.info("data epoch %d done: %d batches", self.epoch, self.batch_in_epoch)
                self.previous_epoch_batches = self.batch_in_epoch
                self.epoch += 1
                self.batch_in_epoch = 0
                self._iterator = None
                continue
            self.batch_in_epoch += 1
            return {name: value.numpy() for name, value in batch.items()}

    @property
    def epochs(self) -> Optional[float]:
        """Epochs read so far (fraction from the previous epoch's length); None during the first epoch."""
        if self.previous_epoch_batches is None:
            return None
        return self.epoch + self.batch_in_epoch / self.previous_epoch_batches

    def position(self) -> dict[str, Any]:
        """Where the stream is: epoch, batches read in it, and the previous epoch's length (JSON-able)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "previous_epoch_batches": self.previous_epoch_batches}

    def save(self, directory: str) -> None:
        """Writes the position (JSON) and this process's tf.data iterator state under ``directory``."""
        import tensorflow as tf

        name = f"process_{jax.process_index()}"
        io.makedirs(directory)
        io.write_json(io.join(directory, f"{name}.json"), self.position())
        if self._iterator is not None:
            tf.train.Checkpoint(iterator=self._iterator).write(io.join(directory, name, "iterator"))

    def restore(self, directory: str) -> None:
        """Restores what `save` wrote: the next batch is the one that followed the save."""
        import tensorflow as tf

        name = f"process_{jax.process_index()}"
        path = io.join(directory, f"{name}.json")
        if not io.exists(path):
            raise TrainError(f"{directory}: no data position for {name}")
        position = io.read_json(path)
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        self.previous_epoch_batches = position["previous_epoch_batches"]
        self._iterator = None
        prefix = io.join(directory, name, "iterator")
        if io.exists(prefix + ".index"):
            self._iterator = self._open()
            tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()
        elif self.batch_in_epoch:
            raise TrainError(f"{directory}: data position {position} but no saved iterator")
