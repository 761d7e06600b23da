"""How closely the density sketch ranks documents like an exact Gaussian KDE over the same embeddings.

On MiniLM embeddings of real corpora (the embedded C4 sample, Dolma's Common Crawl sample, and
both together) it prints Spearman's rho between sketch scores and a brute-force Gaussian kernel
sum ``sum_j exp(-|x_i - x_j|^2 / 2h^2)`` (self included, numpy/scipy over all pairs):

* the defaults (`density.make_sketch_config`) at the Gaussian bandwidth they are equivalent to
  (`density.gaussian_equivalent_bandwidth`) and at the best h of the sweep;
* against R (rows), k (sign bits or p-stable hashes per row) and the kernel (cosine SRP, p-stable
  L2 with a data-quantile width and with fixed widths), mean +- sd over seeds;
* the Gaussian KDE bandwidth sweep: rho at every h, and how much the KDE's own ranking moves with h.

``--synthetic`` adds the Gaussian-mixture checks (sketch vs its exact kernel sum against R, and the
cluster histogram of an IPS sample). Embeddings are cached as .npy under ``--cache``.

    JAX_PLATFORMS=cpu python benchmarks/density_accuracy.py [--seeds 3] [--synthetic]
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import time

import numpy as np
import scipy.stats
from scipy.spatial.distance import pdist, squareform

from gristmill.scoring import density as D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = {
    "c4": os.path.join(REPO, "gristmill", "data", "c4-olmo", "c4-sample.00000-of-00001.json.gz"),
    "dolma-cc": os.path.join(REPO, "..", "shared", "data", "dolma-cc",
                             "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"),
}
MIX = "c4+cc"
BANDWIDTHS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.85, 1.0)


# --------------------------------------------------------------------------- data

def corpus_texts(path: str) -> list[str]:
    """Texts of every readable document of a corpus file (dead letters, e.g. empty texts, dropped)."""
    from gristmill import documents, records  # here, not at import: records needs TensorFlow

    return [item[records.TEXT] for item in documents.read_documents(path)
            if not isinstance(item, documents.DeadLetter)]


def cached_embeddings(name: str, texts: list[str], cache: str, embedder_spec: str) -> np.ndarray:
    """MiniLM (or `embedder_spec`) embeddings of `texts`, from `cache` when an identical run stored them."""
    key = hashlib.sha256("\x00".join([embedder_spec, *texts]).encode()).hexdigest()[:16]
    path = os.path.join(cache, f"{name}-{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    from gristmill.scoring.embeddings import make_embedder
    start = time.perf_counter()
    x = make_embedder(embedder_spec).embed(texts)
    print(f"embedded {name}: {len(texts)} documents in {time.perf_counter() - start:.0f} s", flush=True)
    os.makedirs(cache, exist_ok=True)
    np.save(path, x)
    return x


def load_corpora(cache: str, embedder_spec: str) -> dict[str, np.ndarray]:
    """{name: embeddings} for each corpus and their union."""
    out = {name: cached_embeddings(name, corpus_texts(path), cache, embedder_spec) for name, path in CORPORA.items()}
    out[MIX] = np.concatenate(list(out.values()))
    return out


# --------------------------------------------------------------------------- scores

def gaussian_kde(sq_distances: np.ndarray, h: float) -> np.ndarray:
    """Brute-force Gaussian kernel sum at every point, self included, from the square distance matrix."""
    return np.exp(-sq_distances / (2.0 * h * h)).sum(axis=1)


def sketch_scores(x: np.ndarray, config: D.SketchConfig) -> np.ndarray:
    """Pass 1 over x, then pass 2 on x: the scores the density job gives the corpus's own documents."""
    sketch = D.Sketch.empty(config)
    ids = D.bucket_ids(sketch.params, x)
    return sketch.add(ids).query(ids)


def rho(a, b) -> float:
    return float(scipy.stats.spearmanr(a, b).statistic)


class Corpus:
    """One corpus's embeddings with its exact Gaussian KDEs at every swept bandwidth (computed once)."""

    def __init__(self, name: str, x: np.ndarray):
        self.name, self.x = name, x
        self.sq = squareform(pdist(x.astype(np.float64), "sqeuclidean"))
        self.distances = np.sqrt(self.sq[np.triu_indices(x.shape[0], 1)])
        self._kde: dict[float, np.ndarray] = {}

    def kde(self, h: float) -> np.ndarray:
        if h not in self._kde:
            self._kde[h] = gaussian_kde(self.sq, h)
        return self._kde[h]


def evaluate(corpus: Corpus, config: D.SketchConfig, seeds) -> dict:
    """Spearman vs the KDE at the equivalent h and at every swept h, and vs the exact LSH kernel sum, over seeds.

    The equivalent h is `gaussian_equivalent_bandwidth` at c = sqrt 2 (unit vectors at right angles), a
    property of the sketch alone, not fitted to the corpus.
    """
    h_eq = D.gaussian_equivalent_bandwidth(config)
    exact = D.exact_scores(config, corpus.x, corpus.x)  # the LSH kernel sum does not depend on the seed
    at_eq, sweep, own = [], [], []
    for seed in seeds:
        scores = sketch_scores(corpus.x, D.SketchConfig(**{**config.__dict__, "seed": seed}))
        at_eq.append(rho(scores, corpus.kde(h_eq)))
        sweep.append([rho(scores, corpus.kde(h)) for h in BANDWIDTHS])
        own.append(rho(scores, exact))
    sweep = np.mean(sweep, axis=0)
    best = int(np.argmax(sweep))
    return dict(h_eq=h_eq, at_eq=(np.mean(at_eq), np.std(at_eq)), best_h=BANDWIDTHS[best], best=sweep[best],
                sweep=sweep, own=np.mean(own))


def fmt(mean_sd) -> str:
    mean, sd = mean_sd
    return f"{mean:.3f} +- {sd:.3f}"


# --------------------------------------------------------------------------- tables

def describe(corpora: dict[str, Corpus], ref_h: float):
    print("## Corpora (MiniLM embeddings)\n")
    print("| corpus | documents | pairwise distance 1% / 5% / 50% / 95% | Gaussian KDE rank stability: "
          f"Spearman of KDE(h) vs KDE(h = {ref_h:.3f}), h = " + " / ".join(map(str, BANDWIDTHS)) + " |")
    print("|---|---|---|---|")
    for c in corpora.values():
        q = np.quantile(c.distances, [0.01, 0.05, 0.5, 0.95])
        stability = " / ".join(f"{rho(c.kde(h), c.kde(ref_h)):.2f}" for h in BANDWIDTHS)
        print(f"| {c.name} | {c.x.shape[0]} | {' / '.join(f'{v:.3f}' for v in q)} | {stability} |")


def defaults_table(corpora, seeds, old_l2):
    print(f"\n## Defaults vs the former job default (Spearman vs exact Gaussian KDE; {len(seeds)} seeds)\n")
    print("| corpus | sketch | sketch memory | h equivalent | rho at h equivalent | best h of the sweep | rho there |")
    print("|---|---|---|---|---|---|---|")
    for c in corpora.values():
        configs = {"default: " + label(D.make_sketch_config(c.x.shape[1])): D.make_sketch_config(c.x.shape[1]),
                   "former: " + label(old_l2(c)): old_l2(c)}
        for name, cfg in configs.items():
            r = evaluate(c, cfg, seeds)
            print(f"| {c.name} | {name} | {cfg.sketch_bytes / 2**20:.2f} MiB | {r['h_eq']:.3f} | {fmt(r['at_eq'])} "
                  f"| {r['best_h']} | {r['best']:.3f} |")


def label(cfg: D.SketchConfig) -> str:
    if cfg.kernel == "cosine":
        return f"cosine k={cfg.hashes_per_row} R={cfg.rows} B={cfg.buckets}{' (direct)' if cfg.direct_buckets else ''}"
    return f"l2 k={cfg.hashes_per_row} R={cfg.rows} B={cfg.buckets} w={cfg.bandwidth:.3f}"


def rows_table(corpora, seeds):
    print(f"\n## Against R (cosine, k = {D.DEFAULT_BITS} bits, B = 2^k; rho vs KDE at h equivalent = "
          f"{D.gaussian_equivalent_bandwidth(D.make_sketch_config(2)):.3f})\n")
    rows_list = (100, 250, 500, 1000, 2000)
    print("| corpus | " + " | ".join(f"R = {r}" for r in rows_list) + " |")
    print("|---|" + "---|" * len(rows_list))
    for c in corpora.values():
        cells = [fmt(evaluate(c, D.make_sketch_config(c.x.shape[1], rows=r), seeds)["at_eq"]) for r in rows_list]
        print(f"| {c.name} | " + " | ".join(cells) + " |")


def bits_table(corpora, seeds):
    print(f"\n## Against k (cosine, R = {D.DEFAULT_ROWS}, B = 2^k direct)\n")
    print("| corpus | k | h equivalent | rho at h equivalent | best h | rho at best h | rho vs own exact kernel sum |")
    print("|---|---|---|---|---|---|---|")
    for c in corpora.values():
        for k in (2, 4, 6, 8, 10, 12, 16):
            r = evaluate(c, D.make_sketch_config(c.x.shape[1], hashes_per_row=k), seeds)
            print(f"| {c.name} | {k} | {r['h_eq']:.3f} | {fmt(r['at_eq'])} | {r['best_h']} | {r['best']:.3f} | "
                  f"{r['own']:.3f} |")


def l2_table(corpora, seeds):
    print(f"\n## The p-stable L2 sketch (R = {D.DEFAULT_ROWS}, B = {D.L2_BUCKETS})\n")
    print("| corpus | k | width w | h equivalent | rho at h equivalent | best h | rho at best h | "
          "rho vs own exact kernel sum | exact kernel sum vs KDE at best h |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in corpora.values():
        for k in (1, 2, 4, 8):
            for w_name, w in ((f"{D.DEFAULT_BANDWIDTH_QUANTILE:.0%} quantile",
                               D.estimate_bandwidth(c.x, D.DEFAULT_BANDWIDTH_QUANTILE)), ("fixed", 2.0)):
                cfg = D.make_sketch_config(c.x.shape[1], kernel="l2", hashes_per_row=k, bandwidth=w)
                r = evaluate(c, cfg, seeds)
                exact = rho(D.exact_scores(cfg, c.x, c.x), c.kde(r["best_h"]))
                print(f"| {c.name} | {k} | {w:.3f} ({w_name}) | {r['h_eq']:.3f} | {fmt(r['at_eq'])} | {r['best_h']} | "
                      f"{r['best']:.3f} | {r['own']:.3f} | {exact:.3f} |")


def sweep_table(corpora, seeds, old_l2):
    print("\n## Gaussian KDE bandwidth sweep (rho of the sketch vs the exact KDE at h)\n")
    print("| corpus | sketch | " + " | ".join(f"h = {h}" for h in BANDWIDTHS) + " |")
    print("|---|---|" + "---|" * len(BANDWIDTHS))
    for c in corpora.values():
        d = c.x.shape[1]
        for cfg in (D.make_sketch_config(d), D.make_sketch_config(d, hashes_per_row=4),
                    D.make_sketch_config(d, hashes_per_row=12), old_l2(c)):
            r = evaluate(c, cfg, seeds)
            print(f"| {c.name} | {label(cfg)} | " + " | ".join(f"{v:.3f}" for v in r["sweep"]) + " |")


def hash_cost(x: np.ndarray, repeats: int = 3):
    print("\n## Hashing cost per document (this machine, as loaded; pass 1 + pass 2 of the defaults)\n")
    cfg = D.make_sketch_config(x.shape[1])
    sketch = D.Sketch.empty(cfg)
    D.bucket_ids(sketch.params, x[:8])  # compile
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ids = D.row_bucket_ids(sketch.params, x)
        sketch.add_rows(ids).query_rows(ids)
        best = min(best, time.perf_counter() - start)
    print(f"{label(cfg)}, d = {x.shape[1]}: {best / x.shape[0] * 1e6:.0f} us/document over {x.shape[0]} documents "
          f"({cfg.rows * cfg.hashes_per_row * x.shape[1] / 1e6:.1f} M multiply-adds of projection; "
          f"hash parameters {cfg.dim * cfg.rows * cfg.hashes_per_row * 4 / 2**20:.1f} MiB)")


# --------------------------------------------------------------------------- synthetic

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


def ips_tv(scores, labels, target: int, seed: int):
    """TV distance to uniform of the cluster histogram: IPS (Poisson sampling, p ~ 1/score) vs random."""
    rng = np.random.default_rng(seed)
    keep = rng.random(scores.size) < np.minimum(1.0, target * (1 / scores) / np.sum(1 / scores))
    random_pick = rng.choice(scores.size, keep.sum(), replace=False)
    k = labels.max() + 1
    def tv(idx):
        return 0.5 * np.abs(np.bincount(labels[idx], minlength=k) / max(len(idx), 1) - 1 / k).sum()

    return tv(np.flatnonzero(keep)), tv(random_pick)


def synthetic():
    print("\n## Gaussian mixtures: sketch vs its exact expected score K + (n - K) c (l2, k = 1, w = 5% quantile)\n")
    print("| d | separation | R | Spearman vs exact | mean relative error |")
    print("|---|---|---|---|---|")
    sizes = [1600, 1000, 700, 400, 200, 100]
    for dim in (32, 64, 128):
        x, _, _ = gaussian_mixture(0, dim, sizes, 1.0)
        cfg = D.SketchConfig(dim=dim, bandwidth=D.estimate_bandwidth(x), seed=7)
        kernel_sum = D.exact_scores(cfg, x, x)
        expected = kernel_sum + (x.shape[0] - kernel_sum) * cfg.bucket_collision_rate
        ids = D.bucket_ids(D.make_hash_params(cfg), x)
        for rows in (50, 1000):
            sub = ids[:, :rows]  # the first R rows of a sketch are the R-row sketch's functions
            scores = D.Sketch.empty(D.SketchConfig(**{**cfg.__dict__, "rows": rows})).add(sub).query(sub)
            err = float(np.mean(np.abs(scores - expected) / expected))
            print(f"| {dim} | 1.0 | {rows} | {rho(scores, expected):.4f} | {err:.4f} |")

    print("\n## IPS on sketch scores (Theorem A.2): total-variation distance of a ~300-point sample's cluster "
          "histogram to uniform (clusters of 3000/1000/300/100/30, separation 3)\n")
    print("| d | sketch | TV, IPS | TV, random sample |")
    print("|---|---|---|---|")
    for dim in (32, 128):
        x, labels, _ = gaussian_mixture(1, dim, [3000, 1000, 300, 100, 30], 3.0)
        w = D.estimate_bandwidth(x)
        for cfg in (D.make_sketch_config(dim, kernel="l2", hashes_per_row=1, bandwidth=w),
                    D.make_sketch_config(dim, kernel="l2", hashes_per_row=2, bandwidth=w),
                    D.make_sketch_config(dim, kernel="l2", hashes_per_row=4, bandwidth=w),
                    D.make_sketch_config(dim, hashes_per_row=4), D.make_sketch_config(dim)):
            tv_ips, tv_random = ips_tv(sketch_scores(x, D.SketchConfig(**{**cfg.__dict__, "seed": 1})), labels, 300, 0)
            print(f"| {dim} | {label(cfg)} | {tv_ips:.3f} | {tv_random:.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/gristmill-density-embeddings", help="where embeddings are cached")
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--seeds", type=int, default=3, help="sketch seeds averaged per cell")
    parser.add_argument("--synthetic", action="store_true", help="also the Gaussian-mixture and IPS checks")
    args = parser.parse_args(argv)
    seeds = range(args.seeds)
    corpora = {name: Corpus(name, x) for name, x in load_corpora(args.cache, args.embedder).items()}
    ref_h = D.gaussian_equivalent_bandwidth(D.make_sketch_config(2))

    def old_l2(c: Corpus) -> D.SketchConfig:
        """The job's former default: l2, k = 2, R = 1000, B = 20000, w = 5% quantile of pairwise distances."""
        return D.make_sketch_config(c.x.shape[1], kernel="l2", hashes_per_row=2, bandwidth=D.estimate_bandwidth(c.x))

    describe(corpora, ref_h)
    defaults_table(corpora, seeds, old_l2)
    rows_table(corpora, seeds)
    bits_table(corpora, seeds)
    l2_table(corpora, seeds)
    sweep_table(corpora, seeds, old_l2)
    hash_cost(corpora[MIX].x)
    if args.synthetic:
        synthetic()


if __name__ == "__main__":
    main()
