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

from gristmill import flagparse, records

log = logging.getLogger(__name__)


def embedded_corpus() -> str:
    """The glob of the embedded C4 sample shipped inside the package (1,000 real C4 `en` documents)."""
    return str(importlib.resources.files("gristmill") / "data" / "c4-olmo" / "c4-sample.*.json.gz")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs on and where it writes.

    documents: the first N documents of the corpus go through every stage, so every sampler selects
    from documents its scorer scored and the demo stays within a few minutes on 2 cores;
    train_steps is the budget of each `tiny` training run.
    """

    output: str = "demo-out"
    corpus: str = dataclasses.field(default_factory=embedded_corpus)
    workers: int = 0
    seed: int = 0
    askllm_model: str = "smollm2-135m-instruct"
    documents: int = 200
    askllm_max_length: int = 128
    train_steps: int = 40


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One row of the demo's summary table."""

    stage: str
    output: str
    seconds: float
    counts: dict[str, Any]  # the stage's manifest counts; empty for stages that read no corpus
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
    argv = ["--input", corpus, "--output", out, f"--seed={config.seed}", f"--limit={config.documents}",
            "--overwrite"] + _beam_flags(config)
    return _stage("score random", out, lambda: score_random.run(argv))


def run_density(config: DemoConfig, corpus: str) -> StageResult:
    """Scores the corpus with the Density sketch over MiniLM embeddings (the paper's R x B sketch)."""
    from gristmill.pipelines import score_density
    out = os.path.join(config.output, "density")
    argv = ["--input", corpus, "--output", out, f"--seed={config.seed}", "--overwrite"] + _beam_flags(config)
    return _stage("score density", out, lambda: score_density.run(argv))


def run_askllm(config: DemoConfig, corpus: str) -> StageResult:
    """Scores a capped sample of the corpus with Ask-LLM and notes the highest and lowest scored."""
    from gristmill.pipelines import score_askllm
    from gristmill.scoring import askllm
    out = os.path.join(config.output, "askllm")
    argv = ["--input", corpus, "--output", out, "--model", config.askllm_model, "--overwrite",
            f"--max_length={config.askllm_max_length}", "--batch_size=8"] + _beam_flags(config)
    result = _stage("score askllm", out, lambda: score_askllm.run(argv))
    feature = records.score_feature(score_askllm.SCORER_NAME, askllm.model_name_of(config.askllm_model))
    ranked = sorted((r for r in records.iter_scored_records(out) if feature in r),
                    key=lambda r: -r[feature])
    notes = ["highest P(yes):"] + [_excerpt(r, feature) for r in ranked[:3]]
    notes += ["lowest P(yes):"] + [_excerpt(r, feature) for r in ranked[-3:]]
    return dataclasses.replace(result, notes="\n".join(notes))


def run_select(config: DemoConfig, name: str, scored_dir: str, feature: str, rule: str, rate: float) -> StageResult:
    """Selects `rate` of a scored corpus by `rule` over `feature` and notes a few kept documents."""
    from gristmill.pipelines import select
    out = os.path.join(config.output, name)
    argv = ["--input", scored_dir, "--output", out, "--score", feature, "--rule", rule,
            f"--rate={rate}", f"--seed={config.seed}", "--missing=drop", "--overwrite"] + _beam_flags(config)
    result = _stage(f"select {rule} {rate:.0%}", out, lambda: select.run(argv))
    kept = sorted(records.iter_scored_records(out), key=lambda r: -r[feature])
    if rule == "ips":  # show the kept documents from the sparsest neighbourhoods: those IPS favours
        kept = kept[::-1]
    notes = [f"kept {len(kept)} by {rule} on {feature}, e.g.:"] + [_excerpt(r, feature) for r in kept[:3]]
    return dataclasses.replace(result, notes="\n".join(notes))


def _excerpt(record: records.Record, feature: str, width: int = 90) -> str:
    text = " ".join(record[records.TEXT].split())
    return f"  {record[feature]:.4g}  {text[:width]}{'...' if len(text) > width else ''}"


def run_training(config: DemoConfig, scored_dir: str, askllm_feature: str, density_feature: str) -> StageResult:
    """Trains `tiny` T5s on full data and on two 20% selections, evaluates them and writes the report."""
    from gristmill.eval import experiment, report
    out = os.path.join(config.output, "experiment")
    samplers = (experiment.SamplerSpec(name="full"),
                experiment.SamplerSpec(name="askllm", rule="topk", score=askllm_feature, missing="drop"),
                experiment.SamplerSpec(name="density", rule="ips", score=density_feature))
    exp = experiment.ExperimentConfig(
        scored=(scored_dir,), output=out, samplers=samplers, rates=(0.2,), models=("tiny",),
        steps=(config.train_steps,), evaluations=2, seed=config.seed, vocab_size=2000,
        train={"batch_size": 8}, eval=dataclasses.replace(experiment.ppl.PerplexityConfig(), max_documents=40))
    start = time.monotonic()
    rows = experiment.run_experiment(exp)
    page = os.path.join(config.output, "report.html")
    report.write_report(out, page, scored_dir)
    final = {(r["sampler"], r["metric"]): r["value"] for r in metrics_final(rows)}
    notes = [f"{sampler:>8}: " + ", ".join(f"{metric.split('/')[-1]} {value:.1f}"
                                           for (s, metric), value in sorted(final.items()) if s == sampler)
             for sampler in sorted({s for s, _ in final})]
    notes.append(f"report: {page}")
    runs = len({r["run"] for r in rows})
    return StageResult("train + evaluate", out, time.monotonic() - start, {},
                       f"{runs} runs of {config.train_steps} steps; final perplexities (lower is better):\n"
                       + "\n".join(notes))


def metrics_final(rows):
    """The last checkpoint's result rows of each run."""
    from gristmill.eval import metrics
    return [dataclasses.asdict(r) for r in metrics.final_results(rows)]


def run_demo(config: DemoConfig) -> list[StageResult]:
    """Runs the demo stages in order, each reading the previous stage's scored records."""
    random_stage = run_random(config, config.corpus)
    density_stage = run_density(config, random_stage.output)
    askllm_stage = run_askllm(config, density_stage.output)
    density_feature = records.score_feature("density", "minilm")
    askllm_feature = records.score_feature("askllm", _askllm_name(config))
    results = [random_stage, density_stage, askllm_stage,
               run_select(config, "select-askllm-top20", askllm_stage.output, askllm_feature, "topk", 0.2),
               run_select(config, "select-density-ips20", askllm_stage.output, density_feature, "ips", 0.2)]
    if config.train_steps > 0:
        results.append(run_training(config, askllm_stage.output, askllm_feature, density_feature))
    return results


def _askllm_name(config: DemoConfig) -> str:
    from gristmill.scoring.askllm import model_name_of
    return model_name_of(config.askllm_model)


def format_summary(results: list[StageResult]) -> str:
    """The summary table printed at the end of the demo."""
    header = f"{'stage':<22} {'read':>6} {'written':>8} {'dead':>6} {'excluded':>8} {'seconds':>8}  output"
    lines = [header, "-" * len(header)]
    for r in results:
        if r.counts:
            excluded = sum(r.counts.get("excluded", {}).values())
            lines.append(f"{r.stage:<22} {r.counts['read']:>6} {r.counts['written']:>8} "
                         f"{r.counts['dead_lettered']:>6} {excluded:>8} {r.seconds:>8.1f}  {r.output}")
        else:  # a stage that reads no corpus (training and evaluation)
            lines.append(f"{r.stage:<22} {'-':>6} {'-':>8} {'-':>6} {'-':>8} {r.seconds:>8.1f}  {r.output}")
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
    flags.DEFINE_integer("documents", defaults.documents, "Documents of the corpus every stage runs on.",
                         flag_values=fv)
    flags.DEFINE_integer("askllm_max_length", defaults.askllm_max_length, "Ask-LLM prompt tokens.", flag_values=fv)
    flags.DEFINE_integer("train_steps", defaults.train_steps, "Training steps per run (0: no training).",
                         flag_values=fv)
    return fv


def parse_config(argv: list[str]) -> DemoConfig:
    """Parses demo flags into a DemoConfig."""
    fv = _flag_values()
    flagparse.parse(fv, argv, "gristmill demo [--output DIR] [--workers N] [--documents N] [--train_steps N]")
    return DemoConfig(output=fv.output, corpus=fv.corpus, workers=fv.workers, seed=fv.seed,
                      askllm_model=fv.askllm_model, documents=fv.documents,
                      askllm_max_length=fv.askllm_max_length, train_steps=fv.train_steps)


def run(argv: list[str]) -> list[StageResult]:
    """Entry point of `gristmill demo`: runs the stages and prints the summary."""
    config = parse_config(argv)
    results = run_demo(config)
    print()
    print(format_summary(results))
    final = records.read_manifest(results[0].output)["counts"]
    name = "embedded corpus" if config.corpus == embedded_corpus() else config.corpus
    print(f"\n{name}: {final['read']} read, {final['written']} written, "
          f"{final['dead_lettered']} dead-lettered")
    return results
