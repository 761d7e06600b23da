"""The distilled Ask-LLM job on real documents: a density output's cached embeddings, SmolLM2 on a
sample, a head that scores every document; a saved head re-applied to embeddings made anew."""

import json
import os

import numpy as np
import pytest

from gristmill import records as gm_records
from gristmill.pipelines import corpus, score_askllm_head, score_density
from gristmill.scoring import heads

SMOL = "smollm2-135m-instruct"
HEAD_FEATURE = f"score/askllm-head/{SMOL}"
LLM_FEATURE = f"score/askllm/{SMOL}"


@pytest.fixture(scope="module")
def density_out(tmp_path_factory, embedded_glob):
    out = str(tmp_path_factory.mktemp("density") / "out")
    manifest = score_density.run(["--input", embedded_glob, "--output", out, "--limit=60", "--unit_records=25",
                                  "--rows=16", "--buckets=256"])
    assert manifest["counts"]["written"] == 60
    return out


@pytest.fixture(scope="module")
def head_out(tmp_path_factory, density_out):
    out = str(tmp_path_factory.mktemp("head") / "out")
    manifest = score_askllm_head.run(["--input", density_out, "--output", out, "--sample=24", "--max_length=160",
                                      "--batch_size=8"])
    return out, manifest


def test_head_scores_every_document_and_reports(head_out, density_out):
    out, manifest = head_out
    assert manifest["reconciled"] and manifest["counts"]["written"] == 60
    version = manifest["outputs"]["head"].split("/")[1]
    assert manifest["outputs"]["head"] == f"versions/{version}/head.npz"
    assert manifest["outputs"]["head_report"] == f"versions/{version}/head_report.json"
    assert all(p.startswith(f"versions/{version}/") for p in manifest["outputs"]["records"])
    assert {manifest["outputs"]["head"], manifest["outputs"]["head_report"]} <= manifest["files"].keys()
    scored = list(gm_records.iter_scored_records(out))
    assert len(scored) == 60 and all(np.isfinite(r[HEAD_FEATURE]) for r in scored)
    assert len({round(r[HEAD_FEATURE], 6) for r in scored}) > 50  # a real function of the embedding
    labelled = [r for r in scored if LLM_FEATURE in r]
    assert len(labelled) == 24 and all(0 < r[LLM_FEATURE] < 1 for r in labelled)

    # the sample is the 24 documents with the smallest salted hash of their id
    ids = [r["id"] for r in gm_records.iter_scored_records(density_out)]
    keys = score_askllm_head.sample_keys(ids, 0)
    assert {r["id"] for r in labelled} == {ids[i] for i in np.argsort(keys)[:24]}

    # the head predicts from the cached embeddings, which are the input's, row for row
    head = heads.AskLLMHead.load(os.path.join(out, manifest["outputs"]["head"]))
    by_id = {r["id"]: r[HEAD_FEATURE] for r in scored}
    for path in gm_records.read_manifest(density_out)["outputs"]["records"]:
        x = corpus.load_array(corpus.input_cache(os.path.join(density_out, path)).path)
        recs = list(gm_records.iter_scored_records(os.path.join(density_out, path)))
        np.testing.assert_allclose([by_id[r["id"]] for r in recs], x.astype(np.float64) @ head.weights + head.bias,
                                   rtol=1e-5, atol=1e-5)

    with open(os.path.join(out, manifest["outputs"]["head_report"])) as f:
        report = json.load(f)
    sample = report["sample"]
    assert sample["scored"] == 24 and sample["train"] + sample["heldout"] == 24 and sample["heldout"] >= 2
    assert head.n_train == sample["train"]
    agree = report["heldout_agreement"]
    assert agree["n"] == sample["heldout"] and -1 <= agree["spearman"] <= 1 and -1 <= agree["kendall"] <= 1
    assert 0 <= agree["top_20pct_overlap"] <= 1
    assert report["cost"]["llm_seconds_per_doc"] > 0 and report["cost"]["head_seconds_per_doc"] > 0
    assert report["documents_scored"] == 60


def test_saved_head_applies_to_embeddings_made_here(tmp_path, head_out, embedded_glob):
    out, first_manifest = head_out
    again = str(tmp_path / "again")
    manifest = score_askllm_head.run(["--input", embedded_glob, "--output", again, "--limit=60",
                                      "--head", os.path.join(out, first_manifest["outputs"]["head"])])
    assert manifest["counts"]["written"] == 60 and "head_report" not in manifest["outputs"]
    first = {r["id"]: r[HEAD_FEATURE] for r in gm_records.iter_scored_records(out)}
    second = {r["id"]: r for r in gm_records.iter_scored_records(again)}
    assert second.keys() == first.keys() and not any(LLM_FEATURE in r for r in second.values())
    for doc_id, score in first.items():
        assert second[doc_id][HEAD_FEATURE] == pytest.approx(score, rel=1e-4, abs=1e-4)


def test_bad_flags_fail_before_running(tmp_path, density_out):
    with pytest.raises(ValueError, match="--sample"):
        score_askllm_head.run(["--input", density_out, "--output", str(tmp_path / "x"), "--sample=2"])
