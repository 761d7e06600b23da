"""The formats the field ships: Parquet (FineWeb) and zstd JSON lines (DCLM, Dolma, SlimPajama, the Pile)."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gristmill import cli, documents, records
from gristmill.pipelines import score_random

ROWS = [{"text": f"Document {i} is about topic {i % 3}.", "url": f"https://example.com/{i}",
         "date": f"2024-01-0{1 + i % 9}", "token_count": 7 + i, "dump": "CC-MAIN-2024-10"} for i in range(25)]


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in rows)


def _reference(tmp_path):
    """The same rows as plain JSON lines: what every format must read as (ids, texts, urls, kept fields)."""
    path = tmp_path / "ref.jsonl"
    path.write_bytes(_jsonl(ROWS))
    return [(r["id"], r["text"], r["url"], r["timestamp"], r["token_count"])
            for r in documents.read_file(str(path), documents.ReaderConfig(keep_fields=("token_count",)))]


def _documents(path):
    items = list(documents.read_file(str(path), documents.ReaderConfig(keep_fields=("token_count",))))
    assert not [i for i in items if isinstance(i, documents.DeadLetter)]
    return [(r["id"], r["text"], r["url"], r["timestamp"], r["token_count"]) for r in items]


def test_parquet_row_groups_read_as_the_same_documents_as_json_lines(tmp_path):
    path = tmp_path / "fineweb.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=4)  # 7 row groups
    assert pq.ParquetFile(path).num_row_groups == 7
    assert _documents(path) == _reference(tmp_path)


@pytest.mark.parametrize("name", ["dclm.jsonl.zst", "dolma.json.zst", "pile.zst"])
def test_zstd_json_lines_read_as_the_same_documents(tmp_path, name):
    path = tmp_path / name
    half = len(ROWS) // 2  # two frames, as concatenated shards are
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ROWS[:half]))
                     + zstandard.ZstdCompressor().compress(_jsonl(ROWS[half:])))
    config = documents.ReaderConfig(keep_fields=("token_count",), format="json")
    got = [(r["id"], r["text"], r["url"], r["timestamp"], r["token_count"])
           for r in documents.read_file(str(path), config)]
    assert got == _reference(tmp_path)


def test_a_truncated_zstd_file_keeps_what_it_read_and_dead_letters_the_rest(tmp_path):
    path = tmp_path / "cut.jsonl.zst"
    whole = zstandard.ZstdCompressor().compress(_jsonl(ROWS[:10])) + zstandard.ZstdCompressor().compress(
        _jsonl(ROWS[10:]))
    path.write_bytes(whole[:-12])  # the second frame is cut short
    numbered = list(documents.read_numbered(str(path), documents.ReaderConfig()))
    dead = [(n, d.reason) for n, d in numbered if isinstance(d, documents.DeadLetter)]
    assert dead[-1][1] == documents.TRUNCATED_ZSTD and len(dead) == 1
    assert [n for n, _ in numbered[:10]] == list(range(1, 11))


def test_a_file_that_is_not_parquet_is_one_unreadable_file_dead_letter(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    (item,) = documents.read_file(str(path), documents.ReaderConfig())
    assert item.reason == documents.UNREADABLE_FILE and "Parquet" in item.detail


def test_jobs_read_parquet_and_zstd_with_units_resume_and_limit(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a.parquet", row_group_size=4)
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ROWS)))
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "a.parquet"), "--input", str(tmp_path / "b.jsonl.zst"), "--output", out,
            "--unit_records=10"]
    first = score_random.run(argv)
    assert first["counts"]["written"] == 50 and first["counts"]["units_total"] == 6 and first["reconciled"]
    assert score_random.run(argv)["counts"]["units_reused"] == 6  # a rerun resumes
    ids = [r["id"] for r in records.iter_scored_records(out)]
    assert len(ids) == 50 and len(set(ids)) == 25  # the same 25 documents in both formats
    limited = score_random.run([*argv[:-3], "--output", str(tmp_path / "lim"), "--limit=12", "--unit_records=10"])
    assert limited["counts"]["read"] == 12


def test_a_binary_file_read_as_json_fails_the_job_naming_the_reason(tmp_path, capsys):
    path = tmp_path / "data.json"  # Parquet bytes under a JSON name: every line is garbage
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    code = cli.main(["score", "random", "--input", str(path), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "every one of the" in err and ("invalid_utf8" in err or "invalid_json" in err) and "--format" in err


def test_gzip_still_reads(tmp_path):
    path = tmp_path / "c4.json.gz"
    with gzip.open(path, "wb") as f:
        f.write(_jsonl(ROWS))
    assert _documents(path) == _reference(tmp_path)
