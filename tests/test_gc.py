"""`gristmill gc`: removes superseded versions and unreferenced unit files, never what the latest
manifest or a published selection references."""

import io as _text_io
import json
import os

import pytest

from gristmill import cli, gc, io
from gristmill import records as gm_records
from gristmill.pipelines import score_density

SMALL = ["--rows=16", "--buckets=256", "--seed=1", "--unit_records=10"]
STRAY = "units/gone.jsonl.00000.0123456789abcdef"


def _write(path, n, prefix):
    path.write_text("\n".join(json.dumps({"text": f"Note {i} on topic {i % 3} from {prefix}.", "url": f"{prefix}/{i}"})
                              for i in range(n)) + "\n")


def _files(directory):
    return {os.path.relpath(os.path.join(root, name), directory)
            for root, _, names in os.walk(directory) for name in names}


def _bytes(paths):
    return {p: open(p, "rb").read() for p in paths}


@pytest.fixture
def workdir(tmp_path):
    """A curate-like work directory: density batch 1, a selection published over it, batch 2, debris."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "a.jsonl", 20, "a")
    work = tmp_path / "work"
    out = str(work / "steps" / "density")
    argv = ["--input", str(inputs / "*.jsonl"), "--output", out, *SMALL]
    first = score_density.run(argv)
    data = [os.path.join(out, p) for p in first["outputs"]["records"]]
    selection = work / "selections" / "run1"
    selection.mkdir(parents=True)
    (selection / "manifest.json").write_text(json.dumps({"selection": {
        "plan": "plan.json", "data": data, "selected_records": [],
        "files": {p: first["files"][os.path.relpath(p, out)] for p in data}}}))
    _write(inputs / "b.jsonl", 20, "b")
    second = score_density.run(argv)
    for suffix in (".tfrecord", ".json"):  # a unit no manifest lists (e.g. of an input that went away)
        with open(os.path.join(out, STRAY + suffix), "w") as f:
            f.write("{}")
    with open(os.path.join(out, "versions", "sketch.npz.tmp-0a1b"), "w") as f:
        f.write("partial")
    return {"work": str(work), "out": out, "argv": argv, "first": first, "second": second, "data": data}


def test_dry_run_lists_and_removes_nothing(workdir):
    before = _files(workdir["out"])
    printed = _text_io.StringIO()
    (found,) = gc.gc(workdir["out"], dry_run=True, out=printed)
    assert _files(workdir["out"]) == before
    assert STRAY + ".tfrecord" in found.remove and f"would remove {os.path.join(workdir['out'], STRAY)}.json" \
        in printed.getvalue()
    assert f"would remove {len(found.remove)} file(s)" in printed.getvalue()


def test_gc_keeps_the_latest_manifest_and_published_files(workdir):
    out, first, second = workdir["out"], workdir["first"], workdir["second"]
    published = _bytes(workdir["data"])
    (found,) = gc.gc(out)
    left = _files(out)
    assert set(second["files"]) <= left  # everything the latest manifest references
    assert _bytes(workdir["data"]) == published  # the selection's files, byte for byte
    removed = set(found.remove)
    assert first["outputs"]["sketch"] in removed and first["outputs"]["sketch"] not in left  # superseded
    assert {STRAY + ".tfrecord", STRAY + ".json", "versions/sketch.npz.tmp-0a1b"} <= removed
    assert [p for p in left if p.startswith("manifests/")] == [p for p in _files(out) if p.startswith("manifests/")]
    assert len([p for p in left if p.startswith("manifests/")]) == 1
    assert not removed & left and found.bytes > 0
    # the version markers of the published files stay, so the files still chain as an input with embeddings
    version = first["outputs"]["records"][0].split("/")[1]
    assert all(f"versions/{version}/{u['key']}.json" in left for u in first["units"])
    # the latest run is whole: a rerun reuses every unit and its version
    again = score_density.run(workdir["argv"])
    assert again["counts"]["units_reused"] == again["counts"]["units_total"] == 4
    assert again["outputs"]["records"] == second["outputs"]["records"]
    assert gm_records.read_manifest(out)["files"] == again["files"]


def test_without_the_selection_the_old_version_goes(workdir):
    out, first = workdir["out"], workdir["first"]
    os.remove(os.path.join(workdir["work"], "selections", "run1", "manifest.json"))
    gc.gc(workdir["work"])  # a curate work directory: each step is cleaned
    version = first["outputs"]["records"][0].split("/")[1]
    assert not os.path.exists(os.path.join(out, "versions", version))
    assert set(workdir["second"]["files"]) <= _files(out)
    assert sum(1 for _ in gm_records.iter_scored_records(out)) == 40


def test_keep_two_keeps_the_previous_run(workdir):
    out, first = workdir["out"], workdir["first"]
    os.remove(os.path.join(workdir["work"], "selections", "run1", "manifest.json"))
    gc.gc(out, keep=2)
    left = _files(out)
    assert set(first["files"]) <= left and set(workdir["second"]["files"]) <= left
    assert STRAY + ".json" not in left


def test_cli_entry_and_a_held_lease(workdir, capsys):
    assert cli.main(["gc", workdir["out"], "--dry_run"]) == 0
    assert "would remove" in capsys.readouterr().out
    from gristmill import lease
    with lease.acquire(workdir["out"], "a running job"):
        assert cli.main(["gc", workdir["out"]]) != 0
    assert io.exists(os.path.join(workdir["out"], STRAY + ".json"))  # nothing removed while a job held it


def test_gc_on_cloud_storage(workdir, gcs_bucket):
    """The same collection on gs:// (a GCS API server): one listing, the lease by ifGenerationMatch=0."""
    out, first, second = workdir["out"], workdir["first"], workdir["second"]
    remote = f"{gcs_bucket}/work/steps/density"
    for rel in _files(out):
        with open(os.path.join(out, rel), "rb") as f:
            io.atomic_write(io.join(remote, rel), f.read())
    data = [io.join(remote, os.path.relpath(p, out)) for p in workdir["data"]]
    io.write_json(f"{gcs_bucket}/work/selections/run1/manifest.json", {"selection": {"data": data}})
    (found,) = gc.gc(remote)
    left = {io.relative(p, remote) for p in io.list_stats(remote)}
    assert set(second["files"]) <= left and {os.path.relpath(p, out) for p in workdir["data"]} <= left
    assert first["outputs"]["sketch"] not in left and STRAY + ".json" not in left
    assert "versions/sketch.npz.tmp-0a1b" in found.remove and not any(io.is_temporary(p) for p in left)


def test_a_manifest_without_file_lists_keeps_every_file_of_its_units(workdir):
    out = workdir["out"]
    for rel in ["manifest.json"] + [p for p in _files(out) if p.startswith("manifests/")]:
        older = gm_records.read_manifest(out) if rel == "manifest.json" else json.load(open(os.path.join(out, rel)))
        older.pop("files")  # as an older gristmill wrote it
        with open(os.path.join(out, rel), "w") as f:
            json.dump(older, f)
    unit_files = {p for p in _files(out) if p.startswith("units/") and not p.startswith(STRAY)}
    gc.gc(out)
    left = _files(out)
    assert unit_files <= left and not any(p.startswith(STRAY) for p in left)
    assert set(workdir["second"]["outputs"]["records"]) <= left
