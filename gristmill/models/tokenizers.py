"""One tokenizer interface over HF ``tokenizers`` (``tokenizer.json``) and SentencePiece (``spiece.model``).

Scorers and the trainer need only: text -> ids without special tokens, ids -> text, and the ids
of pad / eos / bos / unk. Special tokens come from ``tokenizer_config.json`` /
``special_tokens_map.json`` beside the tokenizer file when present (as Hugging Face saves them),
else from the backend itself. T5's SentencePiece vocabularies carry ``extra_ids`` sentinel
tokens ``<extra_id_k>`` appended after the pieces, numbered downwards from the top
(``<extra_id_0>`` is the last id), which ``tokenizer_config.json`` declares as ``extra_ids``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Optional, Sequence

from gristmill import io
from gristmill.models import checkpoints
from gristmill.models.checkpoints import CheckpointError

TOKENIZER_JSON = "tokenizer.json"
SPM_FILES = ("spiece.model", "tokenizer.model")
_EXTRA_ID = re.compile(r"<extra_id_(\d+)>")


def _token_content(value: Any) -> Optional[str]:
    """HF configs store special tokens as a string or as a serialised AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _sidecar(path: str) -> tuple[dict, Optional[str]]:
    """Merged special-token settings and chat template found next to a tokenizer file."""
    directory = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else "."
    settings: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = checkpoints.read_json_object(io.join(directory, name))
        if data:
            settings.update({k: v for k, v in data.items() if v is not None})
    template = settings.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        by_name = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = by_name.get("default") or next(iter(by_name.values()), None)
    jinja = io.join(directory, "chat_template.jinja")
    if template is None and io.exists(jinja):
        template = io.read_text(jinja)
    return settings, template if isinstance(template, str) else None


class Tokenizer:
    """Text <-> ids for one vocabulary, with its special-token ids.

    Build with :meth:`from_file`, :meth:`from_hf_tokenizer` or :func:`load_tokenizer`.
    ``encode`` never adds special tokens: callers (prompt builders, span corruption) decide
    where bos / eos go. Picklable, so Beam can ship it to workers.
    """

    def __init__(self, *, hf=None, sp=None, extra_ids: int = 0, pad_id: int, eos_id: int,
                 bos_id: Optional[int] = None, unk_id: Optional[int] = None,
                 chat_template: Optional[str] = None, name: str = ""):
        if (hf is None) == (sp is None):
            raise ValueError("exactly one of hf (tokenizers.Tokenizer) or sp (SentencePieceProcessor) is needed")
        if hf is not None:
            # A private copy without the padding/truncation a tokenizer.json may enable (MiniLM pads
            # to 128): ids must be exactly the text's, and the caller's object stays untouched.
            import tokenizers
            hf = tokenizers.Tokenizer.from_str(hf.to_str())
            hf.no_padding()
            hf.no_truncation()
        self._hf, self._sp, self._extra_ids = hf, sp, int(extra_ids)
        self.pad_id, self.eos_id, self.bos_id, self.unk_id = pad_id, eos_id, bos_id, unk_id
        self.chat_template, self.name = chat_template, name
        for what, value in (("pad_id", pad_id), ("eos_id", eos_id), ("bos_id", bos_id), ("unk_id", unk_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise CheckpointError(f"tokenizer {name!r}: {what}={value} outside vocabulary of {self.vocab_size}")

    # -- constructors

    @classmethod
    def from_hf_tokenizer(cls, tok, *, pad_id: int, eos_id: int, bos_id: Optional[int] = None,
                          unk_id: Optional[int] = None, chat_template: Optional[str] = None,
                          name: str = "") -> Tokenizer:
        """Wraps an in-memory ``tokenizers.Tokenizer`` (e.g. a BPE rebuilt from GGUF vocab and merges)."""
        return cls(hf=tok, pad_id=pad_id, eos_id=eos_id, bos_id=bos_id, unk_id=unk_id,
                   chat_template=chat_template, name=name)

    @classmethod
    def from_file(cls, path: str, *, name: Optional[str] = None) -> Tokenizer:
        """Loads ``tokenizer.json`` (HF tokenizers) or a SentencePiece ``.model`` (local or gs://).

        Special tokens and the chat template are read from ``tokenizer_config.json`` and
        ``special_tokens_map.json`` in the same directory when present.
        """
        path = str(path)
        if not io.exists(path):
            raise CheckpointError(f"{path}: tokenizer file not found")
        settings, template = _sidecar(path)
        if name is None:
            parent = os.path.basename(os.path.dirname(path.rstrip("/")))
            name = parent or os.path.basename(path)
        raw = io.read_bytes(path)
        if path.endswith(".json"):
            import tokenizers
            try:
                tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from e
            return cls._from_hf_settings(tok, json.loads(raw), settings, template, name, path)
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(raw)
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: not a valid SentencePiece model ({e})") from e
        return cls._from_sp_settings(sp, settings, template, name, path)

    @classmethod
    def _from_hf_settings(cls, tok, spec: dict, settings: dict, template, name: str, path: str) -> Tokenizer:
        def lookup(*keys: str) -> Optional[int]:
            for key in keys:
                content = _token_content(settings.get(key))
                if content is not None:
                    token_id = tok.token_to_id(content)
                    if token_id is None:
                        raise CheckpointError(f"{path}: {key} {content!r} is not in the vocabulary")
                    return token_id
            return None

        model = spec.get("model") or {}
        unk = lookup("unk_token")
        if unk is None and isinstance(model.get("unk_id"), int):  # Unigram
            unk = model["unk_id"]
        if unk is None and isinstance(model.get("unk_token"), str):  # WordPiece / BPE
            unk = tok.token_to_id(model["unk_token"])
        eos = lookup("eos_token", "sep_token")
        if eos is None:
            eos = next((tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<eos>")
                        if tok.token_to_id(t) is not None), None)
        if eos is None:
            raise CheckpointError(
                f"{path}: cannot tell the end-of-sequence token (no eos_token in tokenizer_config.json)")
        pad = lookup("pad_token")
        if pad is None and tok.padding is not None:
            pad = tok.padding.get("pad_id")
        if pad is None:
            pad = tok.token_to_id("<pad>")
        return cls(hf=tok, pad_id=eos if pad is None else pad, eos_id=eos, bos_id=lookup("bos_token", "cls_token"),
                   unk_id=unk, chat_template=template, name=name)

    @classmethod
    def _from_sp_settings(cls, sp, settings: dict, template, name: str, path: str) -> Tokenizer:
        extra = int(settings.get("extra_ids", 0) or 0)

        def special(key: str, default: int) -> Optional[int]:
            content = _token_content(settings.get(key))
            if content is not None:
                token_id = sp.piece_to_id(content)
                if token_id == sp.unk_id() and content != sp.id_to_piece(sp.unk_id()):
                    raise CheckpointError(f"{path}: {key} {content!r} is not in the vocabulary")
                return token_id
            return default if default >= 0 else None

        eos = special("eos_token", sp.eos_id())
        if eos is None:
            raise CheckpointError(f"{path}: SentencePiece model has no eos piece")
        pad = special("pad_token", sp.pad_id())
        return cls(sp=sp, extra_ids=extra, pad_id=eos if pad is None else pad, eos_id=eos,
                   bos_id=special("bos_token", sp.bos_id()), unk_id=special("unk_token", sp.unk_id()),
                   chat_template=template, name=name)

    # -- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (including added tokens and T5 sentinels)."""
        if self._hf is not None:
            return self._hf.get_vocab_size(with_added_tokens=True)
        return self._sp.get_piece_size() + self._extra_ids

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of an exact vocabulary entry (a piece such as ``"▁yes"`` or ``"yes"``), else None."""
        if self._hf is not None:
            return self._hf.token_to_id(token)
        m = _EXTRA_ID.fullmatch(token)
        if m and int(m.group(1)) < self._extra_ids:
            return self.vocab_size - 1 - int(m.group(1))
        token_id = self._sp.piece_to_id(token)
        if token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id):
            return None
        return token_id

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of an id; raises IndexError when out of range."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"tokenizer {self.name!r}: id {token_id} outside vocabulary of {self.vocab_size}")
        if self._hf is not None:
            return self._hf.id_to_token(token_id)
        if token_id >= self._sp.get_piece_size():
            return f"<extra_id_{self.vocab_size - 1 - token_id}>"
        return self._sp.id_to_piece(token_id)

    # -- text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no bos/eos or other special tokens added."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over many texts (HF tokenizers parallelises this in Rust)."""
        if self._hf is not None:
            return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (pad, eos, sentinels, ...) are dropped unless asked for."""
        ids = [int(i) for i in ids]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        pieces, run = [], []
        n = self._sp.get_piece_size()
        for i in ids:
            if i < n:
                run.append(i)
                continue
            if run:
                pieces.append(self._sp.decode(run))
                run = []
            if not skip_special_tokens:
                pieces.append(self.id_to_token(i))
        if run:
            pieces.append(self._sp.decode(run))
        return "".join(pieces)

    # -- pickling (Beam ships DoFns and their members to workers)

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_hf", "_sp")}
        if self._hf is not None:
            state["_hf_json"] = self._hf.to_str()
        else:
            state["_sp_proto"] = self._sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict) -> None:
        hf_json, sp_proto = state.pop("_hf_json", None), state.pop("_sp_proto", None)
        self.__dict__.update(state)
        self._hf = self._sp = None
        if hf_json is not None:
            import tokenizers
            self._hf = tokenizers.Tokenizer.from_str(hf_json)
        else:
            import sentencepiece
            self._sp = sentencepiece.SentencePieceProcessor()
            self._sp.LoadFromSerializedProto(sp_proto)

    def __repr__(self) -> str:
        backend = "tokenizers" if self._hf is not None else "sentencepiece"
        return (f"Tokenizer(name={self.name!r}, backend={backend}, vocab_size={self.vocab_size}, "
                f"pad_id={self.pad_id}, eos_id={self.eos_id}, bos_id={self.bos_id}, unk_id={self.unk_id})")


def load_tokenizer(model_dir_or_file: str) -> Tokenizer:
    """Loads the tokenizer of a model directory (``tokenizer.json`` preferred, else ``spiece.model``
    or ``tokenizer.model``) or a tokenizer file given directly."""
    path = str(model_dir_or_file)
    if path.endswith((".json", ".model")):
        return Tokenizer.from_file(path)
    for filename in (TOKENIZER_JSON,) + SPM_FILES:
        candidate = io.join(path, filename)
        if io.exists(candidate):
            return Tokenizer.from_file(candidate)
    raise CheckpointError(f"{path}: no tokenizer found (looked for {TOKENIZER_JSON}, {', '.join(SPM_FILES)})")
