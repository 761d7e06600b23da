"""`gristmill demo`: every stage that exists, on the embedded 1,000-document C4 sample.

Stages chain through their outputs (each reads the scored TFRecords of the one before), so the
demo exercises exactly the code a production run does, on the in-process Beam runner.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import time
from typing import Any, Callable

from absl import flags

from gristmill.pipelines import transforms

log = logging.getLogger(__name__)


def embedded_corpus() -> str:
    """The glob of the embedded C4 sample shipped inside the package (1,000 real C4 `en` documents)."""
    return str(importlib.resources.files("gristmill") / "data" / "c4-olmo" / "c4-sample.*.json.gz")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs on and where it writes.

    askllm_limit caps the documents Ask-LLM scores so the demo stays within a few minutes on 2 cores.
    """

    output: str = "demo-out"
    corpus: str = dataclasses.field(default_factory=embedded_corpus)
    workers: int = 0
    seed: int = 0
    askllm_model: str = "smollm2-135m-instruct"
    askllm_limit: int = 100


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One row of the demo's summary table."""

    stage: str
    output: str
    seconds: float
    counts: dict[str, Any]
    notes: str = ""


def _beam_flags(config: DemoConfig) -> list[str]:
    return [f"--workers={config.workers}"] if config.workers else []


def _stage(name: str, output: str, body: Callable[[], dict[str, Any]], notes: str = "") -> StageResult:
    log.info("demo stage %s -> %s", name, output)
    start = time.monotonic()
    manifest = body()
    return StageResult(name, output, time.monotonic() - start, manifest["counts"], notes)


def run_random(config: DemoConfig, corpus: str) -> StageResult:
    """Scores the corpus with the Random baseline."""
    from gristmill.pipelines import score_random
    out = os.path.join(config.output, "random")
    argv = ["--input", corpus, "--output", out, f"--seed={config.seed}"] + _beam_flags(config)
    return _stage("score random", out, lambda: score_random.run(argv))


def run_demo(config: DemoConfig) -> list[StageResult]:
    """Runs the demo stages in order and returns their results."""
    results = [run_random(config, config.corpus)]
    return results


def format_summary(results: list[StageResult]) -> str:
    """The summary table printed at the end of the demo."""
    header = f"{'stage':<22} {'read':>6} {'written':>8} {'dead':>6} {'seconds':>8}  output"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.stage:<22} {r.counts['read']:>6} {r.counts['written']:>8} "
                     f"{r.counts['dead_lettered']:>6} {r.seconds:>8.1f}  {r.output}")
        if r.notes:
            lines.extend("    " + note for note in r.notes.splitlines())
    return "\n".join(lines)


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    defaults = DemoConfig()
    flags.DEFINE_string("output", defaults.output, "Directory for every stage's outputs.", flag_values=fv)
    flags.DEFINE_string("corpus", defaults.corpus, "Corpus glob (default: the embedded C4 sample).", flag_values=fv)
    flags.DEFINE_integer("workers", defaults.workers, "Beam worker processes (0: in-process).", flag_values=fv)
    flags.DEFINE_integer("seed", defaults.seed, "Seed for scores and selections.", flag_values=fv)
    flags.DEFINE_string("askllm_model", defaults.askllm_model, "Ask-LLM model name or path.", flag_values=fv)
    flags.DEFINE_integer("askllm_limit", defaults.askllm_limit, "Documents scored by Ask-LLM.", flag_values=fv)
    return fv


def parse_config(argv: list[str]) -> DemoConfig:
    """Parses demo flags into a DemoConfig."""
    fv = _flag_values()
    fv(["gristmill demo"] + list(argv))
    return DemoConfig(output=fv.output, corpus=fv.corpus, workers=fv.workers, seed=fv.seed,
                      askllm_model=fv.askllm_model, askllm_limit=fv.askllm_limit)


def run(argv: list[str]) -> list[StageResult]:
    """Entry point of `gristmill demo`: runs the stages and prints the summary."""
    config = parse_config(argv)
    results = run_demo(config)
    print()
    print(format_summary(results))
    final = transforms.read_manifest(results[0].output)["counts"]
    print(f"\nembedded corpus: {final['read']} read, {final['written']} written, "
          f"{final['dead_lettered']} dead-lettered")
    return results
