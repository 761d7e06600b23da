"""Resume bookkeeping in O(listings): a rerun trusts the last run's unit index for the units it lists."""

import json
import os
import re

import pytest

from gristmill import io
from gristmill.pipelines import score_random, units


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(30)))
    return str(path)


def _markers_read(monkeypatch):
    read = []
    real = io.read_json

    def counting(path):
        if f"/{units.UNITS_DIR}/" in str(path):
            read.append(str(path))
        return real(path)

    monkeypatch.setattr(io, "read_json", counting)
    return read


def test_a_no_op_rerun_reads_no_marker_the_manifest_lists(output_root, corpus, monkeypatch):
    out = io.join(output_root, "random")
    argv = ["--input", corpus, "--output", out, "--unit_records", "5"]
    first = score_random.run(argv, save_main_session=False)
    assert first["counts"]["units_total"] == 6 and first["bookkeeping"]["units_index"].endswith(units.INDEX_FILE)
    read = _markers_read(monkeypatch)
    again = score_random.run(argv, save_main_session=False)
    assert again["counts"]["units_reused"] == 6 and again["reconciled"]
    assert read == []                                    # every unit came from the index and one listing
    assert again["files"] == first["files"]


@pytest.mark.parametrize("index", [True, False], ids=["indexed", "killed-before-the-index"])
def test_markers_the_index_does_not_list_are_read_and_changed_files_are_verified(tmp_path, corpus, monkeypatch,
                                                                                index):
    out = str(tmp_path / "random")
    argv = ["--input", corpus, "--output", out, "--unit_records", "5"]
    first = score_random.run(argv, save_main_session=False)
    if not index:
        os.remove(os.path.join(out, first["bookkeeping"]["units_index"]))
    unit = sorted(first["outputs"]["records"])[2]
    path = os.path.join(out, unit)
    data = open(path, "rb").read()
    with open(path, "wb") as f:                         # same size, other bytes, new mtime
        f.write(bytes(len(data)))
    read = _markers_read(monkeypatch)
    again = score_random.run(argv, save_main_session=False)
    assert len(read) == (0 if index else 6)              # without the index each marker is read once
    assert again["counts"]["units_reused"] == 5          # the damaged unit was caught by its CRC32C and redone
    assert open(path, "rb").read() == data


# ------------------------------------------------------------------------ density (a two-pass job)

DENSITY = ["--rows=64", "--buckets=4096", "--seed=5", "--unit_records", "10"]


def _texts(prefix, n):
    topics = ["The council voted on the budget for road repairs in {}.", "Bake the sourdough loaf for {} minutes.",
              "The violin sonata was first performed in {}."]
    return "".join(json.dumps({"text": topics[i % 3].format(f"{prefix} {i}"), "url": f"https://{prefix}/{i}"}) + "\n"
                   for i in range(n))


def _density_work(monkeypatch):
    """Counts what a density run reads and hashes: embeddings loaded, documents hashed, and every
    file read (ids, embeddings, unit and version markers)."""
    from gristmill.pipelines import corpus
    from gristmill.scoring import density

    seen = {"embeddings": 0, "hashed": 0, "reads": []}
    load, hash_rows = corpus.load_embeddings, density.row_bucket_ids

    def loading(output_dir, marker):
        seen["embeddings"] += 1
        return load(output_dir, marker)

    def hashing(params, x):
        seen["hashed"] += len(x)
        return hash_rows(params, x)

    monkeypatch.setattr(corpus, "load_embeddings", loading)
    monkeypatch.setattr(density, "row_bucket_ids", hashing)
    for name in ("read_bytes", "read_json", "read_text"):
        real = getattr(io, name)

        def reading(path, *args, _real=real, **kwargs):
            seen["reads"].append(str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(io, name, reading)
    return seen


def _unit_reads(seen):
    """The reads of ids, embeddings and unit or version markers (not the manifest, job file, index or sketch)."""
    return [p for p in seen["reads"] if p.endswith((".ids.npy", ".emb.npy"))
            or (p.endswith(".json") and ("/units/" in p or re.search(r"/versions/[0-9a-f]{16}/", p)))]


def test_density_hashes_each_document_once_and_a_no_op_rerun_reads_no_unit_file(output_root, tmp_path, monkeypatch):
    from gristmill.pipelines import score_density

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text(_texts("a", 30))
    out = io.join(output_root, "density")
    argv = ["--input", str(inputs / "*.jsonl"), "--output", out, *DENSITY]
    first = score_density.run(argv, save_main_session=False)
    assert first["counts"]["units_total"] == 3

    (inputs / "b.jsonl").write_text(_texts("b", 20))
    seen = _density_work(monkeypatch)
    second = score_density.run(argv, save_main_session=False)
    assert second["counts"]["units_total"] == 5 and second["counts"]["units_reused"] == 3
    assert seen["hashed"] == 20 and seen["embeddings"] == 2      # only batch 2's documents were hashed
    new = {u["key"] for u in second["units"]} - {u["key"] for u in first["units"]}
    counted = [p for p in seen["reads"] if p.endswith(".ids.npy")]
    assert len(counted) == 2 + 5 and len({p for p in counted if any(k in p for k in new)}) == 2  # count new, gather all

    seen = _density_work(monkeypatch)
    again = score_density.run(argv, save_main_session=False)
    assert (seen["embeddings"], seen["hashed"], _unit_reads(seen)) == (0, 0, [])
    assert again["counts"]["units_reused"] == 5 and again["outputs"] == second["outputs"]
    assert again["files"] == second["files"]


def test_density_rebuilds_from_cached_ids_when_something_does_not_verify(tmp_path, monkeypatch):
    from gristmill.pipelines import score_density
    from gristmill.scoring import density

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text(_texts("a", 30))
    (inputs / "b.jsonl").write_text(_texts("b", 20))
    out = str(tmp_path / "density")
    argv = ["--input", str(inputs / "*.jsonl"), "--output", out, *DENSITY]
    first = score_density.run(argv, save_main_session=False)
    scores = {rel: open(os.path.join(out, rel), "rb").read() for rel in first["outputs"]["records"]}

    sketch = os.path.join(out, first["outputs"]["sketch"])
    data = open(sketch, "rb").read()
    half = len(data) // 2
    open(sketch, "wb").write(data[:half] + bytes([data[half] ^ 1]) + data[half + 1:])  # the last sketch is corrupt
    ids = sorted(p for p in first["files"] if p.endswith(score_density.IDS_SUFFIX))[1]
    path = os.path.join(out, ids)
    raw = bytearray(open(path, "rb").read())
    raw[-1] ^= 1                                                  # and so is one unit's ids file
    open(path, "wb").write(bytes(raw))
    seen = _density_work(monkeypatch)
    again = score_density.run(argv, save_main_session=False)
    unit = next(u for u in first["units"] if u["key"] in ids)
    assert seen["hashed"] == unit["written"] and seen["embeddings"] == 1  # only the damaged unit was hashed again
    assert again["outputs"] == first["outputs"]                            # the same sketch, counted from the ids
    assert open(sketch, "rb").read() == data
    for rel, expected in scores.items():
        assert open(os.path.join(out, rel), "rb").read() == expected, rel

    (inputs / "b.jsonl").unlink()                                 # a counted unit is gone: count the others anew
    seen = _density_work(monkeypatch)
    fewer = score_density.run(argv, save_main_session=False)
    assert seen["hashed"] == 0 and seen["embeddings"] == 0
    built = density.Sketch.load(os.path.join(out, fewer["outputs"]["sketch"]))
    assert built.num_points == 30 and fewer["outputs"]["sketch"] != first["outputs"]["sketch"]
