"""A job's options: the flags every Beam job shares (`JobOptions`), Beam's pass-through flags and the
runner defaults gristmill fills in (`parse`, `with_runner_defaults`)."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

from apache_beam.options.pipeline_options import PipelineOptions

from gristmill import documents, flags, io
from gristmill.errors import UsageError
from gristmill.pipelines import units

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobOptions:
    """Flags every job takes: where it reads and writes, how it parses, how it cuts work into units."""

    input: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "Input file globs, local or gs://, or a gristmill output directory (read through its manifest)"})
    output: Optional[str] = dataclasses.field(default=None, metadata={"help": "Output directory, local or gs://"})
    format: str = dataclasses.field(default="auto", metadata={
        "help": "Input format: json (C4 / JSON lines; .gz and .zst ok), lines, tfrecord, parquet, or auto by name",
        "choices": documents.FORMATS})
    text_field: str = dataclasses.field(default="text", metadata={"help": "JSON key holding the document text"})
    keep_fields: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "JSON fields to carry into the records as features (e.g. label,lang)"})
    max_document_bytes: int = dataclasses.field(default=1_000_000, metadata={
        "help": "Documents larger than this (UTF-8 bytes) are dead-lettered as too_large"})
    unit_records: int = dataclasses.field(default=units.DEFAULT_UNIT_RECORDS, metadata={
        "help": "Records of an input file per work unit (the unit of resume and of memory)"})
    unit_bytes: int = dataclasses.field(default=units.DEFAULT_UNIT_BYTES, metadata={
        "help": "A unit closes early once its records' raw bytes reach this: bounds a worker's memory"})
    resume: bool = dataclasses.field(default=True, metadata={
        "help": "Reuse finished units of an earlier run of the same configuration (--noresume redoes them)"})
    overwrite: bool = dataclasses.field(default=False, metadata={
        "help": "Remove everything in --output first"})
    verify_inputs: bool = dataclasses.field(default=False, metadata={
        "help": "Make each input file's CRC32C part of its identity (read once locally; free on GCS), so an "
                "input rewritten with the same size and modification time is noticed and redone"})
    limit: int = dataclasses.field(default=0, metadata={
        "help": "Read only the first N records of the input (files in sorted order); 0 reads everything"})
    workers: int = dataclasses.field(default=0, metadata={
        "help": "Local runs: N worker processes (multi-processing FnApiRunner)"})
    accelerator: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Dataflow accelerator for the model step only, e.g. 'type:nvidia-l4;count:1;install-nvidia-driver'"})

    def reader_config(self) -> documents.ReaderConfig:
        """How the input is parsed."""
        kwargs: dict[str, Any] = {"format": self.format, "text_field": self.text_field,
                                  "max_document_bytes": self.max_document_bytes}
        if self.keep_fields:
            kwargs["keep_fields"] = tuple(self.keep_fields)
        return documents.ReaderConfig(**kwargs)


def with_runner_defaults(argv: list[str], workers: int = 0) -> list[str]:
    """Fills in gristmill's runner defaults around the user's Beam flags.

    - No `--runner`: Beam's in-process FnApiRunner, named explicitly (no Prism download).
    - workers > 0: that runner in multi-processing mode with that many worker processes.
    - `--job_endpoint=embed` without `--environment_type`: LOOPBACK, since the embedded job
      server would otherwise try to start SDK workers in Docker.
    - `--runner dask` (or DaskRunner, any case): gristmill's fixed DaskRunner with one input file
      per partition (`gristmill.runners.dask.runner_args`); without `--dask_client_address` Dask
      starts a LocalCluster.
    """
    args = list(argv)
    dask_names = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner",
                  "gristmill.runners.dask.daskrunner")
    if (_flag_value(args, "--runner") or "").lower() in dask_names:
        try:
            from gristmill.runners import dask as dask_engine
        except ModuleNotFoundError as err:
            if err.name not in ("dask", "distributed") and not (err.name or "").startswith("dask."):
                raise
            raise UsageError(f"--runner dask needs Dask ({err.name} is not installed): "
                             f"pip install 'gristmill[dask]'") from err
        args = dask_engine.runner_args(args)
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in names:
        args.append(f"--runner={LOCAL_RUNNER}")
    if workers > 0 and "--direct_running_mode" not in names:
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    if _flag_value(args, "--job_endpoint") == "embed" and "--environment_type" not in names:
        args.append("--environment_type=LOOPBACK")
    return args


def _flag_value(args: list[str], name: str) -> Optional[str]:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def parse(argv: Optional[list[str]], config_class: type[Any], description: str,
          defaults: Optional[dict[str, Any]] = None) -> tuple[JobOptions, Any, PipelineOptions]:
    """Parses the kit's flags, the job's config flags and pass-through Beam flags.

    Returns (job options, the job's config dataclass, Beam pipeline options with runner defaults).
    """
    parser = flags.Parser(description=description,
                          epilog="Beam's pipeline options pass through (--runner, --project, --temp_location, ...).")
    flags.add_flags(parser, JobOptions)
    flags.add_flags(parser, config_class, defaults)
    namespace, rest = flags.parse(parser, sys.argv[1:] if argv is None else argv, beam=True)
    options = flags.from_namespace(namespace, JobOptions)
    options = dataclasses.replace(options, output=options.output and absolute(options.output),
                                  input=tuple(",".join(absolute(p.strip()) if p.strip() else p for p in spec.split(","))
                                              for spec in options.input))
    if not options.input:
        raise UsageError("--input is required (a file glob, local or gs://, or a gristmill output directory)")
    if not options.output:
        raise UsageError("--output is required (a directory, local or gs://)")
    if options.unit_records < 1:
        raise UsageError(f"--unit_records must be at least 1, got {options.unit_records}")
    if options.accelerator:
        from gristmill.pipelines import resources
        resources.parse_accelerator(options.accelerator)
    try:
        config = flags.from_namespace(namespace, config_class)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err
    flags.checkpoint()
    return options, config, PipelineOptions(with_runner_defaults(rest, options.workers))


def model_step_hints(options: JobOptions) -> dict[str, Any]:
    """Resource hints for the model step (the accelerator), empty without --accelerator."""
    if not options.accelerator:
        return {}
    from gristmill.pipelines import resources
    return resources.model_step_hints(options.accelerator)


def absolute(path: str) -> str:
    """A local path made absolute (workers may start elsewhere); URLs unchanged."""
    return path if io.is_remote(path) else os.path.abspath(path)
