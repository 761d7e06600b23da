"""`gristmill demo`: every stage that exists, on the first documents of the embedded C4 sample.

Stages chain through their outputs (each reads the scored TFRecords of the one before), so the
demo exercises exactly the code a production run does, on the in-process Beam runner. Every
scorer scores every demo document, so every sampler selects from documents its scorer scored.
The training grid is the repository's `experiments/demo.json` (loaded by repository path, next to
this package; `--grid` names another), repeated over a few seeds. The same scorers also score the
labelled sets shipped in `gristmill/data/labels/` (`--keep_fields label`), and `gristmill evaluate`
measures how each score separates the labelled-good documents (HPLT human labels; FineWeb-Edu
LLM grades >= 3).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import logging
import os
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

from gristmill import flags, io, records
from gristmill.documents import embedded_corpus
from gristmill.pipelines import registry

log = logging.getLogger(__name__)


def demo_grid() -> str:
    """The demo's training grid, `experiments/demo.json` of the repository (a source checkout)."""
    return str(pathlib.Path(__file__).resolve().parent.parent / "experiments" / "demo.json")


def label_sets() -> dict[str, tuple[str, list[str]]]:
    """The shipped labelled sets: name -> (JSONL path, `gristmill evaluate` label flags)."""
    base = importlib.resources.files("gristmill") / "data" / "labels"
    return {"hplt-v2": (str(base / "hplt-v2-eng.jsonl"), ["--label_field=label"]),
            "fineweb-edu": (str(base / "fineweb-edu-grades.jsonl"), ["--label_field=grade", "--threshold=3"])}


# The scorers with a stage of their own below (random reads the corpus, askllm notes its extremes).
OWN_STAGES = ("random", "density", "askllm")
# Every other registered scorer: name -> its flags sized for the demo (the registry's demo_flags).
# They join the chain after Ask-LLM, in the registry's order, when named in --extra_scorers (by
# default all of them).
EXTRA_SCORERS: dict[str, tuple[str, ...]] = {name: info.demo_flags for name, info in registry.SCORERS.items()
                                             if name not in OWN_STAGES}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs on and where it writes.

    documents: the first N documents of the corpus go through every stage, so every sampler selects
    from documents its scorer scored and the demo stays within a few minutes on 2 cores;
    train_steps is the budget of each `tiny` training run and seeds the runs repeated per sampler
    (they override the grid's); labels: also score the shipped labelled sets and evaluate them
    (label_documents: only the first N rows of each).
    """

    output: str = dataclasses.field(default="demo-out", metadata={"help": "Directory for every stage's outputs"})
    corpus: str = dataclasses.field(default_factory=embedded_corpus, metadata={
        "help": "Corpus glob (default: the embedded C4 sample)"})
    workers: int = dataclasses.field(default=0, metadata={"help": "Beam worker processes (0: in-process)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed for scores and selections"})
    askllm_model: str = dataclasses.field(default="smollm2-135m-instruct", metadata={
        "help": "Ask-LLM model name or path"})
    documents: int = dataclasses.field(default=200, metadata={"help": "Documents of the corpus every stage runs on"})
    askllm_max_length: int = dataclasses.field(default=512, metadata={
        "help": "Ask-LLM prompt tokens (512: about 70% of the sample's documents fit whole)"})
    train_steps: int = dataclasses.field(default=40, metadata={"help": "Training steps per run (0: no training)"})
    seeds: tuple[int, ...] = dataclasses.field(default=(0, 1, 2), metadata={
        "help": "Seeds each training run is repeated with"})
    grid: str = dataclasses.field(default_factory=demo_grid, metadata={
        "help": "Training grid (default: the repository's experiments/demo.json)"})
    labels: bool = dataclasses.field(default=True, metadata={
        "help": "Also score and evaluate the shipped labelled sets"})
    label_documents: int = dataclasses.field(default=0, metadata={
        "help": "Rows of each labelled set to score (0: all)"})
    # the scorers after Ask-LLM (main corpus only), in the registry's order
    extra_scorers: tuple[str, ...] = dataclasses.field(default=tuple(EXTRA_SCORERS), metadata={
        "help": f"More scorers for the chain: {', '.join(EXTRA_SCORERS)}"})


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


def run_random(config: DemoConfig, corpus: str, prefix: str = "", extra: Sequence[str] = ()) -> StageResult:
    """Scores the corpus with the Random baseline (the first stage: it reads the corpus)."""
    from gristmill.pipelines import score_random
    out = os.path.join(config.output, prefix + "random")
    argv = ["--input", corpus, "--output", out, f"--seed={config.seed}", "--overwrite", *extra] + _beam_flags(config)
    return _stage(f"{prefix}score random", out, lambda: score_random.run(argv))


def run_density(config: DemoConfig, scored: str, prefix: str = "") -> StageResult:
    """Scores the records with the Density sketch over MiniLM embeddings."""
    from gristmill.pipelines import score_density
    out = os.path.join(config.output, prefix + "density")
    argv = ["--input", scored, "--output", out, f"--seed={config.seed}", "--overwrite"] + _beam_flags(config)
    return _stage(f"{prefix}score density", out, lambda: score_density.run(argv))


def run_askllm(config: DemoConfig, scored: str, prefix: str = "", notes: bool = True) -> StageResult:
    """Scores every record with Ask-LLM and notes the highest and lowest scored."""
    from gristmill.models import zoo
    from gristmill.pipelines import score_askllm
    out = os.path.join(config.output, prefix + "askllm")
    argv = ["--input", scored, "--output", out, "--model", config.askllm_model, "--overwrite",
            f"--max_length={config.askllm_max_length}", *registry.SCORERS["askllm"].demo_flags] + _beam_flags(config)
    result = _stage(f"{prefix}score askllm", out, lambda: score_askllm.run(argv))
    if not notes:
        return result
    feature = records.score_feature(score_askllm.SCORER_NAME, zoo.model_name(config.askllm_model))
    ranked = sorted((r for r in records.iter_scored_records(out) if feature in r),
                    key=lambda r: -r[feature])
    cut = sum(1 for r in ranked if r.get(records.truncated_feature(score_askllm.SCORER_NAME)))
    lines = [f"truncated to --max_length {config.askllm_max_length} tokens: {cut} of {len(ranked)} documents "
             f"({100 * cut / max(len(ranked), 1):.0f}%)", "highest P(yes):"]
    lines += [_excerpt(r, feature) for r in ranked[:3]]
    lines += ["lowest P(yes):"] + [_excerpt(r, feature) for r in ranked[-3:]]
    return dataclasses.replace(result, notes="\n".join(lines))


def run_registered(config: DemoConfig, name: str, scored: str, prefix: str = "") -> Optional[StageResult]:
    """Runs `gristmill score <name>` on the records when that scorer is registered (None otherwise)."""
    if name not in registry.SCORERS:
        return None
    module = importlib.import_module(registry.SCORERS[name].module)
    out = os.path.join(config.output, prefix + name)
    argv = ["--input", scored, "--output", out, "--overwrite", *EXTRA_SCORERS[name]] + _beam_flags(config)
    return _stage(f"{prefix}score {name}", out, lambda: module.run(argv))


def score_chain(config: DemoConfig, corpus: str, prefix: str = "", first: Sequence[str] = (),
                notes: bool = True, extras: bool = True) -> list[StageResult]:
    """Every scorer in turn, each reading the previous one's records; the last holds every score."""
    stages = [run_random(config, corpus, prefix, first)]
    stages.append(run_density(config, stages[-1].output, prefix))
    stages.append(run_askllm(config, stages[-1].output, prefix, notes))
    for name in config.extra_scorers if extras else ():
        stage = run_registered(config, name, stages[-1].output, prefix)
        if stage is not None:
            stages.append(stage)
    return stages


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


def run_training(config: DemoConfig, scored_dir: str, quality: Optional[str]) -> StageResult:
    """Runs the demo grid (tiny T5s, every sampler with its scorer present, over seeds) and writes the report."""
    from gristmill import experiment
    from gristmill.eval import report, results
    out = os.path.join(config.output, "experiment")
    exp = experiment.load_config(grid_file=config.grid, scored=[scored_dir], output=out)
    exp = dataclasses.replace(exp, steps=(config.train_steps,), seeds=tuple(config.seeds), seed=config.seed)
    start = time.monotonic()
    rows = experiment.run_experiment(exp)
    page = os.path.join(config.output, "report.html")
    report.write_report(out, page, scored_dir, quality=quality)
    info = results.read_experiment(out)
    notes = training_notes(rows, info, exp) + [f"report: {page}"]
    return StageResult("train + evaluate", out, time.monotonic() - start, {}, "\n".join(notes))


def training_notes(rows: Sequence[dict[str, Any]], info: dict[str, Any], exp: Any) -> list[str]:
    """The summary lines of the grid: scale, mean +- std over seeds per sampler, and what differs beyond the spread."""
    from gristmill.eval import metrics
    finals = [r for r in rows if (r["model"], r["sampler"], r["metric"], r.get("step")) in {
        (f.model, f.sampler, f.metric, f.step) for f in metrics.final_results(rows)}]
    corpus = info.get("corpus", {})
    parameters = max((r.get("parameters") or 0 for r in rows), default=0)
    batch = dict(exp.train).get("batch_size")
    seeds = list(exp.run_seeds)
    lines = [f"scale: {corpus.get('train_documents')} training / {corpus.get('heldout_documents')} held-out "
             f"documents; {', '.join(exp.models)} T5 ({parameters / 1e6:.1f}M parameters), {exp.steps[0]} steps "
             f"of batch {batch}, {len(seeds)} seeds {seeds} per sampler.",
             "  These runs check that every stage works end to end. A model this small, trained this briefly on "
             "this few documents, cannot show the paper's effect either way (the paper trains T5-Small/Large "
             "for 1M steps of 1024 x 512 tokens on 364M C4 documents).",
             "final held-out perplexity, mean +- std over seeds (lower is better); documents = trained on:"]
    for metric in sorted({r["metric"] for r in finals}):
        lines.append(f"  {metric}:")
        for r in sorted((r for r in finals if r["metric"] == metric), key=lambda r: (r["sampler"] != "full",
                                                                                     r["sampler"])):
            docs = r.get("documents")
            docs_text = f"{docs:.0f}" if docs is not None else str(corpus.get("train_documents"))
            lines.append(f"    {r['sampler']:<30} {r['value']:>9.1f} +- {r.get('std', 0.0):<7.1f} "
                         f"documents {docs_text}")
    comparisons = info.get("seed_comparison", [])
    same = sorted({c["sampler"] for c in comparisons if c["within_spread"]})
    apart = sorted({f"{c['sampler']} ({c['metric'].split('/')[-1]} {c['difference']:+.1f})"
                    for c in comparisons if not c["within_spread"]})
    if same:
        lines.append("  within the seed spread of full data on some metric (no difference shown): " + ", ".join(same))
    if apart:
        lines.append("  beyond the seed spread (|difference| > std + full's std; still tiny runs): " + ", ".join(apart))
    skipped = info.get("skipped_samplers", {})
    if skipped:
        lines.append("  samplers of the grid not run (no scorer in this demo): " + ", ".join(sorted(skipped)))
    return lines


def run_quality(config: DemoConfig) -> list[StageResult]:
    """Scores the shipped labelled sets with the demo's scorers and evaluates every score against the labels."""
    from gristmill.eval import quality
    sets = label_sets()
    corpus = os.path.join(config.output, "labels-corpus.jsonl")
    lines = []
    for path, _ in sets.values():
        with open(path, encoding="utf-8") as f:
            rows = [line for line in f if line.strip()]
        lines += rows[:config.label_documents] if config.label_documents else rows
    io.makedirs(config.output)
    io.write_text(corpus, "".join(lines))
    stages = score_chain(config, corpus, prefix="labels-", first=["--keep_fields=label,grade"], notes=False,
                         extras=False)
    scored = stages[-1].output
    for name, (path, label_flags) in sets.items():
        output = os.path.join(config.output, f"quality-{name}.json")
        start = time.monotonic()
        result = quality.run(["--scored", scored, "--labels", path, "--output", output, *label_flags])
        stages.append(StageResult(f"evaluate {name}", output, time.monotonic() - start, {},
                                  "\n".join(quality_notes(result))))
    return stages


def quality_notes(result: dict[str, Any]) -> list[str]:
    """Per score: AUC with its interval and the precision of a 20% selection against the base rate."""
    lines = []
    for feature, r in sorted(result["scores"].items()):
        ci = r.get("auc_ci")
        at20 = {rule: by_rate.get("0.2") for rule, by_rate in r.get("precision", {}).items()}
        precision = ", ".join(f"{rule} {_num(v)}" for rule, v in sorted(at20.items()))
        lines.append(f"{feature:<36} n {r['n']:>4}  base rate {_num(r['base_rate'])}  AUC {_num(r['auc'])}"
                     + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f"  precision at 20%: {precision}")
    return lines


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def run_demo(config: DemoConfig) -> list[StageResult]:
    """Runs the demo stages in order, each reading the previous stage's scored records."""
    chain = score_chain(config, config.corpus, first=[f"--limit={config.documents}"])
    scored = chain[-1].output
    density_feature = records.score_feature("density", "minilm")
    askllm_feature = records.score_feature("askllm", _askllm_name(config))
    results = chain + [run_select(config, "select-askllm-top20", scored, askllm_feature, "topk", 0.2),
                       run_select(config, "select-density-ips20", scored, density_feature, "ips", 0.2)]
    quality_json = None
    if config.labels:
        quality_stages = run_quality(config)
        results += quality_stages
        quality_json = next(s.output for s in quality_stages if s.stage == "evaluate hplt-v2")
    if config.train_steps > 0:
        results.append(run_training(config, scored, quality_json))
    return results


def _askllm_name(config: DemoConfig) -> str:
    from gristmill.models import zoo
    return zoo.model_name(config.askllm_model)


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


def parse_config(argv: list[str]) -> DemoConfig:
    """Parses demo flags into a DemoConfig."""
    return flags.parse_config(DemoConfig, argv, "gristmill demo", __doc__)


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
