"""Model-size presets and the run configuration of `gristmill train` (frozen dataclasses).

A `SizePreset` bundles the architecture (a `t5.T5Config`; its vocabulary size is filled in from
the tokenizer), the sequence lengths, the batch size and the optimizer defaults. The sizes:

| preset       | architecture                           | parameters (vocab 32128) |
|--------------|----------------------------------------|--------------------------|
| `tiny`       | d_model 64, 2+2 layers, seq 128 / 32   | tests and CPU runs       |
| `small`      | T5 v1.1 small (8+8 layers, d 512)      | 76,961,152 (44.1M non-embedding) |
| `base`       | T5 v1.1 base (12+12 layers, d 768)     | 247,577,856              |
| `large`      | T5 v1.1 large (24+24 layers, d 1024)   | 783,150,080              |
| `small_v1_0` | T5 1.0 small (6+6, ReLU, tied)         | 60,506,624               |
| `base_v1_0`  | T5 1.0 base                            | 222,903,552              |
| `large_v1_0` | T5 1.0 large                           | 737,668,096              |

The paper (docs/paper.md §5.1) trains "T5-Small (60M)" and "T5-Large (800M)" with the original T5
settings and does not say which T5 version: 60M is T5 1.0 small, 800M is nearest T5 v1.1 large.
`small`/`base`/`large` are v1.1 (what T5X pre-trains, dropout off in pre-training as v1.1
prescribes); the `_v1_0` presets give the 1.0 shapes. All use sequences of 512 inputs / 114
targets (T5's span-corruption lengths) and the paper's batch of 1024 sequences; on smaller
hardware pass `--batch_size`.

Vocabulary: the model's `vocab_size` is the tokenizer's (pieces + 100 sentinels) rounded up to a
multiple of 128, as T5 pads 32100 to 32128; the extra rows are never used as targets.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from gristmill.models import t5
from gristmill.training import optim
from gristmill.training.optim import OptimizerConfig

VOCAB_MULTIPLE = 128


class ConfigError(ValueError):
    """A run configuration is invalid or does not match the run it resumes."""


class TrainError(RuntimeError):
    """Training cannot start or continue (bad data, incompatible resume, unreadable run)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizePreset:
    """One named model size with its training defaults."""

    name: str
    model: t5.T5Config
    inputs_length: int = 512
    targets_length: int = 114
    batch_size: int = 1024
    optimizer: OptimizerConfig = OptimizerConfig()


def _v1_1(name: str) -> t5.T5Config:
    return t5.preset(f"t5_1_1_{name}", dropout_rate=0.0)


def _v1_0(d_model: int, d_ff: int, heads: int, layers: int) -> t5.T5Config:
    return t5.T5Config(vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_heads=heads, num_layers=layers,
                       num_decoder_layers=layers, feed_forward_proj="relu", tie_word_embeddings=True,
                       dropout_rate=0.0)


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(
        name="tiny",
        model=t5.T5Config(vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2,
                          num_decoder_layers=2, dropout_rate=0.0),
        inputs_length=128, targets_length=32, batch_size=16,
        optimizer=OptimizerConfig(warmup_steps=100)),
    "small": SizePreset(name="small", model=_v1_1("small")),
    "base": SizePreset(name="base", model=_v1_1("base")),
    "large": SizePreset(name="large", model=_v1_1("large")),
    "small_v1_0": SizePreset(name="small_v1_0", model=_v1_0(512, 2048, 8, 6)),
    "base_v1_0": SizePreset(name="base_v1_0", model=_v1_0(768, 3072, 12, 12)),
    "large_v1_0": SizePreset(name="large_v1_0", model=_v1_0(1024, 4096, 16, 24)),
}


def size(name: str) -> SizePreset:
    """The preset called ``name`` (see `SIZES`)."""
    if name not in SIZES:
        raise ConfigError(f"unknown model size {name!r}; known: {sorted(SIZES)}")
    return SIZES[name]


def padded_vocab_size(tokenizer_vocab_size: int) -> int:
    """The model's embedding rows for a tokenizer: rounded up to a multiple of 128 (32100 -> 32128)."""
    return -(-int(tokenizer_vocab_size) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything `train` needs; `None` fields take the size preset's default.

    data: scored TFRecords: globs, files or gristmill output directories (read through their
        manifest), local or gs:// (`gristmill score ...` / `select` output; `id` and `text` needed).
    output: run directory (checkpoints/, model/, metrics.jsonl, config.json, vocab/).
    steps: optimizer steps (iso-compute: the data repeats as often as needed, see `epochs`).
    model_size: a key of `SIZES`.
    plan: a selection-plan JSON (`sampling.Plan`); None trains on all documents.
    vocab: a SentencePiece model; None trains one of `vocab_size` on the data into
        ``output/vocab/spiece.model`` (reused when the run resumes).
    vocab_size, vocab_max_documents: that vocabulary's size (with the 100 sentinels; smaller, and
        logged, when those documents support fewer pieces) and the documents it is trained on (the
        first ones of the unselected data).
    epochs: stop after this many passes over the selection even if `steps` is not reached;
        None repeats forever.
    dtype: compute dtype; None is bfloat16 on accelerators and float32 on CPU (params stay float32).
    dropout_rate: overrides the preset's (0 for T5 v1.1 pre-training).
    remat_policy: activation rematerialisation per layer (`t5.T5Config.remat_policy`): none, full,
        dots, dots_with_no_batch_dims; trades compute for memory on large batches.
    z_loss: weight of T5X's ``log(Z)^2`` auxiliary loss (0 disables).
    pack: pack several examples per row (segment-masked attention) or one per row.
    checkpoint_every, keep_checkpoints: orbax checkpoint interval (steps) and how many to keep.
    log_every: steps between progress lines (metrics.jsonl gets every step).
    peak_tflops: accelerator peak for MFU; None looks the device up in `metrics.PEAK_TFLOPS`.
    """

    data: tuple[str, ...] = dataclasses.field(metadata={
        "help": "Scored TFRecords: globs, files or gristmill output directories"})
    output: str = dataclasses.field(metadata={"help": "Run directory (checkpoints, metrics.jsonl, model/)"})
    steps: int = dataclasses.field(metadata={"help": "Optimizer steps (the data repeats as needed)"})
    model_size: str = dataclasses.field(default="small", metadata={"help": "Model size preset",
                                                                   "choices": sorted(SIZES)})
    plan: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Selection plan JSON; none trains on all documents"})
    vocab: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "SentencePiece model; none trains one into OUTPUT/vocab"})
    vocab_size: int = dataclasses.field(default=32100, metadata={
        "help": "Size of a vocabulary trained here (with 100 sentinels); smaller when the data supports fewer "
                "pieces"})
    vocab_max_documents: int = dataclasses.field(default=100_000, metadata={
        "help": "Documents a vocabulary trained here reads"})
    batch_size: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Global batch (sequences); default: the preset's"})
    inputs_length: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Encoder length; default: the preset's (512)"})
    targets_length: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Decoder length; default: the preset's (114)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the init, dropout, shuffling and span noise"})
    optimizer: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Default: the preset's (adafactor)", "choices": list(optim.OPTIMIZERS)})
    learning_rate: Optional[float] = dataclasses.field(default=None, metadata={
        "help": "Peak learning rate (default: T5's 1/sqrt(warmup) for Adafactor, 1e-3 for AdamW)"})
    warmup_steps: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Warmup steps; default: the preset's (10000)"})
    schedule: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Default: rsqrt (Adafactor), cosine (AdamW)", "choices": list(optim.SCHEDULES)})
    epochs: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Stop after this many passes over the selection (default: repeat)"})
    dtype: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Compute dtype (default: bfloat16 on accelerators, float32 on CPU)",
        "choices": ["float32", "bfloat16"]})
    dropout_rate: Optional[float] = dataclasses.field(default=None, metadata={
        "help": "Default: the preset's (0 for T5 v1.1 pre-training)"})
    remat_policy: str = dataclasses.field(default="none", metadata={
        "help": "Activation rematerialisation per layer (saves memory)",
        "choices": ["none", "full", "dots", "dots_with_no_batch_dims"]})
    z_loss: float = dataclasses.field(default=1e-4, metadata={"help": "Weight of the log(Z)^2 auxiliary loss"})
    pack: bool = dataclasses.field(default=True, metadata={"help": "Pack several examples per row (--nopack: one)"})
    concat_documents: int = dataclasses.field(default=128, metadata={
        "help": "Documents concatenated before splitting into rows (T5: 128)"})
    shuffle_buffer: int = dataclasses.field(default=10_000, metadata={"help": "Documents in the shuffle buffer"})
    checkpoint_every: int = dataclasses.field(default=1000, metadata={"help": "Steps between checkpoints"})
    keep_checkpoints: int = dataclasses.field(default=3, metadata={"help": "Checkpoints kept (the latest ones)"})
    log_every: int = dataclasses.field(default=10, metadata={"help": "Steps between progress lines"})
    peak_tflops: Optional[float] = dataclasses.field(default=None, metadata={
        "help": "Per-device peak TFLOP/s for MFU (default: looked up)"})

    # Fields that may change when a run is resumed (they do not change what is computed).
    RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "peak_tflops", "epochs")

    def __post_init__(self):
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        object.__setattr__(self, "data", tuple(self.data))
        if not self.data:
            raise ConfigError("data: at least one TFRecord glob is needed")
        size(self.model_size)
        for name in ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "concat_documents"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "inputs_length", "targets_length", "epochs", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.z_loss < 0:
            raise ConfigError(f"z_loss must be >= 0, got {self.z_loss}")
        if self.dropout_rate is not None and not 0 <= self.dropout_rate < 1:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def preset(self) -> SizePreset:
        """The size preset named by `model_size`."""
        return size(self.model_size)

    def optimizer_config(self) -> OptimizerConfig:
        """The preset's optimizer defaults with this run's overrides."""
        base = self.preset.optimizer
        changes: dict[str, Any] = {"learning_rate": self.learning_rate, "schedule": self.schedule}
        if self.optimizer is not None:
            changes["name"] = self.optimizer
        if self.warmup_steps is not None:
            changes["warmup_steps"] = self.warmup_steps
        return base.replace(**changes)

    def model_config(self, tokenizer_vocab_size: int, dtype: str) -> t5.T5Config:
        """The preset's T5Config for this tokenizer, compute dtype and dropout."""
        changes: dict[str, Any] = {"vocab_size": padded_vocab_size(tokenizer_vocab_size), "dtype": dtype,
                                   "remat_policy": self.remat_policy}
        if self.dropout_rate is not None:
            changes["dropout_rate"] = self.dropout_rate
        return self.preset.model.replace(**changes)

    @property
    def global_batch_size(self) -> int:
        """Sequences per step over all devices and hosts."""
        return self.batch_size or self.preset.batch_size

    @property
    def lengths(self) -> tuple[int, int]:
        """(inputs_length, targets_length)."""
        return (self.inputs_length or self.preset.inputs_length, self.targets_length or self.preset.targets_length)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        out = dataclasses.asdict(self)
        out["data"] = list(self.data)
        return out

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}")
        return cls(**fields)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def model_config_from_dict(fields: Mapping[str, Any]) -> t5.T5Config:
    """A `t5.T5Config` from its `dataclasses.asdict` form (as saved in a run's config.json)."""
    return t5.T5Config(**fields)


def dumps(obj: Any) -> str:
    """Stable, readable JSON for config files."""
    return json.dumps(obj, indent=2, sort_keys=True)
