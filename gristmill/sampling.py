"""Selection plans: top-k, bottom-k, inverse propensity sampling (IPS) and random, as pure numpy.

A selection happens in two steps, so that the Beam `select` job and the tf.data input pipeline
pick exactly the same documents:

1. **Plan** once over the whole corpus: `plan_from_scores` (exact, in memory), or
   `plan_from_quantiles` / `plan_from_histogram` (from global summaries a Beam job computes).
   The plan is a small JSON file: the rule with its fitted threshold, the rate, the seed, counts.
2. **Apply** the plan to each record anywhere, in any order, on any shard: `keep(plan, id, score)`
   (or `keep_mask` for arrays). The decision depends only on the plan and the record.

The randomness of every rule is `u = uniform_from_id(id, seed)`, a uniform in [0, 1) from a hash
of the document id, so a decision needs no RNG state and is independent of sharding and order.

Rules (docs/paper.md §4):
- `TopK`: keep iff `(score, u) > (threshold_score, threshold_u)` lexicographically: a global score
  threshold whose ties are broken by the hash, so the realised size is exact on in-memory corpora.
- `BottomK`: keep iff `(-score, u) > (-threshold_score, threshold_u)`: the lowest scores, same ties.
- `IPS`: keep iff `u < pi = min(1, c / score)` (Poisson sampling without replacement, Density's
  rule, docs/paper.md §2.4: keep probability proportional to 1/score). `c` is solved exactly so that
  the expected kept size equals the target; documents whose `c / score` exceeds 1 are capped at 1
  and their excess share is redistributed to the others.
- `Random`: keep iff `u < threshold`. Planned exactly (the threshold is the u of the first
  excluded document), so, like top-k, the realised size is exact; from summaries it is the rate.

Rates: `rate` in (0, 1] is a fraction of documents (`rate_by="documents"`) or of tokens
(`rate_by="tokens"`). Token counts come from a `tokens/<tokenizer>` record feature when the
scoring job wrote one, else from the proxy `approx_token_count(text)` = ceil(UTF-8 bytes / 4)
(about 4 bytes per SentencePiece token on English web text). `Plan.tokens_feature` records which.
The exact planners keep the prefix (in rule order) whose size is closest to the target, so the
realised document count for `rate_by="documents"` is the integer closest to `rate * num_documents`
(halves round down), provided ids are unique (documents with the same id are never split).

Scores are compared as float32, the precision of tf.train.Example float features, so a plan made
from in-memory float64 scores selects the same documents as one applied to stored records.
A missing score (absent feature, or NaN) follows `MissingScorePolicy`; documents without a score
are never part of the planned population, whose counts the plan records.

Worked example (documents a..e with scores 5, 4, 4, 2, 1; rate 0.4, so 2 documents):
    top-k keeps "a" (score 5) and whichever of the two 4s has the larger u.
    IPS with scores 1, 1, 2, 4 and rate 0.5 (target 2): c = 2 / (1 + 1 + 0.5 + 0.25) = 0.727..,
    pi = 0.73, 0.73, 0.36, 0.18 (sum 2); with scores 0.1, 1, 1, 1 the first is capped at pi = 1
    and c = 1 / 3 gives the others 1/3 each (sum 2).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import hashlib
import json
import math
from fractions import Fraction
from typing import Any, ClassVar, Iterable, Optional, Sequence, Union

import numpy as np

from gristmill import exact_sum

DOCUMENTS = "documents"
TOKENS = "tokens"
RATE_BY = (DOCUMENTS, TOKENS)
PROXY_TOKENS = "proxy/utf8_bytes_div_4"
PLAN_VERSION = 1

DocId = Union[str, bytes]


class SamplingError(ValueError):
    """A selection rule, plan or its input is invalid."""


class MissingScoreError(SamplingError):
    """A record lacks the score feature a plan needs (policy `error`)."""


class MissingScorePolicy(str, enum.Enum):
    """What a plan does with a record whose score feature is absent or NaN.

    ERROR: raise MissingScoreError naming the feature and the document id (the default).
    DROP: never keep the record. KEEP: always keep it. Either way it is not planned over.
    """

    ERROR = "error"
    DROP = "drop"
    KEEP = "keep"


# --- the hash uniform ------------------------------------------------------------------------

def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise SamplingError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _id_bytes(doc_id: DocId) -> bytes:
    if isinstance(doc_id, bytes):
        return doc_id
    if isinstance(doc_id, str):
        return doc_id.encode("utf-8")
    if isinstance(doc_id, np.bytes_):
        return bytes(doc_id)
    raise SamplingError(f"document id must be str or bytes, got {type(doc_id).__name__}: {doc_id!r}")


def uniform_from_id(doc_id: DocId, seed: int) -> float:
    """A uniform number in [0, 1) determined by (document id, seed).

    BLAKE2b keyed with the seed (8 bytes little-endian), 8-byte digest read big-endian; its top
    53 bits / 2**53 (so the float is exact and never rounds up to 1). A `str` id hashes as its
    UTF-8 bytes, so "ab12" and b"ab12" agree. Deterministic, parallel and independent of sharding.
    """
    key = _check_seed(seed).to_bytes(8, "little")
    digest = hashlib.blake2b(_id_bytes(doc_id), digest_size=8, key=key).digest()
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


def uniform_from_ids(doc_ids: Iterable[DocId], seed: int) -> np.ndarray:
    """`uniform_from_id` over many ids, as a float64 array (bitwise the same values)."""
    keyed = hashlib.blake2b(digest_size=8, key=_check_seed(seed).to_bytes(8, "little"))

    def digest(doc_id: DocId) -> bytes:
        h = keyed.copy()  # copying the keyed state is cheaper than re-keying per id
        h.update(_id_bytes(doc_id))
        return h.digest()

    raw = b"".join(digest(i) for i in doc_ids)
    return (np.frombuffer(raw, dtype=">u8") >> np.uint64(11)).astype(np.float64) * 2.0**-53


def approx_token_count(text: Union[str, bytes]) -> int:
    """The token-count proxy used when records carry no `tokens/<tokenizer>` feature: ceil(bytes / 4)."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    return max(1, -(-size // 4))


def _as_scores(scores: Any) -> np.ndarray:
    """Scores as a 1-D float64 array holding float32 values (None -> NaN), the precision records store."""
    if scores is None:
        raise SamplingError("scores are required by this rule")
    if isinstance(scores, (list, tuple)):
        scores = [np.nan if s is None else s for s in scores]
    return np.asarray(scores, dtype=np.float32).astype(np.float64).ravel()


# --- rules -----------------------------------------------------------------------------------

class Rule(abc.ABC):
    """A fitted selection rule: which (score, u) pairs it keeps.

    Each rule is a frozen keyword-only dataclass whose fields are its fitted thresholds (`None`
    disables the threshold: everything is kept). `keep` takes the randomness `u` as an argument.
    """

    name: ClassVar[str]
    needs_scores: ClassVar[bool] = True

    @abc.abstractmethod
    def keep(self, scores: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Boolean keep mask for arrays of (float32-valued) scores and hash uniforms u."""

    @abc.abstractmethod
    def inclusion_probability(self, scores: np.ndarray) -> np.ndarray:
        """Probability over u ~ U[0, 1) that a document with this score is kept, thresholds fixed."""

    @classmethod
    @abc.abstractmethod
    def fit(cls, scores: np.ndarray, u: np.ndarray, weights: np.ndarray, target: float) -> Rule:
        """The rule whose expected kept weight is closest to `target` on this whole corpus.

        Inputs are in canonical order (sorted by score, u, id) so sums do not depend on the
        order documents arrived in; weights are int64 (1 per document, or token counts).
        """

    def check_scores(self, scores: np.ndarray, ids: Optional[Sequence[DocId]] = None) -> None:
        """Raises SamplingError for scores this rule cannot use (non-finite; IPS: not > 0)."""
        bad = ~np.isfinite(scores)
        if bad.any():
            raise SamplingError(f"{self.name}: non-finite score {scores[bad][0]!r}{_which(bad, ids)}")

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


def _check_threshold(name: str, score: Optional[float], u: float) -> None:
    if score is not None and not math.isfinite(score):
        raise SamplingError(f"{name}: threshold_score must be finite (or None), got {score!r}")
    if not 0.0 <= u <= 1.0:
        raise SamplingError(f"{name}: threshold_u must be in [0, 1], got {u!r}")


def _which(bad: np.ndarray, ids: Optional[Sequence[DocId]]) -> str:
    if ids is None:
        return ""
    first = int(np.flatnonzero(bad)[0])
    return f" for document {_show_id(ids[first])}"


def _show_id(doc_id: Any) -> str:
    return repr(doc_id.decode("utf-8", "replace") if isinstance(doc_id, (bytes, np.bytes_)) else doc_id)


def _closest_prefix(cum: np.ndarray, boundaries: np.ndarray, target: float) -> int:
    """Among allowed prefix lengths, the one whose cumulative weight is closest to target (ties: shorter)."""
    totals = cum[boundaries]
    return int(boundaries[int(np.argmin(np.abs(totals - target)))])


def _fit_descending(keys: np.ndarray, u: np.ndarray, weights: np.ndarray,
                    target: float) -> Optional[tuple[float, float]]:
    """Threshold (key, u) of the first excluded document when keeping the largest (key, u) first.

    Documents with identical (key, u) (duplicated ids) are never split. None keeps everything.
    """
    order = np.lexsort((-u, -keys))
    k_sorted, u_sorted = keys[order], u[order]
    cum = np.concatenate([[0], np.cumsum(weights[order])])
    n = len(keys)
    change = (k_sorted[1:] != k_sorted[:-1]) | (u_sorted[1:] != u_sorted[:-1])
    boundaries = np.concatenate([[0], np.flatnonzero(change) + 1, [n]])
    k = _closest_prefix(cum, boundaries, target)
    if k == n:
        return None
    return float(k_sorted[k]), float(u_sorted[k])


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ThresholdRule(Rule):
    """Top-k (sign +1) or bottom-k (sign -1): keep iff (sign*score, u) > (sign*threshold_score, threshold_u)."""

    sign: ClassVar[int]
    threshold_score: Optional[float] = None
    threshold_u: float = 0.0

    def __post_init__(self):
        _check_threshold(self.name, self.threshold_score, self.threshold_u)

    def keep(self, scores, u):
        if self.threshold_score is None:
            return np.ones(len(u), dtype=bool)
        ts, tu = self.threshold_score, self.threshold_u
        return (self.sign * scores > self.sign * ts) | ((scores == ts) & (u > tu))

    def inclusion_probability(self, scores):
        scores = np.asarray(scores, dtype=np.float64)
        if self.threshold_score is None:
            return np.ones_like(scores)
        ts = self.threshold_score
        return np.where(self.sign * scores > self.sign * ts, 1.0, np.where(scores == ts, 1.0 - self.threshold_u, 0.0))

    @classmethod
    def fit(cls, scores, u, weights, target):
        threshold = _fit_descending(cls.sign * scores, u, weights, target)
        if threshold is None:
            return cls()
        return cls(threshold_score=cls.sign * threshold[0], threshold_u=threshold[1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopK(_ThresholdRule):
    """Keep the highest scores: iff (score, u) > (threshold_score, threshold_u)."""

    name: ClassVar[str] = "topk"
    sign: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class BottomK(_ThresholdRule):
    """Keep the lowest scores: iff (-score, u) > (-threshold_score, threshold_u)."""

    name: ClassVar[str] = "bottomk"
    sign: ClassVar[int] = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class IPS(Rule):
    """Inverse propensity sampling: keep iff u < min(1, c / score). Scores must be > 0."""

    name: ClassVar[str] = "ips"
    c: Optional[float] = None

    def __post_init__(self):
        if self.c is not None and not (math.isfinite(self.c) and self.c > 0):
            raise SamplingError(f"ips: normaliser c must be finite and > 0 (or None), got {self.c!r}")

    def keep(self, scores, u):
        return u < self.inclusion_probability(scores)

    def inclusion_probability(self, scores):
        scores = np.asarray(scores, dtype=np.float64)
        if self.c is None:
            return np.ones_like(scores)
        return np.minimum(1.0, self.c / scores)

    def check_scores(self, scores, ids=None):
        super().check_scores(scores, ids)
        bad = scores <= 0
        if bad.any():
            raise SamplingError(f"ips: scores must be > 0 (keep probability is proportional to "
                                f"1/score), got {scores[bad][0]!r}{_which(bad, ids)}")

    @classmethod
    def fit(cls, scores, u, weights, target):
        del u  # c depends on the scores only; u only decides which documents realise it
        return cls(c=solve_ips_normaliser(scores, weights, target))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Random(Rule):
    """Keep iff u < threshold: a uniform random subset, ignoring scores."""

    name: ClassVar[str] = "random"
    needs_scores: ClassVar[bool] = False
    threshold: Optional[float] = None

    def __post_init__(self):
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SamplingError(f"random: threshold must be in [0, 1] (or None), got {self.threshold!r}")

    def keep(self, scores, u):
        del scores
        if self.threshold is None:
            return np.ones(len(u), dtype=bool)
        return u < self.threshold

    def inclusion_probability(self, scores):
        return np.full(np.shape(scores), 1.0 if self.threshold is None else self.threshold)

    def check_scores(self, scores, ids=None):
        del scores, ids

    @classmethod
    def fit(cls, scores, u, weights, target):
        del scores
        # Keeping the smallest u first is keeping the largest -u first: share the exact solver.
        threshold = _fit_descending(-u, np.zeros_like(u), weights, target)
        return cls() if threshold is None else cls(threshold=-threshold[0])


RULES: dict[str, type[Rule]] = {r.name: r for r in (TopK, BottomK, IPS, Random)}


def _rule_class(rule: Union[str, type[Rule]]) -> type[Rule]:
    if isinstance(rule, type) and issubclass(rule, Rule):
        return rule
    if rule not in RULES:
        raise SamplingError(f"unknown selection rule {rule!r}; expected one of {sorted(RULES)}")
    return RULES[rule]


def ips_terms(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each document's share of the IPS suffix sum: float64(weight) / score, rounded once per document.

    The normaliser's sums are exact sums of these terms (`gristmill.exact_sum`), so c does not
    depend on how documents are grouped or ordered (in memory, or merged from Beam bins).
    """
    return np.asarray(weights).astype(np.float64) / np.asarray(scores, dtype=np.float64)


def ips_normaliser_from_sums(target: float, capped: int, suffix: exact_sum.Exact) -> float:
    """c = (target - capped weight) / (exact sum of the uncapped documents' `ips_terms`), rounded once."""
    return float((Fraction(target) - capped) / exact_sum.to_fraction(suffix))


def ips_reaches(capped: int, score: float, suffix: exact_sum.Exact, target: float) -> bool:
    """Whether f(score) = capped + score * suffix >= target, compared exactly (no rounding)."""
    return capped + Fraction(score) * exact_sum.to_fraction(suffix) >= Fraction(target)


def solve_ips_normaliser(scores: np.ndarray, weights: np.ndarray, target: float) -> Optional[float]:
    """Exact c with sum_i weight_i * min(1, c / score_i) = target (scores > 0, integer weights).

    f(s) = (weight of documents with score <= s) + s * (sum of `ips_terms` of those above s) is
    f evaluated at c = s: increasing in s. Find the first distinct score s_j with f(s_j) >= target
    (by bisection, each f evaluated exactly); the documents below s_j are capped at 1 and
    c = (target - their weight) / (sum of the terms from s_j on). Every sum is exact and c is
    rounded once, so the bounded-memory planner (`threshold_search.ips_*`), which finds the same
    s_j from radix histograms, gets the same bits. Returns None when the target needs every
    document (rate 1).

    f is increasing over distinct float32 scores even with the terms rounded: from s_j to s_j+1 it
    gains W_(j+1) - s_j * T_(j+1) + (s_(j+1) - s_j) * (terms above) with T_(j+1) <= W_(j+1) / s_(j+1)
    * (1 + 2**-52) and s_j / s_(j+1) <= 1 - 2**-24, so the bisection is sound.
    """
    order = np.argsort(scores, kind="stable")
    scores = np.asarray(scores, dtype=np.float64)[order]
    weights = np.asarray(weights, dtype=np.int64)[order]
    total = int(weights.sum())
    if target >= total:
        return None
    terms = ips_terms(scores, weights)
    capped_through = np.cumsum(weights)                    # weight of documents 0..i
    _, starts = np.unique(scores, return_index=True)       # first document of each distinct score
    ends = np.append(starts[1:], len(scores))

    def reaches(g: int) -> bool:
        end = int(ends[g])
        return ips_reaches(int(capped_through[end - 1]), float(scores[end - 1]), exact_sum.total(terms[end:]),
                           target)

    lo, hi = 0, len(starts) - 1  # f at the largest score is the total, above the target
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid + 1
    first = int(starts[lo])
    below = int(capped_through[first - 1]) if first else 0
    return ips_normaliser_from_sums(target, below, exact_sum.total(terms[first:]))


# --- plans -----------------------------------------------------------------------------------

def _check_rate(rate: float, rate_by: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0 < rate <= 1:
        raise SamplingError(f"rate must be a fraction in (0, 1], got {rate!r}")
    if rate_by not in RATE_BY:
        raise SamplingError(f"rate_by must be one of {RATE_BY}, got {rate_by!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """A selection computed once over a corpus, applied per record with `keep`.

    rule: the fitted rule (its thresholds). score_feature: the record feature it reads
        (`score/<scorer>/<model>`; None for `random`). rate, rate_by, seed: what was asked.
    num_documents, num_tokens: the planned population (documents with a score).
    num_missing: documents without a score, handled by `missing` and not planned over.
    expected_documents, expected_tokens: expected kept (the exact realised values for exact
        top-k, bottom-k and random plans; expectations for IPS; None where unknown).
    expected_error: for plans from summaries, a bound on |expected kept - target| in rate_by
        units; 0 for exact plans, whose expectations are computed over the corpus itself.
    tokens_feature: where token counts came from (`tokens/<tokenizer>` or PROXY_TOKENS).
    """

    rule: Rule
    score_feature: Optional[str]
    rate: float
    rate_by: str = DOCUMENTS
    seed: int
    num_documents: int
    num_tokens: Optional[int] = None
    num_missing: int = 0
    expected_documents: Optional[float] = None
    expected_tokens: Optional[float] = None
    expected_error: float = 0.0
    tokens_feature: Optional[str] = None
    missing: MissingScorePolicy = MissingScorePolicy.ERROR

    def __post_init__(self):
        if not isinstance(self.rule, Rule):
            raise SamplingError(f"plan rule must be a fitted Rule (one of {sorted(RULES)}), got {self.rule!r}")
        _check_rate(self.rate, self.rate_by)
        _check_seed(self.seed)
        object.__setattr__(self, "missing", MissingScorePolicy(self.missing))
        if self.rule.needs_scores and not self.score_feature:
            raise SamplingError(f"rule {self.rule.name!r} needs a score_feature")

    def to_json(self) -> str:
        """The plan as a small JSON document (floats round-trip exactly)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["rule"] = self.rule.to_dict()
        fields["missing"] = self.missing.value
        return json.dumps({"version": PLAN_VERSION, **fields}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> Plan:
        """Reads a plan written by `to_json`; SamplingError names what is wrong."""
        try:
            data = json.loads(text)
            version = data.pop("version", None)
            if version != PLAN_VERSION:
                raise SamplingError(f"selection plan version {version!r}, expected {PLAN_VERSION}")
            rule = dict(data.pop("rule"))
            rule_cls = _rule_class(rule.pop("name"))
            return cls(rule=rule_cls(**rule), **data)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise SamplingError(f"not a gristmill selection plan: {e!r}") from e

    def describe(self) -> str:
        """One line for logs: rule, rate and expected size."""
        kept = "?" if self.expected_documents is None else f"{self.expected_documents:.1f}"
        return (f"{self.rule.name} on {self.score_feature or '-'} at {self.rate:g} of {self.rate_by} "
                f"(seed {self.seed}): keeps ~{kept} of {self.num_documents} documents")


def _weights(rate_by: str, num: int, tokens: Optional[np.ndarray]) -> np.ndarray:
    if rate_by == TOKENS:
        if tokens is None:
            raise SamplingError("rate_by='tokens' needs token counts (a tokens/<tokenizer> feature or the proxy)")
        return tokens
    return np.ones(num, dtype=np.int64)


def _as_tokens(tokens: Any, num: int) -> Optional[np.ndarray]:
    if tokens is None:
        return None
    array = np.asarray(tokens)
    if array.shape != (num,):
        raise SamplingError(f"tokens has shape {array.shape}, expected ({num},) like ids")
    if array.dtype.kind not in "iu" or (array < 0).any():
        raise SamplingError("token counts must be non-negative integers")
    return array.astype(np.int64)


def plan_from_scores(rule: Union[str, type[Rule]], ids: Sequence[DocId], scores: Any = None, *,
                     rate: float, seed: int, tokens: Any = None, rate_by: str = DOCUMENTS,
                     score_feature: Optional[str] = None, tokens_feature: Optional[str] = None,
                     missing: Union[str, MissingScorePolicy] = MissingScorePolicy.ERROR) -> Plan:
    """Plans a selection exactly over a whole in-memory corpus.

    ids: document ids; scores: one per id (NaN or None = missing; ignored by `random`);
    tokens: token counts per id (needed for rate_by='tokens', recorded when given).
    The result does not depend on the order of the documents.
    """
    rule_cls = _rule_class(rule)
    _check_rate(rate, rate_by)
    seed = _check_seed(seed)
    missing = MissingScorePolicy(missing)
    ids = list(ids)
    n = len(ids)
    tokens = _as_tokens(tokens, n)
    if rule_cls.needs_scores:
        if not score_feature:
            raise SamplingError(f"rule {rule_cls.name!r} needs score_feature (the record feature it reads)")
        scores = _as_scores(scores)
        if scores.shape != (n,):
            raise SamplingError(f"scores has {scores.size} values for {n} ids")
    else:
        scores = np.zeros(n)
    absent = np.isnan(scores)
    if absent.any() and missing is MissingScorePolicy.ERROR:
        raise MissingScoreError(f"document {_show_id(ids[int(np.flatnonzero(absent)[0])])} has no score "
                                f"feature {score_feature!r} ({int(absent.sum())} of {n} documents lack it); "
                                f"choose missing='drop' or 'keep' to plan without them")
    present = ~absent
    ids_p = [i for i, ok in zip(ids, present) if ok]
    if not ids_p:
        raise SamplingError("no scored documents to plan over")
    u = uniform_from_ids(ids_p, seed)
    s = scores[present]
    rule_cls().check_scores(s, ids_p)
    # the id only orders documents with the same (score, u): no plan depends on that order
    order = np.lexsort((np.asarray([_id_bytes(i) for i in ids_p], dtype=object).astype("S"), u, s))
    return plan_from_uniforms(rule_cls, s[order], u[order], None if tokens is None else tokens[present][order],
                              rate=rate, seed=seed, rate_by=rate_by, score_feature=score_feature,
                              tokens_feature=tokens_feature, num_missing=int(absent.sum()), missing=missing)


def plan_from_uniforms(rule: Union[str, type[Rule]], scores: np.ndarray, u: np.ndarray, tokens: Optional[np.ndarray],
                       *, rate: float, seed: int, rate_by: str = DOCUMENTS, score_feature: Optional[str] = None,
                       tokens_feature: Optional[str] = None, num_missing: int = 0,
                       missing: Union[str, MissingScorePolicy] = MissingScorePolicy.ERROR) -> Plan:
    """`plan_from_scores` once each document's hash uniform is known: the same plan, from the planned
    documents' scores (valid float32 values; ignored by `random`), u (`uniform_from_ids` with this seed)
    and token counts, in any order. Select's bounded job uses it where it keeps columns, not ids."""
    rule_cls = _rule_class(rule)
    _check_rate(rate, rate_by)
    s = np.asarray(scores, dtype=np.float64) if rule_cls.needs_scores else np.zeros(len(u))
    u = np.asarray(u, dtype=np.float64)
    tok = None if tokens is None else np.asarray(tokens, dtype=np.int64)
    if not len(u):
        raise SamplingError("no scored documents to plan over")
    rule_cls().check_scores(s)
    order = np.lexsort((u, s))
    s, u, tok = s[order], u[order], None if tok is None else tok[order]
    weights = _weights(rate_by, len(s), tok)
    total = int(weights.sum())
    fitted = rule_cls.fit(s, u, weights, rate * total)
    pi = fitted.inclusion_probability(s) if isinstance(fitted, IPS) else fitted.keep(s, u).astype(np.float64)
    return Plan(rule=fitted, score_feature=score_feature if rule_cls.needs_scores else None, rate=float(rate),
                rate_by=rate_by, seed=_check_seed(seed), num_documents=len(s),
                num_tokens=None if tok is None else int(tok.sum()), num_missing=num_missing,
                expected_documents=exact_sum.to_float(exact_sum.total(pi)),
                expected_tokens=None if tok is None else exact_sum.to_float(exact_sum.total(pi * tok)),
                tokens_feature=tokens_feature, missing=MissingScorePolicy(missing))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectionSpec:
    """What to select, checked once for every caller (select's flags, an experiment's samplers):
    a rule over a score feature, at a rate (None: the caller gives rates later), counted by
    documents or tokens, and what happens to documents without the score."""

    rule: str
    score: Optional[str] = None
    rate: Optional[float] = None
    rate_by: str = DOCUMENTS
    missing: str = MissingScorePolicy.ERROR.value

    def __post_init__(self):
        if self.rule not in RULES:
            raise SamplingError(f"unknown rule {self.rule!r}; expected one of {sorted(RULES)}")
        if RULES[self.rule].needs_scores and not self.score:
            raise SamplingError(f"rule {self.rule!r} needs a score feature (e.g. score/askllm/flan-t5-xl)")
        if self.rate_by not in RATE_BY:
            raise SamplingError(f"rate_by must be one of {RATE_BY}, got {self.rate_by!r}")
        if self.rate is not None:
            _check_rate(self.rate, self.rate_by)
        try:
            MissingScorePolicy(self.missing)
        except ValueError:
            raise SamplingError(f"missing must be one of {[p.value for p in MissingScorePolicy]}, "
                                f"got {self.missing!r}") from None

    @property
    def needs_scores(self) -> bool:
        """Whether the rule reads the score (random does not)."""
        return RULES[self.rule].needs_scores


def plan_from_rows(rows: Iterable[tuple[DocId, Optional[float], int]], spec: SelectionSpec, *, seed: int,
                   tokens_feature: Optional[str] = None, absent_message: Optional[str] = None) -> Plan:
    """The exact plan over (id, score or None, tokens) rows held in memory: the one exact planner that
    select (for IPS) and the experiment's training data use (`plan_from_scores` over the rows).

    absent_message: the error when no row has the score (it names what the rows have instead).
    """
    rows = sorted(rows, key=lambda r: r[0])  # the plan does not depend on the order; this only fixes it
    if spec.needs_scores and rows and all(r[1] is None for r in rows) and absent_message:
        raise MissingScoreError(absent_message)
    ids = [r[0] for r in rows]
    scores = None if not spec.needs_scores else np.array([np.nan if r[1] is None else r[1] for r in rows])
    tokens = np.array([r[2] for r in rows], dtype=np.int64)
    return plan_from_scores(spec.rule, ids, scores, rate=spec.rate, seed=seed, tokens=tokens, rate_by=spec.rate_by,
                            score_feature=spec.score, tokens_feature=tokens_feature or PROXY_TOKENS,
                            missing=spec.missing)


def plan_from_quantiles(rule: Union[str, type[Rule]], quantiles: Optional[Sequence[float]], *, rate: float,
                        seed: int, num_documents: int, num_tokens: Optional[int] = None,
                        rate_by: str = DOCUMENTS, score_feature: Optional[str] = None,
                        tokens_feature: Optional[str] = None, num_missing: int = 0,
                        missing: Union[str, MissingScorePolicy] = MissingScorePolicy.ERROR) -> Plan:
    """Plans top-k, bottom-k or random from approximate score quantiles, for corpora too big for memory.

    quantiles: m + 1 ascending scores at ranks 0, 1/m, .., 1 (min and max included), as Beam's
    `ApproximateQuantiles.Globally(m + 1)` returns; weighted by tokens for rate_by='tokens'.
    The threshold is interpolated at rank 1 - rate (top-k) or rate (bottom-k). When it falls on a
    run of equal quantiles (a tied score), threshold_u keeps the right fraction of that tie.
    `expected_error` = the total / m rank step of the interpolation (the sketch's own rank error
    comes on top). Random ignores quantiles (None is fine): threshold = rate, unbiased.
    For IPS use `plan_from_histogram`.
    """
    rule_cls = _rule_class(rule)
    _check_rate(rate, rate_by)
    total = num_tokens if rate_by == TOKENS else num_documents
    if total is None or total <= 0:
        raise SamplingError(f"plan_from_quantiles needs the corpus size in {rate_by} (> 0), got {total!r}")
    common = dict(score_feature=score_feature if rule_cls.needs_scores else None, rate=float(rate),
                  rate_by=rate_by, seed=seed, num_documents=num_documents, num_tokens=num_tokens,
                  num_missing=num_missing, tokens_feature=tokens_feature, missing=missing,
                  expected_documents=rate * num_documents if rate_by == DOCUMENTS else None,
                  expected_tokens=None if num_tokens is None or rate_by == DOCUMENTS else rate * num_tokens)
    if rule_cls is Random:
        return Plan(rule=Random(threshold=None if rate == 1 else float(rate)), expected_error=0.0, **common)
    if rule_cls not in (TopK, BottomK):
        raise SamplingError(f"rule {rule_cls.name!r} cannot be planned from quantiles; "
                            "IPS needs plan_from_histogram")
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size < 2 or not np.isfinite(q).all() or (np.diff(q) < 0).any():
        raise SamplingError("quantiles must be at least 2 finite ascending values (min .. max)")
    m = q.size - 1
    if rule_cls is BottomK:
        q = -q[::-1]  # bottom-k of s is top-k of -s
    if rate == 1:
        fitted = rule_cls()
    else:
        x = (1.0 - rate) * m
        lo, hi = int(math.floor(x)), int(math.ceil(x))
        ts = float(q[lo] + (x - lo) * (q[hi] - q[lo]))
        run = np.flatnonzero(q == ts)
        tu = 0.0
        if run.size >= 2:
            a, b = int(run[0]), int(run[-1])
            tu = float(np.clip(1.0 - (b - x) / (b - a), 0.0, 1.0))
        fitted = rule_cls(threshold_score=-ts if rule_cls is BottomK else ts, threshold_u=tu)
    return Plan(rule=fitted, expected_error=total / m, **common)


def ips_histogram(scores: Any, weights: Any, edges: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin sums of weight and weight/score: the additive accumulator `plan_from_histogram` needs.

    Bin b holds scores in [edges[b], edges[b+1]); scores must lie in [edges[0], edges[-1]).
    Sums of two histograms are the histogram of the union (a Beam CombineFn adds them).
    Log-spaced edges between the corpus min and max suit density scores, which span decades.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or (np.diff(e) <= 0).any() or e[0] <= 0:
        raise SamplingError("histogram edges must be at least 2 strictly increasing positive values")
    s = _as_scores(scores)
    w = np.asarray(weights, dtype=np.float64).ravel()
    IPS().check_scores(s)
    outside = (s < e[0]) | (s >= e[-1])
    if outside.any():
        raise SamplingError(f"score {s[outside][0]!r} outside the histogram range [{e[0]}, {e[-1]})")
    b = np.searchsorted(e, s, side="right") - 1
    nbins = e.size - 1
    return np.bincount(b, weights=w, minlength=nbins), np.bincount(b, weights=w / s, minlength=nbins)


def ips_normaliser_from_histogram(edges: Sequence[float], weight_sums: Any, inverse_sums: Any,
                                  target: float) -> tuple[Optional[float], float]:
    """Approximate IPS normaliser c from `ips_histogram` sums, and a bound on its error.

    f(c) = sum w min(1, c/s) is exact at every bin edge (documents below the edge are capped,
    those above are not), and inside a bin only that bin's own term g(c) = sum_bin w min(1, c/s)
    is unknown: the rest is linear in c. c is found by linear interpolation of f inside the bin
    where f crosses the target, i.e. g is replaced by its chord. g is concave and at most
    min(W_bin, c * sum_bin w/s), so the expected kept size f(c) lies in [target, target + bound]
    with bound = min(W_bin, c * sum_bin w/s) - chord(c) <= W_bin: the returned error, in weight
    units (0 when c falls below the first edge, where no document is capped and c = target /
    sum(w/s) is exact). Finer bins around c shrink it. Returns (None, 0) when the target needs
    every document.
    """
    e = np.asarray(edges, dtype=np.float64)
    w = np.asarray(weight_sums, dtype=np.float64)
    inv = np.asarray(inverse_sums, dtype=np.float64)
    if w.shape != (e.size - 1,) or inv.shape != w.shape:
        raise SamplingError(f"histogram sums need {e.size - 1} bins for {e.size} edges")
    total = float(w.sum())
    if target >= total:
        return None, 0.0
    below_w = np.concatenate([[0.0], np.cumsum(w)])                    # weight below edge k
    above_inv = np.concatenate([np.cumsum(inv[::-1])[::-1], [0.0]])     # w/s at or above edge k
    f = below_w + e * above_inv
    if target <= f[0]:
        return target / float(above_inv[0]), 0.0
    k = int(np.searchsorted(f, target, side="left"))  # f[k-1] < target <= f[k]: c in bin k-1
    left, right = f[k - 1], f[k]
    fraction = (target - left) / (right - left)
    c = e[k - 1] + fraction * (e[k] - e[k - 1])
    b = k - 1
    chord = e[b] * inv[b] + fraction * (w[b] - e[b] * inv[b])
    return float(c), float(max(0.0, min(w[b], c * inv[b]) - chord))


def plan_from_histogram(edges: Sequence[float], weight_sums: Any, inverse_sums: Any, *, rate: float,
                        seed: int, num_documents: int, num_tokens: Optional[int] = None,
                        rate_by: str = DOCUMENTS, score_feature: str, tokens_feature: Optional[str] = None,
                        num_missing: int = 0,
                        missing: Union[str, MissingScorePolicy] = MissingScorePolicy.ERROR) -> Plan:
    """Plans IPS from `ips_histogram` sums (weights in rate_by units) for corpora too big for memory."""
    _check_rate(rate, rate_by)
    total = float(np.sum(weight_sums))
    c, error = ips_normaliser_from_histogram(edges, weight_sums, inverse_sums, rate * total)
    target = rate * total
    return Plan(rule=IPS(c=c), score_feature=score_feature, rate=float(rate), rate_by=rate_by, seed=seed,
                num_documents=num_documents, num_tokens=num_tokens, num_missing=num_missing,
                expected_documents=target if rate_by == DOCUMENTS else None,
                expected_tokens=target if rate_by == TOKENS else None, expected_error=error,
                tokens_feature=tokens_feature, missing=missing)


# --- applying a plan -------------------------------------------------------------------------

def keep_mask(plan: Plan, ids: Sequence[DocId], scores: Any = None) -> np.ndarray:
    """Keep decisions for many records (the one code path behind `keep`, Beam and tf.data)."""
    ids = list(ids)
    u = uniform_from_ids(ids, plan.seed)
    if not plan.rule.needs_scores:
        return plan.rule.keep(None, u)
    s = _as_scores(scores)
    if s.shape != u.shape:
        raise SamplingError(f"{s.size} scores for {u.size} ids")
    absent = np.isnan(s)
    if absent.any() and plan.missing is MissingScorePolicy.ERROR:
        raise MissingScoreError(f"document {_show_id(ids[int(np.flatnonzero(absent)[0])])} has no score "
                                f"feature {plan.score_feature!r} (plan missing policy: error)")
    present = ~absent
    plan.rule.check_scores(s[present], [i for i, ok in zip(ids, present) if ok])
    result = np.full(len(ids), plan.missing is MissingScorePolicy.KEEP)
    result[present] = plan.rule.keep(s[present], u[present])
    return result


def keep(plan: Plan, doc_id: DocId, score: Optional[float] = None) -> bool:
    """Whether the plan keeps one record (score None or NaN = the feature is missing)."""
    return bool(keep_mask(plan, [doc_id], [score])[0])


def inclusion_probability(plan: Plan, score: Any = None) -> Any:
    """Probability that a document with this score is kept, over the hash uniform (plan fixed).

    IPS: min(1, c/score); random: the threshold (score ignored); top-k/bottom-k: 1 or 0, or
    1 - threshold_u for a score equal to the threshold. A float for a scalar, else an array.
    """
    scalar = np.ndim(score) == 0
    if plan.rule.needs_scores:
        s = _as_scores(np.atleast_1d(score))
        plan.rule.check_scores(s)
    else:
        s = np.zeros(np.shape(np.atleast_1d(score)))
    p = plan.rule.inclusion_probability(s)
    return float(p[0]) if scalar else p
