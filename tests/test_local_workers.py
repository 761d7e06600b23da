"""`--workers N` for one-pass jobs: N local processes each write a share of the units, the launcher the manifest."""

import json
import os

from gristmill import cli
from gristmill import records as gm_records


def _corpus(tmp_path, files=4, per_file=40):
    for f in range(files):
        with open(tmp_path / f"part-{f}.jsonl", "w") as out:
            out.writelines(json.dumps({"text": f"document {f}-{i} " + "word " * (i % 7)}) + "\n"
                           for i in range(per_file))
    return str(tmp_path / "part-*.jsonl")


def test_workers_write_shares_of_the_units_and_the_output_equals_one_process(tmp_path, capfd, caplog):
    corpus = _corpus(tmp_path)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert cli.main(["score", "random", "--input", corpus, "--output", one, "--unit_records", "15"]) == 0
    capfd.readouterr()
    assert cli.main(["score", "random", "--input", corpus, "--output", two, "--unit_records", "15",
                     "--workers", "2"]) == 0
    logged = capfd.readouterr().err + caplog.text  # the second worker's stderr, the launcher's own log
    assert "(worker 1 of 2)" in logged and "(worker 2 of 2)" in logged  # two processes, each its share
    a, b = gm_records.read_manifest(one), gm_records.read_manifest(two)
    assert b["counts"] == {**a["counts"], "units_reused": a["counts"]["units_total"]}  # the launcher reused all
    assert a["files"] == b["files"] and b["reconciled"]
    for name in a["outputs"]["records"]:
        with open(os.path.join(one, name), "rb") as x, open(os.path.join(two, name), "rb") as y:
            assert x.read() == y.read()
    assert not os.path.exists(os.path.join(two, "lease.json"))
