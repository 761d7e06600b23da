"""Resume bookkeeping in O(listings): a rerun trusts the last run's unit index for the units it lists."""

import json
import os

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
