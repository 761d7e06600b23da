"""Family-agnostic checkpoint reading: HF config.json, safetensors (single or sharded), and a
declarative table that maps checkpoint tensors onto a model's parameter tree.

Nothing here unpickles: PyTorch ``.bin`` checkpoints are refused. Safetensors files are read
with the ``safetensors`` library (``framework="numpy"``); bf16 tensors are widened to float32
without torch. Paths may be local or remote (``gs://``): files go through :mod:`gristmill.io`,
and a remote safetensors file is copied to a temporary local file first.

A loader is a list of :class:`Rule` rows; :func:`apply_rules` fails closed: a tensor no rule
uses, a rule whose tensor is missing, and a shape that disagrees with the model's own
``jax.eval_shape`` all raise :class:`CheckpointError` naming every offending tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from gristmill import io

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt", "tf_model.h5")

# The safetensors dtypes gristmill reads ("BF16" is widened to float32 after reading).
_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"})
_MAX_LISTED = 20


class CheckpointError(Exception):
    """A checkpoint file or tensor cannot be used; the message names the file, tensor and reason."""


# ----------------------------------------------------------------------------- config


def read_json_object(path: str) -> Optional[dict]:
    """Reads a JSON object file (local or ``gs://``); None when the file does not exist.

    Raises CheckpointError naming the file when it is not valid JSON or not an object.
    """
    if not io.exists(path):
        return None
    try:
        data = json.loads(io.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_config(model_dir: str) -> dict:
    """Reads ``config.json`` of a Hugging Face model directory (local or ``gs://``) as a dict."""
    path = io.join(model_dir, CONFIG_FILE)
    config = read_json_object(path)
    if config is None:
        raise CheckpointError(f"{path}: file not found (expected a Hugging Face model directory)")
    return config


# ----------------------------------------------------------------------------- safetensors


def _refusal(path: str, err: Exception) -> str:
    """Why the safetensors library refused a local file, naming the cut tensor of a truncated one."""
    size = os.path.getsize(path)
    if size < 8:
        return f"{path}: truncated safetensors file ({size} bytes, no header length)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if 8 + n > size:
            return f"{path}: truncated or not a safetensors file (header claims {n} bytes, file has {size})"
        try:
            header = json.loads(f.read(n))
            ends = {name: 8 + n + int(info["data_offsets"][1]) for name, info in header.items()
                    if name != "__metadata__"}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError,
                IndexError):
            return f"{path}: corrupt safetensors header ({err})"
    for name, end in ends.items():
        if end > size:
            return f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end}, file has {size}"
    return f"{path}: not a valid safetensors file ({err})"


def _bf16_to_f32(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _read_local_safetensors(path: str) -> dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16", which safetensors' numpy reader asks for)
    import safetensors

    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            out = {}
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r}: unsupported dtype {dtype}")
                arr = f.get_tensor(name)
                out[name] = _bf16_to_f32(arr) if dtype == "BF16" else arr
            return out
    except safetensors.SafetensorError as e:
        raise CheckpointError(_refusal(path, e)) from e


def read_safetensors_file(path: str) -> dict[str, np.ndarray]:
    """Reads one ``.safetensors`` file (local or remote) into numpy arrays; bf16 becomes float32.

    A remote file is copied to a temporary local file, removed once read.
    """
    if not io.exists(path):
        raise CheckpointError(f"{path}: file not found")
    with io.local_copy(path) as local:
        return _read_local_safetensors(local)


def _refuse_pickles(model_dir: str) -> None:
    for name in _PICKLED:
        if io.exists(io.join(model_dir, name)):
            raise CheckpointError(
                f"{io.join(model_dir, name)}: refusing a pickled/legacy checkpoint; gristmill reads only "
                f"safetensors (convert it once with `transformers` save_pretrained(safe_serialization=True))")


def read_safetensors(model_dir: str) -> dict[str, np.ndarray]:
    """Reads every tensor of a HF model: ``model.safetensors`` or the shards of
    ``model.safetensors.index.json``; ``model_dir`` may also name a single ``.safetensors`` file
    or an index file. Returns ``{tensor name: np.ndarray}`` with bf16 widened to float32.
    """
    model_dir = str(model_dir)
    base = model_dir.rstrip("/")
    if base.endswith((".bin", ".pt", ".pth", ".ckpt")):
        raise CheckpointError(f"{model_dir}: refusing a pickled PyTorch checkpoint; use safetensors")
    if base.endswith(".safetensors"):
        return read_safetensors_file(model_dir)
    if base.endswith(".json"):
        index_path, model_dir = base, io.dirname(base) or "."
    else:
        index_path = io.join(model_dir, SAFETENSORS_INDEX)
        single = io.join(model_dir, SAFETENSORS_FILE)
        if io.exists(single):
            return read_safetensors_file(single)
        if not io.exists(index_path):
            if not io.exists(model_dir):
                raise CheckpointError(f"{model_dir}: no such model directory")
            _refuse_pickles(model_dir)
            raise CheckpointError(f"{model_dir}: neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} found")
    try:
        index = json.loads(io.read_bytes(index_path))
        weight_map = dict(index["weight_map"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{index_path}: not a safetensors index with a 'weight_map' ({e})") from e
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = io.join(model_dir, shard)
        if not io.exists(shard_path):
            raise CheckpointError(f"{index_path}: shard {shard_path} not found")
        part = read_safetensors_file(shard_path)
        listed = {n for n, s in weight_map.items() if s == shard}
        problems = [f"tensor {n!r} listed in the index is missing from the shard" for n in sorted(listed - set(part))]
        problems += [f"tensor {n!r} is in the shard but the index maps it elsewhere"
                     for n in sorted(set(part) - listed)]
        if problems:
            raise CheckpointError(f"{shard_path}: " + "; ".join(problems[:_MAX_LISTED]))
        tensors.update(part)
    return tensors


# ----------------------------------------------------------------------------- declarative mapping

Hook = Callable[[np.ndarray], np.ndarray]


def transpose(x: np.ndarray) -> np.ndarray:
    """Torch ``Linear`` stores ``[out, in]``; JAX kernels are ``[in, out]``."""
    return np.asarray(x).T


def reshape(*shape: int) -> Hook:
    """Hook that reshapes a tensor (``-1`` allowed), e.g. to split heads."""
    def hook(x: np.ndarray) -> np.ndarray:
        return np.reshape(x, shape)
    return hook


def scale(factor: float) -> Hook:
    """Hook that multiplies a tensor by a constant (e.g. folding a query scaling into weights)."""
    def hook(x: np.ndarray) -> np.ndarray:
        return np.asarray(x) * np.asarray(factor, dtype=np.asarray(x).dtype)
    return hook


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a loader table: where parameter ``target`` comes from.

    ``target`` is a ``/``-separated path in the parameter tree, ``source`` a checkpoint tensor
    name. A ``{i}`` in ``source`` iterates over layers ``0..n-1`` (``n`` from ``apply_rules``'s
    ``n_layers``, looked up by ``layers`` when that is a mapping). With ``{i}`` in the target too,
    each layer gets its own target (unrolled layers); without it the per-layer tensors are stacked
    on a new leading axis (scanned layers). ``hooks`` run left to right on each source tensor.

    >>> Rule("encoder/layers/attention/query/kernel",
    ...      "encoder.block.{i}.layer.0.SelfAttention.q.weight", (transpose,), layers="encoder")
    """
    target: str
    source: str
    hooks: tuple[Hook, ...] = ()
    layers: Optional[str] = None


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _listing(what: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{what} ({len(names)}): {shown}{more}"


def apply_rules(
    tensors: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    n_layers: Union[int, Mapping[str, int], None] = None,
    *,
    expected: Optional[Mapping[str, Any]] = None,
    aliases: Optional[Mapping[str, str]] = None,
    ignore: Sequence[str] = (),
    origin: str = "checkpoint",
) -> dict[str, Any]:
    """Builds a nested parameter dict from checkpoint ``tensors`` with a table of :class:`Rule`.

    Fails closed, listing every offender in one :class:`CheckpointError`: a tensor a rule needs
    is missing; a checkpoint tensor no rule (nor ``aliases``/``ignore``) accounts for; and when
    ``expected`` (a tree of objects with ``.shape``/``.dtype``, e.g. ``jax.eval_shape`` of the
    model init) is given, a parameter no rule produces, a produced parameter the model lacks, or
    a shape mismatch. Produced arrays are cast to the expected dtype.

    ``aliases`` maps tensor -> canonical tensor for duplicates a checkpoint may carry (e.g. T5's
    ``encoder.embed_tokens.weight`` == ``shared.weight``); an alias is accepted only when equal.
    ``ignore`` holds regexes of tensors to drop knowingly. ``origin`` names the checkpoint in errors.
    """
    def count(rule: Rule) -> int:
        if isinstance(n_layers, Mapping):
            if rule.layers not in n_layers:
                raise CheckpointError(f"{origin}: rule for {rule.target!r} needs layer count {rule.layers!r}")
            return n_layers[rule.layers]
        if n_layers is None:
            raise CheckpointError(f"{origin}: rule for {rule.target!r} iterates layers but no n_layers given")
        return n_layers

    used: set[str] = set()
    missing: list[str] = []
    out: dict[str, np.ndarray] = {}

    def fetch(name: str, rule: Rule, i: int = 0) -> Optional[np.ndarray]:
        if name not in tensors:
            missing.append(f"{name} (for {rule.target.format(i=i)})")
            return None
        used.add(name)
        x = tensors[name]
        for hook in rule.hooks:
            x = hook(x)
        return x

    for rule in rules:
        if "{i}" not in rule.source:
            x = fetch(rule.source, rule)
            if x is not None:
                out[rule.target] = x
            continue
        n = count(rule)
        if "{i}" in rule.target:
            for i in range(n):
                x = fetch(rule.source.format(i=i), rule, i)
                if x is not None:
                    out[rule.target.format(i=i)] = x
        else:
            parts = [fetch(rule.source.format(i=i), rule, i) for i in range(n)]
            if all(p is not None for p in parts):
                shapes = {p.shape for p in parts}
                if len(shapes) != 1:
                    raise CheckpointError(f"{origin}: {rule.source}: layers disagree in shape {sorted(shapes)}")
                out[rule.target] = np.stack(parts, axis=0)

    problems = []
    if missing:
        problems.append(_listing("missing tensors", missing))
    for alias, canonical in (aliases or {}).items():
        if alias in tensors:
            used.add(alias)
            if canonical not in tensors or not np.array_equal(tensors[alias], tensors[canonical]):
                problems.append(f"tensor {alias} differs from {canonical}, which it should duplicate")
    patterns = [re.compile(p) for p in ignore]
    unused = sorted(n for n in tensors if n not in used and not any(p.fullmatch(n) for p in patterns))
    if unused:
        problems.append(_listing("unexpected tensors no rule maps", unused))
    if expected is not None:
        want = flatten_tree(expected)
        no_rule = sorted(set(want) - set(out))
        extra = sorted(set(out) - set(want))
        if no_rule:
            problems.append(_listing("model parameters no rule produces", no_rule))
        if extra:
            problems.append(_listing("rule targets the model does not have", extra))
        bad = [f"{k}: checkpoint {tuple(out[k].shape)} vs model {tuple(want[k].shape)}"
               for k in sorted(set(out) & set(want)) if tuple(out[k].shape) != tuple(want[k].shape)]
        if bad:
            problems.append(_listing("shape mismatches", bad))
        if not problems:
            out = {k: np.asarray(v, dtype=want[k].dtype) for k, v in out.items()}
    if problems:
        raise CheckpointError(f"{origin}: " + "; ".join(problems))
    return unflatten_tree(out)
