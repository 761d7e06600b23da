"""`gristmill curate`: scheduled curation as one command, a declared chain of jobs run incrementally.

    gristmill curate --config curation.json [--run_id ID]

The config (JSON, or YAML by its `.yaml` / `.yml` name; local or gs://) names the corpus, a work
directory and the steps:

    {"name": "daily-c4", "input": "gs://bucket/c4/*.json.gz", "workdir": "gs://bucket/curation",
     "steps": [{"name": "askllm", "job": "score askllm", "flags": {"max_length": 512}},
               {"name": "top20", "job": "select", "input_from": "askllm",
                "flags": {"score": "score/askllm/smollm2-135m-instruct", "rule": "topk", "rate": 0.2}}]}

Each step runs its job's `run(argv)` with `--input` (the chain input, or the output directory of
the step named by `input_from`, read through its manifest) and `--output WORKDIR/steps/<name>`.
The output directory is stable across batches, so every batch resumes a crashed one and scores only
the input units it has not scored yet. A selection plans over its whole input, so when its input
grew since the last batch the select job replaces its own earlier run (the kit does that).

Then the selection is published, versioned:

    WORKDIR/selections/<run id>/plan.json       the plan `gristmill train --plan` applies
    WORKDIR/selections/<run id>/report.json     the select step's report
    WORKDIR/selections/<run id>/manifest.json   steps run, their counts and inputs, the config, the time
    WORKDIR/selections/LATEST                   the run id, written last and atomically

The manifest's `selection.data` lists the scored record files the plan applies to (the upstream
step's files, which later batches add to but never change), `selection.selected_records` the
records the select step kept, and `selection.files` the size and CRC32C of each, so re-applying a
published plan gives the same documents forever. A scheduler needs no other state: the work
directory holds everything. One curate run owns a work directory at a time (its lease,
`WORKDIR/lease.json`): an overlapping run exits at once naming the holder.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import re
import time
from typing import Any, Mapping, Optional

from gristmill import errors, flags, io, lease, records
from gristmill.pipelines import units
from gristmill.pipelines.registry import SCORERS

SELECT_JOB = "select"
# job name -> the module whose run(argv) runs it; every one is a kit job (--input, --output, manifest).
JOBS: dict[str, str] = {**{info.job: info.module for info in SCORERS.values()},
                        SELECT_JOB: "gristmill.pipelines.select"}
# Jobs that plan over their whole input: rerun from scratch when their input changed.
OWNED_FLAGS = frozenset({"input", "output", "overwrite"})
STEPS_DIR = "steps"
SELECTIONS_DIR = "selections"
LATEST_FILE = "LATEST"
PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used with fullmatch: no trailing newline
FLAG_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a flag key, used with fullmatch
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # values of a YAML config with its aliases expanded (an alias bomb has billions)
log = logging.getLogger(__name__)


class CurationError(errors.UsageError):
    """A curation config or run that cannot proceed; the message says what to change."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """One step of a chain: a gristmill job, where its input comes from, and its flags."""

    name: str
    job: str
    input_from: Optional[str] = None  # None: the chain's input
    flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurationConfig:
    """A declared curation chain: corpus, work directory, steps, and which select step is published.

    `flags` go to every step (e.g. `workers`, `runner`); a step's own flags override them.
    """

    name: str
    input: tuple[str, ...]
    workdir: str
    steps: tuple[StepConfig, ...]
    publish: Optional[str] = None  # the select step to publish; None: the last select step
    flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def step(self, name: str) -> StepConfig:
        """The step called name."""
        return next(s for s in self.steps if s.name == name)

    def published_step(self) -> StepConfig:
        """The select step whose plan is published."""
        if self.publish is not None:
            return self.step(self.publish)
        return [s for s in self.steps if s.job == SELECT_JOB][-1]


# ------------------------------------------------------------------------------------ config


def _check_keys(what: str, raw: Mapping[str, Any], cls: type) -> None:
    if not isinstance(raw, Mapping):
        raise CurationError(f"{what} must be an object, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise CurationError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CurationError(f"{what}: missing required key(s) {', '.join(map(repr, missing))}")


def _check_flags(what: str, named: Any) -> dict[str, Any]:
    """Flag name -> value with each name checked: a plain flag name (no '=') that curate does not own."""
    if not isinstance(named, Mapping):
        raise CurationError(f"{what}: flags must be an object of flag name -> value, got {type(named).__name__}")
    keys = {key: str(key).lstrip("-") for key in named}
    owned = sorted(OWNED_FLAGS & {key.split("=", 1)[0] for key in keys.values()})
    if owned:
        raise CurationError(f"{what}: flag(s) {', '.join(owned)} are set by curate (input and output come from "
                            f"the chain, outputs are kept across batches); remove them")
    for key, name in keys.items():
        if not isinstance(key, str) or not FLAG_PATTERN.fullmatch(name):
            raise CurationError(f"{what}: flag key {key!r} is not a flag name (letters, digits, '_'); "
                                f"write the value as the key's value, e.g. {{\"rate\": 0.2}}")
    return {keys[key]: value for key, value in named.items()}


def parse_config(raw: Mapping[str, Any]) -> CurationConfig:
    """Validates a curation config (a parsed JSON / YAML object) into typed dataclasses.

    Refuses unknown keys, unknown job names, duplicate or path-unsafe step names, an `input_from`
    that names no earlier step, flags that curate owns, and a chain with no select step to publish.
    """
    _check_keys("curation config", raw, CurationConfig)
    inputs = raw["input"]
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not inputs or not all(isinstance(p, str) and p for p in inputs):
        raise CurationError("curation config: input must be a file glob or a list of them")
    if not isinstance(raw["workdir"], str) or not raw["workdir"]:
        raise CurationError("curation config: workdir must be a directory path (local or gs://)")
    if not isinstance(raw["steps"], list) or not raw["steps"]:
        raise CurationError("curation config: steps must be a non-empty list")
    steps: list[StepConfig] = []
    for i, raw_step in enumerate(raw["steps"]):
        _check_keys(f"step {i + 1}", raw_step, StepConfig)
        name = raw_step["name"]
        what = f"step {name!r}"
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise CurationError(f"step {i + 1}: name {name!r} must be letters, digits, '_', '.', '-' "
                                f"(it names a directory)")
        if any(s.name == name for s in steps):
            raise CurationError(f"{what}: two steps have this name")
        if raw_step["job"] not in JOBS:
            raise CurationError(f"{what}: unknown job {raw_step['job']!r}; known jobs: {', '.join(sorted(JOBS))}")
        source = raw_step.get("input_from")
        if source is not None and not any(s.name == source for s in steps):
            later = any(isinstance(r, Mapping) and r.get("name") == source for r in raw["steps"][i:])
            raise CurationError(f"{what}: input_from {source!r} " + (
                "is not an earlier step (steps run in order)" if later else
                f"names no step; steps before it: {', '.join(s.name for s in steps) or 'none'}"))
        steps.append(StepConfig(name=name, job=raw_step["job"], input_from=source,
                                flags=_check_flags(what, raw_step.get("flags", {}))))
    publish = raw.get("publish")
    if publish is not None:
        if not any(s.name == publish for s in steps):
            raise CurationError(f"curation config: publish {publish!r} names no step")
        if next(s for s in steps if s.name == publish).job != SELECT_JOB:
            raise CurationError(f"curation config: publish {publish!r} is not a select step")
    elif not any(s.job == SELECT_JOB for s in steps):
        raise CurationError("curation config: no select step; a curation publishes a selection, add a "
                            "'select' step (e.g. flags rule, score, rate)")
    return CurationConfig(name=str(raw["name"]), input=inputs, workdir=raw["workdir"], steps=tuple(steps),
                          publish=publish, flags=_check_flags("curation config", raw.get("flags", {})))


def load_config(path: str) -> tuple[CurationConfig, dict[str, Any]]:
    """Reads and validates a curation config file (JSON, or YAML by name); returns it and the raw object.

    The file may hold at most MAX_CONFIG_BYTES, and a YAML file at most MAX_YAML_NODES values with
    its aliases expanded, so an alias bomb is refused before it is expanded.
    """
    if not io.exists(path):
        raise CurationError(f"curation config {path} does not exist")
    size = io.stat(path).size
    if size > MAX_CONFIG_BYTES:
        raise CurationError(f"curation config {path} has {size} bytes; a config has at most {MAX_CONFIG_BYTES}")
    try:
        text = io.read_bytes(path).decode("utf-8")
        raw = _parse_yaml(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except CurationError as err:
        raise CurationError(f"{path}: {err}") from None
    except RecursionError:
        raise CurationError(f"{path}: nested too deeply") from None
    except ValueError as err:  # JSON, and UTF-8
        raise CurationError(f"{path}: not valid {'UTF-8' if isinstance(err, UnicodeError) else 'JSON'}: {err}") from err
    return parse_config(raw), raw


def _parse_yaml(text: str) -> Any:
    """Safe YAML, refused when its aliases expand to more than MAX_YAML_NODES values."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node) -> int:  # a node shared by aliases counts once per use
            if id(n) not in sizes:
                children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else (
                    n.value if isinstance(n, yaml.SequenceNode) else [])
                sizes[id(n)] = 1 + sum(expanded(c) for c in children)
            return sizes[id(n)]

        if expanded(node) > MAX_YAML_NODES:
            raise CurationError(f"its aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise CurationError(f"not valid YAML: {err}") from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------ paths and argv


def step_dir(config: CurationConfig, step: StepConfig) -> str:
    """A step's output directory, the same for every batch."""
    return io.join(config.workdir, STEPS_DIR, step.name)


def step_inputs(config: CurationConfig, step: StepConfig) -> tuple[str, ...]:
    """The --input of a step: the chain's input, or the output directory of the step it reads from."""
    return config.input if step.input_from is None else (step_dir(config, config.step(step.input_from)),)


def flag_args(named: Mapping[str, Any]) -> list[str]:
    """Flag name -> value as command-line arguments.

    True is a bare `--x`, False `--x=false`, a list is comma-joined, None omits the flag:
    {"rate": 0.2, "share_model": True, "keep_fields": ["a", "b"]}
    -> ["--rate=0.2", "--share_model", "--keep_fields=a,b"].
    """
    args = []
    for name, value in named.items():
        if value is None:
            continue
        if value is True:
            args.append(f"--{name}")
        elif value is False:
            args.append(f"--{name}=false")
        elif isinstance(value, (list, tuple)):
            args.append(f"--{name}=" + ",".join(str(v) for v in value))
        else:
            args.append(f"--{name}={value}")
    return args


def step_argv(config: CurationConfig, step: StepConfig, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The argv curate passes to a step's `run`: input, output, shared flags, the step's flags, extra_args."""
    argv = [f"--input={path}" for path in step_inputs(config, step)]
    argv.append(f"--output={step_dir(config, step)}")
    return argv + flag_args({**config.flags, **step.flags}) + list(extra_args)


def default_run_id() -> str:
    """A UTC timestamp, e.g. 20250101T013000Z: sortable, and unique per second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------------------------ running


def check_steps(config: CurationConfig, extra_args: tuple[str, ...] = ()) -> None:
    """Parses every step's flags as its job will, before any step runs: an unknown flag of any step
    (the config's or the command line's), a stray argument or a bad value fails the batch up front."""
    for step in config.steps:
        run = importlib.import_module(JOBS[step.job]).run
        try:
            with flags.checking():
                run(step_argv(config, step, extra_args))
        except flags.Checked:
            continue
        except Exception as err:  # noqa: BLE001 (a user error names the step; anything else is re-raised)
            if errors.exit_code(err) != errors.USAGE_EXIT:
                raise
            raise CurationError(f"step {step.name!r} ({step.job}): {err}") from err
        raise RuntimeError(f"job {step.job!r} ran without checking its flags (kit.parse calls flags.checkpoint)")


def run_step(config: CurationConfig, step: StepConfig, extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runs one step's job into its stable output directory; returns the job's manifest."""
    run = importlib.import_module(JOBS[step.job]).run
    argv = step_argv(config, step, extra_args)
    log.info("curate step %s: gristmill %s %s", step.name, step.job, " ".join(argv))
    try:
        manifest = run(argv)
    except units.OutputConflictError as err:
        raise CurationError(
            f"step {step.name!r}: {err}. Its configuration changed since the last batch; give the step a "
            f"new name (a new directory) to score from scratch, or remove {step_dir(config, step)}") from err
    if manifest is None:
        raise CurationError(f"step {step.name!r}: the job returned no manifest (a --dry_run flag?); "
                            f"curate needs every step to finish")
    if not manifest.get("reconciled", False):
        raise CurationError(f"step {step.name!r}: its counts do not reconcile ({manifest.get('counts')}); "
                            f"not publishing")
    return manifest


def step_summary(config: CurationConfig, step: StepConfig, argv: list[str], manifest: dict[str, Any],
                 seconds: float) -> dict[str, Any]:
    """What the selection manifest records of one step: job, directories, counts, inputs, time."""
    return {"name": step.name, "job": step.job, "input": list(step_inputs(config, step)),
            "output": step_dir(config, step), "argv": argv, "fingerprint": manifest.get("fingerprint"),
            "counts": manifest.get("counts"), "reconciled": manifest.get("reconciled"),
            "inputs": manifest.get("inputs"), "started_at": manifest.get("started_at"),
            "finished_at": manifest.get("finished_at"), "seconds": round(seconds, 3)}


def publish(config: CurationConfig, raw: Mapping[str, Any], run_id: str, started_at: str,
            summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Writes selections/<run id>/ (plan, report, manifest) and then, last, the LATEST pointer."""
    step = config.published_step()
    source = step_dir(config, step)
    target = io.join(config.workdir, SELECTIONS_DIR, run_id)
    select_manifest = records.read_manifest(source)
    plan_name = select_manifest["outputs"].get("plan", PLAN_FILE)
    io.atomic_write(io.join(target, PLAN_FILE), io.read_bytes(io.join(source, plan_name)))
    report_name = select_manifest["outputs"].get("report")
    if report_name and io.exists(io.join(source, report_name)):
        io.atomic_write(io.join(target, REPORT_FILE), io.read_bytes(io.join(source, report_name)))
    data, checksums = record_files_with_checksums(step_inputs(config, step))
    selected, selected_checksums = record_files_with_checksums((source,))
    manifest = {
        "name": config.name, "run_id": run_id, "started_at": started_at,
        "published_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(raw), "input": list(config.input), "workdir": config.workdir, "steps": summaries,
        "selection": {"step": step.name, "plan": PLAN_FILE,
                      "report": REPORT_FILE if report_name else None,
                      "data": data, "selected_records": selected, "files": {**checksums, **selected_checksums},
                      "select_manifest": io.join(source, select_manifest["history"]),
                      "counts": select_manifest.get("counts")},
    }
    io.write_json(io.join(target, MANIFEST_FILE), manifest)
    io.write_text(io.join(config.workdir, SELECTIONS_DIR, LATEST_FILE), run_id + "\n")
    log.info("curate %s: published %s (LATEST -> %s)", config.name, target, run_id)
    return manifest


def record_files_with_checksums(specs: tuple[str, ...]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The record files of inputs (verified), and {path: {"size", "crc32c"}} of those a gristmill manifest lists."""
    paths, checksums = [], {}
    for spec in specs:
        found = records.record_files(spec)
        paths.extend(found)
        if io.is_dir(spec):
            listed = records.read_manifest(spec).get("files", {})
            checksums.update({io.join(spec, rel): listed[rel] for rel in listed if io.join(spec, rel) in found})
    return paths, checksums


def curate(config: CurationConfig, raw: Mapping[str, Any], run_id: Optional[str] = None,
           extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runs every step in order, incrementally, and publishes the selection; returns its manifest.

    extra_args go to every step after its flags (command-line flags of `gristmill curate`). The
    run holds the work directory's lease from start to publication, so runs never overlap. Every
    step's flags are checked first.
    """
    run_id = default_run_id() if run_id is None else run_id
    if not NAME_PATTERN.fullmatch(run_id):
        raise CurationError(f"--run_id {run_id!r} must be letters, digits, '_', '.', '-' (it names a directory)")
    check_steps(config, extra_args)
    with lease.acquire(config.workdir, f"gristmill curate {config.name}"):
        io.remove_temporaries(io.join(config.workdir, SELECTIONS_DIR))  # a killed publication's staging files
        return _curate(config, raw, run_id, extra_args)


def _curate(config: CurationConfig, raw: Mapping[str, Any], run_id: str, extra_args: tuple[str, ...]) -> dict[str, Any]:
    target = io.join(config.workdir, SELECTIONS_DIR, run_id)
    if io.exists(io.join(target, MANIFEST_FILE)):
        raise CurationError(f"selection {run_id!r} is already published ({target}); a run id publishes once, "
                            f"pass another --run_id (or none: a UTC timestamp)")
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    summaries = []
    for step in config.steps:
        start = time.monotonic()
        manifest = run_step(config, step, extra_args)
        summaries.append(step_summary(config, step, step_argv(config, step, extra_args), manifest,
                                      time.monotonic() - start))
        counts = manifest["counts"]
        log.info("curate step %s: read %d, written %d, units %d (%d reused)", step.name, counts["read"],
                 counts["written"], counts["units_total"], counts["units_reused"])
    return publish(config, raw, run_id, started_at, summaries)


def latest(workdir: str) -> str:
    """The run id of the newest published selection of a work directory (for schedulers and train)."""
    path = io.join(workdir, SELECTIONS_DIR, LATEST_FILE)
    if not io.exists(path):
        raise CurationError(f"{workdir} has no published selection yet ({path} is missing)")
    return io.read_text(path).strip()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CurateFlags:
    """`gristmill curate`'s own flags; every other flag goes to every step."""

    config: str = dataclasses.field(metadata={"help": "Curation config, JSON or YAML (.yaml/.yml), local or gs://"})
    run_id: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Name of the published selection (default: a UTC timestamp)"})


def run(argv: list[str]) -> dict[str, Any]:
    """`gristmill curate --config FILE [--run_id ID] [flags]`: runs the chain, returns the selection manifest.

    Any other flag goes to every step after the config's flags, so it wins: e.g. `--runner=DataflowRunner
    --project=P --region=R --temp_location=gs://...` (what the flex template launcher adds). Each step
    refuses what it does not know (`check_steps`), before any step runs.
    """
    parser = flags.Parser(prog="gristmill curate", description=__doc__,
                          epilog="Any other flag goes to every step (a job flag, or a Beam option such as --runner).")
    flags.add_flags(parser, CurateFlags)
    namespace, rest = parser.parse_known_args(argv)
    args = flags.from_namespace(namespace, CurateFlags)
    typo = next((a for a in rest if a.startswith("-") and flags.near(a, flags.names(parser), cutoff=0.8)), None)
    if typo:
        raise flags.unknown_flag(typo, flags.names(parser))
    owned = sorted({a.split("=", 1)[0].lstrip("-") for a in rest if a.startswith("-")} & OWNED_FLAGS)
    if owned:
        raise CurationError(f"flag(s) {', '.join(owned)} are set by curate for each step; remove them")
    config, raw = load_config(args.config)
    return curate(config, raw, args.run_id, extra_args=tuple(rest))
