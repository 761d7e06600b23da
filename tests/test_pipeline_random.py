"""The Beam skeleton end to end with the Random scorer: dead letters, manifest, runners, determinism."""

import gzip
import json
import os

import google_crc32c
import pytest
import tensorflow as tf

from gristmill import cli, documents
from gristmill import records as gm_records
from gristmill.pipelines import kit, score_random
from gristmill.scoring.random_score import random_score
from gristmill.testing import MAX_BYTES

FEATURE = "score/random/seed-3"


def _run(tmp_path, name, input_glob, *flags):
    out = str(tmp_path / name)
    manifest = score_random.run(["--input", input_glob, "--output", out, "--seed=3", *flags])
    return out, manifest


def _id_scores(out):
    return {r["id"]: r[FEATURE] for r in gm_records.iter_scored_records(out)}


def test_bad_records_are_dead_lettered_and_counts_reconcile(tmp_path, bad_corpus):
    pattern, expected = bad_corpus
    out, manifest = _run(tmp_path, "out", pattern, f"--max_document_bytes={MAX_BYTES}")
    with open(os.path.join(out, kit.DEAD_LETTER_FILE)) as f:
        dead = [json.loads(line) for line in f]
    got = {(os.path.basename(d["source"]), d["record"]): d["reason"] for d in dead}
    assert {k: v for k, v in got.items() if v != "truncated_gzip"} == expected
    assert [k[0] for k, v in got.items() if v == "truncated_gzip"] == ["b.jsonl.gz"]
    counts = manifest["counts"]
    assert manifest["reconciled"] and counts["read"] == counts["written"] + counts["dead_lettered"]
    assert counts["dead_lettered"] == len(dead) == len(expected) + 1
    assert counts["dead_lettered_by_reason"]["missing_text"] == 2
    direct = list(documents.read_documents(pattern, documents.ReaderConfig(max_document_bytes=MAX_BYTES)))
    assert counts["read"] == len(direct)
    assert sorted(os.listdir(out)) == ["dead_letters.jsonl", "job.json", "manifest.json", "manifests", "units",
                                       "versions"]
    assert manifest["outputs"]["dead_letters"] == f"versions/{manifest['output_version']}/dead_letters.jsonl"
    for rel, info in manifest["files"].items():  # every listed file, with its size and CRC32C
        with open(os.path.join(out, rel), "rb") as f:
            data = f.read()
        assert info == {"size": len(data), "crc32c": f"{google_crc32c.value(data):08x}"}, rel
    assert set(manifest["outputs"]["records"]) < set(manifest["files"])
    assert manifest["config"] == {"seed": 3} and manifest["versions"]["apache-beam"]
    assert all(os.path.exists(os.path.join(out, p)) for p in manifest["outputs"]["records"])


def test_outputs_survive_byte_for_byte_and_read_with_tf_data(tmp_path, embedded_glob):
    out, manifest = _run(tmp_path, "out", embedded_glob)
    assert manifest["counts"]["written"] == 1000 and manifest["counts"]["dead_lettered"] == 0
    with gzip.open(documents.expand_patterns([embedded_glob])[0], "rt", encoding="utf-8") as f:
        source = {documents.document_id(r["url"], r["text"]): r for r in map(json.loads, f)}
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("id", "text", "url", "timestamp")}
    spec[FEATURE] = tf.io.FixedLenFeature([], tf.float32)
    seen = 0
    files = [os.path.join(out, p) for p in manifest["outputs"]["records"]]
    for raw in tf.data.TFRecordDataset(files):
        ex = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
        original = source[ex["id"].decode()]
        assert ex["text"] == original["text"].encode("utf-8")
        assert ex["url"] == original["url"].encode() and ex["timestamp"] == original["date"].encode()
        assert ex[FEATURE] == pytest.approx(random_score(ex["id"].decode(), 3), abs=1e-7)
        seen += 1
    assert seen == 1000
    # gristmill's own reader takes scored TFRecords back as input, keeping the score.
    again, _ = _run(tmp_path, "again", out)
    reread = {r["id"]: r for r in gm_records.iter_scored_records(again)}
    assert len(reread) == 1000 and all(reread[i]["text"] == source[i]["text"] for i in source)


def test_runners_agree_and_reruns_are_identical(tmp_path, embedded_glob):
    base, _ = _run(tmp_path, "inproc", embedded_glob)
    rerun, _ = _run(tmp_path, "rerun", embedded_glob)
    multi, _ = _run(tmp_path, "multi", embedded_glob, "--workers=2")
    portable, _ = _run(tmp_path, "portable", embedded_glob, "--runner=PortableRunner",
                       "--job_endpoint=embed")
    expected = _id_scores(base)
    assert len(expected) == 1000
    assert _id_scores(multi) == expected and _id_scores(portable) == expected
    names = gm_records.read_manifest(base)["outputs"]["records"] + ["dead_letters.jsonl"]
    for name in names:
        for other in (rerun, multi, portable):
            with open(os.path.join(base, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
                assert a.read() == b.read(), (name, other)


def test_random_score_is_uniform_and_seeded():
    values = [random_score(f"doc{i}", 0) for i in range(20000)]
    assert 0 <= min(values) and max(values) < 1
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert random_score("doc1", 0) != random_score("doc1", 1)


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["score", "random", "--input", str(tmp_path / "none*.json"), "--output", "x"]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert cli.main(["score", "random", "--output", "x"]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert cli.main([]) == 0 and "score random" in capsys.readouterr().out


def test_the_fused_read_score_write_step_writes_what_three_steps_write(tmp_path, bad_corpus):
    """A MapRecords scorer runs inside the step that reads and writes; the same function as a Beam Map
    between ReadUnits and WriteUnits gives the same unit files, dead letters and counts."""
    import apache_beam as beam

    pattern, _ = bad_corpus
    flags = ["--input", pattern, "--seed=3", f"--max_document_bytes={MAX_BYTES}", "--unit_records=4"]
    def as_a_map(config, options):
        return beam.Map(kit.map_records(score_random.score_random(config, options).fn))

    separate = kit.Scorer("score random", score_random.SCORER.config_class, as_a_map)
    fused_out, separate_out = str(tmp_path / "fused"), str(tmp_path / "separate")
    fused = kit.run_scorer(score_random.SCORER, [*flags, "--output", fused_out], save_main_session=False)
    apart = kit.run_scorer(separate, [*flags, "--output", separate_out], save_main_session=False)
    assert fused["files"] == apart["files"] and fused["counts"] == apart["counts"] and fused["reconciled"]
    for name in fused["files"]:
        with open(os.path.join(fused_out, name), "rb") as a, open(os.path.join(separate_out, name), "rb") as b:
            assert a.read() == b.read(), name
