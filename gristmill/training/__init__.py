"""Training stage: selection-plan-aware tf.data input, T5 span corruption, SentencePiece vocabularies.

- `data`: scored TFRecords + a selection plan -> tokenised, span-corrupted, packed numpy batches.
- `span_corruption`: T5's pre-training objective as pure numpy functions.
- `vocab`: SentencePiece training with T5's id layout and the `T5Vocabulary` wrapper.
"""
