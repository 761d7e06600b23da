"""The paper's Random sampler as a score: uniform in [0, 1) from a hash of (document id, seed).

Hashing instead of drawing makes the score deterministic and independent of sharding, worker
count and runner: the same document gets the same score wherever it is processed.
"""

from __future__ import annotations

import dataclasses

from gristmill import records, sampling

SCORER = "random"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomScoreConfig:
    """seed: changes every score; the same seed reproduces them."""

    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the scores: the same seed reproduces them"})

    @property
    def feature(self) -> str:
        """The score feature this configuration writes, `score/random/seed-<seed>`."""
        return records.score_feature(SCORER, f"seed-{self.seed}")


def random_score(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by (doc_id, seed): the project's one hash-to-uniform.

    It is `sampling.uniform_from_id`, the same number the selection rules draw for the document,
    so there is one keying convention wherever gristmill turns an id into a uniform.
    """
    return sampling.uniform_from_id(doc_id, seed)


def add_random_score(record: records.Record, config: RandomScoreConfig) -> records.Record:
    """Returns the record with its random score added (every other feature kept)."""
    scored = dict(record)
    scored[config.feature] = random_score(record[records.ID], config.seed)
    return scored
