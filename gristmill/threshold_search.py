"""Exact top-k, bottom-k, random and IPS plans in bounded memory: radix histograms, then one small gather.

`sampling.plan_from_scores` sorts the whole corpus by (key, u) and keeps the prefix whose weight is
closest to the target. The same prefix is found here without holding the corpus: each document
gets an 85-bit sort key (32 bits of its float32 key, then the 53 bits that define its u), and four
passes histogram 16 bits of it at a time (65,536 bins of counts and tokens) among the documents
that share the bits chosen so far, each pass choosing the bin where the cumulative weight, in
descending order, crosses the target. What is left shares its score and the top 32 bits of u:
those few documents are gathered and sorted, with the first document after them (a max), and the
threshold is read off exactly as the in-memory planner would. Weights must be positive (every
document moves the cumulative weight), which holds for documents and for the byte-length token
proxy; a corpus with zero-token documents is planned in memory.

Keys: top-k ranks by the score, bottom-k by its negation, random by -u alone (its key bits are 0).

Exact IPS (section below) is searched the same way over the bits of the float32 score: two passes
locate the distinct score where the normaliser's piecewise linear function crosses the target, with
exact per-bin sums (`gristmill.exact_sum`), and a third sums the expected sizes; the plan equals
`sampling.plan_from_scores`'s byte for byte.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from gristmill import exact_sum, sampling

LEVELS = 4
BITS = 16
BINS = 1 << BITS
_U_BITS = 53
_FULL_U = np.uint64((1 << _U_BITS) - 1)


def sort_keys(rule: str, scores: Optional[np.ndarray], u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key32, m) per document as uint64 arrays: descending (key32, m) is descending (key, u) of `rule`.

    scores are float32 values (as `sampling` reads them); u are `sampling.uniform_from_ids` values,
    exactly m / 2**53 for a 53-bit integer m.
    """
    m = np.round(np.asarray(u, dtype=np.float64) * 2.0**_U_BITS).astype(np.uint64)
    if rule == sampling.Random.name:
        return np.zeros(len(m), dtype=np.uint64), _FULL_U - m  # keeping the smallest u first
    sign = 1.0 if rule == sampling.TopK.name else -1.0
    key = (sign * np.asarray(scores, dtype=np.float64)).astype(np.float32) + np.float32(0.0)  # -0.0 -> 0.0
    bits = key.view(np.uint32).astype(np.uint64)
    negative = (bits >> np.uint64(31)) == 1
    sortable = np.where(negative, ~bits & np.uint64(0xFFFFFFFF), bits | np.uint64(0x80000000))
    return sortable, m


def level_bits(key32: np.ndarray, m: np.ndarray, level: int) -> np.ndarray:
    """The 16 bits of the sort key that pass `level` histograms (0: the top bits of key32)."""
    if level == 0:
        return (key32 >> np.uint64(16)) & np.uint64(0xFFFF)
    if level == 1:
        return key32 & np.uint64(0xFFFF)
    shift = np.uint64(_U_BITS - BITS * (level - 1))
    return (m >> shift) & np.uint64(0xFFFF)


def prefix_mask(key32: np.ndarray, m: np.ndarray, prefix: Sequence[int]) -> np.ndarray:
    """Which documents share the bins chosen at the first len(prefix) levels."""
    mask = np.ones(len(key32), dtype=bool)
    for level, chosen in enumerate(prefix):
        mask &= level_bits(key32, m, level) == np.uint64(chosen)
    return mask


def histogram(key32: np.ndarray, m: np.ndarray, tokens: np.ndarray, prefix: Sequence[int]) -> np.ndarray:
    """A (2, BINS) int64 array: documents and tokens per bin of level len(prefix), among the prefix's documents."""
    mask = prefix_mask(key32, m, prefix)
    bins = level_bits(key32[mask], m[mask], len(prefix)).astype(np.int64)
    out = np.zeros((2, BINS), dtype=np.int64)
    out[0] = np.bincount(bins, minlength=BINS)
    out[1] = np.bincount(bins, weights=tokens[mask], minlength=BINS).astype(np.int64)
    return out


@dataclasses.dataclass(frozen=True)
class Search:
    """Where the search stands: the bins chosen so far and the documents and tokens ranked above them."""

    prefix: tuple[int, ...] = ()
    above_documents: int = 0
    above_tokens: int = 0
    keeps_all: bool = False  # the target is the whole corpus: no threshold


def choose(search: Search, counts: np.ndarray, by_tokens: bool, target: float) -> Search:
    """The next level's bin: the highest-ranked bin after which the cumulative weight exceeds target."""
    if search.keeps_all:
        return search
    weight = counts[1] if by_tokens else counts[0]
    above = search.above_tokens if by_tokens else search.above_documents
    descending = weight[::-1]
    after = above + np.cumsum(descending)
    crossing = np.flatnonzero(after > target)
    if crossing.size == 0:
        return Search(search.prefix, search.above_documents + int(counts[0].sum()),
                      search.above_tokens + int(counts[1].sum()), keeps_all=True)
    i = int(crossing[0])
    chosen = BINS - 1 - i
    higher = slice(chosen + 1, BINS)
    return Search(search.prefix + (chosen,), search.above_documents + int(counts[0][higher].sum()),
                  search.above_tokens + int(counts[1][higher].sum()))


Row = tuple  # (key32, m, score, u, tokens) of one document


def threshold(search: Search, gathered: Sequence[Row], after: Optional[Row], by_tokens: bool,
              target: float) -> tuple[Optional[Row], int, int]:
    """(first excluded document or None, kept documents, kept tokens) from the last bin's documents.

    gathered: the documents sharing the full prefix; after: the highest-ranked document below them
    (None when there is none). Ties between the prefix before and after the crossing group go to
    the shorter prefix, as in `sampling._closest_prefix`.
    """
    if search.keeps_all:
        return None, search.above_documents, search.above_tokens
    rows = sorted(gathered, key=lambda r: (r[0], r[1]), reverse=True)
    documents, tokens = search.above_documents, search.above_tokens
    i = 0
    while i < len(rows):
        j = i
        group_documents = group_tokens = 0
        while j < len(rows) and (rows[j][0], rows[j][1]) == (rows[i][0], rows[i][1]):
            group_documents += 1
            group_tokens += int(rows[j][4])
            j += 1
        before = tokens if by_tokens else documents
        through = before + (group_tokens if by_tokens else group_documents)
        if through > target:
            if target - before <= through - target:
                return rows[i], documents, tokens
            return (rows[j] if j < len(rows) else after), documents + group_documents, tokens + group_tokens
        documents, tokens = documents + group_documents, tokens + group_tokens
        i = j
    raise AssertionError("the chosen bin does not cross the target")  # choose() guarantees it does


def plan_rows(rule: str, scores: Optional[np.ndarray], u: np.ndarray, tokens: np.ndarray, by_tokens: bool,
              target: float) -> tuple[Optional[Row], int, int]:
    """The whole search over in-memory arrays, pass by pass as the Beam job runs it (for tests and tools)."""
    key32, m = sort_keys(rule, scores, u)
    tokens = np.asarray(tokens, dtype=np.int64)
    search = Search()
    for _ in range(LEVELS):
        if search.keeps_all:
            break
        search = choose(search, histogram(key32, m, tokens, search.prefix), by_tokens, target)
    if search.keeps_all:
        return threshold(search, [], None, by_tokens, target)
    score_of = (lambda k: None) if scores is None else (lambda k: float(scores[k]))
    mask = prefix_mask(key32, m, search.prefix)
    gathered = [(int(key32[k]), int(m[k]), score_of(k), float(u[k]), int(tokens[k])) for k in np.flatnonzero(mask)]
    below = [(int(key32[k]), int(m[k]), score_of(k), float(u[k]), int(tokens[k]))
             for k in np.flatnonzero(~mask & below_prefix(key32, m, search.prefix))]
    return threshold(search, gathered, max(below, key=lambda r: (r[0], r[1]), default=None), by_tokens, target)


def below_prefix(key32: np.ndarray, m: np.ndarray, prefix: Sequence[int]) -> np.ndarray:
    """Which documents rank below every document of the full prefix."""
    full = _prefix_value(prefix)
    return _top_bits(key32, m) < full


def _top_bits(key32: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 64 bits the levels look at, as one uint64: key32, then the top 32 bits of m."""
    return (key32 << np.uint64(32)) | (m >> np.uint64(_U_BITS - 2 * BITS))


def _prefix_value(prefix: Sequence[int]) -> np.uint64:
    value = 0
    for chosen in prefix:
        value = (value << BITS) | int(chosen)
    return np.uint64(value << (BITS * (LEVELS - len(prefix))))


def to_plan(rule: str, first_excluded: Optional[Row], kept_documents: int, kept_tokens: int, *,
            num_documents: int, num_tokens: int, rate: float, seed: int, rate_by: str,
            score_feature: Optional[str], tokens_feature: Optional[str], num_missing: int, missing) -> sampling.Plan:
    """The `sampling.Plan` of a finished search: the same fields `sampling.plan_from_scores` gives."""
    rule_cls = sampling.RULES[rule]
    if first_excluded is None:
        fitted = rule_cls()
    elif rule == sampling.Random.name:
        fitted = rule_cls(threshold=first_excluded[3])
    else:
        fitted = rule_cls(threshold_score=first_excluded[2], threshold_u=first_excluded[3])
    return sampling.Plan(rule=fitted, score_feature=score_feature if rule_cls.needs_scores else None,
                         rate=float(rate), rate_by=rate_by, seed=seed, num_documents=num_documents,
                         num_tokens=num_tokens, num_missing=num_missing, expected_documents=float(kept_documents),
                         expected_tokens=float(kept_tokens), tokens_feature=tokens_feature, missing=missing)


def search_row(rule: str, score: Optional[float], u: float, tokens: int) -> Row:
    """One document's Row, computed alone (Beam maps documents one by one): `sort_keys` for a single document."""
    m = int(round(u * 2.0**_U_BITS))
    if rule == sampling.Random.name:
        return 0, (1 << _U_BITS) - 1 - m, score, u, tokens
    key32, _ = sort_keys(rule, np.array([score]), np.array([u]))
    return int(key32[0]), m, score, u, tokens


def row_bits(row: Row, level: int) -> int:
    """`level_bits` of one Row."""
    key32, m = row[0], row[1]
    if level == 0:
        return (key32 >> 16) & 0xFFFF
    if level == 1:
        return key32 & 0xFFFF
    return (m >> (_U_BITS - BITS * (level - 1))) & 0xFFFF


def row_top(row: Row) -> int:
    """The 64 bits of a Row the levels look at (`_top_bits`)."""
    return (row[0] << 32) | (row[1] >> (_U_BITS - 2 * BITS))


def prefix_value(prefix: Sequence[int]) -> int:
    """The top 64 bits every Row under a full prefix has."""
    return int(_prefix_value(prefix))


def in_prefix(row: Row, prefix: Sequence[int]) -> bool:
    """Whether a Row falls in every bin chosen so far."""
    return all(row_bits(row, level) == chosen for level, chosen in enumerate(prefix))


# --- exact IPS in bounded memory ---------------------------------------------------------------
#
# `sampling.solve_ips_normaliser` finds the first distinct score s_j with f(s_j) >= target, where
# f(s) = (weight of documents with score <= s) + s * (exact sum of `sampling.ips_terms` above s)
# is increasing over distinct float32 scores. Positive float32 scores order like their bit
# patterns, so two 16-bit passes find it. Pass 1 histograms the top 16 bits (per bin: documents,
# tokens and the exact sum of the terms) and evaluates f at each occupied bin's largest
# representable score v_b: f(s_last) <= f(v_b) <= f(s_next) for the last score of the bin and
# the first score after it, so the first bin with f(v_b) >= target holds s_j, or s_j is the first
# score after that bin. Pass 2 histograms the low 16 bits inside that bin: each bin is one distinct
# score, and f there is exact. c = (target - weight below s_j) / (terms from s_j on) is then the
# in-memory planner's value to the bit (both sums are exact; c is rounded once).

IPS_LEVELS = 2


def ips_bits(scores: np.ndarray) -> np.ndarray:
    """The float32 bit patterns of positive scores as int64: they order like the scores."""
    return np.asarray(scores, dtype=np.float32).view(np.uint32).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class IpsSearch:
    """Where the IPS search stands: the target, then the level-0 bin holding s_j with the weight of
    the documents below it and the exact term sum above it, then c (None with `done`: rate 1)."""

    target: float
    high: Optional[int] = None
    below: int = 0
    above: exact_sum.Exact = exact_sum.ZERO
    c: Optional[float] = None
    done: bool = False


def ips_histogram(scores: np.ndarray, tokens: np.ndarray, by_tokens: bool,
                  high: Optional[int] = None) -> tuple[np.ndarray, dict[int, exact_sum.Exact]]:
    """(counts, inverse) of one IPS pass over positive float32-valued scores.

    high None: pass 1, bins are the top 16 bits; else pass 2 over the documents of that top bin,
    bins are the low 16 bits. counts: (2, BINS) int64 documents and tokens per bin; inverse: the
    exact sum of `sampling.ips_terms` per bin (weight 1 a document, or its tokens). Histograms of
    parts of a corpus merge with `ips_merge`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    bits = ips_bits(scores)
    if high is None:
        bins = bits >> BITS
    else:
        mask = (bits >> BITS) == high
        bins, scores, tokens = bits[mask] & (BINS - 1), scores[mask], tokens[mask]
    counts = np.zeros((2, BINS), dtype=np.int64)
    counts[0] = np.bincount(bins, minlength=BINS)
    np.add.at(counts[1], bins, tokens)
    weights = tokens if by_tokens else np.ones(len(tokens), dtype=np.int64)
    return counts, exact_sum.grouped(bins, sampling.ips_terms(scores, weights))


def ips_merge(a: tuple[np.ndarray, dict], b: tuple[np.ndarray, dict]) -> tuple[np.ndarray, dict]:
    """Two `ips_histogram` results of disjoint documents merged (their union's histogram)."""
    return a[0] + b[0], exact_sum.merge(a[1], b[1])


def _first_reaching(points: list[float], capped_through: list[int], suffix_after: list[exact_sum.Exact],
                    target: float) -> Optional[int]:
    """The first i with capped_through[i] + points[i] * suffix_after[i] >= target (f is increasing)."""
    lo, hi = 0, len(points)
    while lo < hi:
        mid = (lo + hi) // 2
        if sampling.ips_reaches(capped_through[mid], points[mid], suffix_after[mid], target):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(points) else None


def _cumulative(weight: np.ndarray, inverse: dict[int, exact_sum.Exact], start: int, after: exact_sum.Exact):
    """Occupied bins ascending, each with its weight, the weight through it and the terms after it."""
    occupied = sorted(set(np.flatnonzero(weight).tolist()) | set(inverse))
    through, running = [], start
    for b in occupied:
        running += int(weight[b])
        through.append(running)
    suffix, running_terms = [], after
    for b in reversed(occupied):
        suffix.append(running_terms)
        running_terms = exact_sum.add(running_terms, inverse.get(b, exact_sum.ZERO))
    return occupied, through, suffix[::-1]


def _score_of_bits(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def ips_choose_high(counts: np.ndarray, inverse: dict[int, exact_sum.Exact], by_tokens: bool,
                    target: float) -> IpsSearch:
    """After pass 1: the top bin holding s_j (or the bin just below it), or `done` when the target
    needs every document."""
    weight = counts[1] if by_tokens else counts[0]
    if target >= int(weight.sum()):
        return IpsSearch(target, done=True)
    occupied, through, suffix = _cumulative(weight, inverse, 0, exact_sum.ZERO)
    points = [_score_of_bits((b << BITS) | (BINS - 1)) for b in occupied]
    i = _first_reaching(points, through, suffix, target)
    if i is None:  # f at the top bin is the total weight, above the target
        raise AssertionError("IPS search: no bin reaches the target below the total weight")
    b = occupied[i]
    return IpsSearch(target, high=b, below=through[i] - int(weight[b]), above=suffix[i])


def ips_choose_score(search: IpsSearch, counts: np.ndarray, inverse: dict[int, exact_sum.Exact],
                     by_tokens: bool) -> IpsSearch:
    """After pass 2 (the low bits inside `search.high`): the search with c, as the in-memory solver finds it."""
    if search.done:
        return search
    weight = counts[1] if by_tokens else counts[0]
    occupied, through, suffix = _cumulative(weight, inverse, search.below, search.above)
    points = [_score_of_bits((search.high << BITS) | low) for low in occupied]
    i = _first_reaching(points, through, suffix, search.target)
    if i is None:  # s_j is the first score above this bin: everything in it is capped
        capped, rest = search.below + int(weight.sum()), search.above
    else:
        low = occupied[i]
        capped = through[i] - int(weight[low])
        rest = exact_sum.add(suffix[i], inverse.get(low, exact_sum.ZERO))
    return dataclasses.replace(search, c=sampling.ips_normaliser_from_sums(search.target, capped, rest), done=True)


def ips_expected(scores: np.ndarray, tokens: np.ndarray, c: Optional[float]) -> tuple[exact_sum.Exact,
                                                                                       exact_sum.Exact]:
    """Exact sums of the inclusion probabilities and of probability * tokens (the plan's expected
    documents and tokens), mergeable with `exact_sum.add`, as `sampling.plan_from_scores` sums them."""
    pi = sampling.IPS(c=c).inclusion_probability(np.asarray(scores, dtype=np.float64))
    return exact_sum.total(pi), exact_sum.total(pi * np.asarray(tokens, dtype=np.int64))


def ips_plan_rows(scores: np.ndarray, tokens: np.ndarray, by_tokens: bool,
                  target: float) -> tuple[Optional[float], exact_sum.Exact, exact_sum.Exact]:
    """The bounded IPS search over in-memory arrays, pass by pass as the Beam job runs it (for tests and
    tools): (c, expected documents, expected tokens)."""
    search = ips_choose_high(*ips_histogram(scores, tokens, by_tokens), by_tokens, target)
    if not search.done:
        search = ips_choose_score(search, *ips_histogram(scores, tokens, by_tokens, search.high), by_tokens)
    return (search.c, *ips_expected(scores, tokens, search.c))


def ips_to_plan(c: Optional[float], expected_documents: exact_sum.Exact, expected_tokens: exact_sum.Exact, *,
                num_documents: int, num_tokens: int, rate: float, seed: int, rate_by: str, score_feature: str,
                tokens_feature: Optional[str], num_missing: int, missing) -> sampling.Plan:
    """The `sampling.Plan` of a finished IPS search: the same fields `sampling.plan_from_scores` gives."""
    return sampling.Plan(rule=sampling.IPS(c=c), score_feature=score_feature, rate=float(rate), rate_by=rate_by,
                         seed=seed, num_documents=num_documents, num_tokens=num_tokens, num_missing=num_missing,
                         expected_documents=exact_sum.to_float(expected_documents),
                         expected_tokens=exact_sum.to_float(expected_tokens), tokens_feature=tokens_feature,
                         missing=missing)
