"""`gristmill score random`: the Random baseline of the paper, as a Beam job.

    gristmill score random --input 'c4/en/c4-train.*.json.gz' --output out/random [--seed 0]

Writes `score/random/seed-<seed>` into every record, plus dead letters and the run manifest.
"""

from __future__ import annotations

import functools

from gristmill.pipelines import kit
from gristmill.scoring.random_score import RandomScoreConfig, add_random_score


def score_random(config: RandomScoreConfig, options: kit.JobOptions) -> kit.MapRecords:
    """Items -> Items with `score/random/seed-<seed>` on every record; nothing fails."""
    return kit.MapRecords(functools.partial(add_random_score, config=config))


SCORER = kit.Scorer("score random", RandomScoreConfig, score_random, description=__doc__)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Builds and runs the job; returns the run manifest."""
    return kit.run_scorer(SCORER, argv, save_main_session, test_pipeline)
