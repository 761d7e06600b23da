"""Ask-LLM quality score (Sachdeva et al. 2024, docs/paper.md §1): P("yes" | prompt(document)).

Pure core, no Beam: prompt building, answer-token resolution and a batched JAX scorer.

Prompt. The default template (`gristmill/prompts/askllm.txt`) is the paper's Figure 3 text with
nano-askllm's whitespace, the only concrete layout published (the PDF's line breaks inside the
question are figure layout, docs/paper.md §1.1): the question on one line and a blank line between the
blocks::

    ###
    {document}
    ###

    Does the previous paragraph demarcated within ### and ### contain informative signal for pre-training a large-language model? An informative datapoint should be well-formatted, contain some usable knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. content.

    OPTIONS:
    - yes
    - no

(with a final newline). As nano-askllm does, "###" is removed from the document itself
(`prepare_document`) so a document cannot close the demarcation early.

Model input. Encoder-decoder models (FLAN-T5) get the filled template as encoder input followed by
EOS, and the score is read at the first decoder step. Decoder-only instruct models get the filled
template as ONE user turn rendered with the model's own chat template and the generation prompt
(for SmolLM2: ``...<|im_start|>user\\n<prompt><|im_end|>\\n<|im_start|>assistant\\n``); the score
is read at the next-token position after it.

Score. The full-vocabulary softmax probability of the answer token "yes" (not a yes/no
renormalisation, and only lowercase "yes", as the paper says); log P("no") is kept as well.
The answer token is the first token of the tokenizer's encoding of "yes": SentencePiece (T5) adds
its dummy prefix and gives "▁yes", byte-level BPE (SmolLM2, Qwen) gives "yes" without a leading
"Ġ" -- which is right, because the answer follows "assistant\\n" with no space in between.

Truncation. When the prompt is longer than `max_length` tokens only the DOCUMENT is cut: it is
encoded, cut to the token budget left by the template, decoded back and the whole prompt encoded
again (repeated while boundary effects still overflow), so the template -- the question above
all -- is never cut and the prompt is always one joint tokenisation. `truncated` records it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from typing import Any, Optional, Sequence

import numpy as np

from gristmill.models import batching, zoo
from gristmill.models.zoo import DECODER_ONLY, ENCODER_DECODER

PLACEHOLDER = "{document}"
DEFAULT_TEMPLATE = "askllm.txt"
ANSWER_YES = "yes"
ANSWER_NO = "no"
# A document longer than this many characters per allowed token is not encoded whole: its head is
# encoded first, and only when the head turns out to fit is the whole document encoded.
_CHARS_PER_TOKEN_BOUND = 32
# Tokens beyond the budget a document head must have, so its cut edge never reaches the kept part.
_HEAD_MARGIN = 16


class PromptTemplateError(ValueError):
    """A prompt template file is missing, unreadable or lacks exactly one {document} placeholder."""


def load_template(path: Optional[str] = None) -> str:
    """The prompt template text: the packaged default, or the file at `path` (local or gs://).

    Raises PromptTemplateError unless the text holds exactly one `{document}` placeholder.
    """
    if path is None:
        where = f"gristmill/prompts/{DEFAULT_TEMPLATE}"
        text = importlib.resources.files("gristmill").joinpath("prompts", DEFAULT_TEMPLATE).read_text("utf-8")
    else:
        from gristmill import io

        where = str(path)
        try:
            text = io.read_text(where)
        except (OSError, UnicodeDecodeError) as e:
            raise PromptTemplateError(f"{where}: cannot read prompt template ({e})") from e
    count = text.count(PLACEHOLDER)
    if count != 1:
        raise PromptTemplateError(
            f"{where}: a prompt template needs exactly one {PLACEHOLDER} placeholder, found {count}")
    return text


def prepare_document(text: str) -> str:
    """The document as it goes into the prompt: "###" removed (nano-askllm), nothing else changed.

    >>> prepare_document("a ### b")
    'a  b'
    """
    return text.replace("###", "")


def render_chat(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True,
                **special_tokens: Any) -> str:
    """Render a HF/GGUF jinja chat template the way transformers does (sandboxed, trim_blocks,
    lstrip_blocks, loopcontrols, `raise_exception`). `special_tokens` (bos_token, eos_token, ...)
    are passed to the template."""
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            **special_tokens)


def _special_tokens(tokenizer) -> dict[str, str]:
    out = {}
    for key, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id),
                          ("pad_token", tokenizer.pad_id)):
        if token_id is not None:
            out[key] = tokenizer.id_to_token(token_id)
    return out


@functools.lru_cache(maxsize=16)
def prompt_affixes(tokenizer, family: str, template: str) -> tuple[str, str]:
    """(text before the document, text after it) of the complete model input, as a string.

    For decoder-only models the chat template is rendered around a sentinel standing in for the
    document, so templates that wrap or prefix the user turn are honoured exactly.
    """
    prefix, suffix = template.split(PLACEHOLDER)
    if family == ENCODER_DECODER:
        return prefix, suffix
    if family != DECODER_ONLY:
        raise ValueError(f"unknown model family {family!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {tokenizer.name!r} has no chat template; Ask-LLM needs an instruction-tuned model")
    sentinel = "\u0000GRISTMILL_DOCUMENT\u0000"
    rendered = render_chat(tokenizer.chat_template, [{"role": "user", "content": prefix + sentinel + suffix}],
                           add_generation_prompt=True, **_special_tokens(tokenizer))
    if rendered.count(sentinel) != 1:
        raise ValueError(f"tokenizer {tokenizer.name!r}: chat template does not place the user message verbatim")
    before, after = rendered.split(sentinel)
    return before, after


def build_prompt_ids(tokenizer, family: str, template: str, document: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of the complete model input for `document`, at most `max_length` long, and
    whether the document had to be cut (see the module docstring for both families).

    Raises ValueError when even an empty document does not fit.
    """
    before, after = prompt_affixes(tokenizer, family, template)
    tail = [tokenizer.eos_id] if family == ENCODER_DECODER else []

    def encode(doc: str) -> list[int]:
        return tokenizer.encode(before + doc + after) + tail

    bound = (max_length + 1) * _CHARS_PER_TOKEN_BOUND
    long = len(document) > bound
    if not long:
        ids = encode(document)
        if len(ids) <= max_length:
            return ids, False
    overhead = len(encode(""))
    if overhead > max_length:
        raise ValueError(f"the prompt without any document is {overhead} tokens, more than max_length={max_length}")
    budget = max_length - overhead
    doc_ids = None
    if long:  # encode only a head of a huge document when that head already overflows the budget
        head = tokenizer.encode(document[:bound])
        if len(head) >= budget + _HEAD_MARGIN:
            doc_ids = head
        else:
            ids = encode(document)
            if len(ids) <= max_length:
                return ids, False
    if doc_ids is None:
        doc_ids = tokenizer.encode(document)
    keep = min(budget, len(doc_ids))
    while True:
        cut = tokenizer.decode(doc_ids[:keep]).rstrip("\ufffd")  # a split multi-byte char decodes to U+FFFD
        ids = encode(cut)
        if len(ids) <= max_length:
            return ids, True
        keep = max(0, keep - (len(ids) - max_length))


def resolve_answer_tokens(tokenizer) -> tuple[int, int]:
    """(yes_id, no_id): the first token of the tokenizer's encoding of "yes" and of "no"."""
    yes, no = tokenizer.encode(ANSWER_YES), tokenizer.encode(ANSWER_NO)
    if not yes or not no or yes[0] == no[0]:
        raise ValueError(f"tokenizer {tokenizer.name!r}: cannot tell 'yes' ({yes}) from 'no' ({no}) by first token")
    return yes[0], no[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AskLLMConfig:
    """What to score with: `model` is a zoo name or path (see models.zoo.load_model); `model_name`
    names the score in records (`score/askllm/<model_name>`); `prompt_template` is a template file
    (None: the packaged paper prompt); prompts longer than `max_length` tokens get their document
    cut; `batch_size` rows are run per device call (short batches are padded to it)."""

    model: str = dataclasses.field(default="smollm2-135m-instruct", metadata={
        "help": "Model name (smollm2-135m-instruct), a .gguf file, or a HF model directory (FLAN-T5, Llama, "
                "Qwen2), local or gs://"})
    model_name: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Name of the score feature score/askllm/<model_name> (default: the model's base name)"})
    prompt_template: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "Prompt template file with one {document} placeholder (default: the paper's prompt)"})
    max_length: int = dataclasses.field(default=512, metadata={"help": "Prompt tokens; longer documents are cut"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Rows per model call"})
    dtype: str = dataclasses.field(default="float32", metadata={"help": "Compute dtype",
                                                                "choices": ("float32", "bfloat16")})

    def __post_init__(self):
        if self.model_name is None:
            object.__setattr__(self, "model_name", zoo.model_name(self.model))


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """A document's model input ids and whether its document was cut to fit."""

    ids: tuple[int, ...]
    truncated: bool

    @property
    def length(self) -> int:
        """Tokens the model reads (for length-aware batching)."""
        return len(self.ids)


class AskLLMEncoder:
    """The tokenizer-only half of the scorer: prompt ids per document, without loading weights."""

    def __init__(self, config: AskLLMConfig, tokenizer=None, family: Optional[str] = None):
        self.config = config
        self.template = load_template(config.prompt_template)
        if tokenizer is None:
            family, tokenizer = zoo.load_tokenizer_only(config.model)
        self.tokenizer, self.family = tokenizer, family

    def encode(self, document: str) -> EncodedPrompt:
        """The prompt ids of one document (its document part cut to fit max_length)."""
        ids, truncated = build_prompt_ids(self.tokenizer, self.family, self.template, prepare_document(document),
                                          self.config.max_length)
        return EncodedPrompt(tuple(ids), truncated)


@dataclasses.dataclass(frozen=True)
class AskLLMResult:
    """One document's score. `score` = P("yes") (full-vocabulary softmax); `n_tokens` is the
    length of the model input actually scored (prompt included, after any truncation)."""

    score: float
    logp_yes: float
    logp_no: float
    truncated: bool
    n_tokens: int


class AskLLMScorer:
    """Loads the proxy model once and scores lists of documents.

    Each call sorts its documents by prompt length, cuts them into `batch_size` groups and pads
    every group to `batch_size` rows and to the next length bucket, so at most
    len(batching.length_buckets(max_length)) programs are ever compiled. Results come back in input order
    and do not depend on which other documents share a batch (up to float rounding).
    """

    def __init__(self, config: AskLLMConfig, loaded=None):
        import jax

        self.config = config
        self.template = load_template(config.prompt_template)  # before the (slow) model load
        self.loaded = loaded if loaded is not None else zoo.load_model(config.model, config.dtype)
        self.tokenizer = self.loaded.tokenizer
        self.encoder = AskLLMEncoder(config, self.tokenizer, self.loaded.family)
        self.yes_id, self.no_id = resolve_answer_tokens(self.tokenizer)
        self.buckets = batching.length_buckets(config.max_length)
        log_probs = zoo.log_probs_fn(self.loaded)
        answers = np.array([self.yes_id, self.no_id], np.int32)

        def answer_logprobs(params, ids, mask):
            return log_probs(params, ids, mask)[:, answers]  # [B, 2]: log P(yes), log P(no)

        self._answer_logprobs = jax.jit(answer_logprobs)

    def prompt_ids(self, document: str) -> tuple[list[int], bool]:
        """Model input ids for one document and whether it was truncated."""
        encoded = self.encoder.encode(document)
        return list(encoded.ids), encoded.truncated

    def encode(self, document: str) -> EncodedPrompt:
        """The prompt of one document, ready for score_encoded."""
        return self.encoder.encode(document)

    def score_batch(self, documents: Sequence[str]) -> list[AskLLMResult]:
        """Ask-LLM results for `documents`, in the same order."""
        return self.score_encoded([self.encoder.encode(d) for d in documents])

    def score_encoded(self, encoded: Sequence[EncodedPrompt]) -> list[AskLLMResult]:
        """Ask-LLM results for already-encoded prompts, in the same order."""
        prompts = [(list(e.ids), e.truncated) for e in encoded]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
        results: list[Optional[AskLLMResult]] = [None] * len(prompts)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            group = order[start:start + size]
            ids, mask = batching.pad_batch([prompts[i][0] for i in group], pad_id=self.tokenizer.pad_id,
                                           buckets=self.buckets, batch_size=size)
            lp = np.asarray(self._answer_logprobs(self.loaded.params, ids, mask), dtype=np.float64)
            for row, i in enumerate(group):
                logp_yes, logp_no = float(lp[row, 0]), float(lp[row, 1])
                results[i] = AskLLMResult(score=float(np.exp(logp_yes)), logp_yes=logp_yes, logp_no=logp_no,
                                          truncated=prompts[i][1], n_tokens=len(prompts[i][0]))
        return results  # type: ignore[return-value]
