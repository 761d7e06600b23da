"""The job kit: what every gristmill Beam job shares, so a scorer is a pure module plus a few lines.

    work items (files, done chunks) --ReadUnits--> (ref, record) ---scorer---> (ref, scored record)
                                           \\--> unit infos, reader dead letters      \\--> scorer dead letters
    all of them ------------------------------------------------------------------> WriteUnits
        -> DIR/units/<unit>.tfrecord, .dead.jsonl, .json (marker, last)  --Finalize--> dead_letters.jsonl,
                                                                                      manifest.json (last)

`ref` is (unit key, record number). WriteUnits buffers one unit at a time per bundle and writes it
when every item of the unit has arrived, so memory per worker is bounded by the unit size, not the
corpus, and no group holds a shard of the corpus. The reader emits a whole unit from one call,
and everything from the reader to the writer is element-wise (fused into one stage by every
runner), so a unit never spans bundles; a bundle that ends with an unfinished unit fails loudly
and is retried by the runner.

The kit assembles a job from its parts, one module each: `job_options` (flags, runner defaults),
`items` (reading units, the Item stream, progress), `unit_io` (writing units), `manifest` (the
run manifest, written last) and `units` (unit keys, resume); this module prepares a job, holds its
output's lease, runs it and checks its manifest. Job modules use the kit's names (`kit.Item`,
`kit.read`, `kit.write`, ...), re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from gristmill import io, lease, records
from gristmill.pipelines import units
from gristmill.pipelines.items import (  # noqa: F401 (the kit's names for job modules)
    COUNTER_NAMESPACE,
    DEAD,
    DEAD_LETTER_NAMESPACE,
    EXCLUDED,
    INFERENCE_ERROR,
    RECORD,
    UNIT,
    Item,
    MapRecords,
    Progress,
    ReadUnits,
    UnitInfo,
    as_item,
    dead_letter,
    documents_in,
    duration,
    input_files,
    map_records,
)
from gristmill.pipelines.job_options import (  # noqa: F401
    LOCAL_RUNNER,
    JobOptions,
    UsageError,
    absolute,
    model_step_hints,
    parse,
    with_runner_defaults,
)
from gristmill.pipelines.manifest import (  # noqa: F401
    ALL_DEAD_ADVICE,
    DEAD_LETTER_FILE,
    MANIFEST_FILE,
    MANIFESTS_DIR,
    VERSIONS_DIR,
    Finalize,
    IncompleteJobError,
    build_manifest,
    check_complete,
    check_not_all_dead,
    finalize,
    listed_files,
    output_version,
    package_versions,
    utc_now,
    version_path,
)
from gristmill.pipelines.unit_io import (  # noqa: F401
    ReadScoreWriteUnits,
    WriteUnits,
    write_file,
    write_once,
    write_unit,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A job ready to build: its options, config, inputs, work, and the manifest's known parts."""

    options: JobOptions
    config: Any
    pipeline_options: PipelineOptions
    files: list[units.InputFile]
    work: list[units.FileWork]
    reused: list[dict[str, Any]]
    base: dict[str, Any]
    manifest_generation: int = 0  # manifest.json's generation when the job started (0: none)
    fresh: bool = False  # the output held no job before this one: a failure before any unit undoes the start
    documents: Optional[int] = None  # the input's records when known up front (progress totals)


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str)) if dataclasses.is_dataclass(config) \
        else dict(config or {})


def prepare(job: str, options: JobOptions, config: Any, pipeline_options: PipelineOptions,
            fingerprint_extra: Optional[dict[str, Any]] = None,
            files: Optional[list[units.InputFile]] = None, replans: bool = False,
            shard: Optional[tuple[int, int]] = None) -> Prepared:
    """Resolves inputs, checks the output directory and splits the work into units to do and reused ones.

    replans: the job's records depend on its whole input (see units.check_output). shard: (i, n)
    for worker i of a local `--workers n` job (`run_shards`): it takes the input files i, i+n, ...
    that have work left, under the lease its launcher holds.
    """
    files = input_files(options) if files is None else files
    described = config_dict(config)
    shaping = {"scorer": described, "reader": config_dict(options.reader_config()),
               "unit_records": options.unit_records, **(fingerprint_extra or {})}
    if options.unit_bytes != units.DEFAULT_UNIT_BYTES:  # so the default keeps earlier outputs' unit keys
        shaping["unit_bytes"] = options.unit_bytes
    fp = units.fingerprint(job, shaping)
    output = options.output
    if shard is None:
        hold_output(output, f"gristmill {job}")
    else:
        _check_launcher_lease(output)
    try:
        fresh = not io.exists(io.join(output, units.JOB_FILE)) or options.overwrite
        # a worker leaves staging files to its launcher: the other workers' writes in flight are staged there
        removed = io.remove_temporaries(output) if shard is None else 0
        if removed:
            log.info("%s: removed %d staging file(s) that killed writes left", output, removed)
        units.check_output(output, job, {**described, "unit_records": options.unit_records,
                                         "text_field": options.text_field, "format": options.format,
                                         "keep_fields": list(options.keep_fields),
                                         "max_document_bytes": options.max_document_bytes}, fp, options.overwrite,
                           replans)
        manifest_path = io.join(output, MANIFEST_FILE)
        generation = io.stat(manifest_path).generation if io.exists(manifest_path) else 0
        previous = io.read_json(manifest_path) if generation and options.resume else None
        markers = units.resume_markers(output, previous) if options.resume else {}
    except BaseException:
        release_output(output)
        raise
    work, reused = units.plan_work(files, options.unit_records, fp, markers, options.unit_bytes)
    if shard is not None:
        work = shard_work(files, work, shard)
    log.info("%s: %d file(s), %d to read, %d unit(s) reused%s", job, len(files), len(work), len(reused),
             "" if shard is None else f" (worker {shard[0] + 1} of {shard[1]})")
    base = {
        "job": job, "command": " ".join(["gristmill", *job.split()] + sys.argv[1:]) if sys.argv else job,
        "config": described, "fingerprint": fp,
        "options": config_dict(options),
        "pipeline_options": pipeline_options.get_all_options(drop_default=True, retain_unknown_options=True),
        "inputs": [f.identity() for f in files], "versions": package_versions(), "started_at": utc_now(),
    }
    total = documents_in(options)
    to_read = None if total is None else max(total - sum(m.get("read", 0) for m in reused), 0)
    return Prepared(options, config, pipeline_options, files, work, reused, base, generation or 0, fresh, to_read)


def shard_work(files: list[units.InputFile], work: list[units.FileWork],
               shard: tuple[int, int]) -> list[units.FileWork]:
    """Worker i of n's share of the work: the files i, i+n, ... by place among all inputs, so what the
    other workers finish does not move a file to another worker."""
    place = {f.path: k for k, f in enumerate(files)}
    return [w for w in work if place[w.file.path] % shard[1] == shard[0]]


def new_pipeline(pipeline_options: PipelineOptions, save_main_session: bool, test_pipeline=None) -> beam.Pipeline:
    """The pipeline a job builds on: the test pipeline when given, else one from the options.

    The main session is pickled for remote workers only: the local runner runs gristmill's own
    DoFns, which import what they use (pickling it cost 0.2 s a job).
    """
    if test_pipeline is not None:
        return test_pipeline
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session and not _runs_locally(
        pipeline_options)
    return beam.Pipeline(options=pipeline_options)


def read(pipeline: beam.Pipeline, prepared: Prepared, label: str = "Read"):
    """The Item stream of the units still to do."""
    work = pipeline | f"{label}Work" >> beam.Create(prepared.work)
    return work | label >> ReadUnits(prepared.options.reader_config(), prepared.documents)


def write(prepared: Prepared, items, files: Optional[dict[str, str]] = None, after: Iterable[Any] = (),
          extra_files=None):
    """Writes the units from their Items and, last, the manifest. Returns the manifest PCollection."""
    markers = items | "WriteUnits" >> WriteUnits(prepared.options.output, extra_files)
    return finish(prepared, markers, files, after)


def finish(prepared: Prepared, markers, files: Optional[dict[str, str]] = None, after: Iterable[Any] = ()):
    """The new units' markers -> the manifest over them and the reused units, written last."""
    return markers | "Finalize" >> Finalize(prepared.options.output, prepared.base, prepared.reused, files, after,
                                            manifest_generation=prepared.manifest_generation)


def score_units(pipeline: beam.Pipeline, prepared: Prepared, scorer: beam.PTransform):
    """Read -> score -> write of the units still to do; returns their markers. A `MapRecords` scorer
    runs inside the step that reads and writes (`ReadScoreWriteUnits`), any other between them."""
    if isinstance(scorer, MapRecords):
        work = pipeline | "ReadWork" >> beam.Create(prepared.work)
        return work | "Units" >> ReadScoreWriteUnits(prepared.options.reader_config(), prepared.documents, scorer.fn,
                                                       prepared.options.output)
    return read(pipeline, prepared) | "Score" >> scorer | "WriteUnits" >> WriteUnits(prepared.options.output)


FLEX_TEMPLATE_PY_FILE = "FLEX_TEMPLATE_PYTHON_PY_FILE"  # set in a flex template launcher image


def staged_only(pipeline_options: PipelineOptions) -> Optional[str]:
    """Why this process only stages or submits the job and must not wait for it, or None when it runs it.

    `--template_location` makes DataflowRunner write the job file and submit nothing; Dataflow's
    flex template launcher passes one (`.../template_launches/<id>/job_object`) and submits the
    file after this process exits. The launcher image runs FLEX_TEMPLATE_PYTHON_PY_FILE, so a
    DataflowRunner job started as that file is a launch even if no template location was passed.
    """
    options = pipeline_options.get_all_options()
    if options.get("dry_run"):
        return None
    if options.get("template_location"):
        return f"staged as a Dataflow template at {options['template_location']}"
    py_file = os.environ.get(FLEX_TEMPLATE_PY_FILE)
    launched = py_file and sys.argv and os.path.abspath(sys.argv[0]) == os.path.abspath(py_file)
    if launched and "Dataflow" in str(options.get("runner")):
        return "submitted by the flex template launcher"
    return None


def run_pipeline(pipeline: beam.Pipeline, prepared: Prepared, is_test: bool) -> Optional[dict[str, Any]]:
    """Runs a built pipeline to completion and returns its manifest (None for a test pipeline run elsewhere).

    A template launch (`staged_only`) returns None once the job is staged or submitted: the
    pipeline's own last step writes the manifest. The job's lease on its output is released at the
    end, whatever happened, so on Dataflow templates it guards the launch only; a test pipeline runs
    after this returns, without the lease.
    """
    output = prepared.options.output
    try:
        if is_test:
            return None
        start = time.monotonic()
        result = pipeline.run()
        if prepared.pipeline_options.get_all_options().get("dry_run"):
            return None
        staged = staged_only(prepared.pipeline_options)
        if staged:
            job_id = result.job_id() if getattr(result, "has_job", False) else None
            log.info("%s: job %s%s; its manifest will be written to %s by the pipeline's last step",
                     prepared.base["job"], staged, f" (Dataflow job {job_id})" if job_id else "",
                     io.join(output, MANIFEST_FILE))
            return None
        result.wait_until_finish()
        log.info("pipeline finished in %.1f s", time.monotonic() - start)
        return _written_manifest(prepared)
    except Exception:
        if not is_test:
            undo_failed_start(prepared)
        raise
    finally:
        release_output(output)


def finish_reused(prepared: Prepared) -> dict[str, Any]:
    """A local one-pass job with every unit reused (a no-op rerun, a `--workers` launcher after its
    workers): the manifest written here from the reused markers, with no pipeline to build and run."""
    try:
        finalize(prepared.options.output, prepared.base, prepared.reused, len(prepared.reused), None,
                 prepared.manifest_generation)
        return _written_manifest(prepared)
    finally:
        release_output(prepared.options.output)


def _written_manifest(prepared: Prepared) -> dict[str, Any]:
    """The manifest this run wrote, once this process is known to still hold the output's lease."""
    output = prepared.options.output
    held = _LEASES.get(output)
    if held is not None:
        held.check()
    manifest = records.read_manifest(output)
    if manifest.get("fingerprint") != prepared.base["fingerprint"] or \
            manifest.get("started_at") != prepared.base["started_at"]:
        raise IncompleteJobError(f"{output}: the pipeline finished but wrote no manifest of this run "
                                 f"(the manifest there is of a run started at {manifest.get('started_at')})")
    check_not_all_dead(manifest, prepared.options)
    return manifest


def undo_failed_start(prepared: Prepared) -> None:
    """A job that failed before writing any unit into a fresh output leaves the directory as it found it.

    So a corrected command (e.g. select with the right --score) is not refused as a different
    configuration. Once a unit is written, the outputs stay: a rerun resumes from them.
    """
    output = prepared.options.output
    if not prepared.fresh or io.glob(io.join(output, units.UNITS_DIR, "*" + units.MARKER_SUFFIX), allow_empty=True):
        return
    io.delete_tree(output, keep=(lease.LEASE_FILE,))
    log.info("%s: the job failed before its first unit; removed what it had written", output)


# ------------------------------------------------------------------------------------ one writer


_LEASES: dict[str, Any] = {}  # output directory -> the lease this process holds on it (launcher side only)


def hold_output(output_dir: str, what: str):
    """Takes the output directory's lease for this job (see gristmill.lease); returns it."""
    release_output(output_dir)  # a job of this process that failed before run_pipeline
    _LEASES[output_dir] = lease.acquire(output_dir, what)
    return _LEASES[output_dir]


def release_output(output_dir: str) -> None:
    """Releases this process's lease on the output directory, if it holds one."""
    held = _LEASES.pop(output_dir, None)
    if held is not None:
        held.release()


# ------------------------------------------------------------------------------------ scorers


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A one-pass scorer: its job name, config class and a PTransform factory.

    transform(config, options) maps the Item stream: record Items get their score (or become
    dead-letter Items), every other Item passes through unchanged.
    """

    job: str
    config_class: type
    transform: Callable[[Any, JobOptions], beam.PTransform]
    description: str = ""
    check: Callable[[Any], None] = lambda config: None
    fingerprint_extra: Callable[[Any], dict[str, Any]] = lambda config: {}


def run_scorer(scorer: Scorer, argv=None, save_main_session=True, test_pipeline=None):
    """Parses flags, builds read -> score -> write for a one-pass scorer, runs it; returns the manifest.

    With `--workers N` on the local runner, N worker processes write the units first
    (`run_shards`), and this process then finds them all done and writes the manifest.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    options, config, pipeline_options = parse(argv, scorer.config_class, scorer.description)
    scorer.check(config)
    shard = current_shard()
    if shard is None and test_pipeline is None and options.workers > 1 and _runs_locally(pipeline_options):
        first = prepare(scorer.job, options, config, pipeline_options, scorer.fingerprint_extra(config))

        def own_share(shard: tuple[int, int]) -> None:
            share = dataclasses.replace(first, work=shard_work(first.files, first.work, shard))
            log.info("%s: %d file(s) to read in this process (worker 1 of %d)", scorer.job, len(share.work), shard[1])
            in_process = parse([*argv, "--workers=0"], scorer.config_class, scorer.description)[2]
            pipeline = new_pipeline(in_process, save_main_session)
            score_units(pipeline, share, scorer.transform(config, options))
            pipeline.run().wait_until_finish()

        try:
            run_shards(scorer.job, argv, first, options.workers, own_share)
        except BaseException:
            release_output(options.output)
            raise
        argv = [*argv, "--workers=0", "--nooverwrite"]  # the units are there: reuse them, in-process
        options, config, pipeline_options = parse(argv, scorer.config_class, scorer.description)
    prepared = prepare(scorer.job, options, config, pipeline_options, scorer.fingerprint_extra(config), shard=shard)
    if shard is None and test_pipeline is None and not prepared.work and _runs_locally(pipeline_options):
        return finish_reused(prepared)
    pipeline = new_pipeline(pipeline_options, save_main_session, test_pipeline)
    markers = score_units(pipeline, prepared, scorer.transform(config, options))
    if shard is not None:  # a worker of run_shards: units only; its launcher writes the manifest
        pipeline.run().wait_until_finish()
        return None
    finish(prepared, markers)
    return run_pipeline(pipeline, prepared, is_test=test_pipeline is not None)


# ------------------------------------------------------------------------------------ local workers


SHARD_ENV = "GRISTMILL_SHARD"  # "i/n": this process is worker i of a local --workers n job
LEASE_TOKEN_ENV = "GRISTMILL_LEASE_TOKEN"  # the token of the lease its launcher holds on --output


class WorkerFailedError(OSError):
    """A worker process of a local --workers job failed (it printed why); its finished units are kept."""


def current_shard() -> Optional[tuple[int, int]]:
    """(i, n) when this process is worker i of a local `--workers n` job, else None."""
    value = os.environ.get(SHARD_ENV)
    if not value:
        return None
    i, n = (int(part) for part in value.split("/"))
    return i, n


def _runs_locally(pipeline_options: PipelineOptions) -> bool:
    return pipeline_options.get_all_options().get("runner") in (LOCAL_RUNNER, "DirectRunner", None)


def _check_launcher_lease(output: str) -> None:
    """A worker writes under its launcher's lease: the lease file must hold the token it was given."""
    try:
        holder = json.loads(io.read_bytes(io.join(output, lease.LEASE_FILE)))
    except (FileNotFoundError, ValueError):
        holder = {}
    if holder.get("token") != os.environ.get(LEASE_TOKEN_ENV):
        raise lease.LeaseHeldError(f"{output}: this worker's launcher no longer holds the output's lease "
                                   f"(now {lease.describe(holder) if holder else 'nobody'})")


def run_shards(job: str, argv: list[str], prepared: Prepared, workers: int,
               own_share: Callable[[tuple[int, int]], None]) -> None:
    """Runs a one-pass job's units in `workers` local processes, each an in-process pipeline over every
    workers-th input file, under this process's lease; they write units and no manifest.

    This process is worker 1 (`own_share((0, n))`, its modules already imported) while it waits for
    workers 2..n, started as `gristmill` processes. Like DataTrove's local tasks, no element crosses
    a process boundary (Beam's multi-processing runner ships every element between its workers).
    """
    n = min(workers, len(prepared.files), len(prepared.work))
    if n < 2:
        return
    held = _LEASES[prepared.options.output]
    child_argv = [a for a in argv if a != "--overwrite" and not a.startswith("--overwrite=")]
    log.info("%s: %d files to read in %d worker processes", job, len(prepared.work), n)
    processes = []
    for i in range(1, n):
        env = dict(os.environ, **{SHARD_ENV: f"{i}/{n}", LEASE_TOKEN_ENV: held.holder["token"]})
        command = [sys.executable, "-m", "gristmill.cli", *job.split(), *child_argv, "--workers=0", "--nooverwrite"]
        processes.append(subprocess.Popen(command, env=env))
    try:
        own_share((0, n))
    finally:  # the others' units are kept either way: let them finish
        codes = [p.wait() for p in processes]
    failed = [(i, code) for i, code in enumerate(codes, start=1) if code != 0]
    if failed:
        raise WorkerFailedError(
            f"{len(failed)} of {n} worker processes failed ("
            + ", ".join(f"worker {i + 1} exit {code}" for i, code in failed)
            + "); their finished units are kept: rerun the same command to resume")

