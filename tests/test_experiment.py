"""`gristmill experiment` end to end: a tiny grid (full + top-k on a length score, tiny T5, 4 steps)
on 200 embedded C4 documents scored in the test, with two samplers that must be skipped."""

import json
import os

import numpy as np
import pytest

from gristmill import cli, documents, records, sampling
from gristmill import experiment as E
from gristmill.eval import grid as G
from gristmill.eval import metrics
from gristmill.eval import perplexity as P
from gristmill.eval import results as R

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
    with pytest.raises(G.ExperimentError, match="unknown experiment config keys"):
        G.ExperimentConfig.from_dict({**base, "rate": [0.1]})
    with pytest.raises(G.ExperimentError, match="unknown rule 'top'"):
        G.ExperimentConfig.from_dict({**base, "samplers": {"a": {"rule": "top", "score": "s"}}})
    with pytest.raises(G.ExperimentError, match="needs a score feature"):
        G.ExperimentConfig.from_dict({**base, "samplers": {"a": {"rule": "topk"}}})
    with pytest.raises(G.ExperimentError, match="set by the experiment"):
        G.ExperimentConfig.from_dict({**base, "train": {"steps": 3}})
    with pytest.raises(G.ExperimentError, match="unknown model size"):
        G.ExperimentConfig.from_dict({**base, "models": ["huge"]})
    config = G.ExperimentConfig.from_dict({**base, "samplers": {"full": None, "r": {"rule": "random"}},
                                           "rates": [0.1, 0.2], "models": ["tiny", "small"], "steps": [5]})
    names = [c.name for c in G.grid(config, config.samplers)]
    assert names == [os.path.join("runs", n) for n in ("tiny-s5/full", "tiny-s5/r-0.1", "tiny-s5/r-0.2",
                                                       "small-s5/full", "small-s5/r-0.1", "small-s5/r-0.2")]


def test_tiny_grid_end_to_end(scored, tmp_path):
    out = tmp_path / "exp"
    grid = {  # a grid file (no "scored"/"output": flags); "longest" is a pattern matching the length score
        "samplers": {"full": None, "longest": {"rule": "topk", "score": "score/length/*"},
                     "perplexity": {"rule": "bottomk", "score": "score/perplexity/*"},
                     "askllm": {"rule": "topk", "score": PARTIAL},
                     "density": {"rule": "ips", "score": "score/density/minilm"}},
        "rates": [0.5], "models": ["tiny"], "steps": [4], "evaluations": 2, "vocab_size": 512,
        "train": {"batch_size": 8, "concat_documents": 16, "shuffle_buffer": 64},
        "eval": {"inputs_length": 128, "batch_size": 16, "max_documents": 6},
    }
    grid_path = tmp_path / "grid.json"
    grid_path.write_text(json.dumps(grid))
    assert cli.main(["experiment", "--grid", str(grid_path), "--scored", scored, "--output", str(out)]) == 0

    summary = R.read_experiment(str(out))
    assert summary["runs"] == [os.path.join("runs", "tiny-s4", "full"),
                               os.path.join("runs", "tiny-s4", "longest-chars-0.5")]
    assert set(summary["skipped_samplers"]) == {"askllm", "density", "perplexity"}
    assert "matches 'score/perplexity/*'" in summary["skipped_samplers"]["perplexity"]
    assert summary["seeds"] == [0] and [c["sampler"] for c in summary["seed_comparison"]] == ["longest-chars"] * 2
    assert "set \"missing\": \"drop\"" in summary["skipped_samplers"]["askllm"]
    assert "no document of the corpus" in summary["skipped_samplers"]["density"]

    # held-out documents are exactly the id-hash split and never in the training file
    corpus = summary["corpus"]
    train_ids = [r["id"] for r in records.iter_scored_records(str(out / R.TRAIN_DATA))]
    all_ids = [r["id"] for r in records.iter_scored_records(scored)]
    held = {i for i in all_ids if P.is_heldout(i)}
    assert set(train_ids) == set(all_ids) - held and corpus["heldout_documents"] == len(held) > 0
    assert corpus["train_documents"] + corpus["heldout_documents"] == N_DOCS

    # the top-k run's plan keeps the longer half of the training documents
    plan = sampling.Plan.from_json((out / "runs/tiny-s4/longest-chars-0.5/plan.json").read_text())
    train_records = list(records.iter_scored_records(str(out / R.TRAIN_DATA)))
    kept = sampling.keep_mask(plan, [r["id"] for r in train_records], [r[LENGTH] for r in train_records])
    lengths = np.asarray([r[LENGTH] for r in train_records])
    assert kept.sum() == round(len(train_records) * 0.5)
    assert lengths[kept].min() >= lengths[~kept].max()

    rows = R.read_results(str(out))
    assert len(rows) == 2 * 2 * 2  # runs x checkpoints x text sets
    results = metrics.as_results(rows)
    assert {(r.sampler, r.step, r.metric) for r in results} == {
        (s, step, m) for s in ("full", "longest-chars") for step in (2, 4)
        for m in ("perplexity/c4_heldout", "perplexity/high_quality")}
    for r in results:
        assert r.tokens == r.step * 8 * 128 and 1 < r.value < 1e4
        assert r.model == "tiny" and r.steps == 4 and r.rate == (1.0 if r.sampler == "full" else 0.5)
    assert all(row["parameters"] > 0 and row["std"] == 0 and row["seeds"] == [0] for row in rows)
    full = {(r.step, r.metric): r.value for r in results if r.sampler == "full"}
    assert full[(4, "perplexity/c4_heldout")] < full[(2, "perplexity/c4_heldout")]  # it learns

    # rerunning an unchanged experiment reuses every evaluation
    stamp = os.path.getmtime(out / "runs/tiny-s4/full/eval.json")
    again = E.run_experiment(E.load_config(grid_file=str(grid_path), scored=[scored], output=str(out)))
    assert again == rows and os.path.getmtime(out / "runs/tiny-s4/full/eval.json") == stamp

    # and the report of it: learning curves of both runs, speed-up against the full run
    from gristmill.eval import report

    page = tmp_path / "report.html"
    assert cli.main(["report", "--experiment", str(out), "--output", str(page)]) == 0
    data = report.build_report(str(out))
    assert [e["label"] for e in data.curves["perplexity/c4_heldout"]] == ["tiny s4 full", "tiny s4 longest-chars 50%"]
    assert data.scored == scored and LENGTH in data.histograms
    longest = next(r for r in data.table if r["sampler"] == "longest-chars")
    assert "no larger model size" in longest["over_scaling_note"]
    assert set(longest["speed_up"]) == {"perplexity/c4_heldout", "perplexity/high_quality"}
    assert all(f'<section id="{s}">' in page.read_text() for s in report.SECTIONS)


def test_patterns_expand_to_one_sampler_per_present_feature():
    specs = (G.SamplerSpec(name="full"), G.SamplerSpec(name="askllm", rule="topk", score="score/askllm/*"),
             G.SamplerSpec(name="ppl", rule="bottomk", score="score/perplexity/*"),
             G.SamplerSpec(name="dens", rule="ips", score="score/density/minilm"))
    features = ["score/askllm/flan-t5-xl", "score/askllm/flan-t5-small", "score/density/minilm"]
    expanded, skipped = G.expand_samplers(specs, features)
    assert [(s.name, s.score) for s in expanded] == [
        ("full", None), ("askllm-flan-t5-small", "score/askllm/flan-t5-small"),
        ("askllm-flan-t5-xl", "score/askllm/flan-t5-xl"), ("dens", "score/density/minilm")]
    assert list(skipped) == ["ppl"]


def test_sampler_rates_and_seeds_shape_the_grid(tmp_path):
    config = G.ExperimentConfig.from_dict({
        "_comment": "ignored", "scored": "x", "output": str(tmp_path), "rates": [0.1, 0.2], "seeds": [3, 4],
        "samplers": {"full": None, "proto": {"rule": "topk", "score": "s", "rates": [0.25]}}})
    names = [c.name for c in G.grid(config, config.samplers)]
    assert names == [os.path.join("runs", "small-s1000", t, f"seed-{s}")
                     for t in ("full", "proto-0.25") for s in (3, 4)]
    with pytest.raises(G.ExperimentError, match="seeds repeat"):
        G.ExperimentConfig.from_dict({"scored": "x", "output": "o", "samplers": {"full": None}, "seeds": [1, 1]})
    with pytest.raises(G.ExperimentError, match="give --grid"):
        E.load_config()


def test_mean_over_seeds_and_comparison_with_full():
    def row(sampler, seed, step, value):
        rate = 1.0 if sampler == "full" else 0.2
        tail = sampler if sampler == "full" else f"{sampler}-0.2"
        return {"model": "tiny", "steps": 4, "sampler": sampler, "rate": rate, "metric": "perplexity/c4_heldout",
                "step": step, "tokens": step * 10, "value": value, "seed": seed, "documents": 10 + seed,
                "run": os.path.join("runs", "tiny-s4", tail, f"seed-{seed}")}
    full = [100.0, 110.0, 105.0]
    near, far = [104.0, 108.0, 100.0], [150.0, 152.0, 151.0]
    rows = [row("full", s, 4, v) for s, v in enumerate(full)] + [row("full", s, 2, 300.0) for s in range(3)]
    rows += [row("near", s, 4, v) for s, v in enumerate(near)] + [row("far", s, 4, v) for s, v in enumerate(far)]
    means = R.mean_over_seeds(rows)
    final_full = next(r for r in means if r["sampler"] == "full" and r["step"] == 4)
    assert final_full["run"] == os.path.join("runs", "tiny-s4", "full") and final_full["seeds"] == [0, 1, 2]
    assert final_full["value"] == pytest.approx(sum(full) / 3) and final_full["std"] == pytest.approx(5.0)
    assert (final_full["min"], final_full["max"], final_full["documents"]) == (100.0, 110.0, 11.0)
    assert len(metrics.final_results(means)) == 3  # one row per run and checkpoint: the report's shape
    by = {c.sampler: c for c in R.compare_to_full(means)}
    assert set(by) == {"near", "far"} and by["near"].within_spread and not by["far"].within_spread
    assert by["far"].difference == pytest.approx(151.0 - 105.0)


@pytest.mark.parametrize("name", ["paper.json", "demo.json"])
def test_shipped_grids_parse(name, tmp_path):
    path = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", name)
    config = E.load_config(grid_file=path, scored=["x"], output=str(tmp_path))
    expanded, skipped = G.expand_samplers(config.samplers, ["score/askllm/a", "score/askllm/b", "score/density/m"])
    assert {"full", "random", "askllm-a", "askllm-b"} <= {s.name for s in expanded}
    assert {"perplexity", "semdedup", "prototypes", "askllm-head"} <= set(skipped)
    if name == "paper.json":
        assert config.rates == (0.1, 0.2, 0.4, 0.6, 0.8) and set(config.models) == {"small", "large"}
