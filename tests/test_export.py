"""gristmill export: a score random output (and a curate selection) as Parquet and JSON lines, read back by
pyarrow, HF datasets and DataTrove; reruns, kills, refusals and exit codes."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gristmill import cli, curate, export, io, records
from gristmill.pipelines import score_random

SCORE = "score/random/seed-0"
ALL = ("id", "text", "label", "vec", "lang", "quality", "score/*")


def _doc(n: int) -> dict:
    doc = {"text": f"Document {n} talks about topic {n % 5}. Ünïcödé stays.", "url": f"https://example.com/{n}",
           "label": n % 2, "vec": [0.5] if n % 3 == 0 else [0.1 * n, 0.25, -1.0], "lang": "en",
           "quality": n if n % 2 else n + 0.5}  # ints in some records, floats in others
    if n % 10 == 4:
        del doc["lang"]  # two of the fourteen records lack it
    return doc


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A `score random` output of 14 documents in 4 record files, with int, float-list and string kept fields."""
    root = tmp_path_factory.mktemp("export-source")
    for f in range(2):
        with open(root / f"c{f}.jsonl", "w") as out:
            out.writelines(json.dumps(_doc(f * 10 + i)) + "\n" for i in range(7))
    output = str(root / "scored")
    score_random.run(["--input", str(root / "*.jsonl"), "--output", output, "--unit_records", "4",
                      "--keep_fields", "label,vec,lang,quality"])
    return output


def _records(source):
    return list(records.iter_scored_records(source))


def _export(source, out, *flags):
    return export.run(["--input", source, "--output", str(out), *flags])


def _parts(out, ext):
    return sorted(glob.glob(os.path.join(str(out), f"part-*{ext}")))


def _stats(out):
    """(inode, mtime_ns, size) of every file but the lease: what a rewrite would change."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            if name != "lease.json":
                st = os.stat(os.path.join(root, name))
                found[os.path.relpath(os.path.join(root, name), out)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def _expected_row(record, columns):
    """A record as the export should hold it: lists where the column is a list, None where missing."""
    row = {}
    for c in columns:
        value = record.get(c["name"])
        if isinstance(value, bytes):
            value = value.decode()
        if c["list"] and value is not None and not isinstance(value, list):
            value = [value]
        row[c["name"]] = value
    return row


def test_parquet_has_a_stable_schema_and_reads_back_with_pyarrow_and_hf_datasets(scored, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "parquet"
    manifest = _export(scored, out, "--features", ",".join(ALL), "--allow_missing", "--row_group_rows", "3")
    parts = _parts(out, ".parquet")
    assert [os.path.basename(p) for p in parts] == [f"part-0000{i}-of-00004.parquet" for i in range(4)]
    assert manifest["outputs"]["records"] == [os.path.basename(p) for p in parts]
    expected_schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int64()),
                                 ("vec", pa.list_(pa.float32())), ("lang", pa.string()), ("quality", pa.float64()),
                                 (SCORE, pa.float32())])
    for part in parts:  # the same schema in every file, even where a file's vec values all have one element
        assert pq.read_schema(part).remove_metadata() == expected_schema
    assert pq.ParquetFile(parts[0]).num_row_groups == 2  # 4 rows in groups of 3
    source = _records(scored)
    want = [_expected_row(r, manifest["columns"]) for r in source]
    got = pq.read_table(parts).to_pylist()
    assert [g["id"] for g in got] == [w["id"] for w in want]
    assert got == want  # float32 values come back exactly
    assert sum(g["lang"] is None for g in got) == 2
    assert manifest["counts"] == {"read": 14, "written": 14, "source_records": 14, "files": 4, "files_reused": 0}
    assert manifest["reconciled"] and manifest["source"]["kind"] == "output"
    for name, info in manifest["files"].items():
        data = open(out / name, "rb").read()
        assert {"size": len(data), "crc32c": io.checksum(data)} == {k: info[k] for k in ("size", "crc32c")}
    import datasets
    ds = datasets.load_dataset("parquet", data_files=parts, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 14 and ds.column_names == [c["name"] for c in manifest["columns"]]
    assert ds.features["vec"].feature.dtype == "float32" and ds.features["label"].dtype == "int64"
    assert ds[1]["id"] == want[1]["id"] and ds[1]["vec"] == want[1]["vec"]


def test_default_features_are_the_string_features_and_every_score(scored, tmp_path):
    manifest = _export(scored, tmp_path / "default")
    assert [c["name"] for c in manifest["columns"]] == ["id", "text", "url", "timestamp", "source", SCORE]
    assert not any(c["list"] for c in manifest["columns"])


def test_zstd_json_lines_round_trip_and_read_with_hf_datasets_and_datatrove(scored, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "jsonl"
    manifest = _export(scored, out, "--format", "jsonl.zst", "--features", ",".join(ALL), "--allow_missing")
    parts = _parts(out, ".jsonl.zst")
    assert len(parts) == 4
    lines = []
    for part in parts:
        with open(part, "rb") as f:
            lines += zstandard.ZstdDecompressor().stream_reader(f).read().decode("utf-8").splitlines()
    got = [json.loads(line) for line in lines]
    assert got == [_expected_row(r, manifest["columns"]) for r in _records(scored)]
    assert list(got[0]) == ["id", "text", "label", "vec", "lang", "quality", SCORE]
    assert [type(g["quality"]) for g in got[:2]] == [float, float]  # every key on every line, in order
    import datasets
    ds = datasets.load_dataset("json", data_files=parts, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 14 and ds["id"] == [g["id"] for g in got]
    pytest.importorskip("datatrove")
    from datatrove.pipeline.readers import JsonlReader
    docs = list(JsonlReader(str(out), glob_pattern="part-*.jsonl.zst")())
    assert [d.id for d in docs] == [g["id"] for g in got]
    assert docs[0].text == got[0]["text"] and docs[0].metadata[SCORE] == got[0][SCORE]


def test_a_rerun_with_the_same_flags_writes_nothing(scored, tmp_path):
    out = tmp_path / "again"
    first = _export(scored, out, "--format", "jsonl")
    before = _stats(out)
    assert first == _export(scored, out, "--format", "jsonl")
    assert _stats(out) == before


def test_a_killed_export_resumes_and_equals_an_uninterrupted_one(scored, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "killed"
    _export(scored, whole)
    argv = [sys.executable, "-m", "gristmill.cli", "export", "--input", scored, "--output", str(out)]
    env = {**os.environ, "GRISTMILL_CRASH_AT": "part-00002-of-00004.parquet"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert [os.path.basename(p) for p in _parts(out, ".parquet")] == ["part-00000-of-00004.parquet",
                                                                     "part-00001-of-00004.parquet"]
    assert not os.path.exists(out / export.MANIFEST_FILE)
    assert glob.glob(str(out / "*.tmp-*"))  # the staged third file the kill left
    done = {name: stat for name, stat in _stats(out).items() if name.startswith("part-") and ".tmp-" not in name}
    manifest = _export(scored, out)
    assert manifest["counts"]["files_reused"] == 2 and manifest["reconciled"]
    assert {name: _stats(out)[name] for name in done} == done  # the finished files were not rewritten
    assert not glob.glob(str(out / "*.tmp-*"))
    for name in manifest["files"]:
        assert open(out / name, "rb").read() == open(whole / name, "rb").read()


def test_a_changed_file_is_written_again(scored, tmp_path):
    out = tmp_path / "changed"
    _export(scored, out)
    victim = _parts(out, ".parquet")[1]
    good = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(good[:-10])
    manifest = _export(scored, out)
    assert open(victim, "rb").read() == good and manifest["counts"]["files_reused"] == 3


def test_other_flags_are_refused_in_one_line_and_overwrite_replaces(scored, tmp_path, capsys):
    out = str(tmp_path / "refuse")
    _export(scored, out)
    code = cli.main(["export", "--input", scored, "--output", out, "--format", "jsonl"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "different configuration (format: 'parquet' -> 'jsonl')" in err and "--overwrite" in err
    assert cli.main(["export", "--input", scored, "--output", out, "--format", "jsonl", "--overwrite"]) == 0
    assert len(_parts(out, ".jsonl")) == 4 and not _parts(out, ".parquet")


@pytest.mark.parametrize("flags, message", [
    (["--features", "id,text,lang"], "c0.jsonl.00001.* record 1 has no feature 'lang' (2 of 14 records lack it); "
                                     "pass --allow_missing"),
    (["--features", "id,txt"], "--features 'txt': no record of the source has it; did you mean 'text'?"),
    (["--features", "id,logp/*"], "--features 'logp/*' matches no feature of the source"),
    (["--features", "id,id"], "names a feature twice"),
    (["--format", "csv"], "invalid choice: 'csv'"),
    (["--fromat", "jsonl"], "unknown flag --fromat; did you mean --format?"),
    (["--zstd_level", "0"], "--zstd_level must be in 1..22"),
])
def test_usage_errors_exit_2_in_one_line_and_leave_no_trace(scored, tmp_path, capsys, flags, message):
    out = tmp_path / "bad"
    code = cli.main(["export", "--input", scored, "--output", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(re.escape(message).replace(r"\*", ".*"), err), err
    assert not os.path.exists(out) or os.listdir(out) == []  # the corrected command is not refused
    assert cli.main(["export", "--input", scored, "--output", str(out), "--features", "id,text"]) == 0


def test_a_corrupt_source_file_is_named_and_nothing_is_exported(scored, tmp_path, capsys):
    source = str(tmp_path / "source")
    shutil.copytree(scored, source)
    victim = sorted(glob.glob(os.path.join(source, "units", "*.tfrecord")))[2]
    data = bytearray(open(victim, "rb").read())
    data[-20] ^= 0xFF
    open(victim, "wb").write(bytes(data))
    code = cli.main(["export", "--input", source, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and victim in err and "rerun the job that wrote it" in err
    assert not _parts(tmp_path / "out", ".parquet")


def test_an_output_inside_the_input_is_refused(scored, capsys):
    assert cli.main(["export", "--input", scored, "--output", os.path.join(scored, "export")]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(scored, "export"))


def test_a_published_curate_selection_exports_its_selected_records(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps(_doc(n)) + "\n" for n in range(30)))
    config = {"name": "export-test", "input": str(corpus / "*.jsonl"), "workdir": str(tmp_path / "work"),
              "flags": {"unit_records": 8},
              "steps": [{"name": "random", "job": "score random", "flags": {"seed": 0}},
                        {"name": "top", "job": "select", "input_from": "random",
                         "flags": {"score": SCORE, "rule": "topk", "rate": 0.4}}]}
    (tmp_path / "curation.json").write_text(json.dumps(config))
    published = curate.run(["--config", str(tmp_path / "curation.json"), "--run_id", "r1"])
    manifest = _export(str(tmp_path / "work"), tmp_path / "export", "--format", "jsonl")  # LATEST -> r1
    assert manifest["source"]["kind"] == "selection" and manifest["source"]["run_id"] == "r1"
    selected = [r["id"] for path in published["selection"]["selected_records"]
                for r in records.iter_scored_records(path)]
    rows = [json.loads(line) for p in _parts(tmp_path / "export", ".jsonl") for line in open(p)]
    assert sorted(r["id"] for r in rows) == sorted(selected)
    assert len(rows) == published["selection"]["counts"]["written"] == 12
    assert manifest["reconciled"] and all(r[SCORE] is not None for r in rows)


def test_export_to_gcs_is_atomic_and_a_rerun_writes_nothing(scored, gcs_bucket):
    out = f"{gcs_bucket}/export"
    manifest = _export(scored, out, "--format", "jsonl.zst")
    listed = {path: stat for path, stat in io.list_stats(out).items() if not path.endswith("lease.json")}
    assert sorted(io.basename(p) for p in listed) == sorted(
        [*manifest["files"], *(f"{name}.json" for name in manifest["files"]), export.MANIFEST_FILE, "job.json"])
    assert _export(scored, out, "--format", "jsonl.zst") == manifest
    again = {path: stat for path, stat in io.list_stats(out).items() if not path.endswith("lease.json")}
    assert {p: s.generation for p, s in again.items()} == {p: s.generation for p, s in listed.items()}
    first = io.read_bytes(f"{out}/{manifest['outputs']['records'][0]}")
    rows = zstandard.ZstdDecompressor().decompressobj().decompress(first).decode().splitlines()
    assert len(rows) == manifest["files"][manifest["outputs"]["records"][0]]["rows"]
