"""What an incremental `score density` batch costs: one-shot vs two batches vs a no-op rerun.

    python benchmarks/density_incremental.py [--files 40] [--docs_per_file 1000] [--text_bytes 1000]

The input is a cached-embeddings corpus, so the embedder is not what is measured: `--files` TFRecord
files of `--docs_per_file` documents, each with a unit marker beside it naming random unit-norm
384-d embeddings (`units/<f>.json` + `.emb.npy`, as a gristmill output leaves them). On it, in one
process (after a warm-up run that compiles the hash), the default sketch (cosine, R = 1000,
B = 256), one unit a file:

    one-shot   all files into a fresh output
    batch 1    the first half of the files into another output,
    no-op 1    the same command again (nothing new, half the units),
    batch 2    all files into that output (the second half is new),
    no-op 2    the same command again (nothing new, every unit).

For each: wall seconds and CPU seconds of this process (user + system, all threads). From the
same runs, the per-night cost model cost = a * new documents + b * units + c * documents + fixed:
b and fixed from the two no-ops (U/2 and U units), a from one-shot minus batch 2 (both rescore every
document; one-shot embeds-from-cache and hashes all of them, batch 2 half), c from what is left of
batch 2. And, for comparison, the hashing alone (`density.row_bucket_ids` over every document),
which every run repeated twice per document before the ids were cached.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from gristmill import io, records  # noqa: E402 (the job, which needs Beam, is imported where it runs)

DIM = 384


def write_input(root: str, files: int, docs: int, text_bytes: int, seed: int = 0) -> list[str]:
    """`files` TFRecord files of `docs` documents with cached random unit-norm embeddings; their paths."""
    from gristmill.pipelines import corpus, units

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(5000)]
    paths = []
    for f in range(files):
        name = f"part-{f:05d}"
        texts = [" ".join(words[int(j)] for j in rng.integers(0, 5000, max(1, text_bytes // 6)))[:text_bytes]
                 for _ in range(docs)]
        recs = [{"id": f"{f:05d}-{i:07d}", "text": t, "url": f"https://bench/{f}/{i}"} for i, t in enumerate(texts)]
        rel_records, rel_emb = units.relative_unit_path(name, units.RECORDS_SUFFIX), corpus.embeddings_file(name)
        io.atomic_write(io.join(root, rel_records), records.tfrecord_bytes(recs))
        x = rng.standard_normal((docs, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        info = corpus.save_array(io.join(root, rel_emb), x)
        io.write_json(io.join(root, units.relative_unit_path(name, units.MARKER_SUFFIX)),
                      {"records": rel_records, "embeddings": rel_emb, "embedder": "minilm", "files": {rel_emb: info}})
        paths.append(io.join(root, rel_records))
    return paths


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds, manifest) of one in-process density run."""
    from gristmill.pipelines import score_density

    wall, cpu = time.monotonic(), cpu_seconds()
    manifest = score_density.run(argv, save_main_session=False)
    return time.monotonic() - wall, cpu_seconds() - cpu, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="input files (one unit each)")
    parser.add_argument("--docs_per_file", type=int, default=1000)
    parser.add_argument("--text_bytes", type=int, default=1000, help="bytes of text a document")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    from gristmill.scoring import density

    tmp = tempfile.mkdtemp(prefix="density-incremental-")
    try:
        paths = write_input(os.path.join(tmp, "in"), args.files, args.docs_per_file, args.text_bytes)
        flags = ["--unit_records", str(args.docs_per_file)]
        warm = write_input(os.path.join(tmp, "warm"), 1, 50, 100, seed=1)
        timed(["--input", warm[0], "--output", os.path.join(tmp, "warm-out"), *flags])

        first, every = ",".join(paths[: len(paths) // 2]), ",".join(paths)  # the same files, so the same units
        rows = {}
        out_one, out_inc = os.path.join(tmp, "one"), os.path.join(tmp, "inc")
        rows["one-shot"] = timed(["--input", every, "--output", out_one, *flags])
        rows["batch 1"] = timed(["--input", first, "--output", out_inc, *flags])
        rows["no-op 1"] = timed(["--input", first, "--output", out_inc, *flags])
        rows["batch 2"] = timed(["--input", every, "--output", out_inc, *flags])
        rows["no-op 2"] = timed(["--input", every, "--output", out_inc, *flags])

        x = np.concatenate([corpus_embeddings(p) for p in paths])
        params = density.make_hash_params(density.make_sketch_config(DIM))
        density.row_bucket_ids(params, x[:256])
        wall, cpu = time.monotonic(), cpu_seconds()
        density.row_bucket_ids(params, x)
        hash_wall, hash_cpu = time.monotonic() - wall, cpu_seconds() - cpu

        one = {r["id"]: r for r in records.iter_scored_records(out_one)}
        inc = {r["id"]: r for r in records.iter_scored_records(out_inc)}
        feature = "score/density/minilm"
        differ = sum(one[k][feature] != inc[k][feature] for k in one)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n, u = len(paths) * args.docs_per_file, len(paths)
    print(f"\n{u} files, {n:,} documents ({args.text_bytes} bytes of text each), one unit a file; "
          f"default sketch (cosine, R = 1000, B = 256)\n")
    print("| run | new documents | units (reused) | documents rescored | wall s | CPU s | CPU / one-shot |")
    print("|---|---|---|---|---|---|---|")
    shape = {"one-shot": (n, u, n), "batch 1": (n // 2, u // 2, n // 2), "no-op 1": (0, u // 2, 0),
             "batch 2": (n - n // 2, u, n), "no-op 2": (0, u, 0)}
    for name, (wall, cpu, manifest) in rows.items():
        new, units_, rescored = shape[name]
        print(f"| {name} | {new:,} | {units_} ({manifest['counts']['units_reused']}) | {rescored:,} | {wall:.2f} | "
              f"{cpu:.2f} | "
              f"{cpu / rows['one-shot'][1]:.2f}x |")
    print(f"\nhashing alone (row_bucket_ids over all {n:,} documents): {hash_wall:.2f} s wall, {hash_cpu:.2f} s CPU "
          f"= {1e6 * hash_cpu / n:.0f} us CPU a document; before the ids were cached every run paid it twice for "
          f"every document: {2 * hash_cpu:.2f} s CPU")
    print(f"scores that differ between one-shot and the two batches: {differ} of {len(one):,}")

    cpu = {k: v[1] for k, v in rows.items()}
    b = (cpu["no-op 2"] - cpu["no-op 1"]) / (u - u // 2)
    fixed = cpu["no-op 2"] - b * u
    a = (cpu["one-shot"] - cpu["batch 2"]) / (n // 2)
    c = (cpu["batch 2"] - fixed - b * u - a * (n - n // 2)) / n
    print(f"\ncost model (CPU): cost = a * new documents + b * units + c * documents + fixed\n"
          f"  a = {1e6 * a:.0f} us a new document (read its cached embeddings, hash, write ids, count)\n"
          f"  b = {1e3 * b:.1f} ms a unit (bookkeeping: listing, index, version markers)\n"
          f"  c = {1e6 * c:.0f} us a document (pass 2: read records, gather, rewrite into the new version)\n"
          f"  fixed = {fixed:.2f} s a run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"documents": n, "units": u, "rows": {k: v[:2] for k, v in rows.items()},
                       "hash_cpu_s": hash_cpu, "differ": differ,
                       "model": {"a_s": a, "b_s": b, "c_s": c, "fixed_s": fixed}}, f, indent=1)


def corpus_embeddings(records_path: str) -> np.ndarray:
    """The cached embeddings beside one input file."""
    from gristmill.pipelines import corpus

    cache = corpus.input_cache(records_path)
    return corpus.load_array(cache.path, cache.expected)


if __name__ == "__main__":
    main()
