"""The CPU-runnable parts of the benchmark scripts: the Sentence-T5 directory the GPU run builds
(checked against sentence-transformers itself), padding accounting, tables and the GPU summary."""

import json
import os
import sys
import tarfile

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import askllm_cpu  # noqa: E402
import gpu_summary  # noqa: E402
import tables  # noqa: E402


def test_random_st5_directory_embeds_like_sentence_transformers(tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import embedding_throughput

    from gristmill.scoring.embeddings import SentenceT5Embedder

    model_dir = embedding_throughput.build_random_st5(str(tmp_path), preset="tiny", max_seq_length=24)
    texts = ["A short one.", "Somewhat longer text, with punctuation; and more words than the first.", "x"]
    ours = SentenceT5Embedder(model_dir, batch_size=4).embed(texts)
    theirs = sentence_transformers.SentenceTransformer(model_dir, device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
    assert ours.shape == (3, 48)


def test_random_minilm_directory_embeds_like_sentence_transformers(tmp_path):
    """The MiniLM-shaped model gpu.sh builds from the repository's tokenizer files alone."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import embedding_throughput

    from gristmill.scoring.embeddings import MiniLMEmbedder

    model_dir = embedding_throughput.build_random_minilm(str(tmp_path), num_hidden_layers=1)
    texts = ["A short one.", "Somewhat longer text, with punctuation; and more words than the first.", "x" * 3000]
    ours = MiniLMEmbedder(model_dir, batch_size=4).embed(texts)
    theirs = sentence_transformers.SentenceTransformer(model_dir, device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
    assert ours.shape == (3, 384)


def test_padded_tokens_counts_buckets_and_longest():
    lengths = [10, 60, 70, 130]
    assert askllm_cpu.padded_tokens(lengths, 2, (64, 128, 256)) == 2 * 64 + 2 * 256
    assert askllm_cpu.padded_tokens(lengths, 2, None) == 2 * 60 + 2 * 130
    assert askllm_cpu.padded_tokens(lengths, 3, None) == 3 * 70 + 3 * 130


def _askllm_result():
    row = {"dtype": "float32", "gristmill_tokens_per_s": 900.0, "peer_tokens_per_s": 600.0, "ratio": 1.5,
           "gristmill_times": [2.0, 2.1], "peer_times": [3.0, 3.2], "peer": "HF transformers 5.x",
           "max_abs_logp_yes_diff_vs_peer": 4e-5}
    bf16 = dict(row, dtype="bfloat16", gristmill_tokens_per_s=1800.0, peer_tokens_per_s=3600.0, ratio=0.5,
                accuracy_vs_float32={
        "max_abs_logp_yes_diff": 0.15, "max_abs_p_yes_diff": 0.01, "spearman_p_yes": 0.99})
    return {"benchmark": "askllm_cpu", "model": "SmolLM2", "docs": 32, "batch_size": 8, "max_length": 512,
            "rounds": 2, "mean_prompt_tokens": 367.0, "real_tokens": 100, "rows": [row, bf16],
            "padding": {"gristmill_buckets": [64, 512], "gristmill_padded_tokens": 140, "peer_padded_tokens": 120}}


def test_tables_render_every_row_and_the_accuracy_cost(tmp_path):
    (tmp_path / "askllm_cpu.json").write_text(json.dumps(_askllm_result()))
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "unknown"}))
    text = tables.render(str(tmp_path))
    assert "| float32 | 900 | HF transformers 5.x | 600 | **1.50x** |" in text
    assert "| bfloat16 |" in text and "Spearman of P(yes) 0.9900" in text
    assert "compute 140 tokens" in text
    # gristmill bfloat16 against the peer's float32 (its default), from the same run
    assert "| bfloat16 | 1800.0 | HF transformers 5.x | 600.0 | **3.00x** |" in text
    lines = tables.summary_lines(_askllm_result())
    assert lines[0].startswith("askllm_cpu float32: 1.50x (900.0 vs 600.0 tokens/s; peer HF transformers 5.x)")
    assert lines[-1] == "askllm_cpu gristmill bfloat16 vs peer float32: 3.00x (1800.0 vs 600.0 tokens/s)"


def test_gpu_summary_reports_states_ratios_peak_fraction_and_targets(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    work.mkdir()
    results.mkdir()
    (results / "device.json").write_text(json.dumps({"device": "NVIDIA H200", "count": 1, "platform": "gpu"}))
    (work / "askllm_xl.status.json").write_text(json.dumps(
        {"step": "askllm_xl", "order": 1, "state": "ok", "rc": 0, "seconds": 90}))
    (work / "askllm_xl.json").write_text(json.dumps({
        "benchmark": "askllm_throughput", "preset": "flan_t5_xl", "batch_size": 32, "done": True,
        "impls": {"xla": {"docs_per_s": 300.0, "tflops": 494.5, "ratio_vs_torch": 3.0},
                  "cudnn": {"docs_per_s": 480.0, "tflops": 791.2, "ratio_vs_torch": 4.8}},
        "torch": {"docs_per_s": 100.0, "tflops": 164.8}}))
    (work / "train_large.status.json").write_text(json.dumps(
        {"step": "train_large", "order": 2, "state": "cut", "rc": 124, "seconds": 80, "note": "deadline"}))
    (work / "train_large.log").write_text("compiling\n\nstill compiling\n")
    (work / "embed_st5.status.json").write_text(json.dumps(
        {"step": "embed_st5", "order": 3, "state": "cut", "rc": None, "seconds": 0, "note": "not started"}))
    summary = gpu_summary.write(str(work), str(results), deadline_s=330, elapsed_s=320)
    xl = summary["steps"]["askllm_xl"]
    assert summary["peak_bf16_tflops"] == 989.0
    assert xl["jax_xla"]["fraction_of_peak"] == pytest.approx(0.5)
    assert xl["jax_cudnn"]["ratio_vs_torch"] == 4.8 and xl["best_docs_per_s"] == 480.0
    assert xl["torch"]["fraction_of_peak"] == pytest.approx(164.8 / 989)
    assert list(summary["steps"]) == ["askllm_xl", "train_large", "embed_st5"]
    assert summary["steps"]["train_large"]["state"] == "cut"
    assert summary["steps"]["train_large"]["log_tail"] == ["compiling", "still compiling"]
    targets = {t["what"]: t for t in summary["targets"]}
    assert targets["Ask-LLM FLAN-T5-XL shape, bf16, seq 512: documents/s"]["met"] is True
    assert targets["T5-Large training MFU"]["value"] is None and not targets["T5-Large training MFU"]["met"]
    assert sorted(os.listdir(results)) == ["device.json", "steps.tar.gz", "summary.json", "summary.txt"]
    assert json.loads((results / "summary.json").read_text()) == summary
    assert "train_large: cut after 80 s (deadline)" in (results / "summary.txt").read_text()
    with tarfile.open(results / "steps.tar.gz") as tar:
        assert sorted(tar.getnames()) == sorted(f"steps/{p.name}" for p in work.iterdir())


def test_json_result_is_on_disk_after_every_update(tmp_path):
    from results import JsonResult

    path = tmp_path / "r.json"
    result = JsonResult(str(path), benchmark="x", rows=[])
    assert json.loads(path.read_text()) == {"benchmark": "x", "rows": []}
    result["rows"].append({"a": 1})
    result.save()
    result.update(done=True)
    assert json.loads(path.read_text()) == {"benchmark": "x", "rows": [{"a": 1}], "done": True}
    assert os.listdir(tmp_path) == ["r.json"]
