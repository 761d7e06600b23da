"""The pre-training loop: state, a pure jitted train step, data-parallel sharding, checkpoints, metrics.

    train(TrainConfig) ->  OUTPUT/config.json        the run (TrainConfig, T5Config, optimizer, input)
                           OUTPUT/vocab/spiece.model  when no --vocab was given
                           OUTPUT/checkpoints/<step>/ orbax: state (params, opt state, step),
                                                      data (the tf.data iterator), run (JSON)
                           OUTPUT/metrics.jsonl       one JSON line per step
                           OUTPUT/model/              final params + t5_config.json + spiece.model

Train step (STYLE rule 8): ``train_step(state, batch, rng) -> (state, metrics)`` is pure, jitted
with the state donated; its dropout key is ``fold_in(rng, state.step)``, so a step's randomness
depends only on the seed and the step. Data parallel: one 1-D mesh ``("data",)`` over
``jax.devices()``; the batch is sharded on its leading axis, parameters and optimizer state are
replicated (the global batch must divide by the device count). Compute is bfloat16 on
accelerators and float32 on CPU unless `TrainConfig.dtype` says otherwise; parameters are float32.

Data and epochs (iso-compute, PAPER.md §5.2): the selection is read one epoch at a time, each
epoch a `data.make_dataset` pass with its own seed derived from (seed, epoch) (fresh shuffle and
span-corruption noise), for as many epochs as `steps` needs (or at most `TrainConfig.epochs`).
The metrics report the epoch; its fraction is estimated from the previous epoch's batch count.

Exact resume: a checkpoint holds the train state and the data position: the epoch, the batches
read in it, and the tf.data iterator itself (``tf.train.Checkpoint``, which saves the shuffle
buffer and the pipeline's internal position; about the shuffle buffer's documents in size), so
resuming neither re-reads nor skips data and costs the same at any step. A run stopped at step k and resumed computes the same losses as an
uninterrupted one (tested bitwise on CPU). metrics.jsonl lines past the restored step are dropped.

MFU = FLOPs per step / step time / (peak FLOP/s per device x devices), with FLOPs per row from
`model.flops_per_sequence` (6N per token + attention) and the peak from `--peak_tflops` or the
`PEAK_TFLOPS` table (dense bf16); on CPU, unknown devices, the MFU is null.
tokens/s counts input tokens (batch x inputs_length), the paper's convention (1024 x 512 per step).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gristmill import sampling
from gristmill.models import t5
from gristmill.training import configs, data, model as model_lib, optim
from gristmill.training.configs import TrainConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
VOCAB_DIR = "vocab"
MODEL_CONFIG_FILE = "t5_config.json"
VOCAB_FILE = "spiece.model"

# Dense bfloat16 peak TFLOP/s per chip, matched as a substring of `jax.Device.device_kind`
# (longest key first). Vendor datasheets; SXM parts for NVIDIA unless named.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "H800": 989.0,
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0, "V100": 125.0,  # V100: fp16
    "TPU v2": 45.0, "TPU v3": 123.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


class TrainError(RuntimeError):
    """Training cannot start or continue (bad data, incompatible resume, unreadable run)."""


# ----------------------------------------------------------------------------- state and step

@flax.struct.dataclass
class TrainState:
    """What changes during training: the step (updates applied), params and optimizer state."""
    step: jax.Array
    params: Any
    opt_state: Any


def init_state(model: model_lib.EncoderDecoderModel, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Step 0: T5-initialised params and the optimizer's initial state."""
    params = model_lib.init_params(model.config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_train_step(model: model_lib.EncoderDecoderModel, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable:
    """The pure ``train_step(state, batch, rng) -> (state, metrics)`` (not yet jitted)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
        (total, metrics), grads = grad_fn(state.params, batch, step_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, total_loss=total, grad_norm=optax.tree.norm(grads),
                       learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_mesh(devices: Optional[list] = None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh ``("data",)`` over the devices (all of them by default)."""
    return jax.sharding.Mesh(np.asarray(devices or jax.devices()), ("data",))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Batches: leading axis split over the mesh."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Params, optimizer state, rng, metrics: a full copy on every device."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def compiled_functions(model: model_lib.EncoderDecoderModel, optimizer: optim.OptimizerConfig, total_steps: int,
                       mesh: jax.sharding.Mesh):
    """(init(rng) -> replicated state, jitted train_step, schedule, tx); cached, so runs in one process that
    differ only in their length (rsqrt and constant schedules ignore it) reuse the compilation."""
    if optimizer.resolved_schedule != optim.COSINE:
        total_steps = 0
    return _compiled_functions(model, optimizer, total_steps, mesh)


@functools.lru_cache(maxsize=8)
def _compiled_functions(model, optimizer, total_steps, mesh):
    tx, schedule = optim.make_optimizer(optimizer, total_steps)
    rep, batch = replicated(mesh), batch_sharding(mesh)

    def init(rng: jax.Array) -> TrainState:
        return jax.device_put(init_state(model, tx, rng), rep)

    step = jax.jit(make_train_step(model, tx, schedule), donate_argnums=0,
                   in_shardings=(rep, batch, rep), out_shardings=(rep, rep))
    return init, step, schedule, tx


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def peak_flops_per_device(device: Any = None, peak_tflops: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device: ``peak_tflops`` if given, else `PEAK_TFLOPS` by device kind, else None."""
    if peak_tflops:
        return peak_tflops * 1e12
    kind = getattr(device or jax.devices()[0], "device_kind", "")
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in kind.lower():
            return PEAK_TFLOPS[key] * 1e12
    return None


# ----------------------------------------------------------------------------- data stream

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
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "previous_epoch_batches": self.previous_epoch_batches}

    def save(self, directory: str) -> None:
        """Writes the position (JSON) and this process's tf.data iterator state under ``directory``."""
        import tensorflow as tf

        name = f"process_{jax.process_index()}"
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(self.position(), f)
        if self._iterator is not None:
            tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(directory, name, "iterator"))

    def restore(self, directory: str) -> None:
        """Restores what `save` wrote: the next batch is the one that followed the save."""
        import tensorflow as tf

        name = f"process_{jax.process_index()}"
        path = os.path.join(directory, f"{name}.json")
        if not os.path.exists(path):
            raise TrainError(f"{directory}: no data position for {name}")
        with open(path) as f:
            position = json.load(f)
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        self.previous_epoch_batches = position["previous_epoch_batches"]
        self._iterator = None
        prefix = os.path.join(directory, name, "iterator")
        if tf.io.gfile.exists(prefix + ".index"):
            self._iterator = self._open()
            tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()
        elif self.batch_in_epoch:
            raise TrainError(f"{directory}: data position {position} but no saved iterator")


# ----------------------------------------------------------------------------- checkpoints

def _checkpoint_manager(directory: str, keep: int, read_only: bool = False):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


@functools.lru_cache(maxsize=None)
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


def _save_checkpoint(manager, state: TrainState, stream: BatchStream, run: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(state.step)
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=_data_args()(stream), run=ocp.args.JsonSave(run)))


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# ----------------------------------------------------------------------------- metrics

class MetricsWriter:
    """Appends one JSON object per line to OUTPUT/metrics.jsonl (dropping lines past a resumed step)."""

    def __init__(self, path: str, resume_step: int = 0):
        self.path = path
        self._file = None
        if jax.process_index() != 0:
            return
        kept = []
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        with open(path, "w") as f:
            f.writelines(kept)
        self._file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class StepRecorder:
    """Turns each step's metrics into a metrics.jsonl line, and every `log_every` steps a progress line.

    Step time is the time between consecutive steps' metrics becoming available on the host, so
    it includes everything the step waited for (input pipeline, checkpoints); the first step after
    a (re)start includes compilation and is left out of the means.
    """

    def __init__(self, writer: MetricsWriter, *, start_step: int, total_steps: int, tokens_per_step: int,
                 flops_per_step: float, peak_flops: Optional[float], devices: int, log_every: int):
        self.writer, self.start_step, self.total_steps = writer, start_step, total_steps
        self.tokens_per_step, self.flops_per_step, self.log_every = tokens_per_step, flops_per_step, log_every
        self.peak = peak_flops * devices if peak_flops else None
        self.throughput: list[float] = []
        self.mfus: list[float] = []
        self.last: dict[str, Any] = {}
        self.t_start = self.t_prev = time.monotonic()

    def __call__(self, step: int, metrics: Any, position: dict[str, Any], epochs: Optional[float]) -> dict[str, Any]:
        values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(values["loss"]):
            raise TrainError(f"loss is {values['loss']} at step {step}; resume from an earlier checkpoint with "
                             "another learning rate or seed")
        now = time.monotonic()
        seconds, self.t_prev = now - self.t_prev, now
        first = step == self.start_step + 1
        out = {"step": step, **values, "step_time_s": seconds, "tokens_per_second": self.tokens_per_step / seconds,
               "mfu": self.flops_per_step / seconds / self.peak if self.peak else None,
               "tokens_seen": step * self.tokens_per_step, "epoch": epochs, "data_epoch": position["epoch"],
               "includes_compile": first, "elapsed_s": now - self.t_start}
        if not first:
            self.throughput.append(out["tokens_per_second"])
            if out["mfu"] is not None:
                self.mfus.append(out["mfu"])
        self.writer.write(out)
        if step % self.log_every == 0 or step == self.total_steps:
            mfu = f" MFU {100 * out['mfu']:.1f}%" if out["mfu"] is not None else ""
            epoch = f"{epochs:.2f}" if epochs is not None else str(position["epoch"])
            log.info("step %d/%d loss %.4f acc %.3f lr %.2e %.0f tok/s%s epoch %s", step, self.total_steps,
                     out["loss"], out["accuracy"], out["learning_rate"], out["tokens_per_second"], mfu, epoch)
        self.last = out
        return out

    @property
    def mean_tokens_per_second(self) -> Optional[float]:
        return float(np.mean(self.throughput)) if self.throughput else None

    @property
    def mean_mfu(self) -> Optional[float]:
        return float(np.mean(self.mfus)) if self.mfus else None


# ----------------------------------------------------------------------------- the run

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
    selection, so that runs over different selections can share it when given the same output).
    For an experiment grid, train one with `gristmill tokenizer train` and pass it to every run.
    """
    if config.vocab:
        return config.vocab
    path = os.path.join(config.output, VOCAB_DIR, VOCAB_FILE)
    if os.path.exists(path):
        return path
    from gristmill.training import vocab as vocab_lib

    texts = []
    for document in data.read_documents(files).take(config.vocab_max_documents).as_numpy_iterator():
        texts.append(document["text"].decode("utf-8"))
    if not texts:
        raise TrainError(f"no documents in {files} to train a vocabulary on")
    log.info("training a %d-token SentencePiece vocabulary on %d documents -> %s", config.vocab_size, len(texts), path)
    vocab_lib.train_sentencepiece(texts, config.vocab_size, path[:-len(".model")])
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

    os.makedirs(config.output, exist_ok=True)
    files = data.list_files(list(config.data))
    check_records(files[0])
    if config.vocab is None and jax.process_count() > 1:
        raise configs.ConfigError("multi-host runs need --vocab (train one with `gristmill tokenizer train`)")
    vocab_path = resolve_vocab(config, files)
    vocabulary = vocab_lib.T5Vocabulary.from_file(vocab_path)
    plan = None
    if config.plan:
        with open(config.plan) as f:
            plan = sampling.Plan.from_json(f.read())
    model_config = config.model_config(vocabulary.vocab_size, config.dtype or default_dtype())
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
        "vocab": os.path.abspath(vocab_path), "tokenizer_vocab_size": vocabulary.vocab_size,
        "parameters": t5.count_params(model_config),
        "flops_per_step": batch_size * model_lib.flops_per_sequence(model_config, inputs_length, targets_length),
    }
    path = os.path.join(config.output, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            _check_resume(json.load(f), record)
    if jax.process_index() == 0:
        with open(path, "w") as f:
            f.write(configs.dumps(record))
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
    import orbax.checkpoint as ocp

    setup = prepare(config)
    model, mesh = setup.model, make_mesh()
    init, train_step, _, tx = compiled_functions(model, setup.optimizer, config.steps, mesh)
    root = jax.random.key(config.seed)
    params_rng, dropout_rng = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    stream = BatchStream(setup.files, setup.vocabulary, setup.input_config, setup.plan, max_epochs=config.epochs)
    manager = _checkpoint_manager(os.path.join(config.output, CHECKPOINTS_DIR), config.keep_checkpoints)
    resume_step = manager.latest_step()
    if resume_step is None:
        state = init(params_rng)
    else:
        abstract = _abstract(jax.eval_shape(functools.partial(init_state, model, tx), params_rng), replicated(mesh))
        state = manager.restore(resume_step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=_data_args()(stream))).state
        log.info("resumed %s at step %d (data epoch %d, batch %d)", config.output, resume_step, stream.epoch,
                 stream.batch_in_epoch)
    step = int(state.step)
    inputs_length, targets_length = config.lengths
    batch_size, devices = config.global_batch_size, len(jax.devices())
    writer = MetricsWriter(os.path.join(config.output, METRICS_FILE), step)
    recorder = StepRecorder(writer, start_step=step, total_steps=config.steps,
                            tokens_per_step=batch_size * inputs_length, flops_per_step=setup.record["flops_per_step"],
                            peak_flops=peak_flops_per_device(jax.devices()[0], config.peak_tflops), devices=devices,
                            log_every=config.log_every)
    shard = batch_sharding(mesh)
    rng = jax.device_put(dropout_rng, replicated(mesh))
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
                _save_checkpoint(manager, state, stream, {"step": step, **stream.position()})
        if pending is not None:
            recorder(*pending)
        if manager.latest_step() != step:
            _save_checkpoint(manager, state, stream, {"step": step, **stream.position()})
        manager.wait_until_finished()
    finally:
        writer.close()
        manager.close()
    save_model(os.path.join(config.output, MODEL_DIR), state.params, model.config, setup.vocab_path)
    result = TrainResult(config.output, step, recorder.last, recorder.mean_tokens_per_second, recorder.mean_mfu)
    log.info("done: step %d, loss %s, %s tokens/s -> %s", step, recorder.last.get("loss"),
             f"{result.mean_tokens_per_second:.0f}" if result.mean_tokens_per_second else "n/a", config.output)
    return result


# ----------------------------------------------------------------------------- trained models

class TrainedModel(NamedTuple):
    """A trained T5: its config, float32 params (the `t5` functions' tree) and SentencePiece model path."""
    config: t5.T5Config
    params: Any
    vocab_path: str


def save_model(directory: str, params: Any, config: t5.T5Config, vocab_path: str) -> None:
    """Writes params (orbax), ``t5_config.json`` and a copy of the vocabulary into ``directory``."""
    import orbax.checkpoint as ocp

    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(os.path.join(directory, "params")), params)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, MODEL_CONFIG_FILE), "w") as f:
        f.write(configs.dumps(dataclasses.asdict(config)))
    shutil.copyfile(vocab_path, os.path.join(directory, VOCAB_FILE))


def read_run(output_dir: str) -> dict[str, Any]:
    """The run's config.json (train, model, optimizer, input, vocab, parameters, flops_per_step)."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise TrainError(f"{output_dir}: not a training run (no {CONFIG_FILE})")
    with open(path) as f:
        return json.load(f)


def checkpoint_steps(output_dir: str) -> list[int]:
    """Steps with a saved checkpoint, ascending (for evaluating along the training curve)."""
    directory = os.path.join(output_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


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
    abstract = _abstract(t5.param_shapes(config), device)
    if step is None:
        directory = os.path.join(output_dir, MODEL_DIR)
        if not os.path.isdir(os.path.join(directory, "params")):
            raise TrainError(f"{output_dir}: no final model (training did not finish); pass a checkpoint step "
                             f"from {checkpoint_steps(output_dir)}")
        params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(directory, "params")), abstract)
        return TrainedModel(config, params, os.path.join(directory, VOCAB_FILE))
    if step not in checkpoint_steps(output_dir):
        raise TrainError(f"{output_dir}: no checkpoint at step {step}; have {checkpoint_steps(output_dir)}")
    optimizer = optim.OptimizerConfig(**run["optimizer"])
    tx, _ = optim.make_optimizer(optimizer, run["train"]["steps"])
    abstract_state = _abstract(jax.eval_shape(functools.partial(init_state, model_lib.EncoderDecoderModel(config), tx),
                                              jax.random.key(0)), device)
    manager = _checkpoint_manager(os.path.join(output_dir, CHECKPOINTS_DIR), run["train"]["keep_checkpoints"],
                                  read_only=True)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    finally:
        manager.close()
    return TrainedModel(config, restored.state.params, run["vocab"])
