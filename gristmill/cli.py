"""The `gristmill` command: one entry point, subcommands dispatched to thin `run(argv)` functions.

    gristmill score random|askllm|density --input GLOB --output DIR [flags]   (Beam jobs)
    gristmill select --input GLOB --output DIR --score FEATURE --rule RULE --rate R
    gristmill train | experiment | report | tokenizer train | demo

`gristmill <command> --help` lists a command's flags. Beam jobs pass every flag they do not
know to Beam (`--runner`, `--project`, `--temp_location`, ...).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback

from gristmill.pipelines.registry import SCORERS

# command words -> (module, function, one-line help). Modules are imported only when used.
COMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    **{("score", name): (module, "run", summary) for name, (module, summary) in SCORERS.items()},
    ("select",): ("gristmill.pipelines.select", "run", "select a subset by top-k, bottom-k, IPS or random"),
    ("curate",): ("gristmill.curate", "run", "run a declared chain of jobs incrementally, publish a selection"),
    ("train",): ("gristmill.training.main", "run", "pre-train a T5 on a selection"),
    ("experiment",): ("gristmill.eval.experiment", "run", "run a grid of samplers x rates x sizes"),
    ("report",): ("gristmill.eval.report", "run", "write the HTML report of an experiment"),
    ("evaluate",): ("gristmill.eval.quality", "run", "measure each scorer's selection quality against labels"),
    ("tokenizer", "train"): ("gristmill.training.vocab", "run", "train a SentencePiece vocabulary (T5 layout)"),
    ("demo",): ("gristmill.demo", "run", "run every stage on the embedded C4 sample"),
}

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, ImportError)


def _is_user_error(err: Exception) -> bool:
    """Errors that describe bad input or flags: printed as one line (GRISTMILL_DEBUG=1 shows the traceback)."""
    return isinstance(err, USER_ERRORS) or type(err).__module__.startswith("gristmill.")


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


class _DropNoise(logging.Filter):
    """Drops Beam's warning about optional GCP client libraries that gristmill does not use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def _configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    logging.getLogger("gristmill").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Runs one gristmill command; returns the process exit code (2 for usage and input errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
        run(rest)
    except Exception as err:  # noqa: BLE001 (turned into a one-line message or re-raised)
        if not _is_user_error(err):
            raise
        if os.environ.get("GRISTMILL_DEBUG"):
            traceback.print_exc()
        print(f"gristmill {' '.join(words)}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
