"""Family-agnostic checkpoint reading: HF config.json, safetensors (single or sharded), and a
declarative table that maps checkpoint tensors onto a model's parameter tree.

Nothing here unpickles: PyTorch ``.bin`` checkpoints are refused. Safetensors files are parsed
from their documented layout (8-byte little-endian header length, a JSON header, raw bytes) and
memory-mapped, so bf16 tensors can be widened to float32 without torch and large checkpoints are
not read twice. Paths may be local or anything Beam's ``FileSystems`` opens (``gs://``).

A loader is a list of :class:`Rule` rows; :func:`apply_rules` fails closed: a tensor no rule
uses, a rule whose tensor is missing, and a shape that disagrees with the model's own
``jax.eval_shape`` all raise :class:`CheckpointError` naming every offending tensor.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import struct
import tempfile
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt", "tf_model.h5")

# safetensors dtype tag -> numpy dtype of the stored bytes ("BF16" is widened after reading).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_LISTED = 20


class CheckpointError(Exception):
    """A checkpoint file or tensor cannot be used; the message names the file, tensor and reason."""


# ----------------------------------------------------------------------------- paths


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *names: str) -> str:
    """Joins path components for local paths and ``scheme://`` URLs alike."""
    if _is_remote(base):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.join(str(base), *names)
    return os.path.join(str(base), *names)


def exists(path: str) -> bool:
    """True when ``path`` (local or ``gs://``) names an existing file or directory."""
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.exists(str(path))
    return os.path.exists(str(path))


def open_path(path: str) -> BinaryIO:
    """Opens a local path or a ``gs://`` (any Beam filesystem) URL for binary reading."""
    path = str(path)
    try:
        if _is_remote(path):
            from apache_beam.io.filesystems import FileSystems
            return FileSystems.open(path)
        return open(path, "rb")
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e})") from e


def read_bytes(path: str) -> bytes:
    """Reads a whole (small) file, local or remote."""
    with open_path(path) as f:
        return f.read()


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """Yields a local filename for ``path``: itself when local, else a temporary copy removed on exit."""
    path = str(path)
    if not _is_remote(path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: file not found")
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="gristmill-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as out, open_path(path) as src:
            shutil.copyfileobj(src, out, length=16 << 20)
        yield tmp
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------- config


def read_json_object(path: str) -> Optional[dict]:
    """Reads a JSON object file (local or ``gs://``); None when the file does not exist.

    Raises CheckpointError naming the file when it is not valid JSON or not an object.
    """
    if not exists(path):
        return None
    try:
        data = json.loads(read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_config(model_dir: str) -> dict:
    """Reads ``config.json`` of a Hugging Face model directory (local or ``gs://``) as a dict."""
    path = join(model_dir, CONFIG_FILE)
    config = read_json_object(path)
    if config is None:
        raise CheckpointError(f"{path}: file not found (expected a Hugging Face model directory)")
    return config


# ----------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """Returns (header dict without ``__metadata__``, byte offset where tensor data starts) of a local file.

    Checks that the file is long enough for every tensor the header declares, so a truncated
    download is reported here rather than as garbage weights.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (header claims {n} bytes, file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    start = 8 + n
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {info!r}") from e
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: unsupported dtype {dtype}")
        want = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != want or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r}: data_offsets {begin}..{end} hold {end - begin} bytes, "
                f"{dtype}{shape} needs {want}")
        if start + end > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {start + end}, "
                f"file has {size}")
    return header, start


def _bf16_to_f32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)


def _read_local_safetensors(path: str) -> dict[str, np.ndarray]:
    header, start = read_safetensors_header(path)
    if not header:
        return {}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = data[start + begin:start + end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = _bf16_to_f32(arr) if info["dtype"] == "BF16" else arr
    return out


def read_safetensors_file(path: str) -> dict[str, np.ndarray]:
    """Reads one ``.safetensors`` file (local or remote) into numpy arrays; bf16 becomes float32.

    Local files are memory-mapped (arrays are read-only views); remote ones are copied to a
    temporary file first, which is unlinked once mapped.
    """
    with local_file(path) as local:
        return _read_local_safetensors(local)


def _refuse_pickles(model_dir: str) -> None:
    for name in _PICKLED:
        if exists(join(model_dir, name)):
            raise CheckpointError(
                f"{join(model_dir, name)}: refusing a pickled/legacy checkpoint; gristmill reads only "
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
        index_path, model_dir = base, base.rsplit("/", 1)[0] if "/" in base else "."
    else:
        index_path = join(model_dir, SAFETENSORS_INDEX)
        single = join(model_dir, SAFETENSORS_FILE)
        if exists(single):
            return read_safetensors_file(single)
        if not exists(index_path):
            if not exists(model_dir):
                raise CheckpointError(f"{model_dir}: no such model directory")
            _refuse_pickles(model_dir)
            raise CheckpointError(f"{model_dir}: neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} found")
    try:
        index = json.loads(read_bytes(index_path))
        weight_map = dict(index["weight_map"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{index_path}: not a safetensors index with a 'weight_map' ({e})") from e
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = join(model_dir, shard)
        if not exists(shard_path):
            raise CheckpointError(f"{index_path}: shard {shard_path} not found")
        part = read_safetensors_file(shard_path)
        listed = {n for n, s in weight_map.items() if s == shard}
        problems = [f"tensor {n!r} listed in the index is missing from the shard" for n in sorted(listed - set(part))]
        problems += [f"tensor {n!r} is in the shard but the index maps it elsewhere" for n in sorted(set(part) - listed)]
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
