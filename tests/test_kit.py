"""The job kit: flags from dataclasses, units, the Item stream transforms, resume, incremental runs, safe outputs."""

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from gristmill import cli, documents, flags, io, records, testing
from gristmill.pipelines import inference, kit, score_density, score_random, units
from gristmill.scoring import density

# --------------------------------------------------------------------------- flags


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Config:
    size: int = dataclasses.field(default=3, metadata={"help": "a size"})
    name: Optional[str] = None
    ratio: float = 0.5
    fast: bool = False
    tags: tuple[str, ...] = ()
    kind: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})


def test_flags_are_derived_from_the_config_dataclass():
    import argparse
    parser = argparse.ArgumentParser()
    flags.add_flags(parser, _Config)
    config = flags.from_namespace(parser.parse_args(["--size=7", "--fast", "--tags", "x,y", "--tags=z", "--kind=b"]),
                                  _Config)
    assert config == _Config(size=7, fast=True, tags=("x", "y", "z"), kind="b")
    assert flags.from_namespace(parser.parse_args([]), _Config) == _Config()
    assert flags.from_namespace(parser.parse_args(["--fast=false", "--name=n"]), _Config).name == "n"
    assert flags.from_namespace(parser.parse_args(flags.to_argv(config)), _Config) == config
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind=c"])


# --------------------------------------------------------------------------- transforms


def test_run_model_scores_records_and_passes_other_items():
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    expected = testing.expected_items(texts)
    assert [it.value[testing.FAKE_FEATURE] for it in expected[1:]] == [testing.fake_score(t) for t in texts]
    with TestPipeline() as p:
        out = p | beam.Create(testing.unit_items(texts)) | inference.RunModel(testing.fake_model_spec())
        assert_that(out, equal_to(expected))


def test_failed_batches_become_inference_error_dead_letters():
    with TestPipeline() as p:
        out = (p | beam.Create(testing.unit_items([testing.FAIL_TEXT]))
               | inference.RunModel(testing.fake_model_spec())
               | beam.Map(lambda it: (it.kind, it.value.reason if it.kind == kit.DEAD else None)))
        assert_that(out, equal_to([(kit.UNIT, None), (kit.DEAD, kit.INFERENCE_ERROR)]))


def test_read_units_cuts_files_into_chunks_and_skips_done_ones(tmp_path):
    path = str(tmp_path / "c.jsonl")
    testing.write_corpus(path, 0, 5)
    with open(path, "a") as f:
        f.write("not json\n")
    file = units.InputFile(path, os.path.getsize(path), os.path.getmtime(path))
    work = units.FileWork(file, 2, "fp", frozenset({1}))
    with TestPipeline() as p:
        out = (p | beam.Create([work]) | kit.ReadUnits(documents.ReaderConfig())
               | beam.Map(lambda it: (it.kind, it.number, it.value.last if it.kind == kit.UNIT else None)))
        assert_that(out, equal_to([(kit.UNIT, 0, False), (kit.RECORD, 1, None), (kit.RECORD, 2, None),
                                   (kit.UNIT, 0, True), (kit.RECORD, 5, None), (kit.DEAD, 6, None)]))


def test_units_close_early_when_their_bytes_reach_unit_bytes(tmp_path):
    path = str(tmp_path / "big.jsonl")
    with open(path, "w") as f:
        for i, size in enumerate([100, 100, 5000, 100, 100, 100]):
            f.write(json.dumps({"text": f"doc {i} " + "x" * size}) + "\n")
    file = units.InputFile(path, os.path.getsize(path), os.path.getmtime(path))
    work = units.FileWork(file, 4, "fp", unit_bytes=1000)
    with TestPipeline() as p:
        infos = (p | beam.Create([work]) | kit.ReadUnits(documents.ReaderConfig())
                 | beam.Filter(lambda it: it.kind == kit.UNIT)
                 | beam.Map(lambda it: (it.value.chunk, it.value.documents, it.value.last)))
        # 4 records a unit at most, but the 5 kB document closes its unit at once
        assert_that(infos, equal_to([(0, 3, False), (1, 3, True)]))


def test_write_units_writes_each_unit_with_a_reconciled_marker(tmp_path):
    out = str(tmp_path / "out")
    items = testing.unit_items(["a", "b"]) + [
        kit.Item(kit.DEAD, "u", 3, documents.DeadLetter("f", 3, "invalid_json", "x"))]
    items[0] = items[0]._replace(value=items[0].value._replace(unreadable=1))
    with TestPipeline() as p:
        markers = (p | beam.Create(items) | kit.WriteUnits(out)
                   | beam.Map(lambda m: (m["read"], m["written"], m["dead_lettered"])))
        assert_that(markers, equal_to([(3, 2, 1)]))
    written = list(records.iter_tfrecords(open(units.unit_path(out, "u", units.RECORDS_SUFFIX), "rb")))
    assert [records.deserialize(d)["id"] for d in written] == ["d0", "d1"]


def test_unit_keys_change_with_the_file_and_the_config():
    f = units.InputFile("/x/a.json", 10, 1.0)
    key = units.unit_key(f, 0, 100, "fp")
    assert key.startswith("a.json.00000.")
    assert key == units.unit_key(f, 0, 100, "fp")
    assert key != units.unit_key(dataclasses.replace(f, mtime=2.0), 0, 100, "fp")
    assert key != units.unit_key(f, 0, 100, "fp2") != units.unit_key(f, 1, 100, "fp")


# --------------------------------------------------------------------------- safe outputs


def test_a_stale_run_is_refused_or_overwritten_and_dir_input_reads_one_run(tmp_path, embedded_glob):
    out = str(tmp_path / "random")
    os.makedirs(out)
    for i in range(4):  # what an earlier --num_shards 4 layout left behind
        with open(os.path.join(out, f"scored-{i:05d}-of-00004.tfrecord"), "wb") as f:
            f.write(b"")
    argv = ["--input", embedded_glob, "--output", out, "--unit_records=400"]
    with pytest.raises(units.OutputConflictError, match="already holds files of another run"):
        score_random.run(argv)
    score_random.run(argv + ["--overwrite"])
    assert not any(name.startswith("scored-") for name in os.listdir(out))
    with pytest.raises(units.OutputConflictError, match=r"seed: 0 -> 4"):
        score_random.run(argv + ["--seed=4"])
    selected = str(tmp_path / "all")
    manifest = cli_select(out, selected)
    assert manifest["counts"]["read"] == 1000 and manifest["counts"]["written"] == 1000


def cli_select(scored, out):
    from gristmill.pipelines import select
    return select.run(["--input", scored, "--output", out, "--rule=random", "--rate=1"])


def test_dir_without_manifest_is_an_unfinished_run(tmp_path):
    os.makedirs(tmp_path / "half" / "units")
    with pytest.raises(documents.InputError, match="did not finish"):
        documents.expand_patterns([str(tmp_path / "half")])


def test_all_missing_text_fails_and_names_the_fields(tmp_path, capsys):
    corpus = tmp_path / "pile.jsonl"
    corpus.write_text("".join(json.dumps({"contents": f"doc {i}", "meta": {}}) + "\n" for i in range(5)))
    code = cli.main(["score", "random", "--input", str(corpus), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "contents" in err and "--text_field" in err


# --------------------------------------------------------------------------- resume


def _big_corpus(tmp_path, files=4, per_file=6000):
    paths = []
    for n in range(files):
        path = tmp_path / f"part-{n}.jsonl.gz"
        with gzip.open(path, "wt") as f:
            for i in range(per_file):
                f.write(json.dumps({"text": f"file {n} document {i} " + "words " * 20, "url": f"u{n}/{i}"}) + "\n")
        paths.append(str(path))
    return paths


def _unit_files(out):
    manifest = records.read_manifest(out)
    return {name: open(os.path.join(out, name), "rb").read() for name in manifest["outputs"]["records"]}


def test_a_killed_two_worker_job_resumes_and_equals_an_uninterrupted_run(tmp_path):
    _big_corpus(tmp_path)
    pattern = str(tmp_path / "part-*.jsonl.gz")
    killed = str(tmp_path / "killed")
    argv = ["score", "random", "--input", pattern, "--unit_records=500"]
    command = [sys.executable, "-m", "gristmill.cli", *argv, "--output", killed, "--workers=2"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = units.read_markers(killed) if os.path.isdir(os.path.join(killed, "units")) else {}
        if len(done) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "manifest.json")), "the job ended before it was killed"
    assert 3 <= len(units.read_markers(killed)) < 48
    assert cli.main([*argv, "--output", killed]) == 0
    resumed = records.read_manifest(killed)
    assert resumed["counts"]["units_reused"] >= 3 and resumed["counts"]["units_total"] == 48
    assert resumed["reconciled"] and resumed["counts"]["written"] == 24000
    assert all(".tmp-" not in name for name in resumed["outputs"]["records"])
    clean = str(tmp_path / "clean")
    assert cli.main([*argv, "--output", clean]) == 0
    assert _unit_files(killed) == _unit_files(clean)
    assert cli.main([*argv, "--output", killed]) == 0  # nothing left to do
    assert records.read_manifest(killed)["counts"]["units_reused"] == 48


# --------------------------------------------------------------------------- incremental


def test_incremental_density_scores_only_new_units_and_sums_to_the_one_shot_sketch(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for n in range(4):
        testing.write_corpus(str(inputs / f"f{n}.jsonl"), n * 12, 12)
    small = ["--rows=32", "--hashes_per_row=4", "--unit_records=5", "--seed=3"]
    grow = str(tmp_path / "grow")
    first = score_density.run(["--input", str(inputs / "f[01].jsonl"), "--output", grow, *small])
    assert first["counts"]["units_total"] == 6 and first["counts"]["units_reused"] == 0
    second = score_density.run(["--input", str(inputs / "f*.jsonl"), "--output", grow, *small])
    assert second["counts"]["units_total"] == 12 and second["counts"]["units_reused"] == 6
    assert second["counts"]["written"] == 48 and second["reconciled"]
    ids = [r["id"] for r in records.iter_scored_records(grow)]
    assert len(ids) == len(set(ids)) == 48
    once = str(tmp_path / "once")
    score_density.run(["--input", str(inputs / "f*.jsonl"), "--output", once, *small])
    grown = density.Sketch.load(os.path.join(grow, records.read_manifest(grow)["outputs"]["sketch"]))
    one_shot = density.Sketch.load(os.path.join(once, records.read_manifest(once)["outputs"]["sketch"]))
    np.testing.assert_array_equal(grown.counts, one_shot.counts)
    scores = lambda d: {r["id"]: r["score/density/minilm"] for r in records.iter_scored_records(d)}  # noqa: E731
    assert scores(grow) == scores(once)


def test_select_writes_a_new_version_beside_its_own_run_when_its_input_grew(tmp_path):
    from gristmill.pipelines import select
    inputs = tmp_path / "in"
    inputs.mkdir()
    for n in range(2):
        testing.write_corpus(str(inputs / f"f{n}.jsonl"), n * 10, 10)
    scored = str(tmp_path / "scored")
    flags_ = ["--output", str(tmp_path / "sel"), "--rule=topk", "--rate=0.5", "--score=score/random/seed-0"]
    score_random.run(["--input", str(inputs / "f0.jsonl"), "--output", scored])
    assert select.run(["--input", scored, *flags_])["counts"]["read"] == 10
    score_random.run(["--input", str(inputs / "f*.jsonl"), "--output", scored])  # incremental: one more file
    first = records.read_manifest(str(tmp_path / "sel"))
    grown = select.run(["--input", scored, *flags_])
    assert grown["counts"]["read"] == 20 and grown["counts"]["written"] == 10
    assert grown["counts"]["units_reused"] == 0
    # The first version is untouched: every file its manifest listed is still there, byte for byte.
    for rel, info in first["files"].items():
        assert io.verify(os.path.join(tmp_path, "sel", rel), info) is None, rel
    assert grown["outputs"]["plan"] != first["outputs"]["plan"]
    with pytest.raises(units.OutputConflictError, match="rate: 0.5 -> 0.4"):
        select.run(["--input", scored, *flags_[:-2], "--rate=0.4", "--score=score/random/seed-0"])


def test_missing_units_names_gaps_and_a_missing_end():
    f = units.InputFile("/x/a.jsonl", 10, 1.0)
    key = lambda c: units.unit_key(f, c, 5, "fp")  # noqa: E731
    marker = lambda c, last=False: {"key": key(c), "source": f.path, "chunk": c, "last": last}  # noqa: E731
    assert units.missing_units([f], 5, "fp", [marker(0), marker(1), marker(2, last=True)]) == []
    gap = units.missing_units([f], 5, "fp", [marker(0), marker(2, last=True)])
    assert gap == [f"/x/a.jsonl chunk 1 (unit {key(1)})"]
    no_end = units.missing_units([f], 5, "fp", [marker(0), marker(1)])
    assert len(no_end) == 1 and "no unit after chunk 1 is marked the file's last" in no_end[0]
    assert units.missing_units([f], 5, "fp", []) == ["/x/a.jsonl: no unit arrived"]
    other = units.InputFile("/x/a.jsonl", 11, 1.0)  # a marker of another version of the file does not count
    assert units.missing_units([other], 5, "fp", [marker(0, last=True)]) == ["/x/a.jsonl: no unit arrived"]


def test_a_unit_lost_by_the_runner_fails_the_job_and_names_it(tmp_path):
    corpus = tmp_path / "a.jsonl"
    testing.write_corpus(str(corpus), 0, 12)
    out = str(tmp_path / "out")
    options, config, pipeline_options = kit.parse(["--input", str(corpus), "--output", out, "--unit_records=5"],
                                                  score_random.SCORER.config_class, "")
    prepared = kit.prepare("score random", options, config, pipeline_options)
    lost = units.unit_key(prepared.files[0], 1, 5, prepared.base["fingerprint"])
    with pytest.raises(Exception, match=f"never arrived.*chunk 1 \\(unit {lost}\\)"):
        with TestPipeline() as p:
            items = kit.read(p, prepared) | "LoseAUnit" >> beam.Filter(lambda it: it.unit != lost)
            kit.write(prepared, items)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    kit.release_output(out)


def test_verify_inputs_notices_an_input_rewritten_with_the_same_size_and_time(tmp_path):
    corpus = tmp_path / "a.jsonl"
    testing.write_corpus(str(corpus), 0, 6)
    stat = os.stat(corpus)
    out = str(tmp_path / "out")
    argv = ["--input", str(corpus), "--output", out]
    score_random.run(argv + ["--verify_inputs"])
    text = corpus.read_text()
    corpus.write_text(text.replace("Document 1 ", "Dokument 1 "))  # same size
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time
    assert score_random.run(argv + ["--verify_inputs"])["counts"]["units_reused"] == 0
    texts = {r["text"] for r in records.iter_scored_records(out)}
    assert any(t.startswith("Dokument 1 ") for t in texts)


def test_a_second_job_into_a_held_output_is_refused_naming_the_holder(tmp_path):
    from gristmill import lease
    out = str(tmp_path / "out")
    corpus = tmp_path / "a.jsonl"
    testing.write_corpus(str(corpus), 0, 3)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gristmill import lease; "
                               "lease.acquire(sys.argv[1], 'gristmill score askllm'); print('held', flush=True); "
                               "time.sleep(60)", out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lease.LeaseHeldError, match=f"in use by gristmill score askllm \\(pid {holder.pid}"):
            score_random.run(["--input", str(corpus), "--output", out])
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lease is stale on this host and is taken over at once.
    assert score_random.run(["--input", str(corpus), "--output", out])["counts"]["written"] == 3
    assert not os.path.exists(os.path.join(out, lease.LEASE_FILE))


def test_a_job_that_fails_before_its_first_unit_can_be_retried_as_corrected(tmp_path):
    from gristmill.pipelines import select
    corpus = tmp_path / "a.jsonl"
    testing.write_corpus(str(corpus), 0, 6)
    scored = str(tmp_path / "scored")
    score_random.run(["--input", str(corpus), "--output", scored])
    out = str(tmp_path / "sel")
    with pytest.raises(Exception, match="score/random/seed-9"):
        select.run(["--input", scored, "--output", out, "--rule=topk", "--rate=0.5", "--score=score/random/seed-9"])
    assert os.listdir(out) == []  # nothing of the failed start is left, not even job.json
    fixed = select.run(["--input", scored, "--output", out, "--rule=topk", "--rate=0.5",
                        "--score=score/random/seed-0"])
    assert fixed["counts"]["written"] == 3
