"""`gristmill demo` end to end on a shrunk configuration: every stage runs and every count reconciles."""

import gzip
import json
import os

import pytest

from gristmill import cli, documents
from gristmill import records as gm_records


def test_demo_runs_every_stage(tmp_path, capsys, embedded_glob):
    corpus = tmp_path / "c4-60.jsonl"
    with gzip.open(documents.expand_patterns([embedded_glob])[0], "rt", encoding="utf-8") as f:
        corpus.write_text("".join(line for _, line in zip(range(60), f)))
    out = tmp_path / "demo"
    assert cli.main(["demo", "--corpus", str(corpus), "--output", str(out), "--documents=40",
                     "--askllm_max_length=192", "--train_steps=4"]) == 0
    printed = capsys.readouterr().out
    for stage in ("score random", "score density", "score askllm", "select topk 20%", "select ips 20%",
                  "train + evaluate", "highest P(yes)", "lowest P(yes)"):
        assert stage in printed
    assert f"{corpus}: 40 read, 40 written, 0 dead-lettered" in printed
    for stage in ("random", "density", "askllm", "select-askllm-top20", "select-density-ips20"):
        manifest = gm_records.read_manifest(str(out / stage))
        assert manifest["reconciled"] and manifest["counts"]["read"] == 40, stage
        if stage.startswith("select"):  # every 20% selection is 20% of what its scorer scored
            with open(out / stage / "plan.json") as f:
                plan = json.load(f)
            assert plan["num_documents"] == 40 and plan["expected_documents"] == pytest.approx(8), stage
            if "top" in stage:  # top-k is exact; IPS keeps each document independently, 8 in expectation
                assert manifest["counts"]["written"] == 8, stage
    askllm = list(gm_records.iter_scored_records(str(out / "askllm")))
    assert sum("score/askllm/smollm2-135m-instruct" in r for r in askllm) == 40
    assert all({"score/random/seed-0", "score/density/minilm"} <= r.keys() for r in askllm)
    with open(out / "report.html", encoding="utf-8") as f:
        page = f.read()
    assert 'id="results"' in page and 'id="kendall"' in page
    assert os.path.exists(out / "experiment" / "results.jsonl")
