"""Tokenizers from a checkpoint's `tokenizer.json` (HF `tokenizers`), with character offsets for alignment and
the harmony chat rendering gpt-oss was trained on.

Text a user types is always encoded as plain text: a literal "<|start|>" in a prompt becomes ordinary tokens,
never a control token. Special tokens enter only where the harmony renderer puts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptoss_viz.errors import InputError, ModelLoadError

# The harmony system message gpt-oss expects (identity, dates, reasoning effort, channels).
DEFAULT_SYSTEM = ("You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\n"
                  "Reasoning: low\n\n# Valid channels: analysis, commentary, final. "
                  "Channel must be included for every message.")


@dataclass(frozen=True)
class Encoded:
    """Token ids with, for each token, its [start, end) character span in `text` and its text as shown."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    tokens: list[str]


class Tokenizer:
    def __init__(self, tok, model_type: str):
        self._tok = tok
        self._tok.encode_special_tokens = True  # user text never produces control tokens
        self.model_type = model_type
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not in this tokenizer's vocabulary")
        return i

    def encode_with_offsets(self, text: str) -> Encoded:
        """Plain-text encoding with character offsets (for aligning two tokenizers on the same text)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        offsets = [tuple(o) for o in enc.offsets]
        return Encoded(text, list(enc.ids), offsets, self._shown(text, enc.ids, offsets))

    def _shown(self, text, ids, offsets) -> list[str]:
        """Each token as its own decoded text, leading space included (byte-level offsets leave the space out of
        the span: " cat" spans "cat"); a byte piece of a longer character decodes to U+FFFD alone, so those show
        the character their span covers."""
        pieces = self._tok.decode_batch([[i] for i in ids], skip_special_tokens=False)
        return [text[a:b] if "\ufffd" in piece and b > a else piece for piece, (a, b) in zip(pieces, offsets)]

    def render_harmony(self, user: str, system: str = DEFAULT_SYSTEM) -> Encoded:
        """`<|start|>system<|message|>{system}<|end|><|start|>user<|message|>{user}<|end|><|start|>assistant`.

        Built piece by piece so that only the renderer's own special tokens are special; offsets point into the
        rendered string (`Encoded.text`).
        """
        pieces = [("<|start|>", True), ("system", False), ("<|message|>", True), (system, False),
                  ("<|end|>", True), ("<|start|>", True), ("user", False), ("<|message|>", True), (user, False),
                  ("<|end|>", True), ("<|start|>", True), ("assistant", False)]
        text, ids, offsets = "", [], []
        for piece, special in pieces:
            start = len(text)
            text += piece
            if special:
                try:
                    ids.append(self.token_id(piece))
                except KeyError:
                    raise InputError(f"this tokenizer has no harmony token {piece}: harmony chat needs a "
                                     "gpt-oss tokenizer") from None
                offsets.append((start, len(text)))
            elif piece:
                enc = self._tok.encode(piece, add_special_tokens=False)
                ids += enc.ids
                offsets += [(start + a, start + b) for a, b in enc.offsets]
        return Encoded(text, ids, offsets, self._shown(text, ids, offsets))


def load_tokenizer(path: Path, cfg) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        raise ModelLoadError(f"{path} has no tokenizer.json (the app reads tokenizers in HF `tokenizers` format)")
    try:
        tok = Tokenizer(HFTokenizer.from_file(str(f)), cfg.model_type)
    except Exception as e:  # the tokenizers library raises plain Exception subclasses for bad files
        raise ModelLoadError(f"cannot read {f}: {e}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise ModelLoadError(f"tokenizer.json has {tok.vocab_size} tokens but the model's vocabulary is "
                             f"{cfg.vocab_size}: they do not belong together")
    return tok
