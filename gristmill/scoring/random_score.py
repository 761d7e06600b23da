"""The paper's Random sampler as a score: uniform in [0, 1) from a hash of (document id, seed).

Hashing instead of drawing makes the score deterministic and independent of sharding, worker
count and runner: the same document gets the same score wherever it is processed.
"""

from __future__ import annotations

import dataclasses
import hashlib

from gristmill import records

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
    """A uniform number in [0, 1) determined by (doc_id, seed): 53 bits of a BLAKE2b hash."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8,
                             person=b"gm-random").digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def add_random_score(record: records.Record, config: RandomScoreConfig) -> records.Record:
    """Returns the record with its random score added (every other feature kept)."""
    scored = dict(record)
    scored[config.feature] = random_score(record[records.ID], config.seed)
    return scored
