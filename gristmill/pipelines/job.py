"""The skeleton every gristmill Beam job shares: parse options, read, (score), write, manifest, run."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from typing import Any, Type, TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from gristmill import documents
from gristmill.pipelines import options as options_lib
from gristmill.pipelines import transforms

log = logging.getLogger(__name__)
O = TypeVar("O", bound=PipelineOptions)


class UsageError(ValueError):
    """A job was started with missing or contradictory flags."""


def parse_options(argv: list[str] | None, options_class: Type[O]) -> tuple[PipelineOptions, options_lib.CorpusOptions, O]:
    """Parses corpus flags, the job's own flags and pass-through Beam flags (runner defaults filled in).

    Job option classes subclass PipelineOptions directly: Beam only registers direct subclasses.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        parser = argparse.ArgumentParser(
            description=sys.modules[options_class.__module__].__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Any other flag is a Beam pipeline option (--runner, --project, --temp_location, ...).")
        options_lib.CorpusOptions._add_argparse_args(parser)
        options_class._add_argparse_args(parser)
        parser.print_help()
        raise SystemExit(0)
    pipeline_options = PipelineOptions(options_lib.with_runner_defaults(argv))
    corpus = pipeline_options.view_as(options_lib.CorpusOptions)
    if not corpus.input:
        raise UsageError("--input is required (a file glob, local or gs://)")
    if not corpus.output:
        raise UsageError("--output is required (a directory, local or gs://)")
    return pipeline_options, corpus, pipeline_options.view_as(options_class)


def manifest_base(job: str, config: Any, pipeline_options: PipelineOptions, files: list[str]) -> dict[str, Any]:
    """The parts of the run manifest known before the pipeline runs."""
    return {
        "job": job,
        "command": " ".join(sys.argv),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {}),
        "pipeline_options": pipeline_options.get_all_options(drop_default=True, retain_unknown_options=True),
        "inputs": files,
        "versions": transforms.package_versions(),
        "started_at": transforms.utc_now(),
    }


def write_outputs(pipeline: beam.Pipeline, output_dir: str, num_shards: int, base: dict[str, Any],
                  documents_pc, written_records, dead_letters, excluded=None, prefix: str = transforms.SCORED_PREFIX):
    """Writes records, dead letters and (last) the manifest; returns the written-count PCollection.

    documents_pc: every document read (for the read count); written_records: what to write;
    dead_letters: the reader's dead letters, or a list whose first item is the reader's and the
        rest are dead letters of documents that failed later (a scorer's), already counted as read;
    excluded: optional single-element {name: count} PCollection of documents left out on purpose.
    """
    if not isinstance(dead_letters, (list, tuple)):
        dead_letters = [dead_letters]
    reader_dead = dead_letters[0]
    all_dead = tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
    written = written_records | "WriteRecords" >> transforms.WriteScoredRecords(output_dir, num_shards, prefix)
    all_dead | "WriteDeadLetters" >> transforms.WriteDeadLetters(output_dir)
    document_count = documents_pc | "CountDocuments" >> beam.combiners.Count.Globally()
    unreadable = reader_dead | "CountUnreadable" >> beam.combiners.Count.Globally()
    reasons = all_dead | "CountDeadLetters" >> transforms.CountReasons()
    pipeline | "WriteManifest" >> transforms.WriteManifest(output_dir, base, document_count, unreadable, written,
                                                           reasons, excluded)
    return written


def new_pipeline(pipeline_options: PipelineOptions, save_main_session: bool, test_pipeline=None) -> beam.Pipeline:
    """The pipeline a job builds on: the test pipeline when given, else one from the options."""
    if test_pipeline is not None:
        return test_pipeline
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    return beam.Pipeline(options=pipeline_options)


def run_pipeline(pipeline: beam.Pipeline, output_dir: str, is_test: bool) -> dict[str, Any] | None:
    """Runs a built pipeline to completion and returns its manifest (None for a test pipeline run elsewhere)."""
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    log.info("pipeline finished in %.1f s", time.monotonic() - start)
    try:
        return transforms.read_manifest(output_dir)
    except (OSError, IOError, ValueError) as err:
        if is_test:
            return None
        raise RuntimeError(f"the job finished but its manifest in {output_dir} cannot be read: {err}") from err


def read_corpus(pipeline: beam.Pipeline, job_options: options_lib.CorpusOptions):
    """Expands the input globs and reads them: returns (files, documents, reader dead letters)."""
    files = documents.expand_patterns(job_options.input)
    log.info("reading %d input file(s)", len(files))
    read = pipeline | "ReadDocuments" >> transforms.ReadDocuments(files, options_lib.reader_config(job_options))
    return files, read[transforms.DOCUMENTS], read[transforms.DEAD_LETTERS]
