"""Two-pass LSH kernel density sketch (Algorithm 2 of Sachdeva et al., 2024).

The density score of an embedding y over a corpus D is the kernel sum
``K(y) = sum_{x in D} k(x, y)`` where ``k`` is the collision probability of a
locality-sensitive hash family (Coleman & Shrivastava 2020, "RACE"). With R
independent hash functions ``h_r`` into B buckets, an ``R x B`` table of counts
estimates it in two linear passes:

  pass 1 (build):  for x in D, r < R:  S[r, h_r(x)] += 1
  pass 2 (score):  score(y) = (1/R) * sum_r S[r, h_r(y)]

Each row's count ``S[r, h_r(y)]`` is the number of points hashed to y's
bucket, so its expectation is ``sum_x P[h_r(x) = h_r(y)]``, the kernel sum
(self included). Sketches built on shards add up exactly, so pass 1 is a
``CombineFn`` whose accumulators merge by addition.

Hash family (Datar et al. 2004, p = 2)::

    h(x) = floor((a . x + b) / w),   a ~ N(0, I_d),  b ~ U[0, w)

``k = hashes_per_row`` such integers are concatenated per row (the kernel
becomes ``p(c)^k``, sharper) and the k-tuple is mapped into B buckets by a
seeded strongly-universal hash (vector multiply-add-shift, Dietzfelbinger
1996; Thorup 2015 sec. 3.3)::

    u = ((sum_j m_j * key_j + m_0) mod 2^64) >> 32,   bucket = u mod B

with ``key_j = h_j mod 2^32`` and ``m_j`` uniform 64-bit integers. For distinct
keys ``u`` is uniform and pairwise independent over 32 bits, so two points with
different LSH values share a bucket with probability ``1/B`` (up to a
``B / 2^32`` rounding bias). Everything is 32-bit unsigned arithmetic (the
64-bit products are formed from 16-bit halves), so it compiles into one fused
XLA loop after the projection matmul, without ``jax_enable_x64``. Per batch
the cost is one ``[N, d] x [d, R*k]`` matmul plus that loop.

Cosine kernel: signed random projections (Charikar 2002), ``k`` sign bits per
row packed into one word, collision probability ``(1 - theta/pi)^k``. With
``B = 2^k`` the word is the bucket (``SketchConfig.direct_buckets``): no
universal hash and no bucket collisions; other B hash the word as above.

All hash parameters are drawn from ``SketchConfig.seed`` alone, so every
worker builds the same functions; a saved sketch also stores them, so later
documents are scored with exactly the functions that built the counts.

Defaults (``make_sketch_config``, ``DEFAULT_*``): cosine, k = 8 sign bits a
row, R = 1000 rows, B = 2^8 = 256 buckets indexed by the sign word. They rank
documents like an exact Gaussian KDE over the same MiniLM embeddings with
Spearman 0.986 (C4 sample), 0.991 (Dolma Common Crawl), 0.988 (both),
against 0.78 / 0.94 / 0.78 for the paper's p-stable sketch as the job ran
it before (k = 2, w = 5% distance quantile); benchmarks/density_accuracy.py.

* Why this kernel. Embedders here return unit vectors, and on the unit
  sphere the Gaussian kernel is a function of the cosine alone:
  ``exp(-|x - y|^2 / 2h^2) = exp(-(1 - cos) / h^2)``, log-linear in cos.
  The sign-bit kernel is nearly so where sentence embeddings of web text lie
  (MiniLM on C4: cosines -0.1..0.3): ``log p = k (-log 2 + (2/pi) cos -
  (2/pi^2) cos^2 + ...)``. The p-stable kernel sum ranks like the Gaussian
  KDE too (Spearman 0.99+ computed exactly), but a 1000-row sketch
  estimates it poorly on such concentrated distances: 0.63-0.87 against its
  own exact sum on C4 for every k and width tried, 0.99 for 8 sign bits. The
  paper saw no downstream difference between the L2 and cosine kernels
  (App. A.2); ``kernel='l2'`` keeps the p-stable sketch.
* Bandwidth. k sets it: matching log-slopes at right angles gives the
  Gaussian h = sqrt(pi / 2k) (`gaussian_equivalent_bandwidth`): 0.63 for
  k = 4, 0.44 for k = 8, 0.31 for k = 16, and the sweep's best-matching h
  sits there on every corpus. Sharper kernels weigh nearer neighbours (down
  to near-duplicates) but collide less, so 1000 rows estimate them worse on
  small corpora; k = 8 keeps >= 0.98 on 670-1670 documents and ~0.96 on
  250 (k = 16: 0.74-0.96). Nothing is estimated from the data: the functions come from
  the seed alone, so the sketches of any batches of a corpus add up to
  exactly the one-shot sketch. (The l2 width w is data-dependent: estimate
  it once, `estimate_bandwidth`, and keep it with the sketch.)
* Cost per document: one projection onto R k = 8000 directions (3.1 M
  multiply-adds at d = 384, 6.1 M at d = 768), then R sign words and R
  counter updates (pass 1) or lookups (pass 2): 151 us a document for hash,
  add and query on this loaded 2-core machine, against 99 us for the former l2
  k = 2 sketch and ~100 ms for MiniLM itself. The density job hashes a document
  once, ever, and caches its ids (`ids_dtype`: one byte a row for B = 256, named
  by `hash_digest`); counting and querying cached ids is a bincount and a gather. The counts are R x 2^k int32 =
  1 MB (the paper's 1000 x 20000: 80 MB) and stay in cache; the projection
  matrix is d x R k float32 (11.7 MiB at d = 384).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import os
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special  # a dependency of jax

KERNELS = ("l2", "cosine")
COUNTS_DTYPES = ("int32", "int64")

# The recommended sketch (module docstring, "Defaults"): cosine, 8 sign bits a row, 1000 rows,
# B = 2^8 buckets indexed by the sign word. No data-dependent parameter.
DEFAULT_KERNEL = "cosine"
DEFAULT_ROWS = 1000
DEFAULT_BITS = 8
DEFAULT_HASHES_PER_ROW = DEFAULT_BITS
DEFAULT_BUCKETS = 1 << DEFAULT_BITS
# The paper's p-stable L2 sketch, by flag (kernel='l2'): k hashes a row, B = 20000, and a width
# estimated once from a sample of the data (`estimate_bandwidth`), then recorded with the sketch.
L2_HASHES_PER_ROW = 2
L2_BUCKETS = 20000
DEFAULT_BANDWIDTH_QUANTILE = 0.05
# Cosine rows with up to this many bits get B = 2^k direct buckets by default (2^14 = 16384).
_MAX_DIRECT_BITS = 14

# Embeddings are projected in chunks of exactly this many rows (the last one zero-padded), so a
# document's projection is computed by the same matmul shape whatever its unit or batch: its bucket
# ids cannot depend on which documents share its call (one compiled program, one BLAS blocking).
_CHUNK_ROWS = 256

# v2: cosine sketches with B = 2^k index buckets by the sign word (v1 hashed it); nothing else changed.
_FORMAT, _FORMAT_V1 = "gristmill-density-sketch-v2", "gristmill-density-sketch-v1"
# How ids are computed from the parameters (fixed 256-row chunks); part of `hash_digest`.
_IDS_FORMAT = "gristmill-density-ids-v1"

# Streams of the seed: one independent generator per kind of parameter, so
# that changing one shape does not change the other parameters.
_STREAM_PROJECTION, _STREAM_OFFSET, _STREAM_UNIVERSAL = 0, 1, 2


class SketchError(ValueError):
    """Invalid sketch configuration, embeddings, bucket ids, or sketch file."""


def _direct_buckets(kernel: str, hashes_per_row: int, buckets: int) -> bool:
    """True when a row's k sign bits index its B = 2^k buckets directly (cosine only)."""
    return kernel == "cosine" and buckets == 1 << hashes_per_row


@dataclasses.dataclass(frozen=True, kw_only=True)
class SketchConfig:
    """Shape, kernel and seed of a density sketch.

    The field defaults are the paper's p-stable sketch (its bandwidth has no
    default); `make_sketch_config` gives the recommended one (module docstring).

    dim: embedding dimension. rows: R independent hash functions (1000 in the
    paper). buckets: B buckets per row (20000 in the paper; 1000 x 20000 int32
    counts = 80 MB); for cosine, B = 2^k makes the k sign bits the bucket
    itself (no bucket collisions). hashes_per_row: k concatenated p-stable
    hashes (l2) or sign bits (cosine) per row; the kernel is p^k, so k
    sharpens it (k = 1, the paper's plain p-stable hash, decays only like
    1/distance). bandwidth: the p-stable width w (l2 only; see
    `estimate_bandwidth`). kernel: 'l2' (p-stable) or 'cosine' (signed
    random projections). seed: the one seed every hash parameter derives from.
    counts_dtype: 'int32' (the paper's 80 MB) or 'int64'.
    """

    dim: int
    rows: int = 1000
    buckets: int = 20000
    hashes_per_row: int = 1
    bandwidth: float | None = None
    kernel: str = "l2"
    seed: int = 0
    counts_dtype: str = "int32"

    def __post_init__(self):
        for name in ("dim", "rows", "buckets", "hashes_per_row", "seed"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, int(value))
        if isinstance(self.bandwidth, numbers.Real) and not isinstance(self.bandwidth, bool):
            object.__setattr__(self, "bandwidth", float(self.bandwidth))
        if not (isinstance(self.dim, int) and self.dim > 0):
            raise SketchError(f"SketchConfig.dim must be a positive int, got {self.dim!r}")
        if not (isinstance(self.rows, int) and self.rows > 0):
            raise SketchError(f"SketchConfig.rows must be a positive int, got {self.rows!r}")
        if not (isinstance(self.buckets, int) and 2 <= self.buckets <= 2**31 - 1):
            raise SketchError(f"SketchConfig.buckets must be an int in [2, 2^31), got {self.buckets!r}")
        if not (isinstance(self.hashes_per_row, int) and self.hashes_per_row > 0):
            raise SketchError(f"SketchConfig.hashes_per_row must be a positive int, got {self.hashes_per_row!r}")
        if self.kernel not in KERNELS:
            raise SketchError(f"SketchConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.kernel == "cosine" and self.hashes_per_row > 32:
            raise SketchError(f"cosine kernel packs sign bits in 32 bits; hashes_per_row={self.hashes_per_row} > 32")
        if self.kernel == "l2":
            if self.bandwidth is None:
                raise SketchError("SketchConfig.bandwidth is required for kernel='l2' (see estimate_bandwidth)")
            if not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
                raise SketchError(f"SketchConfig.bandwidth must be finite and > 0, got {self.bandwidth!r}")
        if self.counts_dtype not in COUNTS_DTYPES:
            raise SketchError(f"SketchConfig.counts_dtype must be one of {COUNTS_DTYPES}, got {self.counts_dtype!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise SketchError(f"SketchConfig.seed must be an int in [0, 2^63), got {self.seed!r}")

    @property
    def direct_buckets(self) -> bool:
        """Cosine with B = 2^k: the sign word is the bucket, so distinct words never share one."""
        return _direct_buckets(self.kernel, self.hashes_per_row, self.buckets)

    @property
    def bucket_collision_rate(self) -> float:
        """P[two points with different hash values share a bucket]: 0 if `direct_buckets`, else 1/B."""
        return 0.0 if self.direct_buckets else 1.0 / self.buckets

    @property
    def keys_per_row(self) -> int:
        """Integers fed to the universal hash per row: k for l2, 1 packed bit-word for cosine."""
        return self.hashes_per_row if self.kernel == "l2" else 1

    @property
    def sketch_bytes(self) -> int:
        """Memory of the counts table."""
        return self.rows * self.buckets * np.dtype(self.counts_dtype).itemsize

    def to_json(self) -> str:
        """The config as a JSON object (stored in saved sketches)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SketchConfig:
        """Inverse of `to_json`."""
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True, eq=False)
class HashParams:
    """The R hash functions of a sketch, all derived from `config.seed`.

    projection: float32 [dim, R*k], column r*k + j is a_{r,j} (Gaussian for l2
    and cosine). offsets: float32 [R*k], b ~ U[0, w) for l2, zero for cosine.
    mult_hi / mult_lo: uint32 [R, keys_per_row + 1], the 64-bit multipliers of
    the universal hash (column 0 is the additive term m_0).
    """

    config: SketchConfig
    projection: np.ndarray
    offsets: np.ndarray
    mult_hi: np.ndarray
    mult_lo: np.ndarray

    @functools.cached_property
    def projection_t(self) -> np.ndarray:
        """A^T, float32 [R*k, dim] contiguous (cached; not pickled): ``A^T x^T`` is the [R*k, N] layout."""
        return np.ascontiguousarray(self.projection.T)

    @functools.cached_property
    def device_arrays(self) -> tuple[jax.Array, ...]:
        """(A^T, offsets, 1/w, mult_hi, mult_lo) as JAX arrays (cached; not pickled) for `bucket_ids`."""
        inv_width = 1.0 / self.config.bandwidth if self.config.kernel == "l2" else 1.0
        return (jnp.asarray(self.projection_t), jnp.asarray(self.offsets), jnp.asarray(np.float32(inv_width)),
                jnp.asarray(self.mult_hi), jnp.asarray(self.mult_lo))

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("device_arrays", None)
        state.pop("projection_t", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def same_functions(self, other: HashParams) -> bool:
        """True when both parameter sets hash every input identically."""
        return (
            self.config == other.config
            and np.array_equal(self.projection, other.projection)
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.mult_hi, other.mult_hi)
            and np.array_equal(self.mult_lo, other.mult_lo)
        )


def ids_dtype(config: SketchConfig) -> np.dtype:
    """The smallest unsigned dtype holding every bucket id of `config`: uint8 for B <= 256 (the
    default sketch: one byte a row), uint16 for B <= 65536, else uint32. Cached ids are stored so."""
    for dtype in (np.uint8, np.uint16):
        if config.buckets <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


def hash_digest(params: HashParams) -> str:
    """16 hex digits naming a set of hash functions: the config, every parameter array and the way
    they are applied (`_IDS_FORMAT`). Equal digests give every embedding the same bucket ids, so ids
    cached under a digest are reused only by sketches that would compute the same ones."""
    h = hashlib.sha256(_IDS_FORMAT.encode())
    for part in (params.config.to_json().encode(), params.projection, params.offsets, params.mult_hi, params.mult_lo):
        data = part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))


def make_hash_params(config: SketchConfig) -> HashParams:
    """Draws the R hash functions of `config` from its seed (same on every worker).

    Projections are drawn row-major as [R, k, dim], so the first R' rows of a
    sketch with R > R' rows are the functions of the R'-row sketch.
    """
    R, k, d = config.rows, config.hashes_per_row, config.dim
    a = _stream(config.seed, _STREAM_PROJECTION).standard_normal((R * k, d), dtype=np.float32)
    projection = np.ascontiguousarray(a.T)
    if config.kernel == "l2":
        u = _stream(config.seed, _STREAM_OFFSET).random(R * k, dtype=np.float32)
        offsets = (u * np.float32(config.bandwidth)).astype(np.float32)
        # float32 rounding can reach w exactly; keep b in [0, w).
        offsets = np.minimum(offsets, np.nextafter(np.float32(config.bandwidth), np.float32(0)))
    else:
        offsets = np.zeros(R * k, np.float32)
    words = _stream(config.seed, _STREAM_UNIVERSAL).integers(
        0, 2**32, size=(R, config.keys_per_row + 1, 2), dtype=np.uint64).astype(np.uint32)
    return HashParams(config=config, projection=projection, offsets=offsets,
                      mult_hi=np.ascontiguousarray(words[..., 0]), mult_lo=np.ascontiguousarray(words[..., 1]))


# --------------------------------------------------------------------------- hashing

def _mul_32x32(a: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Full 64-bit product of uint32 arrays as (hi, lo) uint32 words, via 16-bit halves."""
    mask = jnp.uint32(0xFFFF)
    a_lo, a_hi = a & mask, a >> 16
    x_lo, x_hi = x & mask, x >> 16
    ll, lh, hl, hh = a_lo * x_lo, a_lo * x_hi, a_hi * x_lo, a_hi * x_hi
    mid = (ll >> 16) + (lh & mask) + (hl & mask)  # < 3 * 2^16, no overflow
    lo = (mid << 16) | (ll & mask)
    hi = hh + (lh >> 16) + (hl >> 16) + (mid >> 16)
    return hi, lo


def _universal_hash(keys: jax.Array, mult_hi: jax.Array, mult_lo: jax.Array, buckets: int) -> jax.Array:
    """((m_0 + sum_j m_j * key_j) mod 2^64) >> 32, mod B.

    keys: uint32 [R, K, N]; mult_hi, mult_lo: uint32 [R, K + 1]. Returns int32 [R, N].
    """
    assert keys.ndim == 3 and mult_hi.shape == (keys.shape[0], keys.shape[1] + 1), (keys.shape, mult_hi.shape)
    shape = (keys.shape[0], keys.shape[2])
    acc_hi = jnp.broadcast_to(mult_hi[:, :1], shape)
    acc_lo = jnp.broadcast_to(mult_lo[:, :1], shape)
    for j in range(keys.shape[1]):
        x = keys[:, j, :]
        p_hi, p_lo = _mul_32x32(mult_lo[:, j + 1, None], x)
        p_hi = p_hi + mult_hi[:, j + 1, None] * x  # (m_hi * 2^32 * x) mod 2^64 only touches the high word
        new_lo = acc_lo + p_lo
        carry = (new_lo < acc_lo).astype(jnp.uint32)
        acc_hi = acc_hi + p_hi + carry
        acc_lo = new_lo
    return (acc_hi % jnp.uint32(buckets)).astype(jnp.int32)


def _ids_from_projections(z, offsets, inv_width, mult_hi, mult_lo, *, kernel, hashes_per_row, buckets, rows_first):
    """Projections z = (x @ A)^T [R*k, N] -> bucket ids int32 [R, N] (or [N, R])."""
    rows, n = mult_hi.shape[0], z.shape[1]
    if kernel == "l2":
        h = jnp.floor((z + offsets[:, None]) * inv_width)
        # Values beyond int32 only arise with an absurdly small width; saturate them.
        h = jnp.clip(h, -2.0**31, 2.0**31 - 256).astype(jnp.int32)
        keys = jax.lax.bitcast_convert_type(h, jnp.uint32).reshape(rows, hashes_per_row, n)
    else:
        bits = (z >= 0).astype(jnp.uint32).reshape(rows, hashes_per_row, n)
        shifts = jnp.arange(hashes_per_row, dtype=jnp.uint32)[None, :, None]
        keys = jnp.sum(bits << shifts, axis=1, dtype=jnp.uint32)[:, None, :]
    if _direct_buckets(kernel, hashes_per_row, buckets):
        ids = keys[:, 0, :].astype(jnp.int32)  # the sign word is the bucket: [R, N]
    else:
        ids = _universal_hash(keys, mult_hi, mult_lo, buckets)  # [R, N]
    return ids if rows_first else ids.T


_STATIC = ("kernel", "hashes_per_row", "buckets", "rows_first")
_ids_from_projections_jit = jax.jit(_ids_from_projections, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _bucket_ids_jit(x, projection_t, offsets, inv_width, mult_hi, mult_lo, **static):
    """The whole hash on the device: one dot (contracting dim of A^T and x) + the fused integer ops."""
    z = jax.lax.dot_general(projection_t, x, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
    return _ids_from_projections(z, offsets, inv_width, mult_hi, mult_lo, **static)


def check_embeddings(config: SketchConfig, x) -> np.ndarray:
    """Returns `x` as C-contiguous float32 [N, dim]; SketchError for a wrong shape or non-finite values."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != config.dim:
        raise SketchError(f"embeddings must have shape [N, {config.dim}], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise SketchError(f"embeddings must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise SketchError(f"embeddings rows {bad[:10].tolist()} (of {bad.size} rows) contain NaN or inf")
    return arr


def _hash(params: HashParams, x, rows_first: bool) -> np.ndarray:
    cfg = params.config
    arr = check_embeddings(cfg, x)
    n = arr.shape[0]
    out = np.empty((cfg.rows, n) if rows_first else (n, cfg.rows), np.int32)
    if n == 0:
        return out
    device_args = params.device_arrays
    static = dict(kernel=cfg.kernel, hashes_per_row=cfg.hashes_per_row, buckets=cfg.buckets, rows_first=rows_first)
    # XLA:CPU's dot is up to 2x slower than the BLAS numpy links, so on CPU the projection is a numpy
    # matmul and only the integer ops run in XLA; accelerators run the whole hash in one program.
    on_cpu = jax.default_backend() == "cpu"
    for start in range(0, n, _CHUNK_ROWS):
        chunk = arr[start:start + _CHUNK_ROWS]
        m = chunk.shape[0]
        if m != _CHUNK_ROWS:
            chunk = np.concatenate([chunk, np.zeros((_CHUNK_ROWS - m, cfg.dim), np.float32)])
        if on_cpu:
            z = params.projection_t @ chunk.T  # [R*k, N]
            ids = np.asarray(_ids_from_projections_jit(z, *device_args[1:], **static))
        else:
            ids = np.asarray(_bucket_ids_jit(chunk, *device_args, **static))
        if rows_first:
            out[:, start:start + m] = ids[:, :m]
        else:
            out[start:start + m] = ids[:m]
    return out


def bucket_ids(params: HashParams, x) -> np.ndarray:
    """Bucket of every embedding in every row: int32 [N, R] in [0, B).

    One float32 ``x @ projection`` matmul per chunk of 256 embeddings
    (numpy's BLAS on CPU, XLA elsewhere), then the floor/sign and the
    universal hash fused by XLA. Every chunk has the same shape (the last is
    zero-padded), so one program compiles and a point's ids do not depend on
    the other points hashed with it. Raises SketchError for a wrong shape or
    NaN/inf embeddings.
    """
    return _hash(params, x, rows_first=False)


def row_bucket_ids(params: HashParams, x) -> np.ndarray:
    """`bucket_ids` transposed, int32 [R, N]: the layout `Sketch.add_rows` / `query_rows` work in.

    Computed in this layout directly (no transpose pass), the fast path of pass 1 and 2.
    """
    return _hash(params, x, rows_first=True)


def _transpose(ids: np.ndarray) -> np.ndarray:
    """[N, R] -> contiguous [R, N], a block of points at a time (a plain .T copy thrashes the cache)."""
    out = np.empty(ids.shape[::-1], ids.dtype)
    for start in range(0, ids.shape[0], 256):
        out[:, start:start + 256] = ids[start:start + 256].T
    return out


# --------------------------------------------------------------------------- sketch

@dataclasses.dataclass(eq=False)
class Sketch:
    """R x B collision counts over a set of embeddings, with the hash functions that built them.

    Pass 1: `add_embeddings(x)` for every batch (or `add(bucket_ids(params, x))`);
    shards combine with `merge`. Pass 2: `query(bucket_ids(params, y))`.
    """

    params: HashParams
    counts: np.ndarray
    num_points: int = 0

    def __post_init__(self):
        cfg = self.params.config
        if self.counts.shape != (cfg.rows, cfg.buckets) or self.counts.dtype != np.dtype(cfg.counts_dtype):
            raise SketchError(f"counts must be {cfg.counts_dtype} [{cfg.rows}, {cfg.buckets}], "
                              f"got {self.counts.dtype} {list(self.counts.shape)}")

    @classmethod
    def empty(cls, config_or_params: SketchConfig | HashParams) -> Sketch:
        """A zero sketch; hash functions are drawn from the config's seed."""
        params = config_or_params if isinstance(config_or_params, HashParams) else make_hash_params(config_or_params)
        cfg = params.config
        return cls(params=params, counts=np.zeros((cfg.rows, cfg.buckets), cfg.counts_dtype))

    @property
    def config(self) -> SketchConfig:
        """The config of the sketch's hash functions."""
        return self.params.config

    def _check_ids(self, ids, rows_first: bool) -> np.ndarray:
        cfg = self.config
        ids = np.asarray(ids)
        axis = 0 if rows_first else 1
        want = f"[{cfg.rows}, N]" if rows_first else f"[N, {cfg.rows}]"
        if ids.ndim != 2 or ids.shape[axis] != cfg.rows or not np.issubdtype(ids.dtype, np.integer):
            raise SketchError(f"bucket ids must be integer {want}, got {ids.dtype} {list(ids.shape)}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.buckets):
            raise SketchError(f"bucket ids must lie in [0, {cfg.buckets}), got range [{ids.min()}, {ids.max()}]")
        return ids

    def add(self, ids) -> Sketch:
        """Pass 1: counts[r, ids[n, r]] += 1 for every point n and row r (in place; returns self).

        ``ids`` is int [N, R] as `bucket_ids` returns it.
        """
        return self._add_rows(_transpose(self._check_ids(ids, rows_first=False)))

    def add_rows(self, ids_t) -> Sketch:
        """`add` for ids in the [R, N] layout of `row_bucket_ids`."""
        return self._add_rows(np.ascontiguousarray(self._check_ids(ids_t, rows_first=True)))

    def _add_rows(self, ids_t: np.ndarray) -> Sketch:
        # One bincount per sketch row (a row of counts stays in cache): O(N*R + R*B) per call, so add
        # large batches.
        n = ids_t.shape[1]
        if self.num_points + n > np.iinfo(self.counts.dtype).max:
            raise SketchError(f"{self.num_points + n} points could overflow {self.counts.dtype} counts; "
                              f"use counts_dtype='int64'")
        if n == 0:
            return self
        buckets = self.config.buckets
        for r, row_ids in enumerate(ids_t):
            self.counts[r] += np.bincount(row_ids, minlength=buckets).astype(self.counts.dtype, copy=False)
        self.num_points += n
        return self

    def add_embeddings(self, x) -> Sketch:
        """Hashes `x` [N, dim] with this sketch's functions and adds it (pass 1)."""
        return self._add_rows(row_bucket_ids(self.params, x))

    def query(self, ids) -> np.ndarray:
        """Pass 2: float64 [N], the mean over rows of the counts at each point's buckets.

        ``ids`` is int [N, R] as `bucket_ids` returns it. This is Algorithm 2's
        score / R. Its expectation for a point y is ``K(y) + (n - K(y)) * c``,
        with ``K(y) = sum_x p(x, y)`` the kernel sum over the n sketched points
        (y itself counts 1 if it was added) and the second term the collisions
        that the finite bucket range adds (c = `SketchConfig.bucket_collision_rate`:
        1/B, or 0 when the buckets are the cosine sign words).
        """
        return self._query_rows(_transpose(self._check_ids(ids, rows_first=False)))

    def query_rows(self, ids_t) -> np.ndarray:
        """`query` for ids in the [R, N] layout of `row_bucket_ids`."""
        return self._query_rows(np.ascontiguousarray(self._check_ids(ids_t, rows_first=True)))

    def _query_rows(self, ids_t: np.ndarray) -> np.ndarray:
        total = np.zeros(ids_t.shape[1], np.int64)
        for r, row_ids in enumerate(ids_t):  # one cached row of counts at a time
            total += self.counts[r][row_ids]
        return total / self.config.rows

    def query_embeddings(self, x) -> np.ndarray:
        """Scores `x` [N, dim] against the sketch (pass 2)."""
        return self._query_rows(row_bucket_ids(self.params, x))

    def merge(self, other: Sketch) -> Sketch:
        """A new sketch whose counts are the sum of both (exact, associative, commutative).

        Both must use the same hash functions; SketchError otherwise.
        """
        return Sketch.merge_all([self, other])

    @staticmethod
    def merge_all(sketches: Iterable[Sketch]) -> Sketch:
        """Sum of any number of sketches built with the same hash functions, in one new array."""
        sketches = list(sketches)
        if not sketches:
            raise SketchError("merge_all needs at least one sketch")
        first = sketches[0]
        counts = first.counts.copy()
        num_points = first.num_points
        limit = np.iinfo(counts.dtype).max
        for s in sketches[1:]:
            if not first.params.same_functions(s.params):
                raise SketchError("cannot merge sketches built with different hash functions "
                                  f"({first.config} vs {s.config})")
            num_points += s.num_points
            if num_points > limit:
                raise SketchError(f"merged sketch of {num_points} points could overflow {counts.dtype}")
            counts += s.counts
        return Sketch(params=first.params, counts=counts, num_points=num_points)

    def save(self, path: str | os.PathLike) -> None:
        """Writes counts, config and hash parameters to one .npz file."""
        p = self.params
        with open(path, "wb") as f:
            np.savez_compressed(
                f, format=np.array(_FORMAT), config=np.array(self.config.to_json()),
                num_points=np.array(self.num_points, np.int64), counts=self.counts, projection=p.projection,
                offsets=p.offsets, mult_hi=p.mult_hi, mult_lo=p.mult_lo)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sketch:
        """Reads a sketch written by `save`; SketchError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt = str(z["format"])
                if fmt not in (_FORMAT, _FORMAT_V1):
                    raise SketchError(f"{path}: unknown sketch format {fmt!r}")
                config = SketchConfig.from_json(str(z["config"]))
                if fmt == _FORMAT_V1 and config.direct_buckets:
                    raise SketchError(f"{path}: a {_FORMAT_V1} cosine sketch with B = 2^k hashed sign words into "
                                      "buckets, which this version indexes directly; rebuild the sketch")
                params = HashParams(config=config, projection=z["projection"], offsets=z["offsets"],
                                    mult_hi=z["mult_hi"], mult_lo=z["mult_lo"])
                counts, num_points = z["counts"], int(z["num_points"])
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, SketchError):
                raise
            raise SketchError(f"{path}: not a density sketch file ({e})") from e
        _check_params_shapes(params, path)
        try:
            return cls(params=params, counts=counts, num_points=num_points)
        except SketchError as e:
            raise SketchError(f"{path}: {e}") from e


def _check_params_shapes(params: HashParams, path) -> None:
    cfg = params.config
    want = {"projection": ((cfg.dim, cfg.rows * cfg.hashes_per_row), np.float32),
            "offsets": ((cfg.rows * cfg.hashes_per_row,), np.float32),
            "mult_hi": ((cfg.rows, cfg.keys_per_row + 1), np.uint32),
            "mult_lo": ((cfg.rows, cfg.keys_per_row + 1), np.uint32)}
    for name, (shape, dtype) in want.items():
        arr = getattr(params, name)
        if arr.shape != shape or arr.dtype != dtype:
            raise SketchError(f"{path}: {name} must be {np.dtype(dtype).name} {list(shape)}, "
                              f"got {arr.dtype} {list(arr.shape)}")


def make_sketch_config(dim: int, *, kernel: str = DEFAULT_KERNEL, rows: int | None = None,
                       buckets: int | None = None, hashes_per_row: int | None = None,
                       bandwidth: float | None = None, seed: int = 0, counts_dtype: str = "int32") -> SketchConfig:
    """The recommended sketch for `dim`-d unit embeddings; a None field takes its kernel's default.

    cosine: R = 1000 rows of k = 8 sign bits, B = 2^k buckets indexed by the sign word (any k <= 14
    gets B = 2^k; larger k, 20000 hashed buckets); no bandwidth, so every batch of a corpus builds
    its sketch with the same functions and sketches of batches add up to the one-shot sketch.
    l2 (the paper's p-stable sketch): R = 1000, k = 2, B = 20000, and `bandwidth` is required:
    estimate it once (`estimate_bandwidth` on a sample, DEFAULT_BANDWIDTH_QUANTILE) and keep it
    with the sketch, because a width re-estimated per batch changes every hash function.
    """
    if kernel == "cosine":
        if bandwidth is not None:
            raise SketchError("bandwidth applies to kernel='l2' only; the cosine kernel has none")
        k = DEFAULT_BITS if hashes_per_row is None else hashes_per_row
        default_buckets = 1 << k if isinstance(k, int) and 0 < k <= _MAX_DIRECT_BITS else L2_BUCKETS
    elif kernel == "l2":
        if bandwidth is None:
            raise SketchError("kernel='l2' needs a bandwidth: estimate_bandwidth(sample) once, then pass it")
        k = L2_HASHES_PER_ROW if hashes_per_row is None else hashes_per_row
        default_buckets = L2_BUCKETS
    else:
        raise SketchError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return SketchConfig(dim=dim, rows=DEFAULT_ROWS if rows is None else rows,
                        buckets=default_buckets if buckets is None else buckets, hashes_per_row=k,
                        bandwidth=bandwidth, kernel=kernel, seed=seed, counts_dtype=counts_dtype)


def build_sketch(config: SketchConfig, batches: Iterable[np.ndarray]) -> Sketch:
    """Pass 1 over an iterable of embedding batches."""
    sketch = Sketch.empty(config)
    for x in batches:
        sketch.add_embeddings(x)
    return sketch


# --------------------------------------------------------------------------- kernel and bandwidth

def pstable_collision_probability(distance, bandwidth: float, hashes_per_row: int = 1) -> np.ndarray:
    """P[h(x) = h(y)] for the p-stable L2 hash at distance c = |x - y| (Datar et al. 2004, eq. for p=2).

    For one hash with width w and t = w / c::

        p(c) = 1 - 2 Phi(-t) - 2 / (sqrt(2 pi) t) * (1 - exp(-t^2 / 2))
             = erf(t / sqrt 2) + sqrt(2/pi) * expm1(-t^2 / 2) / t

    (the second form avoids cancellation at large c), p(0) = 1, p(c) ~ 0.4 w/c
    for c >> w; ``k`` concatenated hashes collide with probability p(c)^k.
    Values: p(w/2) = 0.61, p(w) = 0.37, p(2w) = 0.20, p(4w) = 0.10. float64.
    """
    c = np.asarray(distance, np.float64)
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise SketchError("distances must be finite and >= 0")
    t = np.float64(bandwidth) / np.where(c > 0, c, 1.0)
    p = scipy.special.erf(t / math.sqrt(2.0)) + math.sqrt(2.0 / math.pi) * np.expm1(-0.5 * t * t) / t
    p = np.where(c > 0, np.clip(p, 0.0, 1.0), 1.0)
    return p ** hashes_per_row


def srp_collision_probability(cosine, bits: int = 1) -> np.ndarray:
    """P[all k sign bits agree] = (1 - theta / pi)^k for vectors at angle theta = arccos(cosine)."""
    theta = np.arccos(np.clip(np.asarray(cosine, np.float64), -1.0, 1.0))
    return (1.0 - theta / math.pi) ** bits


def collision_probability(config: SketchConfig, x, y) -> np.ndarray:
    """float64 [N, M]: the sketch's kernel (per-row collision probability) between rows of x and y.

    Brute force, O(N*M*d): for tests and small diagnostics, not for corpora.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if config.kernel == "l2":
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        return pstable_collision_probability(np.sqrt(np.maximum(sq, 0.0)), config.bandwidth, config.hashes_per_row)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-300)
    return srp_collision_probability(xn @ yn.T, config.hashes_per_row)


def log_kernel_slope(config: SketchConfig, distance: float) -> float:
    """-d/dc log p(c) of the sketch's kernel at L2 distance c between unit vectors (closed form).

    cosine, with theta = 2 arcsin(c / 2) the angle at chord c::

        k * (1 / (pi - theta)) * dtheta/dc,   dtheta/dc = 1 / sqrt(1 - c^2 / 4)

    l2 (p-stable, t = w / c): dp/dc = sqrt(2/pi) * expm1(-t^2 / 2) / (t c), times k / p.
    """
    c = float(distance)
    k = config.hashes_per_row
    if config.kernel == "cosine":
        if not 0.0 < c < 2.0:
            raise SketchError(f"distance between unit vectors must lie in (0, 2), got {distance}")
        theta = 2.0 * math.asin(c / 2.0)
        return k / (math.pi - theta) / math.sqrt(1.0 - c * c / 4.0)
    if not (c > 0 and math.isfinite(c)):
        raise SketchError(f"distance must be finite and > 0, got {distance}")
    t = config.bandwidth / c
    p = float(pstable_collision_probability(c, config.bandwidth))
    return -k * math.sqrt(2.0 / math.pi) * math.expm1(-0.5 * t * t) / (t * c * p)


def gaussian_equivalent_bandwidth(config: SketchConfig, distance: float = math.sqrt(2.0)) -> float:
    """The Gaussian KDE bandwidth h whose kernel falls off like the sketch's at `distance`.

    Matches log-slopes: d/dc of -c^2 / (2 h^2) is -c / h^2, so h = sqrt(c / s) with s =
    `log_kernel_slope`. For unit vectors at right angles (c = sqrt 2, where sentence
    embeddings of web text sit: MiniLM's median pairwise distance on C4 is 1.39) the cosine
    kernel with k bits gives h = sqrt(pi / (2k)): 0.63 for k = 4, 0.44 for k = 8. Near there
    log p is almost linear in the cosine, as log of a Gaussian kernel on the sphere is exactly
    (exp(-|x - y|^2 / 2h^2) = exp(-(1 - cos) / h^2)), so the sketch ranks like that KDE.
    """
    return math.sqrt(float(distance) / log_kernel_slope(config, distance))


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Condensed L2 distances between all pairs of rows of x (i < j), float64."""
    x = np.asarray(x, np.float64)
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    iu = np.triu_indices(x.shape[0], k=1)
    return np.sqrt(np.maximum(d2[iu], 0.0))


def estimate_bandwidth(x_sample, quantile: float = 0.05, *, max_points: int = 2000, seed: int = 0) -> float:
    """A p-stable width w from the data: the `quantile` of pairwise L2 distances on a sample.

    Why a low quantile: the kernel is p(w) = 0.37 at distance w and decays
    only like 0.4 w/c, so w = the median distance would make every point
    collide with a third of the corpus, while w far below the nearest-
    neighbour distances makes each point collide mostly with itself (score
    ~ 1 + bucket noise). At the 5% quantile a point's nearest 5% of the
    corpus collide with it at least 37% of the time and farther points less.
    At most `max_points` rows (drawn with `seed`) are used; pairs at (near-)zero
    distance, i.e. duplicates, are left out of the quantile.

    Caveat, measured (benchmarks/density_accuracy.py): text embeddings have
    concentrated distances (MiniLM on C4: 1/5/50/95% quantiles 1.19, 1.26,
    1.39, 1.47), so with k = 1 nearly all pairs collide with probability
    between p(1.19) = 0.39 and p(1.47) = 0.32 whatever w is, and scores vary
    by a few percent only. The contrast grows like ratio^k with
    `hashes_per_row` (k = 2: 0.15 vs 0.10; cosine with 4 bits: 0.12 vs 0.05),
    far more than through w; the default cosine sketch needs no width at all.
    """
    x = np.asarray(x_sample, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SketchError(f"estimate_bandwidth needs a [N >= 2, d] sample, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise SketchError("estimate_bandwidth: sample contains NaN or inf")
    if not 0.0 < quantile < 1.0:
        raise SketchError(f"quantile must be in (0, 1), got {quantile}")
    if x.shape[0] > max_points:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False)]
    d = pairwise_distances(x)
    # Exact and near-exact duplicates (common in web crawls) would pull a low quantile to ~0, where
    # float noise between batches decides the buckets: measure distances between distinct points.
    d = d[d > 1e-6 * max(float(d.max()), 1e-300)]
    if d.size == 0:
        raise SketchError("estimate_bandwidth: all sample points coincide; pass the bandwidth explicitly")
    return float(np.quantile(d, quantile))


def exact_scores(config: SketchConfig, corpus, queries, *, block: int = 2048) -> np.ndarray:
    """Brute-force kernel sum sum_x p(x, y) for each query y, float64 [M] (the sketch's target)."""
    corpus = np.asarray(corpus, np.float64)
    queries = np.asarray(queries, np.float64)
    out = np.empty(queries.shape[0], np.float64)
    for s in range(0, queries.shape[0], block):
        out[s:s + block] = collision_probability(config, queries[s:s + block], corpus).sum(axis=1)
    return out


__all__: Sequence[str] = (
    "SketchConfig", "SketchError", "HashParams", "Sketch", "make_hash_params", "bucket_ids", "row_bucket_ids",
    "check_embeddings", "ids_dtype", "hash_digest",
    "build_sketch", "pstable_collision_probability", "srp_collision_probability", "collision_probability",
    "exact_scores", "estimate_bandwidth", "pairwise_distances", "make_sketch_config", "log_kernel_slope",
    "gaussian_equivalent_bandwidth", "DEFAULT_KERNEL", "DEFAULT_ROWS", "DEFAULT_BITS", "DEFAULT_HASHES_PER_ROW",
    "DEFAULT_BUCKETS", "L2_HASHES_PER_ROW", "L2_BUCKETS", "DEFAULT_BANDWIDTH_QUANTILE",
)
