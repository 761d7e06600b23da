"""The CPU-runnable parts of the benchmark scripts: the Sentence-T5 directory the GPU run builds
(checked against sentence-transformers itself), padding accounting, tables and the GPU summary."""

import json
import os
import sys

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


def test_gpu_summary_reports_steps_peak_fraction_and_failures(tmp_path):
    (tmp_path / "device.json").write_text(json.dumps({"device": "NVIDIA H200", "count": 1}))
    (tmp_path / "askllm_xl.status.json").write_text(json.dumps({"step": "askllm_xl", "rc": 0, "seconds": 90}))
    (tmp_path / "askllm_xl.json").write_text(json.dumps({
        "benchmark": "askllm_throughput", "preset": "flan_t5_xl", "attention_impl": "xla", "batch_size": 32,
        "ratio": 3.0, "jax": {"docs_per_s": 300.0, "tflops": 494.5}, "torch": {"docs_per_s": 100.0, "tflops": 164.8}}))
    (tmp_path / "train_large.status.json").write_text(json.dumps({"step": "train_large", "rc": 124, "seconds": 300}))
    (tmp_path / "train_large.log").write_text("compiling\n\nstill compiling\n")
    summary = gpu_summary.summarize(str(tmp_path))
    xl = summary["steps"]["askllm_xl"]
    assert summary["peak_bf16_tflops"] == 989.0
    assert xl["ratio"] == 3.0 and xl["jax_fraction_of_peak"] == pytest.approx(0.5)
    assert summary["steps"]["train_large"]["timed_out"] is True
    assert summary["steps"]["train_large"]["log_tail"] == ["compiling", "still compiling"]
