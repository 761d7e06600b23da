"""Distilled Ask-LLM (beyond the paper, the cost lever): a linear head from cached document
embeddings to the LLM's Ask-LLM log-odds, log P(yes) - log P(no).

Score a bounded sample with the LLM, fit the head on (embedding, log-odds) pairs, then score every
document at embedding cost (`score/askllm-head/<model>`). Pure numpy/scipy.

- ridge (default): minimise mean((y - Xw - b)^2) + alpha |w|^2 (intercept not penalised). The
  penalty is chosen from `alphas` by the exact leave-one-out error, which for ridge has a closed
  form (one SVD of the centred embeddings serves every alpha): the LOO residual of row i is
  r_i / (1 - h_i) with r the residual and h the diagonal of the hat matrix
  1/n + U diag(s^2 / (s^2 + n alpha)) U^T.
- logistic: the same linear score read as a logit, fitted with soft labels sigmoid(y) (the LLM's
  yes-vs-no probability) by minimising mean binary cross-entropy + alpha |w|^2 (L-BFGS); alpha is
  chosen by K-fold held-out cross-entropy. With an exact linear target both recover it; logistic
  weighs errors near p = 0.5 more and saturated documents less.

Either head predicts on the log-odds scale. `agreement` measures a head against the LLM on held-
out documents: Spearman and Kendall (tau-b) rank correlations and the overlap of the top
fraction of each.

A head is saved as one .npz (format `gristmill-askllm-head/1`) holding its weights, bias, kind,
chosen alpha, its held-out error, the sample size and the names of the embedder and LLM, written
atomically through gristmill.io (local or gs://).
"""

from __future__ import annotations

import dataclasses
import io as _bytes_io
import math
from typing import Sequence

import numpy as np

from gristmill import io

FORMAT = "gristmill-askllm-head/1"
RIDGE = "ridge"
LOGISTIC = "logistic"
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-7, 1, 17))
_HOLDOUT_SALT = b"gristmill/askllm-head/heldout/"


class HeadError(ValueError):
    """A head cannot be fitted, saved, loaded or applied as asked."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """How to fit: `kind` "ridge" or "logistic"; the penalties `alphas` tried (per-sample units,
    see the module docstring); `folds` and `seed` split the sample for logistic's selection."""

    kind: str = RIDGE
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    folds: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.kind not in (RIDGE, LOGISTIC):
            raise HeadError(f"kind must be {RIDGE!r} or {LOGISTIC!r}, got {self.kind!r}")
        if not self.alphas or min(self.alphas) < 0 or self.folds < 2:
            raise HeadError(f"need non-negative alphas and folds >= 2, got {self.alphas}, {self.folds}")


@dataclasses.dataclass(frozen=True, eq=False)
class AskLLMHead:
    """A fitted head: score = embeddings @ weights + bias (log-odds scale)."""

    weights: np.ndarray
    bias: float
    kind: str
    alpha: float
    heldout_error: float
    n_train: int
    embedder: str = ""
    model: str = ""

    @property
    def dim(self) -> int:
        """Embedding dimension the head takes."""
        return int(self.weights.shape[0])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Predicted log-odds float64 [n] of embeddings [n, dim]."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise HeadError(f"the head takes [n, {self.dim}] embeddings, got shape {x.shape}")
        return x @ self.weights + self.bias

    def save(self, path: str) -> None:
        """Writes the head as one .npz, atomically (local path or gs://)."""
        buffer = _bytes_io.BytesIO()
        np.savez(buffer, format=np.asarray(FORMAT), weights=self.weights.astype(np.float64),
                 bias=np.float64(self.bias), kind=np.asarray(self.kind), alpha=np.float64(self.alpha),
                 heldout_error=np.float64(self.heldout_error), n_train=np.int64(self.n_train),
                 embedder=np.asarray(self.embedder), model=np.asarray(self.model))
        io.atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str) -> AskLLMHead:
        """Reads a head written by `save`; HeadError when the file is not one."""
        try:
            data = np.load(_bytes_io.BytesIO(io.read_bytes(path)), allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise HeadError(f"{path}: not a gristmill Ask-LLM head (not an .npz archive)")
            if str(data["format"]) != FORMAT:
                raise HeadError(f"{path}: format {str(data['format'])!r}, expected {FORMAT!r}")
            return cls(weights=np.asarray(data["weights"], np.float64), bias=float(data["bias"]),
                       kind=str(data["kind"]), alpha=float(data["alpha"]),
                       heldout_error=float(data["heldout_error"]), n_train=int(data["n_train"]),
                       embedder=str(data["embedder"]), model=str(data["model"]))
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, HeadError):
                raise
            raise HeadError(f"{path}: not a gristmill Ask-LLM head ({e})") from e


def log_odds(logp_yes: np.ndarray, logp_no: np.ndarray) -> np.ndarray:
    """The distillation target: log P(yes) - log P(no) (Ask-LLM results keep both)."""
    return np.asarray(logp_yes, np.float64) - np.asarray(logp_no, np.float64)


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 3:
        raise HeadError(f"need embeddings [n >= 3, d] and n targets, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise HeadError("embeddings and targets must be finite")
    return x, y


# ----------------------------------------------------------------------------- ridge


@dataclasses.dataclass(frozen=True)
class _CentredSVD:
    """Thin SVD u s vt of the centred embeddings, the means, and u^T (y - mean y)."""

    mean_x: np.ndarray
    mean_y: float
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    uty: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _CentredSVD:
        mean_x, mean_y = x.mean(axis=0), float(y.mean())
        u, s, vt = np.linalg.svd(x - mean_x, full_matrices=False)
        keep = s > s.max(initial=0.0) * 1e-12  # drop directions the sample does not span
        u, s, vt = u[:, keep], s[keep], vt[keep]
        return cls(mean_x, mean_y, u, s, vt, u.T @ (y - mean_y))

    def shrink(self, alpha: float) -> np.ndarray:
        return self.s ** 2 / (self.s ** 2 + self.u.shape[0] * alpha)


def _loo_errors(svd: _CentredSVD, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    n = y.shape[0]
    errors = []
    for alpha in alphas:
        shrink = svd.shrink(alpha)
        residual = (y - svd.mean_y) - svd.u @ (shrink * svd.uty)
        hat = 1.0 / n + (svd.u ** 2) @ shrink
        errors.append(float(np.mean((residual / np.maximum(1.0 - hat, 1e-12)) ** 2)))
    return np.asarray(errors)


def ridge_loo_errors(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Exact leave-one-out mean squared error of ridge (unpenalised intercept) for each alpha."""
    x, y = _check_xy(x, y)
    return _loo_errors(_CentredSVD.of(x, y), y, alphas)


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS, *, embedder: str = "",
              model: str = "") -> AskLLMHead:
    """Ridge head with the alpha of least leave-one-out error (ties: the larger alpha)."""
    x, y = _check_xy(x, y)
    alphas = [float(a) for a in alphas]
    svd = _CentredSVD.of(x, y)
    errors = _loo_errors(svd, y, alphas)
    best = min(range(len(alphas)), key=lambda i: (errors[i], -alphas[i]))
    w = svd.vt.T @ (svd.shrink(alphas[best]) / svd.s * svd.uty)
    return AskLLMHead(weights=w, bias=float(svd.mean_y - svd.mean_x @ w), kind=RIDGE, alpha=alphas[best],
                      heldout_error=float(errors[best]), n_train=x.shape[0], embedder=embedder, model=model)


# ----------------------------------------------------------------------------- logistic


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def soft_cross_entropy(logits: np.ndarray, target_log_odds: np.ndarray) -> float:
    """Mean binary cross-entropy of predicted logits against soft labels sigmoid(target)."""
    z, t = np.asarray(logits, np.float64), _sigmoid(np.asarray(target_log_odds, np.float64))
    return float(np.mean(_softplus(z) - t * z))


def _logistic_solution(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    n, d = x.shape
    t = _sigmoid(y)

    def objective(theta):
        w, b = theta[:d], theta[d]
        z = x @ w + b
        g = (_sigmoid(z) - t) / n
        loss = np.mean(_softplus(z) - t * z) + alpha * w @ w
        return loss, np.concatenate([x.T @ g + 2 * alpha * w, [g.sum()]])

    start = np.concatenate([np.zeros(d), [math.log(t.mean() / (1 - t.mean())) if 0 < t.mean() < 1 else 0.0]])
    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15})
    return result.x[:d], float(result.x[d])


def fit_logistic(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS, *, folds: int = 5,
                 seed: int = 0, embedder: str = "", model: str = "") -> AskLLMHead:
    """Logistic head on soft labels sigmoid(y), alpha chosen by `folds`-fold held-out
    cross-entropy (folds from `np.random.default_rng(seed)`; ties: the larger alpha)."""
    x, y = _check_xy(x, y)
    alphas = [float(a) for a in alphas]
    fold = np.random.default_rng(seed).permutation(x.shape[0]) % folds
    errors = []
    for alpha in alphas:
        losses = []
        for f in range(folds):
            train, test = fold != f, fold == f
            w, b = _logistic_solution(x[train], y[train], alpha)
            losses.append(soft_cross_entropy(x[test] @ w + b, y[test]) * test.sum())
        errors.append(sum(losses) / x.shape[0])
    best = min(range(len(alphas)), key=lambda i: (errors[i], -alphas[i]))
    w, b = _logistic_solution(x, y, alphas[best])
    return AskLLMHead(weights=w, bias=b, kind=LOGISTIC, alpha=alphas[best], heldout_error=float(errors[best]),
                      n_train=x.shape[0], embedder=embedder, model=model)


def fit_head(x: np.ndarray, y: np.ndarray, config: HeadConfig = HeadConfig(), *, embedder: str = "",
             model: str = "") -> AskLLMHead:
    """Fits the head `config` asks for on embeddings x [n, d] and log-odds y [n]."""
    if config.kind == RIDGE:
        return fit_ridge(x, y, config.alphas, embedder=embedder, model=model)
    return fit_logistic(x, y, config.alphas, folds=config.folds, seed=config.seed, embedder=embedder, model=model)


# ----------------------------------------------------------------------------- agreement


@dataclasses.dataclass(frozen=True, kw_only=True)
class Agreement:
    """How a head ranks documents against the LLM: Spearman and Kendall (tau-b) correlations and
    `top_overlap`, the fraction of the LLM's top `k` documents that are also the head's top k."""

    spearman: float
    kendall: float
    top_overlap: float
    k: int
    n: int


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values; equal values go to the earlier index."""
    return np.argsort(-np.asarray(values, np.float64), kind="stable")[:k]


def agreement(pred: np.ndarray, target: np.ndarray, top: float = 0.2) -> Agreement:
    """Agreement of predicted scores with the LLM's on the same documents; k = max(1, round(top n)).

    >>> a = agreement([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], top=0.4)
    >>> round(a.spearman, 6), round(a.kendall, 6), a.top_overlap, a.k
    (0.9, 0.8, 1.0, 2)
    """
    from scipy import stats

    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 1 or pred.size < 2:
        raise HeadError(f"need two equal-length score vectors of 2 or more, got {pred.shape} and {target.shape}")
    if not 0 < top <= 1:
        raise HeadError(f"top must be in (0, 1], got {top}")
    k = max(1, int(round(top * pred.size)))
    overlap = np.intersect1d(top_indices(pred, k), top_indices(target, k)).size / k
    return Agreement(spearman=float(stats.spearmanr(pred, target).statistic),
                     kendall=float(stats.kendalltau(pred, target).statistic), top_overlap=float(overlap),
                     k=k, n=int(pred.size))


def held_out_split(ids: Sequence[str | bytes], fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """bool mask of the sample rows held out for `agreement` (about `fraction` of them): a salted
    hash uniform of each id (`sampling.uniform_from_ids`), so the split ignores row order and is
    independent of the selection plans' own uniforms."""
    from gristmill import sampling

    if not 0 < fraction < 1:
        raise HeadError(f"fraction must be in (0, 1), got {fraction}")
    salted = [_HOLDOUT_SALT + (i.encode("utf-8") if isinstance(i, str) else bytes(i)) for i in ids]
    return sampling.uniform_from_ids(salted, seed) < fraction
