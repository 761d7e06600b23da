"""Exact, mergeable sums of float64 terms: any order, any split into partial sums, the same bits.

Float64 addition is not associative: the same terms summed in another order (another worker's
bundle, another histogram bin, numpy's pairwise sum) differ in the last bits, so a value computed
in memory and the same value merged from Beam partial sums would not be byte-identical. An
`Exact` is the sum with no rounding at all: the pair (n, k) meaning n * 2**k for a Python int n.
Every finite float64 is m * 2**e for a 53-bit integer m, so a sum of them is such a pair, and
adding two pairs is integer arithmetic once k is aligned. Partial sums merge by `add` in any
order and give the same pair (normalised: n odd, or (0, 0)). Rounding happens once, at the end:
`to_float` is the correctly rounded value, `to_fraction` the exact one (for exact comparisons).

Worked example: the doubles 0.1, 0.2 and 0.3 summed left to right give 0.6000000000000001,
right to left 0.6; `to_float(total([0.1, 0.2, 0.3]))` is 0.6 either way (like `math.fsum`),
and `add(total([0.1]), total([0.2, 0.3]))` is the same pair as `total([0.3, 0.2, 0.1])`.

`grouped` sums many groups at once (one per histogram bin) with numpy: terms are split into
(mantissa, exponent), the mantissas summed per (group, exponent) in int64 halves of 26 and 27
bits (no overflow below 2**36 terms a call), and only the distinct (group, exponent) pairs are
turned into Python ints.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from gristmill import errors

Exact = tuple[int, int]  # (n, k): exactly n * 2**k
ZERO: Exact = (0, 0)
MIN_EXPONENT = -1126  # the smallest k of any float64 term: 2**-1074 is 2**52 * 2**-1126
_HALF = 26
_LOW = (1 << _HALF) - 1


class ExactSumError(errors.UsageError):
    """A term of an exact sum is not a finite number."""


def _normal(n: int, k: int) -> Exact:
    if n == 0:
        return ZERO
    zeros = (n & -n).bit_length() - 1
    return n >> zeros, k + zeros


def add(a: Exact, b: Exact) -> Exact:
    """The exact sum of two exact sums (merging partial sums: associative and commutative)."""
    (n1, k1), (n2, k2) = a, b
    if n1 == 0:
        return b
    if n2 == 0:
        return a
    k = min(k1, k2)
    return _normal((n1 << (k1 - k)) + (n2 << (k2 - k)), k)


def add_all(values) -> Exact:
    """The exact sum of many exact sums."""
    result = ZERO
    for value in values:
        result = add(result, value)
    return result


def _parts(terms: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mantissa, exponent) int64 arrays with term == mantissa * 2**exponent exactly."""
    t = np.asarray(terms, dtype=np.float64).ravel()
    if not np.isfinite(t).all():
        raise ExactSumError(f"an exact sum needs finite terms, got {t[~np.isfinite(t)][0]!r}")
    fraction, exponent = np.frexp(t)  # |fraction| in [0.5, 1): times 2**53 it is an integer
    return (fraction * 2.0**53).astype(np.int64), exponent.astype(np.int64) - 53


def grouped(keys: Any, terms: Any) -> dict[int, Exact]:
    """The exact sum of the terms of each group, {key: Exact}, for integer keys (groups with no
    nonzero term are left out): the per-bin sums of a histogram."""
    mantissa, exponent = _parts(terms)
    keys = np.asarray(keys, dtype=np.int64).ravel()
    if keys.shape != mantissa.shape:
        raise ExactSumError(f"{keys.size} group keys for {mantissa.size} terms")
    nonzero = mantissa != 0
    keys, mantissa, exponent = keys[nonzero], mantissa[nonzero], exponent[nonzero]
    if not keys.size:
        return {}
    order = np.lexsort((exponent, keys))
    keys, mantissa, exponent = keys[order], mantissa[order], exponent[order]
    starts = np.flatnonzero(np.concatenate([[True], (keys[1:] != keys[:-1]) | (exponent[1:] != exponent[:-1])]))
    high = np.add.reduceat(mantissa >> _HALF, starts)  # mantissa = high * 2**26 + low, low >= 0
    low = np.add.reduceat(mantissa & _LOW, starts)
    out: dict[int, Exact] = {}
    for key, k, h, lo in zip(keys[starts].tolist(), exponent[starts].tolist(), high.tolist(), low.tolist()):
        out[key] = add(out.get(key, ZERO), _normal((h << _HALF) + lo, k))
    return out


def total(terms: Any) -> Exact:
    """The exact sum of an array of float64 terms."""
    return grouped(np.zeros(np.size(terms), dtype=np.int64), terms).get(0, ZERO)


def merge(a: dict[int, Exact], b: dict[int, Exact]) -> dict[int, Exact]:
    """Two `grouped` results merged group by group (a new dict)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = add(out.get(key, ZERO), value)
    return out


def to_fraction(a: Exact) -> Fraction:
    """The exact value of a sum."""
    n, k = a
    return Fraction(n << k) if k >= 0 else Fraction(n, 1 << -k)


def to_float(a: Exact) -> float:
    """The sum correctly rounded to float64 (round half to even; OverflowError beyond the float range)."""
    return float(to_fraction(a))


def scaled(a: Exact) -> int:
    """The sum as an integer in units of 2**MIN_EXPONENT (exact for every sum of float64 terms),
    for exact comparisons in integer arithmetic."""
    n, k = a
    if n and k < MIN_EXPONENT:
        raise ExactSumError(f"exact sum {a!r} is finer than 2**{MIN_EXPONENT}: not a sum of float64 terms")
    return n << (k - MIN_EXPONENT) if n else 0
