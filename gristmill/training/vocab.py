"""SentencePiece vocabularies with T5's id layout, and the `T5Vocabulary` wrapper.

T5's layout: pad = 0, eos = 1, unk = 2, no bos, then the SentencePiece pieces, then 100 "extra
ids" (sentinels) at the END of the vocabulary, numbered downwards: `<extra_id_0>` is
`vocab_size - 1`, `<extra_id_99>` is `vocab_size - 100`. T5's own `spiece.model` does not contain
the sentinels (it has 32000 pieces; T5's vocabulary object appends 100 to make 32100), and a
SentencePiece model cannot place user-defined symbols after its learned pieces. So we do the same
as T5: `train_sentencepiece` trains a model with `vocab_size - num_extra_ids` pieces, and
`T5Vocabulary` appends the sentinels. It wraps `gristmill.models.tokenizers.Tokenizer` (which
already knows T5's extra ids), so a trained model, T5's own `spiece.model` and a FLAN-T5
checkpoint directory load the same way.

`encode` adds no EOS and does not parse the text "<extra_id_0>" into a sentinel id (as T5/SeqIO);
span corruption inserts sentinel ids directly.

Small corpora (`fit_corpus=True`, what `train` and `experiment` use when no vocabulary is given):
a corpus supports only so many pieces. The unigram trainer prunes the frequent substrings of
the corpus down to the requested size, and a small corpus has fewer of them than T5's 32,000
pieces: 3,750 for the first 60 documents of the embedded C4 sample, 12,041 for 300,
25,247 for all 1,000 (BPE stops when no pair is left to merge). SentencePiece then refuses
("Vocabulary size too high (32000). Please set it to a value <= 12041"). With `fit_corpus` the
requested size is an upper bound (SentencePiece's `hard_vocab_limit=false`): one training pass
gives the requested pieces when the corpus has them (the same pieces as the hard limit), and
otherwise exactly the number that error message names, every candidate the corpus supports. The
sentinels are appended after those pieces as always, so the layout stays T5's, and a log line
says what was trained instead of what was asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import tempfile
from typing import Iterable, Iterator, Sequence, Union

from gristmill import flags, io
from gristmill.errors import UsageError
from gristmill.models.tokenizers import Tokenizer

NUM_EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

PathLike = Union[os.PathLike, pathlib.Path]

log = logging.getLogger(__name__)


class VocabularyError(UsageError):
    """A vocabulary cannot be trained or does not have T5's layout."""


class T5Vocabulary:
    """A T5 vocabulary: SentencePiece pieces (pad 0, eos 1, unk 2) + sentinels at the top.

    Wraps a `Tokenizer`; `vocab_size` counts the sentinels, `sentinel_id(i)` is `<extra_id_i>`.
    Picklable (the tokenizer is), so Beam and tf.data workers can carry it.
    """

    def __init__(self, tokenizer: Tokenizer, *, num_extra_ids: int = NUM_EXTRA_IDS):
        self.tokenizer = tokenizer
        self.num_extra_ids = int(num_extra_ids)
        size = tokenizer.vocab_size
        problems = []
        for what, got, want in (("pad_id", tokenizer.pad_id, PAD_ID), ("eos_id", tokenizer.eos_id, EOS_ID),
                                ("unk_id", tokenizer.unk_id, UNK_ID)):
            if got != want:
                problems.append(f"{what} is {got}, T5 needs {want}")
        if tokenizer.bos_id is not None:
            problems.append(f"bos_id is {tokenizer.bos_id}, T5 has none")
        for i in (0, self.num_extra_ids - 1):
            if self.num_extra_ids and tokenizer.token_to_id(f"<extra_id_{i}>") != size - 1 - i:
                problems.append(f"<extra_id_{i}> is not id {size - 1 - i}")
        if problems:
            raise VocabularyError(f"tokenizer {tokenizer.name!r} does not have T5's layout: " + "; ".join(problems))

    @classmethod
    def from_file(cls, path: Union[str, PathLike], *, num_extra_ids: int = NUM_EXTRA_IDS) -> T5Vocabulary:
        """Loads a SentencePiece `.model` (local or gs://) and appends `num_extra_ids` sentinels."""
        path = str(path)
        if not io.exists(path):
            raise VocabularyError(f"{path}: SentencePiece model not found")
        return cls.from_proto(io.read_bytes(path), path, num_extra_ids=num_extra_ids)

    @classmethod
    def from_proto(cls, model: bytes, path: str, *, num_extra_ids: int = NUM_EXTRA_IDS) -> T5Vocabulary:
        """A vocabulary from the bytes of a SentencePiece `.model`; `path` names it (errors, tokenizer name)."""
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model)
        except (RuntimeError, OSError) as e:
            raise VocabularyError(f"{path}: not a valid SentencePiece model ({e})") from e
        name = io.basename(path)
        pad, eos, unk, bos = sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()
        if min(pad, eos, unk) < 0:
            raise VocabularyError(f"{path}: needs pad, eos and unk pieces (pad={pad}, eos={eos}, unk={unk})")
        tokenizer = Tokenizer(sp=sp, extra_ids=num_extra_ids, pad_id=pad, eos_id=eos, unk_id=unk,
                              bos_id=bos if bos >= 0 else None, name=name)
        return cls(tokenizer, num_extra_ids=num_extra_ids)

    @property
    def vocab_size(self) -> int:
        """Pieces plus sentinels (32100 for T5)."""
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def unk_id(self) -> int:
        return self.tokenizer.unk_id

    def sentinel_id(self, i: int) -> int:
        """Id of `<extra_id_i>`: vocab_size - 1 - i."""
        if not 0 <= i < self.num_extra_ids:
            raise IndexError(f"sentinel {i} outside the {self.num_extra_ids} extra ids")
        return self.vocab_size - 1 - i

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no EOS added."""
        return self.tokenizer.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts."""
        return self.tokenizer.encode_batch(texts)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`. pad and eos are dropped; sentinels too, or shown as `<extra_id_i>` with
        skip_special_tokens=False. Text on either side of a sentinel keeps its word boundary."""
        first_sentinel = self.vocab_size - self.num_extra_ids
        parts: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                text = self.tokenizer.decode(run, skip_special_tokens=True)
                # SentencePiece drops the word-boundary space at the start of a decode; restore it
                # when this run continues earlier text.
                if parts and text and self.tokenizer.id_to_token(run[0]).startswith("\u2581"):
                    text = " " + text
                parts.append(text)
                run.clear()

        for i in (int(i) for i in ids):
            if i in (self.pad_id, self.eos_id):
                continue
            if i < first_sentinel:
                run.append(i)
                continue
            flush()
            if not skip_special_tokens:
                parts.append(self.tokenizer.id_to_token(i))
        flush()
        return "".join(parts)

    def __repr__(self) -> str:
        return f"T5Vocabulary({self.tokenizer.name!r}, vocab_size={self.vocab_size}, extra_ids={self.num_extra_ids})"


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise VocabularyError(f"texts must be str, got {type(text).__name__}")
        for line in text.split("\n"):
            if line.strip():
                yield line


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _replace_field(message: bytes, path: tuple[int, ...], value: bytes) -> bytes:
    """A serialised protobuf message with the length-delimited field at `path` (field numbers,
    outermost first) set to `value`; the enclosing lengths are re-encoded, all other bytes kept."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, body = _varint(message, pos)
            end = body + length
            if number == path[0]:
                inner = value if len(path) == 1 else _replace_field(message[body:end], path[1:], value)
                return message[:pos] + _encode_varint(len(inner)) + inner + message[end:]
            pos = end
        else:
            break
    raise VocabularyError(f"SentencePiece model: no field {'.'.join(map(str, path))} to set")


# ModelProto.trainer_spec (2) . TrainerSpec.model_prefix (2): SentencePiece records there the prefix
# it was trained with.
_MODEL_PREFIX_FIELD = (2, 2)


def train_sentencepiece(texts_or_files: Union[Iterable[str], PathLike, Sequence[PathLike]], vocab_size: int,
                        output_prefix: Union[str, PathLike], *, num_extra_ids: int = NUM_EXTRA_IDS,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        max_sentence_length: int = 16384, input_sentence_size: int = 0,
                        num_threads: int = 1, fit_corpus: bool = False, write_vocab: bool = True) -> T5Vocabulary:
    """Trains a SentencePiece model with T5's layout; writes `<output_prefix>.model` and `.vocab`.

    texts_or_files: an iterable of documents (str; each line is a training sentence), or
        `pathlib.Path` file(s) of plain text, one sentence per line. A bare str is refused as
        ambiguous (a text or a path?).
    vocab_size: the full vocabulary size including the sentinels; the model gets
        vocab_size - num_extra_ids pieces, and <extra_id_0> = vocab_size - 1.
    output_prefix: local or gs:// (any `gristmill.io` path). SentencePiece trains into a local
        temporary directory; the files are then written with `io.atomic_write`, the `.model` last
        (its presence means the vocabulary is whole), holding the bytes SentencePiece writes when
        trained at `output_prefix` itself (the model records its prefix).
    input_sentence_size: sample this many sentences (0 = all).
    num_threads: 1 makes training reproducible (more threads may change the pieces).
    fit_corpus: vocab_size is an upper bound: when the corpus supports fewer pieces, train all it
        supports (logged) instead of failing (see the module docstring).
    write_vocab: also write the human-readable `<output_prefix>.vocab` (pieces and scores).
    Returns the trained vocabulary.
    """
    import sentencepiece

    if isinstance(texts_or_files, (str, bytes)):
        raise VocabularyError("pass texts as a list of str, or files as pathlib.Path (a bare str is ambiguous)")
    pieces = vocab_size - num_extra_ids
    if pieces < 4:
        raise VocabularyError(f"vocab_size {vocab_size} leaves {pieces} pieces after {num_extra_ids} extra ids")
    options = dict(vocab_size=pieces, model_type=model_type,
                   pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
                   pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
                   character_coverage=character_coverage, max_sentence_length=max_sentence_length,
                   input_sentence_size=input_sentence_size, shuffle_input_sentence=input_sentence_size > 0,
                   num_threads=num_threads, hard_vocab_limit=not fit_corpus, minloglevel=2)
    files = [texts_or_files] if isinstance(texts_or_files, os.PathLike) else None
    if isinstance(texts_or_files, (list, tuple)) and texts_or_files and all(
            isinstance(f, os.PathLike) for f in texts_or_files):
        files = list(texts_or_files)
    if files is not None:
        missing = [str(f) for f in files if not os.path.exists(f)]
        if missing:
            raise VocabularyError(f"training file(s) not found: {missing}")
        options["input"] = ",".join(str(f) for f in files)
    else:
        options["sentence_iterator"] = _lines(texts_or_files)
    output_prefix = str(output_prefix)
    with tempfile.TemporaryDirectory(prefix="gristmill-vocab-") as tmp:
        local_prefix = os.path.join(tmp, "spiece")
        try:
            sentencepiece.SentencePieceTrainer.train(model_prefix=local_prefix, **options)
        except RuntimeError as e:
            raise VocabularyError(f"SentencePiece training of {output_prefix} failed: {e}") from e
        with open(f"{local_prefix}.model", "rb") as f:
            model = _replace_field(f.read(), _MODEL_PREFIX_FIELD, output_prefix.encode("utf-8"))
        vocabulary = T5Vocabulary.from_proto(model, f"{output_prefix}.model", num_extra_ids=num_extra_ids)
        if write_vocab:
            with open(f"{local_prefix}.vocab", "rb") as f:
                io.atomic_write(f"{output_prefix}.vocab", f.read())
        io.atomic_write(f"{output_prefix}.model", model)
    if vocabulary.vocab_size < vocab_size:
        log.warning("vocabulary: the corpus supports %d SentencePiece pieces, not the %d asked for; trained %d ids "
                    "(%d pieces + %d sentinels) instead of %d", vocabulary.vocab_size - num_extra_ids, pieces,
                    vocabulary.vocab_size, vocabulary.vocab_size - num_extra_ids, num_extra_ids, vocab_size)
    return vocabulary


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig:
    """`gristmill tokenizer train`: the corpus, the vocabulary's size and where it is written."""

    input: tuple[str, ...] = dataclasses.field(metadata={
        "help": "Corpus glob(s) (JSON lines, text lines or TFRecords)"})
    output: str = dataclasses.field(metadata={
        "help": "Output prefix, local or gs://: writes PREFIX.model and PREFIX.vocab"})
    vocab_size: int = dataclasses.field(default=32100, metadata={
        "help": "Vocabulary size including the 100 sentinels"})
    text_field: str = dataclasses.field(default="text", metadata={"help": "JSON key of the document text"})
    max_documents: int = dataclasses.field(default=100_000, metadata={
        "help": "Train on at most this many documents (the first ones)"})
    model_type: str = dataclasses.field(default="unigram", metadata={
        "help": "SentencePiece model type (T5: unigram)", "choices": ["unigram", "bpe"]})


def run(argv: list[str]) -> T5Vocabulary:
    """Entry point of `gristmill tokenizer train`: documents (any format `gristmill.documents` reads) ->
    ``PREFIX.model`` / ``PREFIX.vocab`` with T5's layout.

        gristmill tokenizer train --input GLOB --vocab_size 32100 --output PREFIX
            [--text_field text] [--max_documents 100000] [--model_type unigram]

    Dead-letter records (unreadable, empty, ...) are skipped and counted in the log line.
    """
    from gristmill import documents

    config = flags.parse_config(TokenizerTrainConfig, argv, "gristmill tokenizer train", run.__doc__)
    reader = documents.ReaderConfig(text_field=config.text_field)
    texts, dead = [], 0
    for item in documents.read_documents(config.input, reader):
        if isinstance(item, documents.DeadLetter):
            dead += 1
            continue
        texts.append(item["text"])
        if len(texts) >= config.max_documents:
            break
    if not texts:
        raise VocabularyError(f"no readable documents in {','.join(config.input)} ({dead} dead letters)")
    vocabulary = train_sentencepiece(texts, config.vocab_size, config.output, model_type=config.model_type)
    log.info("trained %r on %d documents (%d unreadable records skipped) -> %s.model", vocabulary, len(texts), dead,
             config.output)
    return vocabulary
