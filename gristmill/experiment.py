"""`gristmill experiment --grid GRID.json --scored SPEC`: samplers x rates x model sizes x steps x seeds.

A thin orchestration layer over the library (CONTRIBUTING.md style rule 9): for every cell of the grid it plans
a selection (`training.data.plan_from_records` -> `sampling.plan_from_rows`), trains
(`training.train.train`), and evaluates the span-corruption perplexity (`eval.perplexity`) of
each saved checkpoint on the held-out text sets, giving learning curves (value vs training tokens).

    OUTPUT/experiment.json            the config, corpus counts, skipped samplers (with reasons), runs
    OUTPUT/data/train.tfrecord        the scored records outside the held-out split (what runs train on)
    OUTPUT/data/c4_heldout.jsonl      the held-out split (id, text), never trained on
    OUTPUT/vocab/spiece.model         one SentencePiece vocabulary for every run (so perplexities compare)
    OUTPUT/runs/<model>-s<steps>/<sampler>[-<rate>]/   a `gristmill train` run directory + plan.json
        eval.json                     this run's results (reused when the experiment is rerun unchanged)
    OUTPUT/results.jsonl              one row per (run, checkpoint, metric): `metrics.Result` fields
                                      plus run, parameters, documents; with several seeds the value is
                                      the mean over seeds, with `std`, `min`, `max`, `values`, `seeds`
    OUTPUT/results_by_seed.jsonl      the same rows per seed (column `seed`), before averaging

Config (JSON), with defaults (keys starting with "_" are comments):

    {"scored": "scored/*.tfrecord",                  # glob(s) of scored TFRecords (required)
     "output": "experiments/demo",                   # or --output
     "samplers": {"full": null,                      # null: all the (non-held-out) documents
                  "random": {"rule": "random"},
                  "askllm": {"rule": "topk", "score": "score/askllm/smollm2-135m-instruct"},
                  "density": {"rule": "ips", "score": "score/density/minilm", "missing": "error"}},
     "rates": [0.2], "models": ["small"], "steps": [1000],
     "seeds": [],                                    # training + plan seeds; [] means [seed]
     "evaluations": 4,                               # checkpoints evaluated per run (learning curve)
     "text_sets": ["c4_heldout", "high_quality"], "heldout_fraction": 0.1, "seed": 0,
     "vocab": null, "vocab_size": 32100,             # null: train one on the training split
     "train": {"batch_size": 64},                    # any other TrainConfig field
     "eval": {"inputs_length": 512, "batch_size": 16, "max_documents": null}}

A grid file (`--grid`, e.g. the repository's `experiments/paper.json` and `experiments/demo.json`)
holds the same keys as a config, usually without "scored" and "output" (`--scored`, `--output`);
`--config` keys override the grid's. A sampler's "score" may be an `fnmatch` pattern such as
`score/askllm/*`: it becomes one sampler per matching feature of the corpus (Ask-LLM top-k per
proxy), named `<name>-<matched part>` (`askllm-flan-t5-xl`), and a pattern that matches nothing is
skipped with its reason, so one grid runs every sampler that has a scorer present. A sampler may
carry its own "rates" (the paper runs SemDeDup and Prototypes at 25%).

A sampler whose score feature is absent from the corpus, or present on only some documents
while its `missing` policy is `error` (Ask-LLM often scores a subset), is skipped with a logged
message and listed in experiment.json; `"missing": "drop"` plans over the scored documents only.
Rates apply to the training split; `full` runs once per model and steps, at rate 1. The scored
corpus is read into memory once (exact plans, `plan_from_records`, need that anyway) to write the
split; corpora beyond memory should be split and planned with the Beam `select` job instead.

`scored` entries are gristmill output directories (read through their manifest) or globs; they,
the config file and OUTPUT may be local or gs:// paths (`gristmill.io`); what training reads and
writes goes through `gristmill.training`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Mapping, Optional, Sequence

from gristmill import flags, io, records
from gristmill.eval import grid, metrics, results
from gristmill.eval import perplexity as ppl

# What is pure stays in eval/: the grid (the config, samplers, runs and their names) in eval/grid.py,
# the experiment directory's layout and results (means over seeds) in eval/results.py. This module runs
# them: the corpus split, the vocabulary, each run's plan, training and evaluation, experiment.json.
log = logging.getLogger(__name__)


# --- corpus preparation ----------------------------------------------------------------------

def _write_tfrecords(path: str, items: Sequence[records.Record]) -> None:
    io.atomic_write(path, records.tfrecord_bytes(items))


def prepare_corpus(config: grid.ExperimentConfig) -> dict[str, Any]:
    """Splits the scored corpus into OUTPUT/data/train.tfrecord and the held-out jsonl; returns counts."""
    items = [r for spec in config.scored for r in records.iter_scored_records(spec)]
    if not items:
        raise grid.ExperimentError(f"no records in {list(config.scored)}")
    train, held = ppl.split_heldout(items, config.heldout_fraction)
    if not held or not train:
        raise grid.ExperimentError(f"the held-out split of {len(items)} documents leaves {len(train)} to train on and "
                              f"{len(held)} held out: use a larger corpus or another heldout_fraction")
    _write_tfrecords(io.join(config.output, results.TRAIN_DATA), train)
    io.write_text(io.join(config.output, results.HELDOUT_DATA), "".join(
        json.dumps({"id": record[records.ID], "text": record[records.TEXT]}, ensure_ascii=False) + "\n"
        for record in held))
    return {"documents": len(items), "train_documents": len(train), "heldout_documents": len(held),
            "score_coverage": grid.score_coverage(train)}


def heldout_texts(output: str) -> list[str]:
    """The experiment's `c4_heldout` texts (written by `prepare_corpus`)."""
    return [json.loads(line)["text"] for line in io.read_text(io.join(output, results.HELDOUT_DATA)).splitlines()
            if line.strip()]


def prepare_vocab(config: grid.ExperimentConfig) -> str:
    """The shared vocabulary: config.vocab, or one trained on the training split (once)."""
    if config.vocab:
        return config.vocab
    path = io.join(config.output, results.VOCAB_PATH)
    if not io.exists(path):
        from gristmill.training import vocab

        texts = [r[records.TEXT] for r in records.iter_scored_records(io.join(config.output, results.TRAIN_DATA))]
        log.info("training a %d-id SentencePiece vocabulary on %d documents", config.vocab_size, len(texts))
        # the .model is written last: its presence means the vocabulary is whole
        vocab.train_sentencepiece(texts, config.vocab_size, path.removesuffix(".model"),
                                  input_sentence_size=min(len(texts) * 20, 2_000_000), fit_corpus=True)
    return path


# --- one run ---------------------------------------------------------------------------------

def _tokens_by_step(run_dir: str) -> dict[int, int]:
    from gristmill.training import train

    tokens = {}
    path = io.join(run_dir, train.METRICS_FILE)
    if io.exists(path):
        for line in io.read_text(path).splitlines():
            if line.strip():
                row = json.loads(line)
                tokens[int(row["step"])] = int(row["tokens_seen"])
    return tokens


def run_cell(config: grid.ExperimentConfig, cell: grid.Cell, vocab_path: str,
             examples: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plans, trains and evaluates one cell; returns its result rows (reused from eval.json if unchanged)."""
    from gristmill.training import configs, data, train

    run_dir = io.join(config.output, cell.name)
    key = {"cell": {"model": cell.model, "steps": cell.steps, "sampler": dataclasses.asdict(cell.sampler),
                    "rate": cell.rate},
           "train": dict(config.train), "eval": dataclasses.asdict(config.eval), "seed": cell.seed,
           "evaluations": config.evaluations, "text_sets": list(config.text_sets), "vocab": vocab_path,
           "heldout_fraction": config.heldout_fraction}
    key = json.loads(json.dumps(key))  # as eval.json holds it (tuples become lists)
    eval_path = io.join(run_dir, results.EVAL_FILE)
    if io.exists(eval_path):
        saved = io.read_json(eval_path)
        if saved.get("key") == key:
            log.info("%s: already evaluated, reusing %s", cell.name, eval_path)
            return saved["rows"]
    io.makedirs(run_dir)
    train_data = io.join(config.output, results.TRAIN_DATA)
    plan_path, documents = None, None
    if not cell.sampler.is_full:
        plan = data.plan_from_records(train_data, cell.sampler.rule, rate=cell.rate, seed=cell.seed,
                                      score_feature=cell.sampler.score, rate_by=cell.sampler.rate_by,
                                      missing=cell.sampler.missing)
        plan_path = io.join(run_dir, results.PLAN_FILE)
        io.write_text(plan_path, plan.to_json())
        documents = plan.expected_documents
        log.info("%s: %s", cell.name, plan.describe())
    every = max(1, cell.steps // config.evaluations)
    train_config = configs.TrainConfig(
        data=(train_data,), output=run_dir, steps=cell.steps, model_size=cell.model, plan=plan_path,
        vocab=vocab_path, seed=cell.seed, checkpoint_every=every, keep_checkpoints=config.evaluations + 2,
        **dict(config.train))
    train.train(train_config)
    parameters = train.read_run(run_dir)["parameters"]
    tokens = _tokens_by_step(run_dir)
    rows = []
    for step in train.checkpoint_steps(run_dir):
        trained = train.load_trained(run_dir, step, dtype="float32")
        for name in config.text_sets:
            value = ppl.perplexity_of_examples(trained.params, trained.config, examples[name], config.eval.batch_size)
            result = metrics.Result(model=cell.model, sampler=cell.sampler.name, rate=cell.rate,
                                    metric=results.metric_name(name), value=value.perplexity, steps=cell.steps,
                                    step=step, tokens=tokens.get(step))
            rows.append({**dataclasses.asdict(result), "run": cell.name, "seed": cell.seed,
                         "parameters": parameters, "documents": documents, "target_tokens": value.tokens})
            log.info("%s step %d: %s = %.3f", cell.name, step, result.metric, value.perplexity)
    io.write_json(eval_path, {"key": key, "rows": rows})
    return rows


# --- the grid --------------------------------------------------------------------------------

def run_experiment(config: grid.ExperimentConfig) -> list[dict[str, Any]]:
    """Runs the whole grid; returns all result rows (also in OUTPUT/results.jsonl)."""
    from gristmill.training import vocab as vocab_lib

    io.makedirs(config.output)
    corpus = prepare_corpus(config)
    expanded, skipped = grid.expand_samplers(config.samplers, sorted(corpus["score_coverage"]))
    usable, unusable = grid.usable_samplers(expanded, corpus["score_coverage"], corpus["train_documents"])
    skipped.update(unusable)
    cells = grid.grid(config, usable)
    vocab_path = prepare_vocab(config)
    with io.local_copy(vocab_path) as local_vocab:
        vocabulary = vocab_lib.T5Vocabulary.from_file(local_vocab)
    texts = {name: heldout_texts(config.output) if name == ppl.C4_HELDOUT else ppl.text_set(name)
             for name in config.text_sets}
    examples = {name: ppl.heldout_examples(t, vocabulary, config.eval) for name, t in texts.items()}
    summary = {"config": config.to_dict(), "corpus": corpus, "skipped_samplers": skipped, "vocab": vocab_path,
               "text_sets": {name: {"documents": len(t), "examples": int(examples[name]["document"].size)}
                             for name, t in texts.items()},
               "samplers": [s.name for s in usable], "seeds": list(config.run_seeds),
               "runs": [c.name for c in cells], "metrics": [results.metric_name(n) for n in config.text_sets],
               "lower_is_better": [results.metric_name(n) for n in config.text_sets]}
    io.write_json(io.join(config.output, results.EXPERIMENT_FILE), summary)
    log.info("experiment %s: %d runs (%d samplers skipped), %d training / %d held-out documents", config.output,
             len(cells), len(skipped), corpus["train_documents"], corpus["heldout_documents"])
    rows: list[dict[str, Any]] = []
    for i, cell in enumerate(cells, start=1):
        log.info("run %d/%d: %s", i, len(cells), cell.name)
        rows.extend(run_cell(config, cell, vocab_path, examples))
        results.write_results(config.output, rows, results.SEED_RESULTS_FILE)
        results.write_results(config.output, results.mean_over_seeds(rows))
    means = results.mean_over_seeds(rows)
    summary["seed_comparison"] = [{**dataclasses.asdict(c), "difference": c.difference,
                                   "within_spread": c.within_spread} for c in results.compare_to_full(means)]
    io.write_json(io.join(config.output, results.EXPERIMENT_FILE), summary)
    return means


# --- entry point -----------------------------------------------------------------------------

def load_config(*, grid_file: Optional[str] = None, config_file: Optional[str] = None,
                scored: Sequence[str] = (), output: Optional[str] = None) -> grid.ExperimentConfig:
    """The experiment from a grid file, a config file (its keys win) and the --scored/--output flags (win last)."""
    if not grid_file and not config_file:
        raise grid.ExperimentError("give --grid GRID.json (e.g. experiments/paper.json) and/or --config FILE.json")
    data: dict[str, Any] = {}
    for path in (grid_file, config_file):
        if path:
            try:
                data.update(io.read_json(path))
            except (OSError, ValueError) as e:
                raise grid.ExperimentError(f"{path}: cannot read the experiment config ({e})") from e
    if scored:
        data["scored"] = list(scored)
    return grid.ExperimentConfig.from_dict(data, output)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentFlags:
    """`gristmill experiment`'s command line: where the grid comes from and what it runs on."""

    grid: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Grid file (JSON): samplers, rates, models, steps, seeds..."})
    config: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Experiment config (JSON); its keys override the grid's"})
    scored: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "Scored records (output directories or globs); overrides \"scored\""})
    output: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Experiment directory (overrides the config's \"output\")"})


def run(argv: list[str]) -> list[dict[str, Any]]:
    """Entry point of `gristmill experiment --grid GRID.json --scored SPEC --output DIR` (or --config FILE.json)."""
    f = flags.parse_config(ExperimentFlags, argv, "gristmill experiment", __doc__)
    return run_experiment(load_config(grid_file=f.grid, config_file=f.config, scored=f.scored, output=f.output))
