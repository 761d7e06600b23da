"""The training input pipeline: scored TFRecords + a selection plan -> packed T5 span-corruption batches.

    files (glob or output directory) -> [shard per host] -> parse id, text, score -> plan: sampling.keep_mask
      -> shuffle documents (seeded, reshuffled each epoch) -> repeat(num_epochs)
      -> groups of `concat_documents` documents: tokenise, concatenate, split into chunks of
         `tokens_length` (T5's random_spans_helper: 568 tokens for 512 inputs), span-corrupt
         each chunk, pack the examples into rows of (inputs_length, targets_length)
      -> batch -> numpy dicts

The plan is applied with `sampling.keep_mask` on batches of parsed records (a numpy function
inside tf.data), the same function behind `sampling.keep` and the Beam `select` job, so every
stage keeps bitwise the same subset; `selected_ids` exposes that subset for comparisons.

Concatenate-and-split is T5's pre-training recipe (`reduce_concat_tokens` over 128 documents,
then `split_tokens`): documents are joined without a separator, and every chunk but the last of
a group has exactly `tokens_length` tokens, so its inputs and targets come out exactly
inputs_length and targets_length long (512 / 114). Packing (`pack=True`, T5X's default for
span corruption) puts the shorter tail examples of a group side by side in one row, marked by
segment ids (1, 2, ...; 0 = padding) and positions restarting at 0 per segment; packing happens
within a group, so about one row per group is partly padding.

Batches (numpy, int32, [batch, length]), named as SeqIO's EncDecFeatureConverter names them:
`encoder_input_tokens`, `decoder_target_tokens`, `decoder_input_tokens` (targets shifted right
per segment, 0 as the start token), `decoder_loss_weights` (1 on real target tokens), and with
packing `encoder_segment_ids`, `decoder_segment_ids`, `encoder_positions`, `decoder_positions`.

Determinism: the same files, plan, config and vocabulary give the same batches. Documents are
shuffled by `tf.data` with `config.seed` (TF combines it with its global seed, which gristmill
never sets); span-corruption noise is drawn from numpy Generators seeded by (seed, group index),
and group indices run across epochs, so each epoch sees fresh noise. Hosts: `num_hosts` /
`host_index` split the files when there are at least as many files as hosts, else the records
(as SeqIO does); either way the hosts' documents partition the selected subset.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

from gristmill import records, sampling, span_corruption

FEATURES_PACKED = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                   "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
                   "decoder_positions", "decoder_loss_weights")
FEATURES_UNPACKED = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                     "decoder_loss_weights")
PARSE_BATCH = 256


class DataError(ValueError):
    """The training input cannot be built (no files, bad configuration, bad records)."""


class Vocabulary(Protocol):
    """What the pipeline needs from a vocabulary (`T5Vocabulary` and `Tokenizer` both fit)."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputConfig:
    """How to turn selected documents into training batches.

    batch_size: rows per batch (per host). inputs_length / targets_length: row lengths; targets
        must fit what span corruption of a full chunk produces (114 for 512 at T5's settings).
    noise_density, mean_noise_span_length: T5 span corruption (0.15, 3).
    pack: pack several examples per row (segment ids and positions) or pad one per row.
    concat_documents: documents concatenated before splitting into chunks (T5: 128).
    shuffle_buffer: documents in the shuffle buffer; 0 keeps file order.
    num_epochs: passes over the selected subset; None repeats forever (iso-compute training
        stops by step count, see `epochs_for_token_budget`).
    seed: shuffling and span-corruption noise.
    num_hosts, host_index: this host's share of the data.
    drop_remainder: drop the last partial batch (keeps shapes static for jit).
    """

    batch_size: int
    inputs_length: int = 512
    targets_length: int = 114
    noise_density: float = span_corruption.NOISE_DENSITY
    mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH
    pack: bool = True
    concat_documents: int = 128
    shuffle_buffer: int = 10_000
    num_epochs: Optional[int] = 1
    seed: int = 0
    num_hosts: int = 1
    host_index: int = 0
    drop_remainder: bool = True

    def __post_init__(self):
        for name in ("batch_size", "inputs_length", "targets_length", "concat_documents", "num_hosts"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shuffle_buffer < 0:
            raise DataError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise DataError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if not 0 <= self.host_index < self.num_hosts:
            raise DataError(f"host_index {self.host_index} outside [0, {self.num_hosts})")
        needed = self.chunk_lengths[1]
        if self.targets_length < needed:
            raise DataError(f"targets_length {self.targets_length} < {needed}, the targets span corruption "
                            f"makes from inputs of {self.inputs_length}")

    @property
    def chunk_lengths(self) -> tuple[int, int]:
        """(tokens per chunk before corruption, targets length it yields): T5's random_spans_helper."""
        return span_corruption.random_spans_helper(self.inputs_length, noise_density=self.noise_density,
                                                   mean_noise_span_length=self.mean_noise_span_length)


# --- files and records -----------------------------------------------------------------------

def list_files(patterns: Union[str, Sequence[str]]) -> list[str]:
    """Sorted, de-duplicated scored TFRecord files the specs name (local or gs://); DataError if none.

    A spec is a glob, a file, or a gristmill output directory, which is read through its
    manifest (`records.record_files`): exactly the files of the finished run, never stale shards
    of an earlier one or partial files of a running one.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files: set[str] = set()
    for pattern in patterns:
        try:
            files.update(records.record_files(str(pattern)))
        except records.IncompleteRunError as e:
            raise DataError(str(e)) from None
        except FileNotFoundError:
            continue
    if not files:
        raise DataError(f"no files match {patterns}")
    return sorted(files)


def _records(files: Sequence[str], num_hosts: int = 1, host_index: int = 0) -> tf.data.Dataset:
    if len(files) >= num_hosts:
        files = files[host_index::num_hosts]
        shard_records = False
    else:
        shard_records = num_hosts > 1
    ds = tf.data.Dataset.from_tensor_slices(list(files)).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    return ds.shard(num_hosts, host_index) if shard_records else ds


def _parser(score_feature: Optional[str], tokens_feature: Optional[str] = None) -> Callable:
    spec = {records.ID: tf.io.FixedLenFeature([], tf.string), records.TEXT: tf.io.FixedLenFeature([], tf.string)}
    if score_feature:
        spec[score_feature] = tf.io.FixedLenFeature([], tf.float32, default_value=np.nan)
    if tokens_feature:
        spec[tokens_feature] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)

    def parse(serialized):
        return tf.io.parse_example(serialized, spec)

    return parse


def read_documents(files: Union[str, Sequence[str]], plan: Optional[sampling.Plan] = None, *,
                   num_hosts: int = 1, host_index: int = 0) -> tf.data.Dataset:
    """Documents ({"id", "text"} string scalars) of the files that the plan keeps, this host's share.

    The keep decision is `sampling.keep_mask` on batches of parsed records.
    """
    files = list_files(files)
    score_feature = plan.score_feature if plan is not None else None
    ds = _records(files, num_hosts, host_index).batch(PARSE_BATCH).map(
        _parser(score_feature), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if plan is not None:
        def keep_fn(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            return sampling.keep_mask(plan, ids, scores if score_feature else None)

        def apply(batch):
            scores = batch[score_feature] if score_feature else tf.zeros_like(batch[records.ID], tf.float32)
            mask = tf.numpy_function(keep_fn, [batch[records.ID], scores], tf.bool, stateful=False)
            mask.set_shape([None])
            return {k: tf.boolean_mask(batch[k], mask) for k in (records.ID, records.TEXT)}

        ds = ds.map(apply)
    else:
        ds = ds.map(lambda b: {records.ID: b[records.ID], records.TEXT: b[records.TEXT]})
    return ds.unbatch()


def selected_ids(files: Union[str, Sequence[str]], plan: Optional[sampling.Plan] = None) -> set[str]:
    """Ids (str) of the documents the plan keeps, read through this pipeline's own filter."""
    ids = read_documents(files, plan).map(lambda d: d[records.ID]).batch(4096)
    return {i.decode("utf-8") for batch in ids.as_numpy_iterator() for i in batch}


def plan_from_records(files: Union[str, Sequence[str]], rule: str, *, rate: float, seed: int,
                      score_feature: Optional[str] = None, rate_by: str = sampling.DOCUMENTS,
                      tokens_feature: Optional[str] = None,
                      missing: Union[str, sampling.MissingScorePolicy] = sampling.MissingScorePolicy.ERROR,
                      ) -> sampling.Plan:
    """An exact plan over scored TFRecords that fit in memory (`sampling.plan_from_rows`).

    Token counts (always recorded) come from `tokens_feature` (`tokens/<tokenizer>`) or, when it is
    None, from `sampling.approx_token_count` of the text.
    """
    spec = sampling.SelectionSpec(rule=rule, score=score_feature, rate=rate, rate_by=rate_by,
                                  missing=sampling.MissingScorePolicy(missing).value)
    files = list_files(files)
    ds = _records(files).batch(PARSE_BATCH).map(_parser(score_feature, tokens_feature))
    rows: list[tuple[bytes, Optional[float], int]] = []
    for batch in ds.as_numpy_iterator():
        ids = batch[records.ID]
        scores = batch[score_feature] if score_feature else [None] * len(ids)
        if tokens_feature:
            counts = batch[tokens_feature]
            if (counts < 0).any():
                bad = ids[int(np.flatnonzero(counts < 0)[0])].decode("utf-8", "replace")
                raise DataError(f"document {bad!r} has no {tokens_feature!r} feature")
        else:
            counts = [sampling.approx_token_count(t) for t in batch[records.TEXT]]
        rows.extend((i, None if s is None or np.isnan(s) else float(s), int(t)) for i, s, t in zip(ids, scores, counts))
    return sampling.plan_from_rows(rows, spec, seed=seed, tokens_feature=tokens_feature)


# --- tokens -> examples -> rows (pure numpy) -------------------------------------------------

def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], inputs_length: int,
                  targets_length: int) -> dict[str, np.ndarray]:
    """Packs (inputs, targets) examples in order into rows, starting a row when one does not fit.

    Example (inputs_length 6, targets_length 5): ([5, 6, 1], [7, 1]) and ([8, 1], [9, 3, 1]) share a row:
        encoder_input_tokens  [5, 6, 1, 8, 1, 0]   encoder_segment_ids [1, 1, 1, 2, 2, 0]
        encoder_positions     [0, 1, 2, 0, 1, 0]
        decoder_target_tokens [7, 1, 9, 3, 1]      decoder_segment_ids [1, 1, 2, 2, 2]
        decoder_input_tokens  [0, 7, 0, 9, 3]      decoder_positions   [0, 1, 0, 1, 2]
        decoder_loss_weights  [1, 1, 1, 1, 1]
    Decoder inputs are the targets shifted right within each segment, 0 at every segment start.
    """
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    used_in = used_tg = 0
    for inputs, targets in examples:
        if len(inputs) > inputs_length or len(targets) > targets_length:
            raise DataError(f"example of lengths ({len(inputs)}, {len(targets)}) exceeds row lengths "
                            f"({inputs_length}, {targets_length})")
        if not rows or used_in + len(inputs) > inputs_length or used_tg + len(targets) > targets_length:
            rows.append([])
            used_in = used_tg = 0
        rows[-1].append((inputs, targets))
        used_in += len(inputs)
        used_tg += len(targets)
    out = {name: np.zeros((len(rows), inputs_length if name.startswith("encoder") else targets_length), np.int32)
           for name in FEATURES_PACKED}
    for r, row in enumerate(rows):
        pos_in = pos_tg = 0
        for segment, (inputs, targets) in enumerate(row, start=1):
            n_in, n_tg = len(inputs), len(targets)
            out["encoder_input_tokens"][r, pos_in:pos_in + n_in] = inputs
            out["encoder_segment_ids"][r, pos_in:pos_in + n_in] = segment
            out["encoder_positions"][r, pos_in:pos_in + n_in] = np.arange(n_in)
            out["decoder_target_tokens"][r, pos_tg:pos_tg + n_tg] = targets
            out["decoder_input_tokens"][r, pos_tg + 1:pos_tg + n_tg] = targets[:-1]
            out["decoder_segment_ids"][r, pos_tg:pos_tg + n_tg] = segment
            out["decoder_positions"][r, pos_tg:pos_tg + n_tg] = np.arange(n_tg)
            pos_in += n_in
            pos_tg += n_tg
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
    return out


def pad_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], inputs_length: int,
                 targets_length: int) -> dict[str, np.ndarray]:
    """One example per row, padded with 0 (the unpacked features)."""
    rows = [pack_examples([ex], inputs_length, targets_length) for ex in examples]
    rows = rows or [pack_examples([], inputs_length, targets_length)]
    return {name: np.concatenate([r[name] for r in rows]) for name in FEATURES_UNPACKED}


def corrupt_group(token_lists: Sequence[Sequence[int]], seed: span_corruption.Seed, config: InputConfig,
                  vocab_size: int, eos_id: int) -> dict[str, np.ndarray]:
    """One group of documents' tokens -> rows: concatenate, split, span-corrupt (one generator from
    `seed` for the whole group: `span_corruption.corrupted_examples`), pack (or pad)."""
    tokens_length, _ = config.chunk_lengths
    examples = span_corruption.corrupted_examples(
        token_lists, tokens_length, seed, vocab_size=vocab_size, eos_id=eos_id, noise_density=config.noise_density,
        mean_noise_span_length=config.mean_noise_span_length)
    arrange = pack_examples if config.pack else pad_examples
    return arrange(examples, config.inputs_length, config.targets_length)


# --- the tf.data pipeline --------------------------------------------------------------------

def _encoder(vocabulary: Vocabulary) -> Callable[[list[str]], list[Sequence[int]]]:
    batch = getattr(vocabulary, "encode_batch", None)
    if batch is not None:
        return batch
    return lambda texts: [vocabulary.encode(t) for t in texts]


def make_dataset(files: Union[str, Sequence[str]], vocabulary: Vocabulary, config: InputConfig,
                 plan: Optional[sampling.Plan] = None) -> tf.data.Dataset:
    """The training batches as a tf.data.Dataset of dicts of int32 [batch, length] tensors."""
    docs = read_documents(files, plan, num_hosts=config.num_hosts, host_index=config.host_index)
    texts = docs.map(lambda d: d[records.TEXT])
    if config.shuffle_buffer:
        texts = texts.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    texts = texts.repeat(config.num_epochs)
    names = FEATURES_PACKED if config.pack else FEATURES_UNPACKED
    encode = _encoder(vocabulary)
    vocab_size, eos_id = int(vocabulary.vocab_size), int(vocabulary.eos_id)

    def group_fn(index: np.ndarray, group: np.ndarray) -> list[np.ndarray]:
        token_lists = encode([t.decode("utf-8") for t in group])
        rows = corrupt_group(token_lists, (config.seed, config.host_index, int(index)), config, vocab_size, eos_id)
        return [rows[name] for name in names]

    def to_rows(index, group):
        arrays = tf.numpy_function(group_fn, [index, group], [tf.int32] * len(names), stateful=False)
        out = {}
        for name, array in zip(names, arrays):
            array.set_shape([None, config.inputs_length if name.startswith("encoder") else config.targets_length])
            out[name] = array
        return out

    rows = (texts.batch(config.concat_documents).enumerate()
            .map(to_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch())
    return rows.batch(config.batch_size, drop_remainder=config.drop_remainder).prefetch(2)


def train_batches(files: Union[str, Sequence[str]], vocabulary: Vocabulary, config: InputConfig,
                  plan: Optional[sampling.Plan] = None) -> Iterator[dict[str, np.ndarray]]:
    """`make_dataset` as an iterator of numpy dicts, ready for a JAX train step."""
    return make_dataset(files, vocabulary, config, plan).as_numpy_iterator()


def epochs_for_token_budget(token_budget: float, subset_tokens: float) -> float:
    """Epochs over a subset that spend a fixed token budget (iso-compute, docs/paper.md §5.2).

    The paper trains every model on 524B tokens (1024 x 512 x 1M steps): 2.8 epochs of all of
    C4 (184B tokens), 28.4 of a 10% sample. Train by step count with num_epochs=None.
    """
    if token_budget <= 0 or subset_tokens <= 0:
        raise DataError(f"token budget and subset size must be > 0, got {token_budget}, {subset_tokens}")
    return token_budget / subset_tokens
