"""`gristmill train`: flags -> `TrainConfig` -> `train.train` (STYLE rule 9).

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

from absl import flags

from gristmill import flagparse
from gristmill.training import configs, optim
from gristmill.training.configs import TrainConfig


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    d = TrainConfig(data=("unused",), output="unused", steps=1)
    flags.DEFINE_list("data", None, "Scored TFRecords: globs, files or gristmill output directories, "
                      "comma-separated.", flag_values=fv)
    flags.DEFINE_string("output", None, "Run directory (checkpoints, metrics.jsonl, model/).", flag_values=fv)
    flags.DEFINE_integer("steps", None, "Optimizer steps (the data repeats as needed).", flag_values=fv)
    flags.DEFINE_enum("model_size", d.model_size, sorted(configs.SIZES), "Model size preset.", flag_values=fv)
    flags.DEFINE_string("plan", None, "Selection plan JSON; none trains on all documents.", flag_values=fv)
    flags.DEFINE_string("vocab", None, "SentencePiece model; none trains one into OUTPUT/vocab.", flag_values=fv)
    flags.DEFINE_integer("vocab_size", d.vocab_size, "Size of a vocabulary trained here (with 100 sentinels); "
                         "smaller when the data supports fewer pieces.",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Global batch (sequences); default: the preset's.", flag_values=fv)
    flags.DEFINE_integer("inputs_length", None, "Encoder length; default: the preset's (512).", flag_values=fv)
    flags.DEFINE_integer("targets_length", None, "Decoder length; default: the preset's (114).", flag_values=fv)
    flags.DEFINE_integer("seed", d.seed, "Seed of the init, dropout, shuffling and span noise.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Steps between checkpoints.", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "Checkpoints kept (the latest ones).",
                         flag_values=fv)
    flags.DEFINE_enum("optimizer", None, list(optim.OPTIMIZERS), "Default: the preset's (adafactor).",
                      flag_values=fv)
    flags.DEFINE_float("learning_rate", None, "Peak learning rate (default: T5's 1/sqrt(warmup) for Adafactor, "
                       "1e-3 for AdamW).", flag_values=fv)
    flags.DEFINE_integer("warmup_steps", None, "Warmup steps; default: the preset's (10000).", flag_values=fv)
    flags.DEFINE_enum("schedule", None, list(optim.SCHEDULES), "Default: rsqrt (Adafactor), cosine (AdamW).",
                      flag_values=fv)
    flags.DEFINE_integer("epochs", None, "Stop after this many passes over the selection (default: repeat).",
                         flag_values=fv)
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: bfloat16 on accelerators, "
                      "float32 on CPU).", flag_values=fv)
    flags.DEFINE_float("dropout_rate", None, "Default: the preset's (0 for T5 v1.1 pre-training).", flag_values=fv)
    flags.DEFINE_enum("remat_policy", d.remat_policy, ["none", "full", "dots", "dots_with_no_batch_dims"],
                      "Activation rematerialisation per layer (saves memory).", flag_values=fv)
    flags.DEFINE_float("z_loss", d.z_loss, "Weight of the log(Z)^2 auxiliary loss.", flag_values=fv)
    flags.DEFINE_bool("pack", d.pack, "Pack several examples per row.", flag_values=fv)
    flags.DEFINE_integer("concat_documents", d.concat_documents, "Documents concatenated before splitting "
                         "into rows (T5: 128).", flag_values=fv)
    flags.DEFINE_integer("shuffle_buffer", d.shuffle_buffer, "Documents in the shuffle buffer.", flag_values=fv)
    flags.DEFINE_integer("vocab_max_documents", d.vocab_max_documents, "Documents a vocabulary trained here "
                         "reads.", flag_values=fv)
    flags.DEFINE_integer("log_every", d.log_every, "Steps between progress lines.", flag_values=fv)
    flags.DEFINE_float("peak_tflops", None, "Per-device peak TFLOP/s for MFU (default: looked up).", flag_values=fv)
    for name in ("data", "output", "steps"):
        flags.mark_flag_as_required(name, flag_values=fv)
    return fv


def parse_config(argv: list[str]) -> TrainConfig:
    """Parses `gristmill train` flags into a TrainConfig (``--help`` prints the flags and exits)."""
    fv = flagparse.parse(_flag_values(), argv, "gristmill train --data GLOB --output DIR --steps N [flags]")
    fields = {name: fv[name].value for name in fv}
    fields["data"] = tuple(fields["data"])
    return TrainConfig(**{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__})


def run(argv: list[str]):
    """Entry point of `gristmill train`."""
    from gristmill.training import train

    return train.train(parse_config(argv))
