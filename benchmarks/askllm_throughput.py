"""Ask-LLM scoring throughput: the JAX T5 first-step scorer vs HF transformers (PyTorch eager).

Both sides score the same documents with the same random weights: the JAX side initialises a T5
preset, exports it in HF layout (``config.json`` + ``model.safetensors``) and the PyTorch side
loads that with ``T5ForConditionalGeneration.from_pretrained`` (models of 1e9 parameters and more
are initialised on the device instead: timings only). The PyTorch half always runs in a
subprocess (``--peer-python``, default: this interpreter), so a venv without JAX (or without
torch) works on either side and the two runtimes never share a thread pool. The work measured is
the Ask-LLM score: encoder over the prompt, ONE decoder step from the start token, log-softmax
over the vocabulary.

``--attention-impl xla,cudnn`` times every attention implementation in one process (the first,
the length buckets, the PyTorch peer, then the others; cuDNN needs a GPU). A second table measures length
bucketing on the real length distribution of the embedded C4 sample (Ask-LLM prompt around each
document, truncated to ``--seq-len``): padding every batch to ``--seq-len`` vs padding to the
next bucket, in arrival order (what Beam batches give) and length-grouped. ``--json`` is
rewritten as each number arrives, so a run cut short keeps what it measured.

CPU (small T5, default):   python benchmarks/askllm_throughput.py
GPU (FLAN-T5 shapes):      python benchmarks/askllm_throughput.py --preset flan_t5_xl --dtype bfloat16 \
                               --batch-size 32 --batches 8 --torch-device cuda --attention-impl xla,cudnn
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import JsonResult  # noqa: E402

C4 = os.path.join(REPO, "gristmill", "data", "c4-olmo", "c4-sample.00000-of-00001.json.gz")
FIXTURE_SPM = os.path.join(REPO, "tests", "fixtures", "t5", "tiny_v1_1", "spiece.model")
# Ask-LLM prompt (docs/paper.md §1.1, nano-askllm's whitespace); only its length matters here.
PROMPT = ("###\n{text}\n###\n\nDoes the previous paragraph demarcated within ### and ### contain informative "
          "signal for pre-training a large-language model? An informative datapoint should be well-formatted, "
          "contain some usable knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. "
          "content.\n\nOPTIONS:\n- yes\n- no\n")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    preset: str = "t5_1_1_small"
    seq_len: int = 512
    batch_size: int = 8
    batches: int = 4
    warmup: int = 1
    dtype: str = "float32"
    attention_impls: tuple[str, ...] = ("xla",)  # "cudnn": fused attention with the position bias (GPU)
    seed: int = 0
    peer_python: str = sys.executable
    torch_device: str = "cpu"
    torch_threads: int = 0  # 0: torch's default
    copy_weights: Optional[bool] = None  # None: copy when the model has < 1e9 parameters
    skip_torch: bool = False
    bucket_docs: int = 96
    buckets: Optional[tuple[int, ...]] = None  # None: the scorer's own (models.batching.length_buckets(seq_len))
    corpus: str = C4
    xla_flops: bool = False  # also compile the unrolled network to let XLA count FLOPs (printout only)


# ----------------------------------------------------------------------------- FLOPs


def first_step_flops(config, length: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one Ask-LLM score: encoder over ``length`` tokens, one
    decoder position attending to them, and the vocabulary projection."""
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp_mats = 3 if config.is_gated else 2
    encoder = config.num_layers * (2 * length * d * inner * 4 + 2 * 2 * length * length * inner
                                   + 2 * length * d * ff * mlp_mats)
    decoder = config.num_decoder_layers * (2 * d * inner * 4 + 2 * 2 * inner          # self-attention, 1 position
                                           + 2 * d * inner * 2 + 2 * 2 * length * d * inner  # cross: q, o; k, v over L
                                           + 2 * 2 * length * inner                   # cross scores + weighted sum
                                           + 2 * d * ff * mlp_mats)
    return float(encoder + decoder + 2 * d * config.vocab_size)


# ----------------------------------------------------------------------------- PyTorch half (subprocess)


def torch_worker(workdir: str) -> None:
    """Runs in the peer interpreter: loads the exported model, times the same batches, writes JSON."""
    import torch
    from transformers import T5ForConditionalGeneration

    with open(os.path.join(workdir, "bench.json")) as f:
        bench = json.load(f)
    if bench["torch_threads"]:
        torch.set_num_threads(bench["torch_threads"])
    device = torch.device(bench["torch_device"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[bench["dtype"]]
    model_dir = os.path.join(workdir, "model")
    if bench["copy_weights"]:
        model = T5ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    else:
        from transformers import T5Config
        with device:  # initialise on the device: a 3B-parameter init on the host takes minutes
            model = T5ForConditionalGeneration(T5Config.from_pretrained(model_dir)).to(dtype)
    model = model.to(device).eval()
    inputs = np.load(os.path.join(workdir, "inputs.npz"))
    ids = torch.as_tensor(inputs["ids"], dtype=torch.long, device=device)
    mask = torch.as_tensor(inputs["mask"], dtype=torch.long, device=device)
    start = torch.zeros((ids.shape[1], 1), dtype=torch.long, device=device) + model.config.decoder_start_token_id

    def score(b):
        out = model(input_ids=ids[b], attention_mask=mask[b], decoder_input_ids=start).logits[:, 0]
        return torch.log_softmax(out.float(), dim=-1)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, first = [], None
    with torch.inference_mode():
        for b in range(bench["warmup"]):
            score(b % ids.shape[0])
        sync()
        for b in range(ids.shape[0]):
            t0 = time.perf_counter()
            out = score(b)
            sync()
            times.append(time.perf_counter() - t0)
            if first is None:
                first = out.cpu().numpy()
    np.save(os.path.join(workdir, "torch_first_batch.npy"), first)
    with open(os.path.join(workdir, "torch_result.json"), "w") as f:
        json.dump({"times": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "device": str(device)}, f)


# ----------------------------------------------------------------------------- JAX half


def _time_jax(params, config, ids: np.ndarray, mask: np.ndarray, warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds per batch of ``t5.first_step_logprobs`` (compiled beforehand) and the first batch's output."""
    import jax

    from gristmill.models import t5
    ids_d, mask_d = jax.device_put(ids), jax.device_put(mask)
    for b in range(max(warmup, 1)):  # the first call compiles
        t5.first_step_logprobs(params, config, ids_d[b % len(ids)], mask_d[b % len(ids)]).block_until_ready()
    times, first = [], None
    for b in range(len(ids)):
        t0 = time.perf_counter()
        out = t5.first_step_logprobs(params, config, ids_d[b], mask_d[b]).block_until_ready()
        times.append(time.perf_counter() - t0)
        first = np.asarray(out) if first is None else first
    return times, first


def _xla_flops(config, batch_size: int, seq_len: int) -> Optional[float]:
    """FLOPs XLA counts for one batch, on the unrolled network (cost analysis counts a scanned
    loop body once, not once per layer); compiled from shapes only."""
    import jax
    import jax.numpy as jnp

    from gristmill.models import t5
    unrolled = config.replace(scan_layers=False)
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    try:
        cost = jax.jit(t5.first_step_logprobs, static_argnames="config").lower(
            t5.param_shapes(unrolled), unrolled, ids, ids).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception:  # cost analysis is best-effort and backend-dependent
        return None


def _rates(bench: BenchConfig, config, times: Sequence[float]) -> dict:
    """docs/s, tokens/s and TFLOP/s of the median batch."""
    med = float(np.median(times))
    flops = first_step_flops(config, bench.seq_len) * bench.batch_size
    return {"docs_per_s": bench.batch_size / med, "tokens_per_s": bench.batch_size * bench.seq_len / med,
            "tflops": flops / med / 1e12, "median_s": med, "times": list(times)}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-800:]


def _run_peer(bench: BenchConfig, params, config, copy: bool, ids: np.ndarray, mask: np.ndarray) -> tuple[dict, Optional[np.ndarray]]:
    """Runs the PyTorch half in ``bench.peer_python`` on the same inputs; its timings and first batch."""
    import safetensors.numpy

    from gristmill.models import t5
    with tempfile.TemporaryDirectory(prefix="askllm-bench-") as workdir:
        model_dir = os.path.join(workdir, "model")
        os.makedirs(model_dir)
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            json.dump(t5.to_hf_config(config), f)
        if copy:
            safetensors.numpy.save_file(t5.to_hf_tensors(params, config), os.path.join(model_dir, "model.safetensors"))
        np.savez(os.path.join(workdir, "inputs.npz"), ids=ids, mask=mask)
        settings = dataclasses.asdict(bench) | {"copy_weights": copy}
        with open(os.path.join(workdir, "bench.json"), "w") as f:
            json.dump(settings, f)
        subprocess.run([bench.peer_python, os.path.abspath(__file__), "--torch-worker", workdir], check=True)
        with open(os.path.join(workdir, "torch_result.json")) as f:
            peer = json.load(f)
        return peer, (np.load(os.path.join(workdir, "torch_first_batch.npy")) if copy else None)


def compare_with_torch(bench: BenchConfig, result: Optional[dict] = None,
                       before_peer: Optional[Callable[[Any], None]] = None) -> dict:
    """Every attention implementation and the PyTorch peer on ``bench.batches`` random full-length
    batches, in this order: the first implementation, ``before_peer(compute-dtype params)`` (the
    bucketing measurement), the peer, the other implementations. Numbers go into ``result`` (a
    `JsonResult` saves each at once), which is returned."""
    import jax

    from gristmill.models import t5

    result = JsonResult(None) if result is None else result
    impls = bench.attention_impls
    config = t5.preset(bench.preset, dtype=bench.dtype, attention_impl=impls[0])
    n_params = t5.count_params(config)
    copy = bench.copy_weights if bench.copy_weights is not None else n_params < 1e9
    result.update(params=n_params, gflop_per_doc=first_step_flops(config, bench.seq_len) / 1e9,
                  copied_weights=copy, impls={})
    params = jax.jit(t5.init_params, static_argnums=0)(config, jax.random.key(bench.seed))
    # Inference keeps the weights in the compute dtype (half the memory traffic in bfloat16).
    compute = jax.tree.map(lambda a: a.astype(config.dtype), params)
    if not (copy and not bench.skip_torch):
        del params  # float32 copy only needed for the export
        params = None
    rng = np.random.default_rng(bench.seed)
    shape = (bench.batches, bench.batch_size, bench.seq_len)
    ids = rng.integers(3, 32000 if config.vocab_size > 32000 else config.vocab_size, shape).astype(np.int32)
    ids[..., -1] = config.eos_id
    mask = np.ones(shape, np.int32)
    info = {"backend": jax.default_backend(), "version": jax.__version__}

    def measure(impl: str) -> Optional[np.ndarray]:
        if impl == "cudnn" and jax.default_backend() != "gpu":
            result["impls"][impl] = {"skipped": "cuDNN attention needs a GPU"}
            result.save()
            return None
        try:
            times, first = _time_jax(compute, config.replace(attention_impl=impl), ids, mask, bench.warmup)
        except Exception as exc:  # one implementation failing must not lose the others
            result["impls"][impl] = {"error": _error(exc)}
            result.save()
            _say(f"jax {impl} failed: {result['impls'][impl]['error']}")
            return None
        result["impls"][impl] = _rates(bench, config, times) | info
        _say(f"jax {impl}: {result['impls'][impl]['docs_per_s']:.2f} docs/s")
        if "torch" in result:
            result["impls"][impl]["ratio_vs_torch"] = result["impls"][impl]["docs_per_s"] / result["torch"]["docs_per_s"]
        result.save()
        return first

    first = measure(impls[0])
    if before_peer is not None:
        try:
            before_peer(compute)
        except Exception as exc:
            result.update(before_peer_error=_error(exc))
            _say(f"failed: {result['before_peer_error']}")
    if not bench.skip_torch:
        try:
            peer, torch_first = _run_peer(bench, params, config, copy, ids, mask)
            result["torch"] = _rates(bench, config, peer.pop("times")) | peer
            _say(f"torch: {result['torch']['docs_per_s']:.2f} docs/s")
            for entry in result["impls"].values():
                if "docs_per_s" in entry:
                    entry["ratio_vs_torch"] = entry["docs_per_s"] / result["torch"]["docs_per_s"]
            if torch_first is not None and first is not None:
                result["max_abs_logprob_diff"] = float(np.max(np.abs(torch_first - first)))
        except Exception as exc:
            result["torch"] = {"error": _error(exc)}
            _say(f"torch failed: {result['torch']['error']}")
        result.save()
    del params
    for impl in impls[1:]:
        measure(impl)
    if bench.xla_flops:
        result.update(xla_flops_per_doc=(_xla_flops(config, bench.batch_size, bench.seq_len) or float("nan"))
                      / bench.batch_size)
    return result


# ----------------------------------------------------------------------------- length bucketing


def prompt_lengths(corpus: str, seq_len: int) -> dict[str, np.ndarray]:
    """Token lengths of the Ask-LLM prompt around every document, capped at ``seq_len`` (+1 for eos).

    Two length proxies (no real T5 vocabulary is available offline): characters / 4, and the
    400-piece SentencePiece fixture tokenizer trained on this corpus (small vocabulary, so it
    overcounts relative to T5's 32k pieces).
    """
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        prompts = [PROMPT.format(text=json.loads(line)["text"]) for line in f]
    out = {"chars/4": np.array([len(p) // 4 + 1 for p in prompts])}
    if os.path.exists(FIXTURE_SPM):
        from gristmill.models.tokenizers import Tokenizer
        tok = Tokenizer.from_file(FIXTURE_SPM)
        out["fixture spm (400 pieces)"] = np.array([len(ids) + 1 for ids in tok.encode_batch(prompts)])
    return {k: np.minimum(v, seq_len) for k, v in out.items()}


def padded_lengths(lengths: np.ndarray, batch_size: int, buckets: Sequence[int], policy: str) -> list[int]:
    """Per-batch padded length under ``policy``: ``max`` (always the largest bucket), ``arrival``
    (bucket of each arrival-order batch's longest doc) or ``grouped`` (sorted by length first)."""
    from gristmill.models.batching import bucket_length
    if policy == "max":
        return [max(buckets)] * -(-len(lengths) // batch_size)
    order = np.sort(lengths) if policy == "grouped" else lengths
    return [bucket_length(int(order[i:i + batch_size].max()), buckets) for i in range(0, len(order), batch_size)]


def effective_buckets(bench: BenchConfig) -> tuple[int, ...]:
    """The buckets below ``seq_len`` plus ``seq_len`` itself (the pad-everything length)."""
    from gristmill.models.batching import length_buckets

    if bench.buckets is None:
        return length_buckets(bench.seq_len)
    return tuple(sorted({b for b in bench.buckets if b < bench.seq_len} | {bench.seq_len}))


def bucketing_gain(bench: BenchConfig, params=None, result: Optional[dict] = None) -> dict:
    """Padded tokens / FLOPs for each policy over the whole corpus, and measured docs/s on a subset
    (``params``: compute-dtype weights to reuse; fresh random ones if None). Numbers go into
    ``result["buckets"]`` as they come; returns that dict."""
    import jax

    from gristmill.models import t5
    from gristmill.models.batching import pad_batch

    config = t5.preset(bench.preset, dtype=bench.dtype, attention_impl=bench.attention_impls[0])
    bench = dataclasses.replace(bench, buckets=effective_buckets(bench))
    lengths = prompt_lengths(bench.corpus, bench.seq_len)
    out = {"buckets": list(bench.buckets), "docs": int(len(next(iter(lengths.values())))),
           "distribution": {}, "policies": {}, "measured": {}}
    result = JsonResult(None) if result is None else result
    result["buckets"] = out
    for name, lens in lengths.items():
        out["distribution"][name] = {str(q): float(np.percentile(lens, q)) for q in (10, 50, 90)} | {
            "mean": float(lens.mean()), f"share at {bench.seq_len}": float(np.mean(lens >= bench.seq_len))}
        for policy in ("max", "arrival", "grouped"):
            padded = padded_lengths(lens, bench.batch_size, bench.buckets, policy)
            out["policies"][f"{name}/{policy}"] = {
                "tokens": sum(p * bench.batch_size for p in padded),
                "flops": sum(first_step_flops(config, p) * bench.batch_size for p in padded)}
    result.save()

    # Measured: score the first `bucket_docs` real documents (random weights, token ids drawn at the
    # proxy lengths), every shape compiled before timing.
    lens = lengths["chars/4"][:bench.bucket_docs]
    rng = np.random.default_rng(bench.seed)
    docs = [list(rng.integers(3, min(32000, config.vocab_size), n - 1)) + [config.eos_id] for n in lens]
    if params is None:
        params = jax.tree.map(lambda a: a.astype(config.dtype),
                              jax.jit(t5.init_params, static_argnums=0)(config, jax.random.key(bench.seed)))
    for policy in ("max", "arrival", "grouped"):
        order = sorted(range(len(docs)), key=lambda i: lens[i]) if policy == "grouped" else range(len(docs))
        ordered = [docs[i] for i in order]
        buckets = (max(bench.buckets),) if policy == "max" else bench.buckets
        batches = [pad_batch(ordered[i:i + bench.batch_size], pad_id=config.pad_id, buckets=buckets,
                             batch_size=bench.batch_size) for i in range(0, len(ordered), bench.batch_size)]
        for width in sorted({b[0].shape[1] for b in batches}):  # compile each shape outside the timing
            ids, mask = next(b for b in batches if b[0].shape[1] == width)
            t5.first_step_logprobs(params, config, ids, mask).block_until_ready()
        t0 = time.perf_counter()
        for ids, mask in batches:
            t5.first_step_logprobs(params, config, ids, mask).block_until_ready()
        seconds = time.perf_counter() - t0
        out["measured"][policy] = {"docs_per_s": len(docs) / seconds, "shapes": len({b[0].shape for b in batches}),
                                   "seconds": seconds}
        if policy != "max":
            out["measured"][policy]["gain_vs_max"] = out["measured"]["max"]["seconds"] / seconds
        result.save()
        _say(f"buckets {policy}: {len(docs) / seconds:.2f} docs/s")
    return out


# ----------------------------------------------------------------------------- report


def report(bench: BenchConfig, result: dict) -> str:
    """The printed tables of a (possibly partial) result."""
    lines = [f"Ask-LLM first-step scoring, preset {bench.preset} ({result.get('params', 0) / 1e6:.1f}M params), "
             f"seq {bench.seq_len}, batch {bench.batch_size}, {bench.batches} timed batches, compute {bench.dtype}",
             f"model FLOPs/doc (analytic) {result.get('gflop_per_doc', float('nan')):.2f} G"
             + (f"; XLA-counted {result['xla_flops_per_doc'] / 1e9:.2f} G" if "xla_flops_per_doc" in result else "")]
    header = f"{'impl':52s} {'docs/s':>10s} {'tokens/s':>12s} {'TFLOP/s':>9s} {'s/batch (median)':>17s}"
    lines += ["", header, "-" * len(header)]
    rows = [(f"JAX/Flax {impl} attention" + (f" ({v['backend']}, jax {v['version']})" if "backend" in v else ""), v)
            for impl, v in result.get("impls", {}).items()]
    if "torch" in result:
        v = result["torch"]
        rows.append((f"HF transformers eager ({v.get('device')}, torch {v.get('torch')}, {v.get('threads')} thr)", v))
    for label, v in rows:
        if "docs_per_s" in v:
            lines.append(f"{label:52s} {v['docs_per_s']:10.2f} {v['tokens_per_s']:12.0f} {v['tflops']:9.4f} "
                         f"{v['median_s']:17.3f}")
        else:
            lines.append(f"{label:52s} {v.get('skipped') or v.get('error')}")
    for impl, v in result.get("impls", {}).items():
        if "ratio_vs_torch" in v:
            lines.append(f"JAX {impl} / PyTorch throughput ratio: {v['ratio_vs_torch']:.2f}x")
    if "max_abs_logprob_diff" in result:
        lines.append(f"same weights, max |logprob_jax - logprob_torch| on batch 0: {result['max_abs_logprob_diff']:.2e}")
    elif "torch" in result and not result.get("copied_weights"):
        lines.append("weights NOT copied (large preset): PyTorch used its own random init; timings only")
    b = result.get("buckets")
    if b:
        lines += ["", f"Length bucketing on the C4 sample ({b['docs']} docs, Ask-LLM prompt, capped at "
                  f"{bench.seq_len}), buckets {tuple(b['buckets'])}, batch {bench.batch_size}"]
        for name, dist in b["distribution"].items():
            lines.append(f"  lengths by {name}: " + ", ".join(f"{k}={v:.1%}" if k.startswith("share") else f"{k}={v:.0f}"
                                                            for k, v in dist.items()))
        header = f"  {'length proxy / policy':36s} {'padded tokens':>14s} {'vs pad-all':>10s} {'FLOPs vs pad-all':>17s}"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for key, v in b["policies"].items():
            base = b["policies"][key.rsplit("/", 1)[0] + "/max"]
            lines.append(f"  {key:36s} {v['tokens']:14d} {v['tokens'] / base['tokens']:10.2f} "
                         f"{v['flops'] / base['flops']:17.2f}")
        if b["measured"]:
            lines.append(f"  measured (JAX, first {bench.bucket_docs} docs, chars/4 lengths): " + "; ".join(
                f"{p}: {v['docs_per_s']:.2f} docs/s ({v['shapes']} shapes"
                + (f", {v['gain_vs_max']:.2f}x vs pad-all)" if "gain_vs_max" in v else ")")
                for p, v in b["measured"].items()))
    return "\n".join(lines)


def run(bench: BenchConfig, *, with_buckets: bool = True, json_path: Optional[str] = None) -> dict:
    """Both measurements; the result dict (saved to ``json_path`` after every number)."""
    result = JsonResult(json_path, benchmark="askllm_throughput", preset=bench.preset, dtype=bench.dtype,
                        attention_impls=list(bench.attention_impls), seq_len=bench.seq_len,
                        batch_size=bench.batch_size, batches=bench.batches, done=False)
    compare_with_torch(bench, result, (lambda params: bucketing_gain(bench, params, result)) if with_buckets else None)
    result.update(done=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    d = BenchConfig()
    parser.add_argument("--preset", default=d.preset, help="t5_1_1_{small,base,large,xl,xxl}, flan_t5_* or tiny")
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--batches", type=int, default=d.batches, help="timed batches (after warm-up)")
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"))
    parser.add_argument("--attention-impl", default=",".join(d.attention_impls),
                        help="comma-separated, timed in this order in one process: xla, cudnn")
    parser.add_argument("--json", help="also write the measurements here (rewritten as they arrive)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--peer-python", default=d.peer_python, help="interpreter with torch + transformers")
    parser.add_argument("--torch-device", default=d.torch_device)
    parser.add_argument("--torch-threads", type=int, default=d.torch_threads)
    parser.add_argument("--copy-weights", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--no-buckets", action="store_true", help="skip the length-bucketing measurement")
    parser.add_argument("--bucket-docs", type=int, default=d.bucket_docs)
    parser.add_argument("--corpus", default=d.corpus)
    parser.add_argument("--xla-flops", action="store_true",
                        help="also compile the unrolled network for XLA's FLOP count (slow for large presets)")
    args = parser.parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return
    sys.path.insert(0, REPO)
    impls = tuple(args.attention_impl.split(","))
    for impl in impls:
        if impl not in ("xla", "cudnn"):
            parser.error(f"unknown --attention-impl {impl!r} (xla, cudnn)")
    bench = BenchConfig(preset=args.preset, seq_len=args.seq_len, batch_size=args.batch_size, batches=args.batches,
                        warmup=args.warmup, dtype=args.dtype, attention_impls=impls, seed=args.seed,
                        peer_python=args.peer_python,
                        torch_device=args.torch_device, torch_threads=args.torch_threads,
                        copy_weights={"auto": None, "yes": True, "no": False}[args.copy_weights],
                        skip_torch=args.skip_torch, bucket_docs=args.bucket_docs, corpus=args.corpus,
                        xla_flops=args.xla_flops)
    result = run(bench, with_buckets=not args.no_buckets, json_path=args.json)
    print(report(bench, result), flush=True)


if __name__ == "__main__":
    main()
