"""What went wrong, for the `gristmill` command: a user's mistake, the environment, or a bug.

- A user error (`UsageError`, or a class in `USER_ERROR_CLASSES`): a flag, a config or an input
  to change. One line, exit code 2.
- An environment error (`OSError`: disk full, permission denied, a lost connection): one line,
  exit code 1.
- Anything else is a bug in gristmill: it keeps its traceback.

`--verbose` (or GRISTMILL_DEBUG=1) prints the traceback of user and environment errors too.
"""

from __future__ import annotations

USAGE_EXIT = 2
ENVIRONMENT_EXIT = 1


class UsageError(ValueError):
    """A mistake in a command's flags, config or input; the message says what to change."""


# User-error classes defined before this module, by module and qualified name (so checking an
# error imports nothing). New ones subclass UsageError instead.
USER_ERROR_CLASSES = frozenset({
    "gristmill.documents.InputError",
    "gristmill.pipelines.units.OutputConflictError",
    "gristmill.lease.LeaseHeldError",
    "gristmill.records.CorruptOutputError",
    "gristmill.records.IncompleteRunError",
    "gristmill.sampling.SamplingError",
    "gristmill.pipelines.resources.AcceleratorSpecError",
    "gristmill.training.configs.ConfigError",
    "gristmill.training.configs.TrainError",
    "gristmill.training.data.DataError",
    "gristmill.training.optim.OptimizerError",
    "gristmill.models.checkpoints.CheckpointError",
    "gristmill.scoring.askllm.PromptTemplateError",
    "gristmill.scoring.heads.HeadError",
    "gristmill.scoring.embeddings.EmbeddingError",
})


def exit_code(err: BaseException) -> int | None:
    """2 for a user error, 1 for an environment error, None for a bug (keep its traceback)."""
    if isinstance(err, UsageError) or any(f"{cls.__module__}.{cls.__qualname__}" in USER_ERROR_CLASSES
                                          for cls in type(err).__mro__):
        return USAGE_EXIT
    if isinstance(err, OSError):
        return ENVIRONMENT_EXIT
    return None
