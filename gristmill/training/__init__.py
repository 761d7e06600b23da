"""Training stage: selection-plan-aware tf.data input, vocabularies, the trainer.

- `data`: scored TFRecords + a selection plan -> tokenised, span-corrupted (`gristmill.span_corruption`),
  packed numpy batches.
- `vocab`: SentencePiece training with T5's id layout and the `T5Vocabulary` wrapper.
- `configs`: size presets (`tiny`, `small`, `base`, `large`) and `TrainConfig`.
- `model`: the loss wrapper around the T5 network (packing-aware masks, z-loss).
- `optim`: Adafactor with T5's inverse-square-root schedule, AdamW as an option.
- `step`: the train state and the pure train step, jitted data-parallel with the state donated.
- `stream`: batches epoch after epoch, with a position (tf.data iterator included) that restores exactly.
- `checkpointing`: orbax checkpoints of the state and the stream, keeping the last K.
- `metrics`: per-step records (tokens/s, MFU) and their writers (metrics.jsonl, log lines).
- `model_io`: the final model and checkpoints out of a run directory (`load_trained`).
- `train`: prepares a run and runs the loop that wires the above.
- `main`: `gristmill train`.
"""
