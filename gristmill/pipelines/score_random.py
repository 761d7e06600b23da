"""`gristmill score random`: the Random baseline of the paper, as a Beam job.

    gristmill score random --input 'c4/en/c4-train.*.json.gz' --output out/random [--seed 0]

Writes `score/random/seed-<seed>` into every record, plus dead letters and the run manifest.
"""

from __future__ import annotations

import apache_beam as beam

from gristmill.pipelines import job
from gristmill.pipelines.options import CorpusOptions
from gristmill.scoring.random_score import RandomScoreConfig, add_random_score


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    pipeline_options, corpus, _ = job.parse_options(argv, CorpusOptions)
    config = RandomScoreConfig(seed=corpus.seed)
    pipeline = job.new_pipeline(pipeline_options, save_main_session, test_pipeline)
    files, docs, dead = job.read_corpus(pipeline, corpus)
    scored = docs | "RandomScore" >> beam.Map(add_random_score, config)
    base = job.manifest_base("score random", config, pipeline_options, files)
    job.write_outputs(pipeline, corpus.output, corpus.num_shards, base, docs, scored, dead)
    return job.run_pipeline(pipeline, corpus.output, is_test=test_pipeline is not None)
