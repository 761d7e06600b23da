"""`gristmill experiment --grid GRID.json --scored SPEC`: samplers x rates x model sizes x steps x seeds.

A thin orchestration layer over the library (CONTRIBUTING.md style rule 9): for every cell of the grid it plans
a selection (`training.data.plan_from_records` -> `sampling.plan_from_scores`), trains
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
import fnmatch
import json
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from gristmill import flags, io, records, sampling
from gristmill.errors import UsageError
from gristmill.eval import metrics
from gristmill.eval import perplexity as ppl

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.jsonl"
SEED_RESULTS_FILE = "results_by_seed.jsonl"
EVAL_FILE = "eval.json"
PLAN_FILE = "plan.json"
TRAIN_DATA = os.path.join("data", "train.tfrecord")
HELDOUT_DATA = os.path.join("data", "c4_heldout.jsonl")
VOCAB_PATH = os.path.join("vocab", "spiece.model")
PERPLEXITY = "perplexity"
# TrainConfig fields the experiment sets itself.
_MANAGED = ("data", "output", "steps", "model_size", "plan", "vocab", "seed", "checkpoint_every", "keep_checkpoints")


class ExperimentError(UsageError):
    """The experiment configuration or its corpus is unusable."""


def metric_name(text_set: str) -> str:
    """The results' metric name of a text set's perplexity, e.g. `perplexity/c4_heldout`."""
    return f"{PERPLEXITY}/{text_set}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    """One sampler of the grid: a selection rule over a score feature, or all the data (rule None)."""

    name: str
    rule: Optional[str] = None
    score: Optional[str] = None
    missing: str = "error"
    rate_by: str = sampling.DOCUMENTS
    rates: Optional[tuple[float, ...]] = None  # None: the experiment's rates

    def __post_init__(self):
        if self.rates is not None:
            object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
            if not self.rates or any(not 0 < r <= 1 for r in self.rates):
                raise ExperimentError(f"sampler {self.name!r}: rates must be in (0, 1], got {self.rates}")
        if self.rule is None:
            if self.score is not None or self.rates is not None:
                raise ExperimentError(f"sampler {self.name!r}: a score or rates need a rule")
            return
        if self.rule not in sampling.RULES:
            raise ExperimentError(f"sampler {self.name!r}: unknown rule {self.rule!r}; known: {sorted(sampling.RULES)}")
        if sampling.RULES[self.rule].needs_scores and not self.score:
            raise ExperimentError(f"sampler {self.name!r}: rule {self.rule!r} needs a \"score\" feature")
        sampling.MissingScorePolicy(self.missing)
        if self.rate_by not in sampling.RATE_BY:
            raise ExperimentError(f"sampler {self.name!r}: rate_by must be one of {sampling.RATE_BY}")

    @property
    def is_full(self) -> bool:
        return self.rule is None

    @property
    def is_pattern(self) -> bool:
        """True when `score` is an fnmatch pattern standing for every matching feature."""
        return self.score is not None and any(c in self.score for c in "*?[")

    @classmethod
    def parse(cls, name: str, spec: Optional[Mapping[str, Any]]) -> SamplerSpec:
        if spec is None:
            return cls(name=name)
        if not isinstance(spec, Mapping):
            raise ExperimentError(f"sampler {name!r}: expected null or an object, got {spec!r}")
        unknown = set(spec) - {"rule", "score", "missing", "rate_by", "rates"}
        if unknown:
            raise ExperimentError(f"sampler {name!r}: unknown keys {sorted(unknown)}")
        spec = dict(spec)
        if spec.get("rates") is not None:
            spec["rates"] = tuple(spec["rates"])
        return cls(name=name, **spec)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """The grid and how each cell is trained and evaluated (see the module docstring)."""

    scored: tuple[str, ...]
    output: str
    samplers: tuple[SamplerSpec, ...]
    rates: tuple[float, ...] = (0.2,)
    models: tuple[str, ...] = ("small",)
    steps: tuple[int, ...] = (1000,)
    evaluations: int = 4
    text_sets: tuple[str, ...] = ppl.TEXT_SETS
    heldout_fraction: float = ppl.HELDOUT_FRACTION
    seed: int = 0
    seeds: tuple[int, ...] = ()
    vocab: Optional[str] = None
    vocab_size: int = 32100
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval: ppl.HeldoutPerplexityConfig = ppl.HeldoutPerplexityConfig()

    def __post_init__(self):
        from gristmill.training import configs

        if not self.scored:
            raise ExperimentError("scored: a glob of scored TFRecords is needed")
        if not self.samplers:
            raise ExperimentError("samplers: at least one sampler is needed")
        names = [s.name for s in self.samplers]
        if len(set(names)) != len(names):
            raise ExperimentError(f"sampler names repeat: {names}")
        for rate in self.rates:
            if not 0 < rate <= 1:
                raise ExperimentError(f"rates must be in (0, 1], got {rate}")
        for model in self.models:
            if model not in configs.SIZES:
                raise ExperimentError(f"unknown model size {model!r}; known: {sorted(configs.SIZES)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError(f"seeds repeat: {list(self.seeds)}")
        if any(s < 1 for s in self.steps) or self.evaluations < 1:
            raise ExperimentError(f"steps and evaluations must be >= 1, got {self.steps}, {self.evaluations}")
        for name in self.text_sets:
            if name not in ppl.TEXT_SETS:
                raise ExperimentError(f"unknown text set {name!r}; known: {ppl.TEXT_SETS}")
        clash = sorted(set(self.train) & set(_MANAGED))
        unknown = sorted(set(self.train) - set(configs.TrainConfig.__dataclass_fields__))
        if clash or unknown:
            raise ExperimentError(f"train: {'fields set by the experiment ' + str(clash) if clash else ''}"
                                  f"{'; ' if clash and unknown else ''}"
                                  f"{'unknown TrainConfig fields ' + str(unknown) if unknown else ''}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], output: Optional[str] = None) -> ExperimentConfig:
        """Parses the JSON config; `output` (the --output flag) overrides its "output"."""
        data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys document a file
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExperimentError(f"unknown experiment config keys {unknown}; known: {sorted(known)}")
        if output:
            data["output"] = output
        for key in ("scored", "output", "samplers"):
            if key not in data:
                raise ExperimentError(f"experiment config needs {key!r}")
        samplers = data.pop("samplers")
        if not isinstance(samplers, Mapping):
            raise ExperimentError("samplers: expected an object {name: spec or null}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if isinstance(fields["scored"], str):
            fields["scored"] = (fields["scored"],)
        fields["samplers"] = tuple(SamplerSpec.parse(n, s) for n, s in samplers.items())
        try:
            fields["eval"] = ppl.HeldoutPerplexityConfig(**dict(data.get("eval") or {}))
        except TypeError as e:
            raise ExperimentError(f"eval: {e}") from e
        fields["train"] = dict(data.get("train") or {})
        try:
            return cls(**fields)
        except TypeError as e:
            raise ExperimentError(f"experiment config: {e}") from e

    @classmethod
    def from_file(cls, path: str, output: Optional[str] = None) -> ExperimentConfig:
        """Reads a JSON config file."""
        try:
            data = io.read_json(path)
        except (OSError, ValueError) as e:
            raise ExperimentError(f"{path}: cannot read the experiment config ({e})") from e
        return cls.from_dict(data, output)

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds every cell is trained (and planned) with."""
        return self.seeds or (self.seed,)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["samplers"] = {s.name: None if s.is_full else {k: v for k, v in dataclasses.asdict(s).items()
                                                           if k != "name" and v is not None} for s in self.samplers}
        out["train"] = dict(self.train)
        return out


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid; `seeded`: the run directory names its seed (several seeds)."""

    model: str
    steps: int
    sampler: SamplerSpec
    rate: float
    seed: int = 0
    seeded: bool = False

    @property
    def group(self) -> str:
        """The run's name without its seed: what the seeds of one grid cell share."""
        tail = self.sampler.name if self.sampler.is_full else f"{self.sampler.name}-{self.rate:g}"
        return os.path.join("runs", f"{self.model}-s{self.steps}", tail)

    @property
    def name(self) -> str:
        return os.path.join(self.group, f"seed-{self.seed}") if self.seeded else self.group


def grid(config: ExperimentConfig, samplers: Sequence[SamplerSpec]) -> list[Cell]:
    """The runs: every model x steps x (full once at rate 1, other samplers at every rate) x seed."""
    seeds = config.run_seeds
    cells = []
    for model in config.models:
        for steps in config.steps:
            for sampler in samplers:
                rates = (1.0,) if sampler.is_full else (sampler.rates or config.rates)
                for rate in rates:
                    for seed in seeds:
                        cells.append(Cell(model, steps, sampler, float(rate), seed, len(seeds) > 1))
    return cells


def expand_samplers(samplers: Sequence[SamplerSpec], features: Sequence[str]
                    ) -> tuple[list[SamplerSpec], dict[str, str]]:
    """Replaces each pattern sampler by one sampler per matching score feature (sorted).

    `askllm` with score `score/askllm/*` over features `score/askllm/flan-t5-xl` and
    `score/askllm/flan-t5-small` gives `askllm-flan-t5-small` and `askllm-flan-t5-xl`; a
    pattern matching nothing is returned in the second value, {name: reason}.
    """
    expanded, skipped = [], {}
    for sampler in samplers:
        if not sampler.is_pattern:
            expanded.append(sampler)
            continue
        matches = sorted(f for f in features if fnmatch.fnmatchcase(f, sampler.score))
        if not matches:
            skipped[sampler.name] = f"no score feature of the corpus matches {sampler.score!r}"
            continue
        prefix = sampler.score[:min(i for i in (sampler.score.find(c) for c in "*?[") if i >= 0)]
        for feature in matches:
            suffix = feature[len(prefix):].strip("/").replace("/", "-") or feature.replace("/", "-")
            expanded.append(dataclasses.replace(sampler, name=f"{sampler.name}-{suffix}", score=feature))
    names = [s.name for s in expanded]
    if len(set(names)) != len(names):
        raise ExperimentError(f"sampler names repeat after expanding patterns: {names}")
    return expanded, skipped


# --- corpus preparation ----------------------------------------------------------------------

def score_coverage(items: Sequence[records.Record]) -> dict[str, int]:
    """score feature -> number of records having it (finite)."""
    counts: dict[str, int] = {}
    for record in items:
        for key, value in record.items():
            if key.startswith("score/") and isinstance(value, float) and math.isfinite(value):
                counts[key] = counts.get(key, 0) + 1
    return counts


def usable_samplers(samplers: Sequence[SamplerSpec], coverage: Mapping[str, int], num_documents: int
                    ) -> tuple[list[SamplerSpec], dict[str, str]]:
    """(samplers that can run, {skipped sampler: reason}) given the score coverage of the training split."""
    usable, skipped = [], {}
    for sampler in samplers:
        if sampler.is_full or not sampling.RULES[sampler.rule].needs_scores:
            usable.append(sampler)
            continue
        have = coverage.get(sampler.score, 0)
        if have == 0:
            skipped[sampler.name] = f"no document of the corpus has the score feature {sampler.score!r}"
        elif have < num_documents and sampler.missing == sampling.MissingScorePolicy.ERROR.value:
            skipped[sampler.name] = (f"{sampler.score!r} is on {have} of {num_documents} training documents; "
                                     f"set \"missing\": \"drop\" (or \"keep\") to plan over the scored ones")
        else:
            usable.append(sampler)
    for name, reason in skipped.items():
        log.warning("skipping sampler %s: %s", name, reason)
    return usable, skipped


def _write_tfrecords(path: str, items: Sequence[records.Record]) -> None:
    io.atomic_write(path, records.tfrecord_bytes(items))


def prepare_corpus(config: ExperimentConfig) -> dict[str, Any]:
    """Splits the scored corpus into OUTPUT/data/train.tfrecord and the held-out jsonl; returns counts."""
    items = [r for spec in config.scored for r in records.iter_scored_records(spec)]
    if not items:
        raise ExperimentError(f"no records in {list(config.scored)}")
    train, held = ppl.split_heldout(items, config.heldout_fraction)
    if not held or not train:
        raise ExperimentError(f"the held-out split of {len(items)} documents leaves {len(train)} to train on and "
                              f"{len(held)} held out: use a larger corpus or another heldout_fraction")
    _write_tfrecords(io.join(config.output, TRAIN_DATA), train)
    io.write_text(io.join(config.output, HELDOUT_DATA), "".join(
        json.dumps({"id": record[records.ID], "text": record[records.TEXT]}, ensure_ascii=False) + "\n"
        for record in held))
    return {"documents": len(items), "train_documents": len(train), "heldout_documents": len(held),
            "score_coverage": score_coverage(train)}


def heldout_texts(output: str) -> list[str]:
    """The experiment's `c4_heldout` texts (written by `prepare_corpus`)."""
    return [json.loads(line)["text"] for line in io.read_text(io.join(output, HELDOUT_DATA)).splitlines()
            if line.strip()]


def prepare_vocab(config: ExperimentConfig) -> str:
    """The shared vocabulary: config.vocab, or one trained on the training split (once)."""
    if config.vocab:
        return config.vocab
    path = io.join(config.output, VOCAB_PATH)
    if not io.exists(path):
        from gristmill.training import vocab

        texts = [r[records.TEXT] for r in records.iter_scored_records(io.join(config.output, TRAIN_DATA))]
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


def run_cell(config: ExperimentConfig, cell: Cell, vocab_path: str,
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
    eval_path = io.join(run_dir, EVAL_FILE)
    if io.exists(eval_path):
        saved = io.read_json(eval_path)
        if saved.get("key") == key:
            log.info("%s: already evaluated, reusing %s", cell.name, eval_path)
            return saved["rows"]
    io.makedirs(run_dir)
    train_data = io.join(config.output, TRAIN_DATA)
    plan_path, documents = None, None
    if not cell.sampler.is_full:
        plan = data.plan_from_records(train_data, cell.sampler.rule, rate=cell.rate, seed=cell.seed,
                                      score_feature=cell.sampler.score, rate_by=cell.sampler.rate_by,
                                      missing=cell.sampler.missing)
        plan_path = io.join(run_dir, PLAN_FILE)
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
                                    metric=metric_name(name), value=value.perplexity, steps=cell.steps, step=step,
                                    tokens=tokens.get(step))
            rows.append({**dataclasses.asdict(result), "run": cell.name, "seed": cell.seed,
                         "parameters": parameters, "documents": documents, "target_tokens": value.tokens})
            log.info("%s step %d: %s = %.3f", cell.name, step, result.metric, value.perplexity)
    io.write_json(eval_path, {"key": key, "rows": rows})
    return rows


# --- the grid --------------------------------------------------------------------------------

def write_results(output: str, rows: Sequence[Mapping[str, Any]], name: str = RESULTS_FILE) -> None:
    """Writes OUTPUT/results.jsonl (or `name`) with all rows so far, atomically."""
    io.write_text(io.join(output, name), "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _group_of(run: str, seed: Any) -> str:
    tail = os.sep + f"seed-{seed}"
    return run[:-len(tail)] if run.endswith(tail) else run


def mean_over_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run without its seed, checkpoint, metric): value = mean over the seeds.

    Adds `std` (sample standard deviation, ddof=1; 0 for one seed), `min`, `max`, `values` and
    `seeds` (in seed order); `documents` is the mean too (IPS and random plans differ by seed).
    Rows of one seed pass through with std 0, so every consumer of results.jsonl reads one shape.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        run = _group_of(row["run"], row.get("seed"))
        groups.setdefault((run, row.get("step"), row["metric"]), []).append(row)
    out = []
    for (run, _, _), members in groups.items():
        members = sorted(members, key=lambda r: r.get("seed") or 0)
        values = np.asarray([float(r["value"]) for r in members])
        docs = [r["documents"] for r in members if r.get("documents") is not None]
        merged = {k: v for k, v in members[0].items() if k != "seed"}
        merged.update(run=run, value=float(values.mean()), std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                      min=float(values.min()), max=float(values.max()), values=values.tolist(),
                      seeds=[r.get("seed") for r in members],
                      documents=float(np.mean(docs)) if docs else None)
        out.append(merged)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedComparison:
    """A sampler's final value against full data's, over seeds: is the difference beyond the spread?"""

    model: str
    steps: int
    sampler: str
    rate: float
    metric: str
    mean: float
    std: float
    full_mean: float
    full_std: float
    seeds: int

    @property
    def difference(self) -> float:
        return self.mean - self.full_mean

    @property
    def within_spread(self) -> bool:
        """True when |mean - full mean| <= std + full std: the seeds cannot tell the two apart."""
        return abs(self.difference) <= self.std + self.full_std


def compare_to_full(rows: Sequence[Mapping[str, Any]]) -> list[SeedComparison]:
    """Each non-full run's final mean (rows of `mean_over_seeds`) against the full run of its size and steps."""
    finals = {}
    for row in rows:
        key = (row["model"], row.get("steps"), row["sampler"], float(row["rate"]), row["metric"])
        if key not in finals or (row.get("step") or 0) > (finals[key].get("step") or 0):
            finals[key] = row
    out = []
    for (model, steps, sampler, rate, metric), row in sorted(finals.items(), key=lambda kv: str(kv[0])):
        full = finals.get((model, steps, metrics.FULL, 1.0, metric))
        if sampler == metrics.FULL or full is None:
            continue
        out.append(SeedComparison(model=model, steps=steps, sampler=sampler, rate=rate, metric=metric,
                                  mean=row["value"], std=row.get("std", 0.0), full_mean=full["value"],
                                  full_std=full.get("std", 0.0), seeds=len(row.get("seeds") or [row.get("seed")])))
    return out


def read_results(output: str) -> list[dict[str, Any]]:
    """The rows of OUTPUT/results.jsonl."""
    path = io.join(output, RESULTS_FILE)
    if not io.exists(path):
        raise ExperimentError(f"{output}: no {RESULTS_FILE} (not an experiment directory?)")
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]


def read_experiment(output: str) -> dict[str, Any]:
    """OUTPUT/experiment.json ({} when absent)."""
    path = io.join(output, EXPERIMENT_FILE)
    return io.read_json(path) if io.exists(path) else {}


def run_experiment(config: ExperimentConfig) -> list[dict[str, Any]]:
    """Runs the whole grid; returns all result rows (also in OUTPUT/results.jsonl)."""
    from gristmill.training import vocab as vocab_lib

    io.makedirs(config.output)
    corpus = prepare_corpus(config)
    expanded, skipped = expand_samplers(config.samplers, sorted(corpus["score_coverage"]))
    usable, unusable = usable_samplers(expanded, corpus["score_coverage"], corpus["train_documents"])
    skipped.update(unusable)
    cells = grid(config, usable)
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
               "runs": [c.name for c in cells], "metrics": [metric_name(n) for n in config.text_sets],
               "lower_is_better": [metric_name(n) for n in config.text_sets]}
    io.write_json(io.join(config.output, EXPERIMENT_FILE), summary)
    log.info("experiment %s: %d runs (%d samplers skipped), %d training / %d held-out documents", config.output,
             len(cells), len(skipped), corpus["train_documents"], corpus["heldout_documents"])
    rows: list[dict[str, Any]] = []
    for i, cell in enumerate(cells, start=1):
        log.info("run %d/%d: %s", i, len(cells), cell.name)
        rows.extend(run_cell(config, cell, vocab_path, examples))
        write_results(config.output, rows, SEED_RESULTS_FILE)
        write_results(config.output, mean_over_seeds(rows))
    means = mean_over_seeds(rows)
    summary["seed_comparison"] = [{**dataclasses.asdict(c), "difference": c.difference,
                                   "within_spread": c.within_spread} for c in compare_to_full(means)]
    io.write_json(io.join(config.output, EXPERIMENT_FILE), summary)
    return means


# --- entry point -----------------------------------------------------------------------------

def load_config(*, grid_file: Optional[str] = None, config_file: Optional[str] = None,
                scored: Sequence[str] = (), output: Optional[str] = None) -> ExperimentConfig:
    """The experiment from a grid file, a config file (its keys win) and the --scored/--output flags (win last)."""
    if not grid_file and not config_file:
        raise ExperimentError("give --grid GRID.json (e.g. experiments/paper.json) and/or --config FILE.json")
    data: dict[str, Any] = {}
    for path in (grid_file, config_file):
        if path:
            try:
                data.update(io.read_json(path))
            except (OSError, ValueError) as e:
                raise ExperimentError(f"{path}: cannot read the experiment config ({e})") from e
    if scored:
        data["scored"] = list(scored)
    return ExperimentConfig.from_dict(data, output)


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
