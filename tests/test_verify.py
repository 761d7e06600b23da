"""Verified outputs: a damaged unit file is redone by a rerun and refused by readers; a lost unit fails the job.

Locally and on gs:// (a GCS API server, whose listing carries each object's CRC32C).
"""

from __future__ import annotations

import logging
import re

import apache_beam as beam
import pytest

from tests import faults

UNIT_RECORDS = 8
JOB = ["score", "random", f"--unit_records={UNIT_RECORDS}", "--seed=5"]


@pytest.fixture
def corpus(tmp_path) -> str:
    """22 lines of real C4 documents, 2 of them bad: units of 8, 8 and 6 lines."""
    path = str(tmp_path / "a.jsonl")
    faults.write_corpus(path, 100, 20, {2: "not json at all", 12: "[1, 2]"})
    return path


def unit_file(output_dir: str, chunk: int, suffix: str = ".tfrecord") -> str:
    """The relative path of one chunk's file in a finished output (from its manifest)."""
    names = [rel for rel in faults.listed_files(faults.manifest(output_dir))
             if re.search(rf"\.{chunk:05d}\.[0-9a-f]{{16}}{re.escape(suffix)}$", rel)]
    assert len(names) == 1, names
    return names[0]


def damage(path: str, how: str) -> None:
    """Deletes a file, cuts it to half its size, or flips one bit in its middle (same size)."""
    if how == "deleted":
        faults.remove(path)
        return
    data = faults.read(path)
    if how == "truncated":
        faults.write(path, data[:len(data) // 2])
    else:
        middle = len(data) // 2
        faults.write(path, data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])


@pytest.mark.parametrize("how", ["deleted", "truncated", "bit-flipped"])
def test_a_damaged_unit_is_redone_by_a_rerun_and_refused_by_select(output_root, corpus, how, caplog, capsys):
    out = faults.join(output_root, "scored")
    argv = [*JOB, "--input", corpus, "--output", out]
    faults.run_in_process(argv)
    finished = faults.snapshot(out)
    rel = unit_file(out, 1)
    damage(faults.join(out, rel), how)

    # Every reader checks what it reads against the manifest: select refuses, naming the file.
    select = ["select", "--input", out, "--output", faults.join(output_root, "selected"), "--rule=random",
              "--rate=0.5"]
    code, message = faults.main_outcome(select, capsys)
    assert code != 0, f"select read a {how} unit without complaint:\n{faults.tail(message)}"
    assert rel.rsplit("/", 1)[-1] in message, f"select's error does not name the {how} file {rel}:\n{message}"

    # A plain rerun redoes that unit, says so, and ends byte-identical to the finished run.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gristmill"):
        manifest = faults.run_in_process(argv)
    key = rel.rsplit("/", 1)[-1][:-len(".tfrecord")]
    said = [r.getMessage() for r in caplog.records if key in r.getMessage() and "redo" in r.getMessage()]
    assert said, f"the rerun did not say it redoes unit {key}: {[r.getMessage() for r in caplog.records][-10:]}"
    assert manifest["counts"]["units_reused"] == 2 and manifest["reconciled"]
    assert faults.snapshot(out) == finished
    assert faults.run_in_process(select)["counts"]["read"] == 20  # and now select reads it


@pytest.mark.parametrize("lost_chunk", [1, 2], ids=["a-middle-unit", "the-last-unit"])
def test_a_runner_that_loses_a_unit_fails_naming_it_and_writes_no_manifest(output_root, corpus, lost_chunk):
    from gristmill.pipelines import kit, score_random

    def lossy(config, options):
        """score random, then the loss a faulty runner causes: every Item of one unit disappears."""
        return _Lossy(config, options, f".{lost_chunk:05d}.")

    scorer = kit.Scorer(score_random.SCORER.job, score_random.SCORER.config_class, lossy,
                        description=score_random.SCORER.description)
    out = faults.join(output_root, "lossy")
    argv = [*JOB[2:], "--input", corpus, "--output", out]
    with pytest.raises(Exception) as err:  # noqa: PT011 (the runner wraps the job's IncompleteJobError)
        kit.run_scorer(scorer, argv)
    assert not faults.exists(faults.join(out, faults.MANIFEST)), "a job that lost a unit wrote a manifest"

    # The unit it names is the one lost: a plain rerun finishes, doing exactly that unit.
    manifest = score_random.run(argv)
    assert manifest["reconciled"] and manifest["counts"]["units_total"] == 3
    assert manifest["counts"]["units_reused"] == 2
    key = next(u["key"] for u in manifest["units"] if u["chunk"] == lost_chunk)
    message = str(err.value)
    if lost_chunk == 1:  # a gap: the unit is known, and named
        assert key in message, f"the failure does not name the lost unit {key}: {message[-2000:]}"
    else:  # the file's end never arrived: the failure names the file and that its last unit is missing
        assert corpus in message and "last" in message, f"the failure does not say {corpus} lost its end: {message}"


class _Lossy(beam.PTransform):
    def __init__(self, config, options, lost: str):
        super().__init__()
        self.config, self.options, self.lost = config, options, lost

    def expand(self, items):
        from gristmill.pipelines import score_random
        lost = self.lost
        return (items
                | "Score" >> score_random.score_random(self.config, self.options)
                | "LoseUnit" >> beam.Filter(lambda item: lost not in item.unit))
