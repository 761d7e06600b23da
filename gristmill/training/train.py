"""The pre-training loop: wires the run's setup, the batch stream, the train step, checkpoints and metrics.

    train(TrainConfig) ->  OUTPUT/config.json        the run (TrainConfig, T5Config, optimizer, input)
                           OUTPUT/vocab/spiece.model  when no --vocab was given
                           OUTPUT/checkpoints/<step>/ `checkpointing`: state, data position, run (JSON)
                           OUTPUT/metrics.jsonl       `metrics`: one JSON line per step
                           OUTPUT/model/              `model_io`: final params + t5_config.json + spiece.model

The parts, one job each: `step` (train state, the pure jitted train step, data-parallel mesh),
`stream` (batches epoch after epoch with an exact position), `checkpointing` (orbax, keep the
last K, the tf.data iterator with the state), `metrics` (step records to JSONL and log writers),
`model_io` (final model and checkpoints in and out). This module prepares a run (files,
vocabulary, plan, model, config.json) and runs the loop.

`--data` names scored TFRecords: a gristmill output directory (read through its manifest,
`records.record_files`), a glob or a file, local or gs://; `--plan` and every side file go
through `gristmill.io`. Exact resume: running the same config again restores the last
checkpoint (state and data position) and computes the same losses as an uninterrupted run
(tested bitwise on CPU); metrics.jsonl lines past the restored step are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple, Optional

import jax

from gristmill import io, sampling
from gristmill.models import host_memory, t5
from gristmill.training import checkpointing, configs, data, model_io, optim
from gristmill.training import metrics as metrics_lib
from gristmill.training import model as model_lib
from gristmill.training import step as step_lib
from gristmill.training import stream as stream_lib
from gristmill.training.checkpointing import CHECKPOINTS_DIR, checkpoint_steps
from gristmill.training.configs import TrainConfig, TrainError
from gristmill.training.metrics import METRICS_FILE, PEAK_TFLOPS, peak_flops_per_device
from gristmill.training.model_io import (
    CONFIG_FILE,
    MODEL_CONFIG_FILE,
    MODEL_DIR,
    VOCAB_FILE,
    TrainedModel,
    load_trained,
    read_run,
    save_model,
)
from gristmill.training.step import (
    TrainState,
    batch_sharding,
    compiled_functions,
    default_dtype,
    init_state,
    make_mesh,
    make_train_step,
    replicated,
)
from gristmill.training.stream import BatchStream, epoch_seed

# The run-directory API callers know as `train.X` (experiment, benchmarks), kept from before the split.
__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "METRICS_FILE", "MODEL_CONFIG_FILE", "MODEL_DIR", "PEAK_TFLOPS",
           "VOCAB_DIR", "VOCAB_FILE", "BatchStream", "RunSetup", "TrainError", "TrainResult", "TrainState",
           "TrainedModel", "batch_sharding", "check_records", "checkpoint_steps", "compiled_functions",
           "default_dtype", "epoch_seed", "init_state", "load_trained", "make_mesh", "make_train_step",
           "peak_flops_per_device", "prepare", "read_run", "replicated", "resolve_vocab", "save_model", "train"]

log = logging.getLogger(__name__)

VOCAB_DIR = "vocab"


class TrainResult(NamedTuple):
    """What `train` returns: where things are and the last metrics."""
    output: str
    step: int
    final_metrics: dict[str, Any]
    mean_tokens_per_second: Optional[float]
    mean_mfu: Optional[float]


def resolve_vocab(config: TrainConfig, files: list[str]) -> str:
    """The SentencePiece model path: ``config.vocab``, or OUTPUT/vocab/spiece.model (trained if absent).

    A trained vocabulary uses the first `vocab_max_documents` documents of all the data (not the
    selection, so that runs over different selections can share it when given the same output),
    and has `vocab_size` ids or, when the data cannot support that many pieces, as many as it
    does (`vocab.train_sentencepiece` with ``fit_corpus``; logged). For an experiment grid, train
    one with `gristmill tokenizer train` and pass it to every run.
    """
    from gristmill.training import vocab as vocab_lib

    if config.vocab:
        return config.vocab
    path = io.join(config.output, VOCAB_DIR, VOCAB_FILE)
    if io.exists(path):
        return path
    texts = [document["text"].decode("utf-8") for document in
             data.read_documents(files).take(config.vocab_max_documents).as_numpy_iterator()]
    if not texts:
        raise TrainError(f"no documents in {files} to train a vocabulary on")
    log.info("training a SentencePiece vocabulary of up to %d ids on %d documents -> %s", config.vocab_size,
             len(texts), path)
    # written atomically: a killed run never reuses half a model
    vocab_lib.train_sentencepiece(texts, config.vocab_size, path.removesuffix(".model"), fit_corpus=True,
                                  write_vocab=False)
    return path


class RunSetup(NamedTuple):
    """Everything resolved from a TrainConfig before the first step."""
    files: list[str]
    vocab_path: str
    vocabulary: Any
    plan: Optional[sampling.Plan]
    model: model_lib.EncoderDecoderModel
    optimizer: optim.OptimizerConfig
    input_config: data.InputConfig
    record: dict[str, Any]  # what config.json holds


def check_records(path: str) -> None:
    """Fails early, naming the file, unless its first record is a tf.train.Example with `id` and `text`."""
    import tensorflow as tf

    from gristmill import records

    spec = {records.ID: tf.io.FixedLenFeature([], tf.string), records.TEXT: tf.io.FixedLenFeature([], tf.string)}
    try:
        for serialized in tf.data.TFRecordDataset(path).take(1):
            tf.io.parse_single_example(serialized, spec)
    except (tf.errors.OpError, ValueError) as e:
        raise TrainError(f"{path}: not a scored TFRecord file (tf.train.Example with `id` and `text`); "
                         f"write one with `gristmill score random` ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None


def prepare(config: TrainConfig) -> RunSetup:
    """Resolves files, vocabulary, plan, model, optimizer and input settings; writes or checks config.json."""
    from gristmill.training import vocab as vocab_lib

    io.makedirs(config.output)
    files = data.list_files(list(config.data))
    check_records(files[0])
    if config.vocab is None and jax.process_count() > 1:
        raise configs.ConfigError("multi-host runs need --vocab (train one with `gristmill tokenizer train`)")
    vocab_path = resolve_vocab(config, files)
    vocabulary = vocab_lib.T5Vocabulary.from_file(vocab_path)
    plan = sampling.Plan.from_json(io.read_text(config.plan)) if config.plan else None
    model_config = config.model_config(vocabulary.vocab_size, config.dtype or step_lib.default_dtype())
    optimizer = config.optimizer_config()
    processes, devices = jax.process_count(), len(jax.devices())
    batch_size = config.global_batch_size
    if batch_size % devices:
        raise configs.ConfigError(f"batch_size {batch_size} does not divide over {devices} devices")
    inputs_length, targets_length = config.lengths
    input_config = data.InputConfig(
        batch_size=batch_size // processes, inputs_length=inputs_length, targets_length=targets_length,
        pack=config.pack, concat_documents=config.concat_documents, shuffle_buffer=config.shuffle_buffer,
        num_epochs=1, seed=config.seed, num_hosts=processes, host_index=jax.process_index())
    record = {
        "train": config.to_dict(), "model": dataclasses.asdict(model_config),
        "optimizer": dataclasses.asdict(optimizer), "input": dataclasses.asdict(input_config),
        "vocab": checkpointing.absolute(vocab_path), "tokenizer_vocab_size": vocabulary.vocab_size,
        "parameters": t5.count_params(model_config),
        "flops_per_step": batch_size * model_lib.flops_per_sequence(model_config, inputs_length, targets_length),
    }
    path = io.join(config.output, CONFIG_FILE)
    if io.exists(path):
        _check_resume(io.read_json(path), record)
    if jax.process_index() == 0:
        io.write_text(path, configs.dumps(record))
    model = model_lib.EncoderDecoderModel(model_config, z_loss=config.z_loss)
    return RunSetup(files, vocab_path, vocabulary, plan, model, optimizer, input_config, record)


def _check_resume(saved: dict, current: dict) -> None:
    problems = []
    for section in ("model", "optimizer", "input", "vocab"):
        if saved.get(section) != current.get(section):
            problems.append(f"{section}: {saved.get(section)} != {current.get(section)}")
    for key, value in current["train"].items():
        if key not in TrainConfig.RESUMABLE_CHANGES and saved["train"].get(key) != value:
            problems.append(f"train.{key}: {saved['train'].get(key)!r} != {value!r}")
    if problems:
        raise TrainError("the output directory holds a different run; use a new --output or the same settings: "
                         + "; ".join(problems))


def train(config: TrainConfig) -> TrainResult:
    """Pre-trains a T5 on the (selected) documents of ``config.data``; resumes from OUTPUT if it has checkpoints."""
    host_memory.retain_freed_memory()
    setup = prepare(config)
    model, mesh = setup.model, step_lib.make_mesh()
    init, train_step, _, tx = step_lib.compiled_functions(model, setup.optimizer, config.steps, mesh)
    root = jax.random.key(config.seed)
    params_rng, dropout_rng = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    stream = stream_lib.BatchStream(setup.files, setup.vocabulary, setup.input_config, setup.plan,
                                    max_epochs=config.epochs)
    manager = checkpointing.checkpoint_manager(io.join(config.output, CHECKPOINTS_DIR), config.keep_checkpoints)
    resume_step = manager.latest_step()
    if resume_step is None:
        state = init(params_rng)
    else:
        abstract = step_lib.abstract_state(model, tx, step_lib.replicated(mesh))
        state = checkpointing.restore(manager, resume_step, abstract, stream)
        log.info("resumed %s at step %d (data epoch %d, batch %d)", config.output, resume_step, stream.epoch,
                 stream.batch_in_epoch)
    step = int(state.step)
    inputs_length, targets_length = config.lengths
    batch_size, devices = config.global_batch_size, len(jax.devices())
    writers: list[metrics_lib.MetricsWriter] = [metrics_lib.LogWriter(config.steps, config.log_every)]
    if jax.process_index() == 0:
        writers.append(metrics_lib.JsonlWriter(io.join(config.output, METRICS_FILE), step))
    recorder = metrics_lib.StepRecorder(
        writers, start_step=step, tokens_per_step=batch_size * inputs_length,
        flops_per_step=setup.record["flops_per_step"], devices=devices,
        peak_flops=metrics_lib.peak_flops_per_device(jax.devices()[0], config.peak_tflops))
    shard = step_lib.batch_sharding(mesh)
    rng = jax.device_put(dropout_rng, step_lib.replicated(mesh))
    log.info("training %s (%s parameters, %s) on %d x %s: steps %d..%d of %d x (%d, %d), %s", config.model_size,
             f"{setup.record['parameters']:,}", model.config.dtype, devices, jax.devices()[0].device_kind, step,
             config.steps, batch_size, inputs_length, targets_length, setup.optimizer.name)
    pending = None  # the previous step's metrics, read after the next step is dispatched
    try:
        while step < config.steps:
            try:
                batch = next(stream)
            except StopIteration:
                log.info("stopping at step %d: %d epoch(s) of data done", step, config.epochs)
                break
            batch = {k: jax.make_array_from_process_local_data(shard, v) for k, v in batch.items()}
            state, metrics = train_step(state, batch, rng)
            step += 1
            if pending is not None:
                recorder(*pending)
            pending = (step, metrics, stream.position(), stream.epochs)
            if step % config.checkpoint_every == 0:
                recorder(*pending)
                pending = None
                checkpointing.save(manager, state, stream)
                recorder.flush()
        if pending is not None:
            recorder(*pending)
        if manager.latest_step() != step:
            checkpointing.save(manager, state, stream)
        manager.wait_until_finished()
    finally:
        recorder.close()
        manager.close()
    model_io.save_model(io.join(config.output, MODEL_DIR), state.params, model.config, setup.vocab_path)
    result = TrainResult(config.output, step, recorder.last, recorder.mean_tokens_per_second, recorder.mean_mfu)
    log.info("done: step %d, loss %s, %s tokens/s -> %s", step, recorder.last.get("loss"),
             f"{result.mean_tokens_per_second:.0f}" if result.mean_tokens_per_second else "n/a", config.output)
    return result
