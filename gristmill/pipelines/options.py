"""Pipeline options shared by every gristmill Beam job, and the local-runner defaults.

Each job subclasses `CorpusOptions`, so every job takes the same `--input`, `--output` and
reading flags. Any other Beam option (`--runner`, `--project`, `--temp_location`, ...) passes
through to Beam unchanged.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from gristmill.documents import FORMATS, ReaderConfig

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


class CorpusOptions(PipelineOptions):
    """Where a job reads, where it writes, how it parses the corpus, and its seed.

    Beam parses every registered options class with one parser, so a flag name may be defined
    only once across all jobs: flags several jobs share live here.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", default=None,
                            help="Input file glob, local or gs:// (repeat or comma-separate for several).")
        parser.add_argument("--output", default=None, help="Output directory, local or gs://.")
        parser.add_argument("--format", default="auto", choices=FORMATS,
                            help="Input format: json (C4 / JSON lines, .gz ok), lines, tfrecord, or auto by name.")
        parser.add_argument("--text_field", default="text", help="JSON key holding the document text.")
        parser.add_argument("--max_document_bytes", type=int, default=1_000_000,
                            help="Documents larger than this (UTF-8 bytes) are dead-lettered as too_large.")
        parser.add_argument("--num_shards", type=int, default=1, help="Number of output TFRecord shards.")
        parser.add_argument("--seed", type=int, default=0,
                            help="Seed of the job's randomness (random scores, selections, hash functions).")
        parser.add_argument("--workers", type=int, default=0,
                            help="Local runs: use N worker processes (multi-processing FnApiRunner).")


def reader_config(options: CorpusOptions) -> ReaderConfig:
    """The ReaderConfig the options describe."""
    return ReaderConfig(format=options.format, text_field=options.text_field,
                        max_document_bytes=options.max_document_bytes)


def with_runner_defaults(argv: list[str]) -> list[str]:
    """Fills in gristmill's runner defaults around the user's Beam flags.

    - No `--runner`: Beam's in-process FnApiRunner, named explicitly (no Prism download).
    - `--workers N`: that runner in multi-processing mode with N worker processes.
    - `--job_endpoint=embed` without `--environment_type`: LOOPBACK, since the embedded job
      server would otherwise try to start SDK workers in Docker.
    """
    args = list(argv)
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    has = lambda name: name in flags  # noqa: E731
    if not has("--runner"):
        args.append(f"--runner={LOCAL_RUNNER}")
    workers = _flag_value(args, "--workers")
    if workers and int(workers) > 0 and not has("--direct_running_mode"):
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={int(workers)}"]
    if _flag_value(args, "--job_endpoint") == "embed" and not has("--environment_type"):
        args.append("--environment_type=LOOPBACK")
    return args


def _flag_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None
