"""The experiment's grid, pure: the config parsed and checked, the samplers, the runs and their names.

`gristmill experiment` (gristmill/experiment.py, which documents the config's keys) reads a grid
file into an `ExperimentConfig`; this module turns it into runs without reading a corpus or
training anything:

- `SamplerSpec` / `ExperimentConfig`: the JSON config parsed and validated (unknown keys, rules,
  rates, model sizes, seeds, the TrainConfig fields the experiment sets itself);
- `expand_samplers`: a sampler whose "score" is an `fnmatch` pattern becomes one sampler per
  matching score feature (`askllm` over `score/askllm/*` -> `askllm-flan-t5-xl`, ...);
- `score_coverage` / `usable_samplers`: which samplers the corpus can run, and why the others not;
- `grid` / `Cell`: models x steps x (full once at rate 1, other samplers at each rate) x seeds,
  each named `runs/<model>-s<steps>/<sampler>[-<rate>][/seed-<seed>]`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

from gristmill import io, records, sampling
from gristmill.errors import UsageError
from gristmill.eval import perplexity as ppl

log = logging.getLogger(__name__)

# TrainConfig fields the experiment sets itself.
_MANAGED = ("data", "output", "steps", "model_size", "plan", "vocab", "seed", "checkpoint_every", "keep_checkpoints")


class ExperimentError(UsageError):
    """The experiment configuration or its corpus is unusable."""


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
        try:
            self.spec(None)
        except sampling.SamplingError as err:
            raise ExperimentError(f"sampler {self.name!r}: {err}") from None

    def spec(self, rate: Optional[float]) -> sampling.SelectionSpec:
        """This sampler's selection at one rate of the grid (`sampling.SelectionSpec`, checked)."""
        return sampling.SelectionSpec(rule=self.rule, score=self.score, rate=rate, rate_by=self.rate_by,
                                      missing=self.missing)

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


# --- which samplers the corpus can run ---------------------------------------------------------

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
