"""The Beam density job: crowded neighbourhoods score high, the saved sketch rescores identically;
a second batch writes a new version and leaves the files a published selection names unchanged."""

import json
import os
import re

import numpy as np
import pytest

from gristmill import io
from gristmill import records as gm_records
from gristmill.pipelines import corpus as corpus_kit
from gristmill.pipelines import score_density, select
from gristmill.scoring import density

FEATURE = "score/density/minilm"
SMALL = ["--rows=64", "--buckets=4096", "--seed=5"]


def _corpus(tmp_path):
    base = "The city council approved the new budget for road repairs and public parks on {}."
    crowded = [base.format(day) for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")] * 3
    unique = ["Photosynthesis converts light energy into chemical energy stored in glucose.",
              "The sonata in B minor was composed in 1853 and dedicated to Robert Schumann.",
              "Use a torque wrench to tighten the lug nuts in a star pattern.",
              "Our bakery sells sourdough loaves every morning from seven o'clock.",
              "The Treaty of Westphalia ended the Thirty Years' War in 1648."]
    lines = [json.dumps({"text": t, "url": f"https://c/{i}"}) for i, t in enumerate(crowded)]
    lines += [json.dumps({"text": t, "url": f"https://u/{i}"}) for i, t in enumerate(unique)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), len(crowded), len(unique)


def test_density_job_scores_sketch_and_rescoring(tmp_path):
    corpus, n_crowded, n_unique = _corpus(tmp_path)
    out = str(tmp_path / "out")
    manifest = score_density.run(["--input", corpus, "--output", out, *SMALL])
    assert manifest["counts"]["written"] == n_crowded + n_unique and manifest["reconciled"]
    scored = list(gm_records.iter_scored_records(out))
    crowded = [r[FEATURE] for r in scored if r["url"].startswith("https://c/")]
    unique = [r[FEATURE] for r in scored if r["url"].startswith("https://u/")]
    assert min(crowded) > max(unique)
    assert all(1 <= s <= n_crowded + n_unique for s in crowded + unique)  # each point collides with itself

    sketch_file = os.path.join(out, manifest["outputs"]["sketch"])
    assert manifest["outputs"]["sketch"].startswith("versions/") and manifest["outputs"]["sketch"] in manifest["files"]
    assert all(p.startswith("versions/") for p in manifest["outputs"]["records"])
    sketch = density.Sketch.load(sketch_file)
    assert sketch.num_points == n_crowded + n_unique
    assert sketch.counts.shape == (64, 4096) and (sketch.counts.sum(axis=1) == sketch.num_points).all()

    again = str(tmp_path / "again")
    rescoring = score_density.run(["--input", corpus, "--output", again, *SMALL, "--sketch", sketch_file])
    with open(sketch_file, "rb") as f, open(os.path.join(again, rescoring["outputs"]["sketch"]), "rb") as g:
        assert f.read() == g.read()  # the version keeps its sketch, in the same bytes in every run
    rescored = {r["id"]: r[FEATURE] for r in gm_records.iter_scored_records(again)}
    np.testing.assert_array_equal([rescored[r["id"]] for r in scored], [r[FEATURE] for r in scored])


def _docs(prefix, n, seed):
    """n short documents: a few topics, so densities differ, and ids that differ by batch."""
    rng = np.random.default_rng(seed)
    topics = ["The council voted on the budget for road repairs in {}.",
              "Bake the sourdough loaf at 230 degrees for {} minutes.",
              "The violin sonata was first performed in {}.",
              "Tighten the lug nuts in a star pattern on the {} wheel.",
              "Mitochondria produce most of the cell's ATP in {}."]
    words = ["spring", "autumn", "Vienna", "forty", "front", "muscle", "1853", "winter", "rear", "yeast"]
    return [json.dumps({"text": topics[int(rng.integers(0, 2 if i % 3 else 5))].format(words[int(rng.integers(10))]),
                        "url": f"https://{prefix}/{i}"}) for i in range(n)]


def _listing(directory):
    """relative path -> (size, mtime_ns) of every file under directory."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            st = os.stat(path)
            found[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return found


def _selected(plan, files):
    """The ids a plan selects from the records of the given files."""
    return sorted(r["id"] for path in files for r in gm_records.iter_scored_records(path)
                  if select.decision(r, plan) == select.SELECTED)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """Batch 1 (50 documents), a top-20% selection over it, batch 2 (50 more) into the same output."""
    root = tmp_path_factory.mktemp("batches")
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text("\n".join(_docs("a", 50, 1)) + "\n")
    out, glob = str(root / "out"), str(inputs / "*.jsonl")
    argv = ["--input", glob, "--output", out, "--unit_records", "20", *SMALL]
    first = score_density.run(argv)
    units_before = {p: open(os.path.join(out, p), "rb").read() for p in _listing(out) if p.startswith("units/")}
    selection = str(root / "selection")
    chosen = select.run(["--input", out, "--output", selection, "--rule", "topk", "--score", FEATURE, "--rate", "0.2"])
    plan = select.load_plan(os.path.join(selection, chosen["outputs"]["plan"]))
    published = [os.path.join(out, p) for p in first["outputs"]["records"]]  # what the selection's manifest names
    published_bytes = {p: open(p, "rb").read() for p in published}
    ids_before = _selected(plan, published)
    (inputs / "b.jsonl").write_text("\n".join(_docs("b", 50, 2)) + "\n")
    second = score_density.run(argv)
    return {"out": out, "argv": argv, "first": first, "second": second, "plan": plan, "published": published,
            "published_bytes": published_bytes, "ids_before": ids_before, "units_before": units_before}


def test_batch_two_leaves_a_published_selection_unchanged(batches):
    b = batches
    assert len(b["ids_before"]) == 10  # top 20% of 50
    assert b["second"]["counts"]["written"] == 100 and b["second"]["counts"]["units_reused"] == 3
    assert not set(b["first"]["outputs"]["records"]) & set(b["second"]["outputs"]["records"])  # a new version
    assert _selected(b["plan"], b["published"]) == b["ids_before"]
    for path, data in b["published_bytes"].items():
        assert open(path, "rb").read() == data, path
    sketch = density.Sketch.load(os.path.join(b["out"], b["second"]["outputs"]["sketch"]))
    assert sketch.num_points == 100
    assert density.Sketch.load(os.path.join(b["out"], b["first"]["outputs"]["sketch"])).num_points == 50


def test_units_are_written_once(batches):
    b = batches
    for rel, data in b["units_before"].items():
        assert open(os.path.join(b["out"], rel), "rb").read() == data, rel
    # every file the manifest lists is there as it records
    for rel, info in b["second"]["files"].items():
        data = open(os.path.join(b["out"], rel), "rb").read()
        assert {"size": len(data), "crc32c": io.checksum(data)} == info, rel
    listed = set(b["second"]["files"])
    assert set(b["second"]["outputs"]["records"]) <= listed and b["second"]["outputs"]["sketch"] in listed
    assert sum(p.endswith(".emb.npy") for p in listed) == 6  # 3 units of each 50-document file


def test_rerun_with_the_same_sketch_writes_no_unit_or_version_file(batches):
    b = batches
    before = _listing(b["out"])
    again = score_density.run(b["argv"])
    after = _listing(b["out"])
    assert again["outputs"]["records"] == b["second"]["outputs"]["records"]
    assert again["counts"]["units_reused"] == again["counts"]["units_total"] == 6
    assert again["outputs"]["sketch"] == b["second"]["outputs"]["sketch"]
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed and all(p in ("manifest.json", "dead_letters.jsonl") or p.startswith("manifests/")
                           or p.endswith("/dead_letters.jsonl") for p in changed), sorted(changed)
    assert set(before) <= set(after)


def test_corrupt_unit_is_refused_naming_the_file(tmp_path):
    corpus, _, _ = _corpus(tmp_path)
    out = str(tmp_path / "out")
    manifest = score_density.run(["--input", corpus, "--output", out, *SMALL])
    marker = json.load(open(os.path.join(out, "versions", manifest["outputs"]["records"][0].split("/")[1],
                                         manifest["units"][0]["key"] + ".json")))
    emb = marker["embeddings"]
    path = os.path.join(out, emb)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(gm_records.CorruptOutputError, match=re.escape(path)):
        corpus_kit.load_embeddings(out, marker)


def test_an_embedding_does_not_depend_on_its_batch_mates():
    """Beam's batches differ between runs; the cached embeddings of two runs must not."""
    from gristmill.scoring import embeddings

    embedder = corpus_kit.PerBucket(embeddings.make_embedder("minilm"))
    rng = np.random.default_rng(0)
    texts = [" ".join(f"word{rng.integers(100)}" for _ in range(n)) for n in (5, 12, 20, 27, 33, 60, 90, 140)]
    encoded = [embeddings.make_encoder("minilm").encode(t) for t in texts]
    assert len({embedder.model.buckets.index(min(b for b in embedder.model.buckets if b >= e.length))
                for e in encoded}) >= 3  # the batch spans several padding buckets
    together = embedder.score_encoded(encoded)
    for e, vector in zip(encoded, together):
        np.testing.assert_array_equal(embedder.score_encoded([e])[0], vector)


def test_two_batches_equal_one_run_over_the_same_files(batches, tmp_path):
    """Incremental == one-shot, byte for byte: the same sketch, and the same scored record files
    (same version, same bytes), whether the corpus arrived in two batches or at once."""
    b = batches
    argv = list(b["argv"])
    out = str(tmp_path / "one-shot")
    argv[argv.index("--output") + 1] = out
    once = score_density.run(argv)
    assert once["outputs"]["sketch"] == b["second"]["outputs"]["sketch"]
    assert once["outputs"]["records"] == b["second"]["outputs"]["records"]
    with open(os.path.join(out, once["outputs"]["sketch"]), "rb") as f, \
            open(os.path.join(b["out"], b["second"]["outputs"]["sketch"]), "rb") as g:
        assert f.read() == g.read()
    for rel in once["outputs"]["records"]:
        with open(os.path.join(out, rel), "rb") as f, open(os.path.join(b["out"], rel), "rb") as g:
            assert f.read() == g.read(), rel
    ids = sorted(p for p in once["files"] if p.endswith(score_density.IDS_SUFFIX))
    assert len(ids) == 6 and ids == sorted(p for p in b["second"]["files"] if p.endswith(score_density.IDS_SUFFIX))


def test_each_unit_is_hashed_once_and_scored_from_its_cached_ids(batches):
    b = batches
    sketch = density.Sketch.load(os.path.join(b["out"], b["second"]["outputs"]["sketch"]))
    digest = density.hash_digest(sketch.params)
    for unit in b["second"]["units"]:
        rel = score_density.ids_file(unit["key"], digest)
        ids = np.load(os.path.join(b["out"], rel))
        assert ids.dtype == np.uint16 and ids.shape == (64, unit["written"])  # 4096 buckets need 2 bytes
        x = np.load(os.path.join(b["out"], corpus_kit.embeddings_file(unit["key"])))
        np.testing.assert_array_equal(ids, density.row_bucket_ids(sketch.params, x))
    # a brute-force check of the gather: every score is the mean over rows of the counts at its buckets
    for rel in b["second"]["outputs"]["records"]:
        key = os.path.basename(rel)[: -len(".tfrecord")]
        ids = np.load(os.path.join(b["out"], score_density.ids_file(key, digest))).astype(np.int64)
        want = [sum(int(sketch.counts[r, ids[r, n]]) for r in range(64)) / 64 for n in range(ids.shape[1])]
        got = [r[FEATURE] for r in gm_records.iter_scored_records(os.path.join(b["out"], rel))]
        assert got == want


def test_a_job_chained_on_density_reuses_every_unit_after_a_no_op_rerun(batches, tmp_path):
    """A rerun with nothing new leaves density's files as they were, so the job reading them redoes nothing."""
    from gristmill.pipelines import score_random

    b = batches
    chained = ["--input", b["out"], "--output", str(tmp_path / "random")]
    first = score_random.run(chained)
    assert first["counts"]["units_reused"] == 0 and first["counts"]["written"] == 100
    score_density.run(b["argv"])  # nothing new
    again = score_random.run(chained)
    assert again["counts"]["units_reused"] == again["counts"]["units_total"] == first["counts"]["units_total"]
    assert again["outputs"]["records"] == first["outputs"]["records"]
