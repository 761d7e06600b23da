"""`gristmill experiment` end to end: a tiny grid (full + top-k on a length score, tiny T5, 4 steps)
on 200 embedded C4 documents scored in the test, with two samplers that must be skipped."""

import json
import os

import numpy as np
import pytest

from gristmill import cli, documents, records, sampling
from gristmill.eval import experiment as E
from gristmill.eval import metrics
from gristmill.eval import perplexity as P

LENGTH = records.score_feature("length", "chars")
PARTIAL = records.score_feature("askllm", "partial")
N_DOCS = 200


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    docs = [d for d in documents.read_documents(P.embedded_corpus()) if not isinstance(d, documents.DeadLetter)]
    path = tmp_path_factory.mktemp("scored") / "scored-00000-of-00001.tfrecord"
    with open(path, "wb") as f:
        for i, doc in enumerate(docs[:N_DOCS]):
            doc = dict(doc, **{LENGTH: float(len(doc["text"]))})
            if i % 2 == 0:
                doc[PARTIAL] = 0.5
            f.write(records.encode_tfrecord(records.serialize(doc)))
    return str(path)


def test_config_errors_name_the_problem(tmp_path):
    base = {"scored": "x", "output": str(tmp_path), "samplers": {"full": None}}
    with pytest.raises(E.ExperimentError, match="unknown experiment config keys"):
        E.ExperimentConfig.from_dict({**base, "rate": [0.1]})
    with pytest.raises(E.ExperimentError, match="unknown rule 'top'"):
        E.ExperimentConfig.from_dict({**base, "samplers": {"a": {"rule": "top", "score": "s"}}})
    with pytest.raises(E.ExperimentError, match="needs a \"score\""):
        E.ExperimentConfig.from_dict({**base, "samplers": {"a": {"rule": "topk"}}})
    with pytest.raises(E.ExperimentError, match="set by the experiment"):
        E.ExperimentConfig.from_dict({**base, "train": {"steps": 3}})
    with pytest.raises(E.ExperimentError, match="unknown model size"):
        E.ExperimentConfig.from_dict({**base, "models": ["huge"]})
    config = E.ExperimentConfig.from_dict({**base, "samplers": {"full": None, "r": {"rule": "random"}},
                                           "rates": [0.1, 0.2], "models": ["tiny", "small"], "steps": [5]})
    names = [c.name for c in E.grid(config, config.samplers)]
    assert names == [os.path.join("runs", n) for n in ("tiny-s5/full", "tiny-s5/r-0.1", "tiny-s5/r-0.2",
                                                       "small-s5/full", "small-s5/r-0.1", "small-s5/r-0.2")]


def test_tiny_grid_end_to_end(scored, tmp_path):
    out = tmp_path / "exp"
    config = {
        "scored": scored, "output": str(out),
        "samplers": {"full": None, "longest": {"rule": "topk", "score": LENGTH},
                     "askllm": {"rule": "topk", "score": PARTIAL},
                     "density": {"rule": "ips", "score": "score/density/minilm"}},
        "rates": [0.5], "models": ["tiny"], "steps": [4], "evaluations": 2, "vocab_size": 512,
        "train": {"batch_size": 8, "concat_documents": 16, "shuffle_buffer": 64},
        "eval": {"inputs_length": 128, "batch_size": 16, "max_documents": 6},
    }
    config_path = tmp_path / "experiment.json"
    config_path.write_text(json.dumps(config))
    assert cli.main(["experiment", "--config", str(config_path)]) == 0

    summary = E.read_experiment(str(out))
    assert summary["runs"] == [os.path.join("runs", "tiny-s4", "full"), os.path.join("runs", "tiny-s4", "longest-0.5")]
    assert set(summary["skipped_samplers"]) == {"askllm", "density"}
    assert "set \"missing\": \"drop\"" in summary["skipped_samplers"]["askllm"]
    assert "no document of the corpus" in summary["skipped_samplers"]["density"]

    # held-out documents are exactly the id-hash split and never in the training file
    corpus = summary["corpus"]
    train_ids = [r["id"] for r in records.iter_scored_records(str(out / E.TRAIN_DATA))]
    all_ids = [r["id"] for r in records.iter_scored_records(scored)]
    held = {i for i in all_ids if P.is_heldout(i)}
    assert set(train_ids) == set(all_ids) - held and corpus["heldout_documents"] == len(held) > 0
    assert corpus["train_documents"] + corpus["heldout_documents"] == N_DOCS

    # the top-k run's plan keeps the longer half of the training documents
    plan = sampling.Plan.from_json((out / "runs/tiny-s4/longest-0.5/plan.json").read_text())
    train_records = list(records.iter_scored_records(str(out / E.TRAIN_DATA)))
    kept = sampling.keep_mask(plan, [r["id"] for r in train_records], [r[LENGTH] for r in train_records])
    lengths = np.asarray([r[LENGTH] for r in train_records])
    assert kept.sum() == round(len(train_records) * 0.5)
    assert lengths[kept].min() >= lengths[~kept].max()

    rows = E.read_results(str(out))
    assert len(rows) == 2 * 2 * 2  # runs x checkpoints x text sets
    results = metrics.as_results(rows)
    assert {(r.sampler, r.step, r.metric) for r in results} == {
        (s, step, m) for s in ("full", "longest") for step in (2, 4)
        for m in ("perplexity/c4_heldout", "perplexity/high_quality")}
    for r in results:
        assert r.tokens == r.step * 8 * 128 and 1 < r.value < 1e4
        assert r.model == "tiny" and r.steps == 4 and r.rate == (1.0 if r.sampler == "full" else 0.5)
    assert all(row["parameters"] > 0 for row in rows)
    full = {(r.step, r.metric): r.value for r in results if r.sampler == "full"}
    assert full[(4, "perplexity/c4_heldout")] < full[(2, "perplexity/c4_heldout")]  # it learns

    # rerunning an unchanged experiment reuses every evaluation
    stamp = os.path.getmtime(out / "runs/tiny-s4/full/eval.json")
    again = E.run_experiment(E.ExperimentConfig.from_file(str(config_path)))
    assert again == rows and os.path.getmtime(out / "runs/tiny-s4/full/eval.json") == stamp

    # and the report of it: learning curves of both runs, speed-up against the full run
    from gristmill.eval import report

    page = tmp_path / "report.html"
    assert cli.main(["report", "--experiment", str(out), "--output", str(page)]) == 0
    data = report.build_report(str(out))
    assert [e["label"] for e in data.curves["perplexity/c4_heldout"]] == ["tiny s4 full", "tiny s4 longest 50%"]
    assert data.scored == scored and LENGTH in data.histograms
    longest = next(r for r in data.table if r["sampler"] == "longest")
    assert "no larger model size" in longest["over_scaling_note"]
    assert set(longest["speed_up"]) == {"perplexity/c4_heldout", "perplexity/high_quality"}
    assert all(f'<section id="{s}">' in page.read_text() for s in report.SECTIONS)
