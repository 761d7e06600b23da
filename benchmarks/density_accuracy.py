"""Accuracy of the density sketch against brute force, and what IPS on its scores does.

Prints, for Gaussian mixtures with known density (unequal cluster sizes):
* Spearman rank correlation and mean relative error of the sketch score against the exact
  expected score ``K(y) + (n - K(y)) / B``, where ``K(y) = sum_x p(|x - y|)`` is the kernel sum
  of the LSH collision kernel computed by brute force, for several R (Lemma A.1: error ~ 1/sqrt(R));
* Spearman of the score (and of the exact kernel sum) against the true mixture density;
* the cluster histogram of an IPS sample (keep x with probability proportional to 1/score,
  Theorem A.2) vs a uniform random sample of the same size: total-variation distance to uniform;
* optionally (``--real-docs N``) the same sketch-vs-exact check on MiniLM embeddings of real C4
  documents (../shared/data/c4-olmo).

    JAX_PLATFORMS=cpu python benchmarks/density_accuracy.py [--real-docs 300]
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time

import numpy as np
import scipy.stats

from gristmill.scoring import density as D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C4 = os.path.join(REPO, "..", "shared", "data", "c4-olmo", "c4-sample.00000-of-00001.json.gz")


def gaussian_mixture(seed: int, dim: int, sizes, separation: float):
    """Unit-variance isotropic clusters with N(0, separation^2 I) centres; points, labels, log density."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim)) * separation
    x = np.concatenate([c + rng.standard_normal((n, dim)) for c, n in zip(centers, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    log_density = np.logaddexp.reduce(np.log(weights) - 0.5 * sq - 0.5 * dim * math.log(2 * math.pi), axis=1)
    return x.astype(np.float32), labels, log_density


def sketch_vs_exact(x, cfg: D.SketchConfig, rows_list):
    """{R: (spearman, mean relative error)} of sketch scores vs the exact expected score, and the exact sums."""
    n = x.shape[0]
    kernel_sum = D.exact_scores(cfg, x, x)
    expected = kernel_sum + (n - kernel_sum) / cfg.buckets
    full = D.Sketch.empty(D.SketchConfig(**{**cfg.__dict__, "rows": max(rows_list)}))
    ids = D.bucket_ids(full.params, x)
    out = {}
    for rows in rows_list:
        sketch = D.Sketch.empty(D.SketchConfig(**{**cfg.__dict__, "rows": rows}))
        sub = ids[:, :rows]  # the first R rows of a sketch are the R-row sketch's functions
        scores = sketch.add(sub).query(sub)
        out[rows] = (scipy.stats.spearmanr(scores, expected)[0], float(np.mean(np.abs(scores - expected) / expected)),
                     scores)
    return out, kernel_sum


def ips_tv(scores, labels, target: int, seed: int):
    """TV distance to uniform of the cluster histogram: IPS (Poisson sampling, p ~ 1/score) vs random."""
    rng = np.random.default_rng(seed)
    keep = rng.random(scores.size) < np.minimum(1.0, target * (1 / scores) / np.sum(1 / scores))
    random_pick = rng.choice(scores.size, keep.sum(), replace=False)
    k = labels.max() + 1
    hist = lambda idx: np.bincount(labels[idx], minlength=k) / max(len(idx), 1)
    tv = lambda h: 0.5 * np.abs(h - 1 / k).sum()
    h_ips, h_rand = hist(np.flatnonzero(keep)), hist(random_pick)
    return tv(h_ips), tv(h_rand), h_ips, h_rand, int(keep.sum())


def mixtures(args):
    rows_list = (50, 200, 1000)
    print(f"## Sketch vs brute-force kernel sum (B={args.buckets}, bandwidth = {args.quantile} quantile of "
          f"pairwise distances, k=1)\n")
    print("| d | N | separation | R | Spearman vs exact | mean rel. error | Spearman vs true density "
          "(exact KDE's) |")
    print("|---|---|---|---|---|---|---|")
    sizes = [1600, 1000, 700, 400, 200, 100]
    for dim in (32, 64, 128):
        for sep in (1.0, 3.0):
            x, labels, log_density = gaussian_mixture(0, dim, sizes, sep)
            cfg = D.SketchConfig(dim=dim, buckets=args.buckets, bandwidth=D.estimate_bandwidth(x, args.quantile),
                                 seed=7)
            res, kernel_sum = sketch_vs_exact(x, cfg, rows_list)
            exact_true = scipy.stats.spearmanr(kernel_sum, log_density)[0]
            for rows in rows_list:
                rho, err, scores = res[rows]
                true_rho = scipy.stats.spearmanr(scores, log_density)[0]
                print(f"| {dim} | {x.shape[0]} | {sep} | {rows} | {rho:.4f} | {err:.4f} | {true_rho:.3f} "
                      f"({exact_true:.3f}) |")

    print("\n## IPS on sketch scores (Theorem A.2): cluster histogram of a ~300-point sample\n")
    print("| d | kernel | k | TV to uniform, IPS | TV, random | IPS histogram | random histogram |")
    print("|---|---|---|---|---|---|---|")
    sizes = [3000, 1000, 300, 100, 30]
    for dim in (32, 128):
        x, labels, _ = gaussian_mixture(1, dim, sizes, 3.0)
        w = D.estimate_bandwidth(x, args.quantile)
        for kernel, k in (("l2", 1), ("l2", 2), ("l2", 4), ("cosine", 4), ("cosine", 8)):
            cfg = D.SketchConfig(dim=dim, hashes_per_row=k, bandwidth=w, kernel=kernel, buckets=args.buckets, seed=1)
            sketch = D.Sketch.empty(cfg)
            ids = D.bucket_ids(sketch.params, x)
            scores = sketch.add(ids).query(ids)
            tv_ips, tv_rand, h_ips, h_rand, kept = ips_tv(scores, labels, 300, seed=0)
            print(f"| {dim} | {kernel} | {k} | {tv_ips:.3f} | {tv_rand:.3f} | {np.round(h_ips, 3).tolist()} | "
                  f"{np.round(h_rand, 3).tolist()} |")
    print(f"\nCorpus cluster shares: {np.round(np.array(sizes) / sum(sizes), 3).tolist()}")


def real_documents(n_docs: int, quantile: float, buckets: int):
    from gristmill.scoring.embeddings import make_embedder
    with gzip.open(C4, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:n_docs]
    t0 = time.perf_counter()
    x = make_embedder("minilm").embed(texts)
    took = time.perf_counter() - t0
    distances = D.pairwise_distances(x)
    print(f"\n## MiniLM embeddings of {len(texts)} C4 documents (embedded in {took:.1f}s)\n")
    print("pairwise L2 distance quantiles (1%, 5%, 50%, 95%): "
          + ", ".join(f"{q:.3f}" for q in np.quantile(distances, [0.01, 0.05, 0.5, 0.95])))
    bandwidth = D.estimate_bandwidth(x, quantile)
    gaussian_kdes = {h: gaussian_kde(distances, len(texts), h) for h in (bandwidth / 4, bandwidth / 2, bandwidth)}
    print("\nGaussian KDE (brute force over all pairs, self included) at bandwidths h: "
          + ", ".join(f"{h:.3f}" for h in gaussian_kdes))
    print("\n| kernel | k | bandwidth | R | Spearman vs exact | mean rel. error | score range (min..max) | "
          + " | ".join(f"Spearman vs Gaussian KDE h={h:.3f}" for h in gaussian_kdes) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(gaussian_kdes))
    for kernel, k in (("l2", 1), ("l2", 2), ("cosine", 4)):
        cfg = D.SketchConfig(dim=x.shape[1], hashes_per_row=k, bandwidth=bandwidth,
                             kernel=kernel, buckets=buckets, seed=3)
        res, _ = sketch_vs_exact(x, cfg, (50, 1000))
        for rows, (rho, err, scores) in res.items():
            vs_kde = " | ".join(f"{scipy.stats.spearmanr(scores, kde).statistic:.4f}" for kde in gaussian_kdes.values())
            print(f"| {kernel} | {k} | {cfg.bandwidth:.3f} | {rows} | {rho:.4f} | {err:.4f} | "
                  f"{scores.min():.1f}..{scores.max():.1f} | {vs_kde} |")


def gaussian_kde(condensed_distances: np.ndarray, n: int, h: float) -> np.ndarray:
    """Brute-force Gaussian kernel sum at every point: sum_j exp(-|x_i - x_j|^2 / (2 h^2)), self included."""
    from scipy.spatial.distance import squareform
    d = squareform(condensed_distances)
    return np.exp(-(d * d) / (2.0 * h * h)).sum(axis=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantile", type=float, default=0.05, help="estimate_bandwidth quantile")
    parser.add_argument("--buckets", type=int, default=20000)
    parser.add_argument("--real-docs", type=int, default=0, help="also check on MiniLM embeddings of N C4 docs")
    args = parser.parse_args(argv)
    mixtures(args)
    if args.real_docs:
        real_documents(args.real_docs, args.quantile, args.buckets)


if __name__ == "__main__":
    main()
