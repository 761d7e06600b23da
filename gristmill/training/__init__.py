"""Training stage: selection-plan-aware tf.data input, T5 span corruption, vocabularies, the trainer.

- `data`: scored TFRecords + a selection plan -> tokenised, span-corrupted, packed numpy batches.
- `span_corruption`: T5's pre-training objective as pure numpy functions.
- `vocab`: SentencePiece training with T5's id layout and the `T5Vocabulary` wrapper.
- `configs`: size presets (`tiny`, `small`, `base`, `large`) and `TrainConfig`.
- `model`: the loss and scoring wrapper around the T5 network (packing-aware masks, z-loss).
- `optim`: Adafactor with T5's inverse-square-root schedule, AdamW as an option.
- `train`: the pure train step, data-parallel loop, orbax checkpoints with exact resume, metrics.
- `main`: `gristmill train`.
"""
