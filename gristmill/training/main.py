"""`gristmill train`: flags -> `TrainConfig` -> `train.train` (CONTRIBUTING.md style rule 9).

    gristmill train --data 'scored/*.tfrecord*' [--plan PLAN.json] --model_size small --steps 1000000 \\
        --output runs/askllm-20 [--vocab spiece.model] [--batch_size 1024] [--seed 0] \\
        [--checkpoint_every 1000] [--keep_checkpoints 3] [--optimizer adafactor|adamw] \\
        [--learning_rate LR] [--epochs N]

`--data` are scored TFRecords (the output of `gristmill score ...` or `select`): globs, files or
gristmill output directories (read through their manifest), local or gs://. Without `--plan`
every document is used. Without `--vocab` a SentencePiece vocabulary of `--vocab_size` ids is
trained on the data into OUTPUT/vocab/spiece.model, or a smaller one when the data cannot support
that many pieces (a log line says so). Running the same command again resumes from the last
checkpoint in OUTPUT.
"""

from __future__ import annotations

from gristmill import flags
from gristmill.training.configs import TrainConfig


def parse_config(argv: list[str]) -> TrainConfig:
    """Parses `gristmill train` flags (one per TrainConfig field) into a TrainConfig."""
    return flags.parse_config(TrainConfig, argv, "gristmill train", __doc__)


def run(argv: list[str]):
    """Entry point of `gristmill train`."""
    from gristmill.training import train

    return train.train(parse_config(argv))
