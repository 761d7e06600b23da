"""The `gristmill` command: one entry point, subcommands dispatched to thin `run(argv)` functions.

    gristmill score random|askllm|density --input GLOB --output DIR [flags]   (Beam jobs)
    gristmill select --input GLOB --output DIR --score FEATURE --rule RULE --rate R
    gristmill train | experiment | report | tokenizer train | demo

`gristmill <command> --help` lists a command's flags; an unknown flag or a stray argument is
refused (`gristmill.flags`), and Beam jobs pass Beam's own options to Beam (`--runner`,
`--project`, `--temp_location`, ...). A user error prints one line and exits 2, an environment
error (OSError) one line and exit 1, a bug its traceback (`gristmill.errors`); `--verbose` or
GRISTMILL_DEBUG=1 prints the traceback of every error.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback

from gristmill import errors, shutdown
from gristmill.pipelines.registry import SCORERS

# command words -> (module, function, one-line help). Modules are imported only when used.
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    **{("score", info.name): (info.module, "run", info.help) for info in SCORERS.values()},
    ("select",): ("gristmill.pipelines.select", "run", "select a subset by top-k, bottom-k, IPS or random"),
    ("curate",): ("gristmill.curate", "run", "run a declared chain of jobs incrementally, publish a selection"),
    ("gc",): ("gristmill.gc", "run", "remove superseded versions no manifest or published selection references"),
    ("export",): ("gristmill.export", "run", "write an output or a selection as Parquet or JSON lines (zstd)"),
    ("train",): ("gristmill.training.main", "run", "pre-train a T5 on a selection"),
    ("experiment",): ("gristmill.experiment", "run", "run a grid of samplers x rates x sizes"),
    ("report",): ("gristmill.eval.report", "run", "write the HTML report of an experiment"),
    ("evaluate",): ("gristmill.eval.quality", "run", "measure each scorer's selection quality against labels"),
    ("tokenizer", "train"): ("gristmill.training.vocab", "run", "train a SentencePiece vocabulary (T5 layout)"),
    ("demo",): ("gristmill.demo", "run", "run every stage on the embedded C4 sample"),
}

def _available() -> dict[tuple[str, ...], tuple[str, str, str]]:
    found = {}
    for words, (module, function, summary) in COMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[words] = (module, function, summary)
        except ModuleNotFoundError:  # its package is not there either
            pass
    return found


def usage() -> str:
    """The top-level help text listing the commands this installation has."""
    lines = ["usage: gristmill <command> [flags]   (gristmill <command> --help for its flags)", "", "commands:"]
    for words, (_, _, summary) in _available().items():
        lines.append(f"  {' '.join(words):<18} {summary}")
    return "\n".join(lines)


def _resolve(argv: list[str]):
    for words, target in sorted(_available().items(), key=lambda kv: -len(kv[0])):
        if tuple(argv[:len(words)]) == words:
            return words, target, argv[len(words):]
    return None, None, argv


# Warnings a user cannot act on, by the text that identifies them: Beam's optional GCP client
# libraries; RunInference's memory probe, which fails to import its optional model manager and then
# warns on every batch; orbax opening gristmill's own checkpoints read-only on purpose (training's resume).
NOISE = ("apitools not found", "Resource module is not available for current platform",
         "is read only", "Given directory is read only")


class _DropNoise(logging.Filter):
    """Drops the warnings in NOISE."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in NOISE)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    for name in ("absl", "apache_beam.ml.inference.base"):  # records logged on these loggers directly
        logging.getLogger(name).addFilter(_DropNoise())
    logging.getLogger("gristmill").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Runs one gristmill command; returns the process exit code (2 for user errors, 1 for OSError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or bool(os.environ.get("GRISTMILL_DEBUG"))
    argv = [arg for arg in argv if arg != "--verbose"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    words, target, rest = _resolve(argv)
    if target is None:
        print(f"gristmill: unknown command {' '.join(argv[:2])!r}\n\n{usage()}", file=sys.stderr)
        return 2
    _configure_logging()
    module_name, function, _ = target
    run = getattr(importlib.import_module(module_name), function)
    try:
        shutdown.run_stoppable(lambda: run(rest), f"gristmill {' '.join(words)}")  # Ctrl-C / SIGTERM: one line
    except Exception as err:  # noqa: BLE001 (a user or environment error is one line; a bug is re-raised)
        code = errors.exit_code(err)
        if code is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"gristmill {' '.join(words)}: error: {err or type(err).__name__}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
