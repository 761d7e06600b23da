"""T5 pre-training: loss, packed masks, FLOPs, schedules, the trainer (resume, metrics, plans, epochs), CLI.

References are independent of the code under test: `t5.logits` (itself checked against HF
transformers) for the packed network, XLA's own FLOP count for the FLOPs formula, numpy for the
cross-entropy, the published Hugging Face parameter counts of T5 1.0 / v1.1, and an uninterrupted
run for resume. Training runs use the `tiny` preset (batch 8, 128/32) on real C4 text from the
embedded sample with a small SentencePiece vocabulary trained here; they share one compilation.
"""

import dataclasses
import gzip
import importlib.resources
import json
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gristmill import cli, flags, io, records
from gristmill.models import t5
from gristmill.training import checkpointing, configs, data, main, model_io, optim, stream
from gristmill.training import metrics as MX
from gristmill.training import model as M
from gristmill.training import step as S
from gristmill.training import train as T
from gristmill.training import vocab as V

C4 = importlib.resources.files("gristmill") / "data/c4-olmo/c4-sample.00000-of-00001.json.gz"
SCORE = records.score_feature("test", "random")
N_DOCS = 400
METRIC_FIELDS = {"step", "loss", "z_loss", "total_loss", "accuracy", "target_tokens", "grad_norm", "learning_rate",
                 "step_time_s", "tokens_per_second", "mfu", "tokens_seen", "epoch", "data_epoch", "includes_compile",
                 "elapsed_s"}


def c4_docs(n):
    with C4.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def write_records(path, docs, ids):
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for doc, doc_id in zip(docs, ids):
            record = {records.ID: doc_id, records.TEXT: doc["text"], SCORE: float(rng.random())}
            f.write(records.encode_tfrecord(records.serialize(record)))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(scored TFRecord path, SentencePiece model path, docs, ids) over 400 real C4 documents."""
    root = tmp_path_factory.mktemp("train_corpus")
    docs = c4_docs(N_DOCS)
    ids = [f"doc-{i:04d}" for i in range(N_DOCS)]
    path = write_records(root / "c4.tfrecord", docs, ids)
    V.train_sentencepiece([d["text"] for d in docs[:300]], 800, root / "spiece", model_type="bpe")
    return path, str(root / "spiece.model"), docs, ids


def tiny_config(corpus, output, **changes):
    fields = dict(data=(corpus[0],), output=str(output), steps=24, model_size="tiny", vocab=corpus[1], batch_size=8,
                  concat_documents=16, shuffle_buffer=100, checkpoint_every=6, keep_checkpoints=2, log_every=6,
                  seed=7)
    fields.update(changes)
    return configs.TrainConfig(**fields)


def read_metrics(output):
    with open(os.path.join(output, MX.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def as_flags(config):
    """`gristmill train` flags for a TrainConfig built by tiny_config."""
    flags = [f"--data={','.join(config.data)}", f"--output={config.output}"]
    for name in ("steps", "model_size", "vocab", "batch_size", "concat_documents", "shuffle_buffer",
                 "checkpoint_every", "keep_checkpoints", "log_every", "seed"):
        flags.append(f"--{name}={getattr(config, name)}")
    return flags


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """An uninterrupted 24-step tiny run, through the `gristmill train` command line."""
    output = tmp_path_factory.mktemp("full")
    config = tiny_config(corpus, output)
    assert main.parse_config(as_flags(config)) == config
    assert cli.main(["train"] + as_flags(config)) == 0
    return output


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name, expected", [
    # Hugging Face num_parameters() of google/t5-v1_1-{small,base,large} and t5-{small,base,large}.
    ("small", 76_961_152), ("base", 247_577_856), ("large", 783_150_080),
    ("small_v1_0", 60_506_624), ("base_v1_0", 222_903_552), ("large_v1_0", 737_668_096),
])
def test_size_presets_parameter_counts(name, expected):
    config = configs.TrainConfig(data=("x",), output="x", steps=1, model_size=name).model_config(32100, "bfloat16")
    assert config.vocab_size == 32128
    shapes = jax.eval_shape(lambda key: M.init_params(config, key), jax.random.key(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))  # bf16 compute, fp32 params
    preset = configs.size(name)
    assert (preset.inputs_length, preset.targets_length, preset.batch_size) == (512, 114, 1024)
    assert preset.model.dropout_rate == 0.0


def test_presets_and_config_errors():
    assert configs.padded_vocab_size(32100) == 32128 and configs.padded_vocab_size(128) == 128
    with pytest.raises(configs.ConfigError, match="unknown model size"):
        configs.TrainConfig(data=("x",), output="o", steps=1, model_size="huge")
    with pytest.raises(configs.ConfigError, match="steps"):
        configs.TrainConfig(data=("x",), output="o", steps=0)
    with pytest.raises(optim.OptimizerError, match="unknown optimizer"):
        configs.TrainConfig(data=("x",), output="o", steps=1, optimizer="sgd").optimizer_config()
    config = configs.TrainConfig(data="a", output="o", steps=5, model_size="tiny", optimizer="adamw",
                                 learning_rate=3e-4)
    assert config.data == ("a",) and config.lengths == (128, 32) and config.global_batch_size == 16
    assert configs.TrainConfig.from_dict(config.to_dict()) == config


# ----------------------------------------------------------------------------- loss and masks


def test_cross_entropy_with_z_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 3))
    ce, zl = M.cross_entropy_with_z_loss(jnp.asarray(logits), jnp.asarray(targets), 1e-4)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    want = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, want, rtol=1e-5)
    np.testing.assert_allclose(zl, 1e-4 * log_z ** 2, rtol=1e-5)


def test_masks_worked_example():
    seg = jnp.asarray([[1, 1, 2, 0]])
    enc = np.asarray(M.encoder_self_mask(seg))[0, 0]
    assert enc.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    dec = np.asarray(M.decoder_self_mask(seg))[0, 0]
    assert dec.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    cross = np.asarray(M.cross_mask(jnp.asarray([[1, 2, 2]]), seg))[0, 0]
    assert cross.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]


MICRO = t5.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                    scan_layers=False)


@pytest.fixture(scope="module")
def micro_params():
    return t5.init_params(MICRO, jax.random.key(0))


def _example(rng, n_in, n_tg):
    return rng.integers(3, 64, n_in), np.append(rng.integers(3, 64, n_tg - 1), 1)


def test_packed_network_equals_t5_logits_per_example(micro_params):
    """Unpacked rows = t5.logits; a packed row = each of its examples run alone through t5.logits."""
    rng = np.random.default_rng(1)
    params = micro_params
    model = M.EncoderDecoderModel(MICRO)
    examples = [_example(rng, 5, 3), _example(rng, 7, 4), _example(rng, 3, 2)]
    logits = jax.jit(model.logits)
    packed = data.pack_examples(examples, 16, 10)
    assert packed["encoder_segment_ids"].shape[0] == 1  # all three share one row
    unpacked = data.pad_examples(examples, 16, 10)
    ref = np.asarray(t5.logits(params, MICRO, unpacked["encoder_input_tokens"],
                               (unpacked["encoder_input_tokens"] > 0).astype(np.int32),
                               unpacked["decoder_input_tokens"],
                               (unpacked["decoder_target_tokens"] > 0).astype(np.int32)))
    # Run packed and unpacked rows as one batch (one compilation): the packed row is row 0.
    both = {k: np.concatenate([packed[k], unpacked[k]]) for k in data.FEATURES_UNPACKED}
    both["encoder_segment_ids"] = np.concatenate([packed["encoder_segment_ids"], unpacked["encoder_input_tokens"] > 0])
    both["decoder_segment_ids"] = np.concatenate([packed["decoder_segment_ids"], unpacked["decoder_target_tokens"] > 0])
    out = np.asarray(logits(params, both))
    got, own = out[0], out[1:]
    start = 0
    for i, (_, targets) in enumerate(examples):
        n = len(targets)
        np.testing.assert_allclose(got[start:start + n], ref[i, :n], atol=2e-5)
        np.testing.assert_allclose(own[i, :n], ref[i, :n], atol=2e-5)
        start += n
    # The same tree as t5.init_params, so trained params load into every t5 function.
    ids, seg = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
    ours = jax.eval_shape(lambda key: t5.T5(MICRO).init(
        key, ids, seg, ids, seg, encoder_attention_mask=M.encoder_self_mask(seg),
        decoder_self_attention_mask=M.decoder_self_mask(seg), cross_attention_mask=M.cross_mask(seg, seg))["params"],
        jax.random.key(0))
    def shapes(tree):
        return jax.tree.map(lambda x: (x.shape, x.dtype), tree)

    assert shapes(ours) == shapes(t5.param_shapes(MICRO))


def _row_logprobs(params, batch):
    """Per-row sum of target log-probabilities: t5.target_logprobs, the one T5 scoring path."""
    enc, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"]
    lp = t5.target_logprobs(params, MICRO, enc, (enc > 0).astype(jnp.int32), targets, weights)
    return (lp * weights).sum(-1)


def test_loss_fn_weights_and_target_logprobs(micro_params):
    rng = np.random.default_rng(2)
    params = micro_params
    model = M.EncoderDecoderModel(MICRO, z_loss=0.0)
    batch = {k: jnp.asarray(v) for k, v in data.pad_examples([_example(rng, 6, 4), _example(rng, 4, 2)], 8, 5).items()}
    (loss, metrics), logits, scores = jax.jit(
        lambda p, b: (model.loss_fn(p, b), model.logits(p, b), _row_logprobs(p, b)))(params, batch)
    logp = np.asarray(jax.nn.log_softmax(logits))
    targets, weights = np.asarray(batch["decoder_target_tokens"]), np.asarray(batch["decoder_loss_weights"])
    token_logp = np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights
    assert float(metrics["target_tokens"]) == 6
    np.testing.assert_allclose(loss, -token_logp.sum() / 6, rtol=1e-5)
    np.testing.assert_allclose(scores, token_logp.sum(-1), rtol=1e-5)


# ----------------------------------------------------------------------------- FLOPs, schedules, step


def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).cost_analysis()
    return (cost if isinstance(cost, dict) else cost[0])["flops"]


@pytest.mark.parametrize("ff, tied", [("gated-gelu", False), ("relu", True)])
def test_flops_formula_matches_xla_count(ff, tied):
    """XLA's FLOP count of the unrolled network is the formula plus a little elementwise work."""
    config = t5.T5Config(vocab_size=512, d_model=256, d_kv=32, d_ff=512, num_heads=4, num_layers=2,
                         num_decoder_layers=3, dropout_rate=0.0, feed_forward_proj=ff, tie_word_embeddings=tied,
                         scan_layers=False)
    model = M.EncoderDecoderModel(config, z_loss=0.0)
    rows, i, t = 2, 64, 16
    params = t5.param_shapes(config)
    batch = {name: jax.ShapeDtypeStruct((rows, i if name.startswith("encoder") else t), jnp.int32)
             for name in data.FEATURES_UNPACKED}
    formula = rows * M.flops_per_sequence(config, i, t)
    forward = _xla_flops(lambda p, b: model.logits(p, b), params, batch)
    assert 1.0 <= forward / (formula / 3) < 1.03
    if not tied:
        training = _xla_flops(jax.grad(lambda p, b: model.loss_fn(p, b)[0]), params, batch)
        assert 1.0 <= training / formula < 1.03


def test_schedules():
    t5_schedule = optim.make_schedule(optim.OptimizerConfig(), 1_000_000)
    for step, lr in ((0, 0.01), (9_999, 0.01), (10_000, 0.01), (40_000, 0.005), (1_000_000, 0.001)):
        assert float(t5_schedule(step)) == pytest.approx(lr, rel=1e-6)
    tiny = optim.make_schedule(configs.size("tiny").optimizer, 100)
    assert float(tiny(5)) == pytest.approx(0.1) and float(tiny(400)) == pytest.approx(0.05)
    adamw = optim.OptimizerConfig(name=optim.ADAMW, learning_rate=1e-3, warmup_steps=10)
    cosine = optim.make_schedule(adamw, 100)
    assert float(cosine(0)) == 0 and float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(100)) == pytest.approx(1e-4)
    assert adamw.resolved_schedule == optim.COSINE and optim.OptimizerConfig().resolved_schedule == optim.RSQRT


@dataclasses.dataclass(frozen=True)
class DrawModel:
    """A public fake model whose loss reports the uniform draw of the rng it was given."""

    def loss_fn(self, params, batch, rng):
        draw = jax.random.uniform(rng)
        loss = jnp.sum((params["w"] - batch["x"]) ** 2)
        return loss, {"draw": draw, "loss": loss}


def test_train_step_is_pure_and_folds_the_step_into_the_rng():
    tx, schedule = optim.make_optimizer(optim.OptimizerConfig(name=optim.ADAMW, learning_rate=0.1,
                                                              schedule=optim.CONSTANT), 10)
    step_fn = jax.jit(S.make_train_step(DrawModel(), tx, schedule), donate_argnums=0)
    rng = jax.random.key(3)

    def fresh():
        params = {"w": jnp.zeros(3)}
        return S.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    batch = {"x": jnp.ones(3)}
    state, draws = fresh(), []
    for _ in range(3):
        state, metrics = step_fn(state, batch, rng)
        draws.append(float(metrics["draw"]))
    assert int(state.step) == 3
    assert draws == [float(jax.random.uniform(jax.random.fold_in(rng, s))) for s in range(3)]
    again, _ = step_fn(fresh(), batch, rng)
    again, _ = step_fn(again, batch, rng)
    again, _ = step_fn(again, batch, rng)
    assert np.array_equal(again.params["w"], state.params["w"])


def test_peak_flops_lookup():
    class Device:
        device_kind = "NVIDIA H100 80GB HBM3"

    assert MX.peak_flops_per_device(Device()) == 989e12
    Device.device_kind = "NVIDIA H100 PCIe"
    assert MX.peak_flops_per_device(Device()) == 756e12
    Device.device_kind = "TPU v5 lite"
    assert MX.peak_flops_per_device(Device()) == 197e12
    Device.device_kind = "cpu"
    assert MX.peak_flops_per_device(Device()) is None
    assert MX.peak_flops_per_device(Device(), peak_tflops=2.5) == 2.5e12


# ----------------------------------------------------------------------------- the trainer


def test_tiny_run_learns_and_writes_metrics(full_run, corpus):
    output = full_run
    metrics = read_metrics(output)
    assert [m["step"] for m in metrics] == list(range(1, 25))
    for m in metrics:
        assert set(m) == METRIC_FIELDS
        assert np.isfinite(m["loss"]) and m["tokens_per_second"] > 0
        assert m["learning_rate"] == pytest.approx(0.1)  # tiny: warmup 100, 1/sqrt(100)
        assert m["mfu"] is None  # CPU: no known peak
        assert m["data_epoch"] == 0 and m["epoch"] is None  # still in the first pass
    assert metrics[5]["tokens_seen"] == 6 * 8 * 128
    first, last = np.mean([m["loss"] for m in metrics[:4]]), np.mean([m["loss"] for m in metrics[-4:]])
    assert last < first - 0.3, (first, last)
    assert checkpointing.checkpoint_steps(output) == [18, 24]  # keep_checkpoints=2

    run = model_io.read_run(output)
    assert run["model"]["vocab_size"] == 896 and run["tokenizer_vocab_size"] == 800
    assert run["train"]["model_size"] == "tiny" and run["input"]["inputs_length"] == 128
    trained = model_io.load_trained(output)
    assert trained.config == configs.model_config_from_dict(run["model"])
    assert os.path.exists(trained.vocab_path) and V.T5Vocabulary.from_file(trained.vocab_path).vocab_size == 800
    assert jax.tree.map(lambda x: (x.shape, x.dtype), trained.params) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), t5.param_shapes(trained.config))
    at_last = model_io.load_trained(output, step=24)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(at_last.params)))
    at_18 = model_io.load_trained(output, step=18)
    embedding = trained.params["token_embedder"]["embedding"]
    assert not np.array_equal(at_18.params["token_embedder"]["embedding"], embedding)
    with pytest.raises(configs.TrainError, match="no checkpoint at step 5"):
        model_io.load_trained(output, step=5)


def test_resume_equals_uninterrupted(full_run, corpus, tmp_path):
    """Stop at 14, lose the step-14 checkpoint as a crash would, resume from 12 and finish: same losses."""
    output = tmp_path / "resumed"
    T.train(tiny_config(corpus, output, steps=14))
    assert checkpointing.checkpoint_steps(output) == [12, 14]
    shutil.rmtree(output / checkpointing.CHECKPOINTS_DIR / "14")
    T.train(tiny_config(corpus, output))  # steps=24: resumes from 12, drops metrics 13-14
    resumed, full = read_metrics(output), read_metrics(full_run)
    assert [m["step"] for m in resumed] == list(range(1, 25))
    for a, b in zip(resumed, full):
        for key in ("loss", "z_loss", "accuracy", "grad_norm", "learning_rate", "target_tokens"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model_io.load_trained(output).params),
                                                 jax.tree.leaves(model_io.load_trained(full_run).params))]
    assert all(same)


def test_resume_refuses_a_different_run(full_run, corpus):
    with pytest.raises(configs.TrainError, match="train.seed"):
        T.train(tiny_config(corpus, full_run, seed=8))


def test_data_that_is_not_scored_records_fails_early(corpus, tmp_path, embedded_glob):
    with pytest.raises(configs.TrainError, match="not a scored TFRecord file"):
        T.train(tiny_config(corpus, tmp_path / "run", data=(embedded_glob,)))


def test_plan_stream_yields_exactly_the_kept_documents(corpus, tmp_path):
    """A plan over all records gives the same batches as a corpus holding only the kept documents."""
    path, vocab_path, docs, ids = corpus
    plan = data.plan_from_records(path, "topk", rate=0.1, seed=0, score_feature=SCORE)
    kept = data.selected_ids(path, plan)
    assert 0.09 * N_DOCS <= len(kept) <= 0.11 * N_DOCS
    subset = write_records(tmp_path / "kept.tfrecord", [d for d, i in zip(docs, ids) if i in kept],
                           [i for i in ids if i in kept])
    vocabulary = V.T5Vocabulary.from_file(vocab_path)
    config = data.InputConfig(batch_size=8, inputs_length=128, targets_length=32, concat_documents=16,
                              shuffle_buffer=100, seed=5)
    with_plan = list(stream.BatchStream(data.list_files(path), vocabulary, config, plan, max_epochs=1))
    only_kept = list(stream.BatchStream(data.list_files(subset), vocabulary, config, None, max_epochs=1))
    everything = list(stream.BatchStream(data.list_files(path), vocabulary, config, None, max_epochs=1))
    assert len(with_plan) == len(only_kept) > 0 and len(everything) > 5 * len(with_plan)
    for a, b in zip(with_plan, only_kept):
        assert all(np.array_equal(a[k], b[k]) for k in data.FEATURES_PACKED)


def test_plan_run_repeats_epochs_and_stops(corpus, tmp_path):
    """Iso-compute: a small selection repeats; --epochs 2 stops after the second pass."""
    path = corpus[0]
    plan = data.plan_from_records(path, "random", rate=0.02, seed=1)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    output = tmp_path / "epochs"
    result = T.train(tiny_config(corpus, output, plan=str(plan_path), epochs=2, steps=1000))
    metrics = read_metrics(output)
    epochs = [m["data_epoch"] for m in metrics]
    first = epochs.count(0)
    assert first > 0 and epochs == [0] * first + [1] * (len(metrics) - first) and result.step == len(metrics)
    assert all(m["epoch"] is None for m in metrics[:first])
    assert metrics[-1]["epoch"] == pytest.approx(2.0, abs=0.35)  # second pass measured by the first's length
    assert checkpointing.checkpoint_steps(output)[-1] == result.step


def test_vocabulary_trained_into_the_output_when_none_is_given(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "run", vocab=None, vocab_size=300, vocab_max_documents=50)
    path = T.resolve_vocab(config, [corpus[0]])
    assert path == str(tmp_path / "run" / "vocab" / "spiece.model")
    assert V.T5Vocabulary.from_file(path).vocab_size == 300
    stamp = os.path.getmtime(path)
    assert T.resolve_vocab(config, [corpus[0]]) == path and os.path.getmtime(path) == stamp  # reused on resume


def test_train_without_vocab_on_300_documents_fits_the_vocabulary(corpus, tmp_path, caplog):
    """`gristmill train --data DIR` without --vocab on a 300-document selection (T5's 32100 ids do not fit).

    DIR is a gristmill output directory whose manifest lists one file; a stale file beside it
    holds the other 100 documents. The vocabulary must be the largest SentencePiece itself says
    those 300 documents support (its hard-limit error names it), so the stale file was not read.
    """
    _, _, docs, ids = corpus
    selection = tmp_path / "selection"
    selection.mkdir()
    write_records(selection / "scored-00000-of-00001.tfrecord", docs[:300], ids[:300])
    write_records(selection / "scored-00000-of-00002.tfrecord", docs[300:], ids[300:])  # stale
    io.write_json(str(selection / records.MANIFEST_FILE), {"outputs": {"records": ["scored-00000-of-00001.tfrecord"]}})
    with pytest.raises(V.VocabularyError, match="Vocabulary size too high") as refused:
        V.train_sentencepiece([d["text"] for d in docs[:300]], 32100, tmp_path / "hard")
    supported = int(re.search(r"value <= (\d+)", str(refused.value)).group(1))
    assert supported < 32000

    output = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="gristmill"):
        assert cli.main(["train", f"--data={selection}", f"--output={output}", "--model_size=tiny", "--steps=2",
                         "--batch_size=8", "--concat_documents=16", "--shuffle_buffer=100"]) == 0
    run = model_io.read_run(output)
    assert run["tokenizer_vocab_size"] == supported + 100
    assert run["model"]["vocab_size"] == configs.padded_vocab_size(supported + 100)
    vocabulary = V.T5Vocabulary.from_file(output / "vocab" / "spiece.model")
    assert vocabulary.tokenizer.id_to_token(supported + 99) == "<extra_id_0>"  # T5's sentinels at the top
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "supports" in r.getMessage()]
    assert len(said) == 1 and f"supports {supported} SentencePiece pieces, not the 32000" in said[0], said
    assert [m["step"] for m in read_metrics(output)] == [1, 2]
    assert all(np.isfinite(m["loss"]) for m in read_metrics(output))


def test_metrics_writers(tmp_path, caplog):
    """JSONL keeps an earlier run's lines up to the resumed step; the log writer prints every k steps and the last."""
    path = str(tmp_path / "m" / MX.METRICS_FILE)
    record = {"loss": 1.0, "accuracy": 0.5, "learning_rate": 0.01, "tokens_per_second": 10.0, "mfu": None,
              "epoch": None, "data_epoch": 0}
    first = MX.JsonlWriter(path)
    for step in (1, 2, 3):
        first.write({**record, "step": step})
    first.close()
    again = MX.JsonlWriter(path, resume_step=2)
    again.write({**record, "step": 3, "loss": 0.5})
    again.close()
    with open(path) as f:
        assert [(r["step"], r["loss"]) for r in map(json.loads, f)] == [(1, 1.0), (2, 1.0), (3, 0.5)]
    writer = MX.LogWriter(total_steps=7, every=3)
    with caplog.at_level(logging.INFO, logger="gristmill"):
        for step in range(1, 8):
            writer.write({**record, "step": step})
    lines = [r.getMessage() for r in caplog.records if r.name == MX.__name__]
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert lines[0] == "step 3/7 loss 1.0000 acc 0.500 lr 1.00e-02 10 tok/s epoch 0"


# ----------------------------------------------------------------------------- command line


def test_parse_config_flags():
    config = main.parse_config(["--data=a/*.tfrecord,b/*.tfrecord", "--output=out", "--steps=50", "--model_size=tiny",
                                "--optimizer=adamw", "--learning_rate=0.002", "--batch_size=4", "--epochs=3",
                                "--nopack", "--seed=9"])
    assert config == configs.TrainConfig(data=("a/*.tfrecord", "b/*.tfrecord"), output="out", steps=50,
                                         model_size="tiny", optimizer="adamw", learning_rate=0.002, batch_size=4,
                                         epochs=3, pack=False, seed=9)
    assert config.optimizer_config().peak_learning_rate == 0.002
    with pytest.raises(flags.FlagError, match="steps"):
        main.parse_config(["--data=a", "--output=o"])
    with pytest.raises(flags.FlagError, match="model_size"):
        main.parse_config(["--data=a", "--output=o", "--steps=1", "--model_size=huge"])


def test_tokenizer_train_command(tmp_path, embedded_glob):
    vocabulary = V.run(["--input", embedded_glob, "--vocab_size", "400", "--output", str(tmp_path / "sp"),
                        "--max_documents", "60", "--model_type", "bpe"])
    assert vocabulary.vocab_size == 400 and (tmp_path / "sp.model").exists()
    assert vocabulary.decode(vocabulary.encode("The cat sat.")) == "The cat sat."
