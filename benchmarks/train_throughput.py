"""Training throughput of the T5 presets: tokens/s and model FLOP utilisation (MFU) of `train_step`.

Times the real jitted, state-donating train step of `gristmill.training.step` (Adafactor, T5
loss with z-loss, data-parallel over all local devices) on synthetic full rows of random tokens,
so the number is the model's speed, not the input pipeline's. tokens/s counts input tokens
(batch x inputs_length, the paper's convention); MFU uses `model.flops_per_sequence`
(6N per token plus attention) against the device's dense bf16 peak (`metrics.PEAK_TFLOPS`, or
--peak_tflops; on CPU there is no table entry, so pass one to get an MFU).

    python benchmarks/train_throughput.py                                  # tiny on CPU, float32
    python benchmarks/train_throughput.py --sizes small,base,large --batch_size 64   # GPU, bfloat16

`--json PATH` writes the rows measured so far after each preset (a run cut short keeps them).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from results import JsonResult  # noqa: E402

from gristmill.models import t5  # noqa: E402
from gristmill.training import configs, metrics, step  # noqa: E402
from gristmill.training import model as model_lib  # noqa: E402


def synthetic_batch(rows: int, inputs_length: int, targets_length: int, vocab_size: int, seed: int = 0) -> dict:
    """Full rows of random non-special tokens in data.py's unpacked layout."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, vocab_size, (rows, targets_length), dtype=np.int32)
    return {
        "encoder_input_tokens": rng.integers(3, vocab_size, (rows, inputs_length), dtype=np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1),
        "decoder_loss_weights": np.ones((rows, targets_length), np.int32),
    }


def measure(size: str, batch_size: int | None, steps: int, warmup: int, dtype: str | None, remat: str,
            peak_tflops: float | None, vocab_size: int = 32100) -> dict:
    """Times `steps` train steps after `warmup` (compilation included there) for one preset."""
    config = configs.TrainConfig(data=("unused",), output="unused", steps=steps + warmup, model_size=size,
                                 batch_size=batch_size, dtype=dtype)
    model_config = config.model_config(vocab_size, config.dtype or step.default_dtype()).replace(remat_policy=remat)
    model = model_lib.EncoderDecoderModel(model_config)
    mesh = step.make_mesh()
    init, train_step, _, _ = step.compiled_functions(model, config.optimizer_config(), config.steps, mesh)
    inputs_length, targets_length = config.lengths
    rows = config.global_batch_size
    batch = jax.device_put(synthetic_batch(rows, inputs_length, targets_length, model_config.vocab_size),
                           step.batch_sharding(mesh))
    rng = jax.device_put(jax.random.key(0), step.replicated(mesh))
    state = init(jax.random.key(0))
    t0 = time.perf_counter()
    for _ in range(warmup):
        state, step_metrics = train_step(state, batch, rng)
    jax.block_until_ready(step_metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, step_metrics = train_step(state, batch, rng)
    jax.block_until_ready(step_metrics)
    seconds = (time.perf_counter() - t0) / steps
    flops = rows * model_lib.flops_per_sequence(model_config, inputs_length, targets_length)
    peak = metrics.peak_flops_per_device(jax.devices()[0], peak_tflops)
    return {
        "size": size, "params": t5.count_params(model_config), "dtype": model_config.dtype, "batch": rows,
        "lengths": f"{inputs_length}/{targets_length}", "step_ms": 1000 * seconds,
        "tokens_per_s": rows * inputs_length / seconds, "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / (peak * len(jax.devices())) if peak else None,
        "warmup_s": compile_s, "loss": float(step_metrics["loss"]),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny", help="comma-separated presets: " + ",".join(configs.SIZES))
    parser.add_argument("--batch_size", type=int, default=None, help="global batch (default: the preset's; "
                        "the paper's 1024 does not fit one device for small and up)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: bfloat16 on accelerators, float32 on CPU")
    parser.add_argument("--remat", default="none", help="remat policy: none, full, dots, dots_with_no_batch_dims")
    parser.add_argument("--peak_tflops", type=float, default=None, help="per-device peak for MFU")
    parser.add_argument("--vocab_size", type=int, default=32100, help="tokenizer size (T5: 32100, padded to 32128)")
    parser.add_argument("--json", help="also write the rows here, after each preset")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"devices: {len(jax.devices())} x {device.device_kind} ({jax.default_backend()})", flush=True)
    out = JsonResult(args.json, benchmark="train_throughput", device=device.device_kind, devices=len(jax.devices()),
                     backend=jax.default_backend(), remat=args.remat, rows=[], done=False)
    results = []
    for size in args.sizes.split(","):
        results.append(measure(size, args.batch_size, args.steps, args.warmup, args.dtype, args.remat,
                               args.peak_tflops, args.vocab_size))
        out["rows"].append(results[-1])
        out.save()
        print(f"{size}: {results[-1]['tokens_per_s']:,.0f} tokens/s, MFU {results[-1]['mfu']}", flush=True)
    out.update(done=True)
    header = f"{'size':<11} {'params':>12} {'dtype':>9} {'batch':>6} {'lengths':>8} {'step ms':>9} " \
             f"{'tokens/s':>11} {'TFLOP/s':>8} {'MFU':>6} {'warmup s':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['size']:<11} {r['params']:>12,} {r['dtype']:>9} {r['batch']:>6} {r['lengths']:>8} "
              f"{r['step_ms']:>9.1f} {r['tokens_per_s']:>11,.0f} {r['tflops']:>8.3f} {mfu:>6} {r['warmup_s']:>9.1f}")
    return results


if __name__ == "__main__":
    main()
