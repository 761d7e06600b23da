"""k-means over document embeddings and the two clustering baselines, SSL Prototypes and SemDeDup
(docs/paper.md §3.1 rows 3-4). Pure numpy; every function takes unit-norm float32 embeddings [n, d].

Spherical k-means (cosine): centroids are unit vectors, a document belongs to the centroid of
highest cosine similarity, and a centroid is the normalised sum of its members.

- `kmeans_plus_plus(x, k, seed)`: seeded k-means++ initialisation (D^2 sampling with
  D^2 = |x - c|^2 = 2 - 2 cos).
- Lloyd iterations in three parts, so that they also run as a Beam CombineFn: `assign(x, C)`
  (per document), `partial_sums(x, assignment, k)` (an accumulator `LloydSums` of per-centroid
  sums and counts that merges by addition) and `update(sums, old)` (new centroids).
  The sums are integers (coordinates in units of 2^-32), so merging in any order or grouping,
  in-process or over many workers, gives bit-identical centroids.
- `fit_kmeans(sample, k, iterations, seed)`: k-means++ then Lloyd on a bounded sample in one
  worker. Scale plan for C4 (364M embeddings, k = 10,000): fit on a sample of (say) 100-200
  documents per centroid, then `assign` every document in Beam (independent per document), and
  optionally refine with Lloyd rounds as combines. Memory of a fit (`fit_memory_bytes`): the
  sample (n x d x 4 bytes) + k x d x 24 bytes (float32 centroids, the integer sums, their
  float64 update) + one block of similarities and temporaries (block_rows x (8 k + 64 d) bytes)
  + 40 bytes per sample row (assignment, similarities, k-means++ distances); for n = 1M,
  d = 768, k = 10,000 about 3.6 GB (measured: n = 200k, d = 384, k = 100 allocates 78 MB beyond
  its 293 MB sample; the bound says 401 MB in all). k-means++ makes k sequential passes over the sample
  (k x n x d multiply-adds): the part of a fit that grows fastest with k.
- `assign` decides between the near-best centroids of a float32 matrix product by float64 dot
  products computed row by row, so a document's cluster and similarity do not depend on which
  other rows share its block (identical under any sharding or batching); exact ties go to the
  lower centroid index.

Scores (higher = keep, as the paper's Figure 9 defines them):
- `prototypes_score` = -cos(document, its centroid) (Sorscher et al. 2022: drop the most
  prototypical, i.e. keep the top of this score).
- `semdedup_scores` = -max cos(document, any other member of its cluster), exact, computed in
  blocks of `block_size` x `block_size` similarities, so a cluster of any size is processed and
  never dropped (`block_max_similarity` is the mergeable piece for splitting one cluster over
  workers: maxima over member blocks combine by `np.maximum`). A document alone in its cluster
  has no neighbour: its maximum similarity is taken as -1 (the least possible) and its score is
  +1 (the most unique).

SemDeDup's de-duplication rule (Abbas et al. 2023, facebookresearch/SemDeDup `semdedup.py` and
`clustering/sort_clusters.py`): the members of a cluster are sorted by cosine distance to the
centroid, DESCENDING by default (`keep_hard=True`, "hard" examples first), and a member is
removed when its maximum similarity to an EARLIER member of that order exceeds 1 - eps (the
upper triangle of the similarity matrix, max over rows). So of a group of near-duplicates the
member FARTHEST from the centroid is kept ("easy" reverses the order and keeps the closest).
Note the rule is theirs exactly: a member is removed even when the earlier member it resembles
was itself removed. Ties in distance are broken by document id (ascending), so the result does
not depend on input order.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

# Integer sums: coordinates are rounded to multiples of 2^-32; |x| <= 1, so int64 holds the sum
# of 2^31 members per centroid exactly.
_SUM_SCALE = 2.0 ** 32
DEFAULT_BLOCK = 2048
KEEP_HARD = "hard"
KEEP_EASY = "easy"
NO_NEIGHBOUR_SIMILARITY = -1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class KMeansConfig:
    """One clustering: `k` centroids fitted by k-means++ (`seed`) and `iterations` Lloyd rounds
    (at most; it stops when no assignment changes) on a sample of at most `sample_size`
    documents; `block_rows` rows of similarities are held at a time."""

    k: int
    iterations: int = 20
    seed: int = 0
    sample_size: int = 200_000
    block_rows: int = 4096

    def __post_init__(self):
        if self.k < 1 or self.iterations < 0 or self.sample_size < self.k or self.block_rows < 1:
            raise ValueError(f"need k >= 1, iterations >= 0, sample_size >= k, block_rows >= 1; got {self}")


def fit_memory_bytes(n: int, d: int, k: int, block_rows: int = 4096) -> int:
    """Bound on the memory `fit_kmeans` needs for an n x d float32 sample and k centroids (bytes),
    the sample included: sample + centroids, sums and update (k x d x 24) + one block's
    similarities and float64 re-scoring temporaries (block x (k x 8 + d x 64)) + per-row arrays
    (n x 40). A copy of the sample (n x d x 4 more) is made when `ids` are given and the rows are
    not in id order."""
    block = min(n, block_rows)
    return n * d * 4 + k * d * 24 + block * (k * 8 + d * 64) + n * 40


def _check(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n, d], got shape {x.shape}")
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{what} hold non-finite values")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no n x d temporary, unlike np.linalg.norm
    if x.size and np.max(np.abs(norms - 1.0)) > 1e-3:
        raise ValueError(f"{what} must be unit-norm (cosine k-means), norms span [{norms.min()}, {norms.max()}]")
    return x


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 dot product of each row of a with the matching row(s) of b; a [n, d], b [n, (m,) d].

    Products of float32 numbers are exact in float64 and each row is summed on its own, so a
    row's value does not depend on the other rows.
    """
    a64 = a.astype(np.float64)
    if b.ndim == 3:
        return np.multiply(a64[:, None, :], b, dtype=np.float64).sum(axis=-1)
    return np.multiply(a64, b, dtype=np.float64).sum(axis=-1)


def assign(x: np.ndarray, centroids: np.ndarray, block_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(assignment int64 [n], cosine similarity float64 [n]) of each row to its nearest centroid.

    A float32 matrix product ranks the centroids; every centroid within twice the worst-case
    float32 rounding error of the best (2 d eps) is then re-scored in float64, row by row, and
    the best of those wins (the lowest index on exact ties). The result is the exact argmax and
    does not depend on the other rows of the block. Memory: block_rows x k x 4 bytes.
    """
    x, centroids = _check(x), _check(centroids, "centroids")
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"embeddings of dim {x.shape[1]} against centroids of dim {centroids.shape[1]}")
    n = x.shape[0]
    margin = 2 * x.shape[1] * float(np.finfo(np.float32).eps)
    labels = np.zeros(n, np.int64)
    sims = np.zeros(n, np.float64)
    for start in range(0, n, block_rows):
        block = x[start:start + block_rows]
        approx = block @ centroids.T  # [b, k] float32
        rows, cols = np.nonzero(approx >= approx.max(axis=1, keepdims=True) - margin)  # row-major
        exact = _row_dots(block[rows], centroids[cols])
        best = np.lexsort((cols, -exact, rows))  # per row: highest exact similarity, then lowest index
        first = best[np.unique(rows[best], return_index=True)[1]]
        labels[start:start + block.shape[0]] = cols[first]
        sims[start:start + block.shape[0]] = exact[first]
    return labels, sims


@dataclasses.dataclass(frozen=True, eq=False)
class LloydSums:
    """The Lloyd accumulator: `sums` int64 [k, d] (member coordinates in units of 2^-32) and
    `counts` int64 [k]. Accumulators merge by addition (`a + b`, `merge_sums`), exactly."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def zeros(cls, k: int, d: int) -> LloydSums:
        """The empty accumulator (a CombineFn's create_accumulator)."""
        return cls(np.zeros((k, d), np.int64), np.zeros(k, np.int64))

    def __add__(self, other: LloydSums) -> LloydSums:
        if self.sums.shape != other.sums.shape:
            raise ValueError(f"cannot merge Lloyd sums of shapes {self.sums.shape} and {other.sums.shape}")
        return LloydSums(self.sums + other.sums, self.counts + other.counts)


def merge_sums(parts: Iterable[LloydSums]) -> LloydSums:
    """The sum of accumulators (a CombineFn's merge_accumulators); the result is order-independent."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_sums needs at least one accumulator")
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def partial_sums(x: np.ndarray, assignment: np.ndarray, k: int, block_rows: int = 4096) -> LloydSums:
    """Per-centroid sums and counts of the rows of x under `assignment` (values in [0, k)),
    `block_rows` rows at a time (temporary memory about 24 x block_rows x d bytes)."""
    x = _check(x)
    assignment = np.asarray(assignment, np.int64)
    if assignment.shape != (x.shape[0],) or (assignment.size and (assignment.min() < 0 or assignment.max() >= k)):
        raise ValueError(f"assignment must be {x.shape[0]} ids in [0, {k})")
    out = LloydSums.zeros(k, x.shape[1])
    for start in range(0, x.shape[0], block_rows):
        labels = assignment[start:start + block_rows]
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        fixed = np.rint(x[start:start + block_rows][order] * _SUM_SCALE).astype(np.int64)  # float32 * 2^32 is exact
        out.sums[present] += np.add.reduceat(fixed, starts, axis=0)
    out.counts[:] = np.bincount(assignment, minlength=k)
    return out


def update(sums: LloydSums, old: np.ndarray) -> np.ndarray:
    """New unit-norm centroids float32 [k, d]: each centroid's normalised member sum; a centroid
    with no members (or a zero sum) keeps its old position."""
    old = _check(old, "centroids")
    total = sums.sums.astype(np.float64)
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    ok = (sums.counts > 0) & (norms[:, 0] > 0)
    new = old.astype(np.float64).copy()
    new[ok] = total[ok] / norms[ok]
    return new.astype(np.float32)


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k initial centroids float32 [k, d] drawn from the rows of x by k-means++ (Arthur &
    Vassilvitskii 2007) with `np.random.default_rng(seed)`: the first uniformly, each next with
    probability proportional to its squared distance 2 - 2 cos to the nearest chosen one. When
    every remaining distance is 0 (fewer distinct rows than k) the rest are drawn uniformly from
    the unchosen rows. Cost: k passes over x (k x n x d multiply-adds)."""
    x = _check(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means++ needs 1 <= k <= n, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    d2 = np.maximum(2.0 - 2.0 * (x @ x[chosen[0]]).astype(np.float64), 0.0)
    d2[chosen[0]] = 0.0
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
            if pick >= n or d2[pick] == 0:  # rounding at the top end of the cumulative sum
                pick = int(np.flatnonzero(d2 > 0)[-1])
        else:
            free = np.setdiff1d(np.arange(n), chosen)
            pick = int(free[rng.integers(free.size)])
        chosen.append(pick)
        d2 = np.minimum(d2, np.maximum(2.0 - 2.0 * (x @ x[pick]).astype(np.float64), 0.0))
        d2[pick] = 0.0
    return x[chosen].copy()


@dataclasses.dataclass(frozen=True, eq=False)
class KMeansResult:
    """A fit: unit-norm `centroids` float32 [k, d]; the sample's final `assignment` and
    `similarity`; Lloyd `iterations` run; `converged` when the last one changed no assignment."""

    centroids: np.ndarray
    assignment: np.ndarray
    similarity: np.ndarray
    iterations: int
    converged: bool


def fit_kmeans(sample: np.ndarray, k: int, iterations: int = 20, seed: int = 0,
               ids: Optional[Sequence] = None, block_rows: int = 4096) -> KMeansResult:
    """Spherical k-means on a bounded sample in one worker: k-means++ then up to `iterations`
    Lloyd rounds (stopping early when no assignment changes).

    The fit depends on the order of the rows (k-means++ draws row indices); with `ids` (one per
    row) the rows are first put in id order, so the same documents give the same centroids
    however they arrived. The returned assignment is in the caller's row order.
    """
    sample = _check(sample, "sample")
    order = np.arange(sample.shape[0])
    if ids is not None:
        if len(ids) != sample.shape[0]:
            raise ValueError(f"{len(ids)} ids for {sample.shape[0]} rows")
        order = np.asarray(sorted(range(len(ids)), key=lambda i: ids[i]), np.int64)
    in_order = bool(np.array_equal(order, np.arange(order.size)))
    x = sample if in_order else sample[order]  # a reordered copy only when the rows are not in id order
    centroids = kmeans_plus_plus(x, k, seed)
    labels, sims = assign(x, centroids, block_rows)
    done, converged = 0, False
    while done < iterations and not converged:
        centroids = update(partial_sums(x, labels, k, block_rows), centroids)
        new_labels, sims = assign(x, centroids, block_rows)
        converged = bool(np.array_equal(new_labels, labels))
        labels, done = new_labels, done + 1
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return KMeansResult(centroids=centroids, assignment=labels[inverse], similarity=sims[inverse],
                        iterations=done, converged=converged)


# ----------------------------------------------------------------------------- scores


def prototypes_score(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """SSL Prototypes score float64 [n]: -cos(row, its assigned centroid) (higher = less prototypical)."""
    x, centroids = _check(x), _check(centroids, "centroids")
    return -_row_dots(x, centroids[np.asarray(assignment, np.int64)].astype(np.float64))


def block_max_similarity(queries: np.ndarray, query_ids: np.ndarray, members: np.ndarray,
                         member_ids: np.ndarray, block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """float64 [len(queries)]: max cosine similarity of each query to the members whose id
    differs from its own (-inf when there is none), in blocks of block_size x block_size.

    Results over different member blocks combine by `np.maximum`, which is how one cluster can be
    split over workers.
    """
    queries, members = _check(queries, "queries"), _check(members, "members")
    query_ids, member_ids = np.asarray(query_ids), np.asarray(member_ids)
    out = np.full(queries.shape[0], -np.inf)
    for qs in range(0, queries.shape[0], block_size):
        q = queries[qs:qs + block_size].astype(np.float64)
        qid = query_ids[qs:qs + block_size]
        for ms in range(0, members.shape[0], block_size):
            sims = q @ members[ms:ms + block_size].astype(np.float64).T  # [bq, bm]
            sims[qid[:, None] == member_ids[None, ms:ms + block_size]] = -np.inf
            out[qs:qs + block_size] = np.maximum(out[qs:qs + block_size], sims.max(axis=1, initial=-np.inf))
    return out


def semdedup_scores(x: np.ndarray, block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """SemDeDup score float64 [n] of the members of ONE cluster: -max cosine similarity to any
    other member (+1 for a member alone in its cluster)."""
    x = _check(x)
    rows = np.arange(x.shape[0])
    best = block_max_similarity(x, rows, x, rows, block_size)
    return -np.where(np.isfinite(best), best, NO_NEIGHBOUR_SIMILARITY)


def semdedup_order(x: np.ndarray, centroid: np.ndarray, ids: Sequence, keep: str = KEEP_HARD) -> np.ndarray:
    """The order SemDeDup walks one cluster in: by cosine distance to the centroid, descending
    for "hard" (the paper code's default) or ascending for "easy", ties by id ascending."""
    if keep not in (KEEP_HARD, KEEP_EASY):
        raise ValueError(f"keep must be {KEEP_HARD!r} or {KEEP_EASY!r}, got {keep!r}")
    x = _check(x)
    if len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} ids for {x.shape[0]} rows")
    c = _check(np.asarray(centroid, np.float32).reshape(1, -1), "centroid")
    dist = 1.0 - _row_dots(x, np.broadcast_to(c.astype(np.float64), x.shape))
    sign = -1.0 if keep == KEEP_HARD else 1.0
    return np.asarray(sorted(range(x.shape[0]), key=lambda i: (sign * dist[i], ids[i])), np.int64)


def semdedup_earlier_max(x: np.ndarray, centroid: np.ndarray, ids: Sequence, keep: str = KEEP_HARD,
                         block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """float64 [n] in input order: each member's max cosine similarity to the members before it
    in `semdedup_order` (-1 for the first). Thresholding this at 1 - eps is SemDeDup's rule, so
    one pass serves every eps. Exact, in blocks of block_size x block_size."""
    order = semdedup_order(x, centroid, ids, keep)
    y = _check(x)[order].astype(np.float64)
    n = y.shape[0]
    earlier = np.full(n, -np.inf)
    for cs in range(0, n, block_size):
        cols = y[cs:cs + block_size]
        for rs in range(0, min(cs + block_size, n), block_size):
            sims = y[rs:rs + block_size] @ cols.T  # [br, bc]: row position rs+i, column position cs+j
            before = (np.arange(rs, rs + sims.shape[0])[:, None] < np.arange(cs, cs + sims.shape[1])[None, :])
            sims = np.where(before, sims, -np.inf)
            earlier[cs:cs + block_size] = np.maximum(earlier[cs:cs + block_size], sims.max(axis=0, initial=-np.inf))
    out = np.empty(n)
    out[order] = np.where(np.isfinite(earlier), earlier, NO_NEIGHBOUR_SIMILARITY)
    return out


def semdedup_keep(x: np.ndarray, centroid: np.ndarray, ids: Sequence, eps: float, keep: str = KEEP_HARD,
                  block_size: int = DEFAULT_BLOCK) -> np.ndarray:
    """bool [n] in input order: which members of one cluster SemDeDup keeps at threshold eps
    (removed when the max similarity to an earlier member exceeds 1 - eps)."""
    if not 0 <= eps <= 2:
        raise ValueError(f"eps must be in [0, 2], got {eps}")
    return semdedup_earlier_max(x, centroid, ids, keep, block_size) <= 1.0 - eps
