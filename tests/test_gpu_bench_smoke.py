"""`SMOKE=1 bash benchmarks/gpu.sh`: the GPU benchmark script end to end on CPU with tiny shapes,
the PyTorch peers included and the packages the accelerator machine lacks made unimportable, so
the script cannot rot between the rare runs on an accelerator (issue 19)."""

import importlib.util
import json
import os
import subprocess
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["askllm_xl", "train_large", "askllm_large", "embed_minilm", "embed_st5"]
PEERS = [name for name in ("torch", "transformers", "sentence_transformers") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(PEERS), reason=f"the PyTorch peers are not installed ({', '.join(PEERS)}): "
                                                     "pip install -e '.[ref]' (make install does)")


def _gpu_sh(results, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, SMOKE="1", **env)
    return subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu.sh"), str(results)], capture_output=True,
                          text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("gpu-results")
    run = _gpu_sh(results)
    assert run.returncode == 0, run.stderr[-4000:]
    return results, json.loads((results / "summary.json").read_text()), run


def test_results_are_four_files_with_every_step_in_value_order(smoke):
    results, summary, run = smoke
    assert sorted(os.listdir(results)) == ["device.json", "steps.tar.gz", "summary.json", "summary.txt"]
    assert list(summary["steps"]) == STEPS
    assert {name: s["state"] for name, s in summary["steps"].items()} == dict.fromkeys(STEPS, "ok")
    assert summary["smoke"] is True and summary["deadline_s"] == 900
    device = json.loads((results / "device.json").read_text())
    assert device["platform"] == "cpu" and "torch" in device["packages"] and "jax" in device["packages"]
    assert (results / "summary.txt").read_text() in run.stdout
    with tarfile.open(results / "steps.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"steps/{s}{ext}" for s in STEPS for ext in (".log", ".status.json", ".json")} == names


def test_askllm_steps_compare_with_the_peer_on_the_same_weights(smoke):
    _, summary, _ = smoke
    for name in ("askllm_xl", "askllm_large"):
        s = summary["steps"][name]
        assert s["done"] is True
        assert s["jax_xla"]["docs_per_s"] > 0 and s["torch"]["docs_per_s"] > 0
        assert s["jax_xla"]["ratio_vs_torch"] == pytest.approx(s["jax_xla"]["docs_per_s"] / s["torch"]["docs_per_s"])
        assert s["max_abs_logprob_diff"] < 0.1  # bfloat16 on both sides, tiny random T5
    assert summary["steps"]["askllm_xl"]["jax_cudnn"] == {"skipped": "cuDNN attention needs a GPU"}
    buckets = summary["steps"]["askllm_large"]["buckets"]
    assert set(buckets["measured"]) == {"max", "arrival", "grouped"}
    assert "buckets" not in summary["steps"]["askllm_xl"]


def test_training_and_embedding_steps_report_their_numbers(smoke):
    _, summary, _ = smoke
    train = summary["steps"]["train_large"]
    assert train["rows"][0]["size"] == "tiny" and train["tokens_per_s"] > 0
    assert train["mfu"] is None  # no peak FLOP/s for a CPU
    for name in ("embed_minilm", "embed_st5"):
        (row,) = summary["steps"][name]["rows"]
        assert row["dtype"] == "bfloat16" and row["ratio"] > 0
        assert row["min_cosine_vs_peer"] > 0.999  # both sides compute the same function


def test_a_deadline_cuts_the_steps_it_leaves_no_time_for(tmp_path):
    run = _gpu_sh(tmp_path, DEADLINE="1")
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["steps"]) == STEPS
    for s in summary["steps"].values():
        assert s["state"] == "cut" and s["note"].startswith("not started")
    assert "askllm_xl: cut" in run.stdout
